//! The remoractl binary, as a user runs it.

use std::process::Command;

use remora_api::config::SidecarConfig;

fn remoractl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remoractl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap()
}

#[test]
fn render_of_the_examples_prints_a_config_the_sidecar_accepts() {
    let out = remoractl(&["render", "-f", "examples/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = SidecarConfig::from_json(&out.stdout).unwrap();
    assert_eq!(config.namespace.as_deref(), Some("bookinfo"));
    assert!(config.hash.is_some());
    let table = config
        .routes
        .iter()
        .find(|t| t.name == "reviews.bookinfo:9080")
        .unwrap();
    assert_eq!(
        table.routes.len(),
        3,
        "testers, canary, and the default route"
    );
    assert_eq!(
        config.rate_limits.len(),
        2,
        "two buckets; the adaptive limit is not enforced yet, so not rendered"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not enforced RateLimitPolicy bookinfo/ratings: spec.adaptive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_every_problem_with_object_and_field() {
    let out = remoractl(&["check", "-f", "api/tests/invalid/route-weights.yaml"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ServiceRoute default/reviews: spec.rules[0].destinations: weights sum to 90, must be 100"), "{stdout}");
    assert!(stdout.contains("3 problem(s) in 1 document(s)"), "{stdout}");

    let out = remoractl(&["check", "-f", "examples/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn crds_prints_all_four_definitions() {
    let out = remoractl(&["crds"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "SidecarTemplate",
        "ServiceRoute",
        "RateLimitPolicy",
        "MeshCertificate",
    ] {
        assert!(text.contains(&format!("kind: {kind}")), "{kind} missing");
    }
}

#[test]
fn render_without_resources_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = remoractl(&["render", "-f", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Remora resources found"));
}

#[test]
fn completions_cover_every_command() {
    let out = remoractl(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F _remoractl"), "{script}");
    for cmd in [
        "demo",
        "render",
        "check",
        "inject",
        "crds",
        "config-schema",
        "completions",
    ] {
        assert!(
            script.contains(cmd),
            "{cmd} missing from the bash completions"
        );
    }
    assert!(script.contains("--duration"), "demo's flags complete too");
    // The demo's internal subcommands are not offered.
    assert!(!script.contains("demo-sidecar"), "{script}");
    for shell in ["zsh", "fish"] {
        let out = remoractl(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

#[test]
fn every_command_has_an_example_in_its_help() {
    for cmd in [
        "demo",
        "render",
        "check",
        "inject",
        "crds",
        "config-schema",
        "completions",
    ] {
        let out = remoractl(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example") && help.contains(&format!("remoractl {cmd}")),
            "{cmd} --help shows no example:\n{help}"
        );
    }
    let out = remoractl(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("remoractl demo"), "{help}");
    assert!(
        !help.contains("demo-sidecar"),
        "internal commands stay hidden:\n{help}"
    );
}
