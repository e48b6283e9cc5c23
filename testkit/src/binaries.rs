//! Finding kube-apiserver and etcd: `REMORA_CONTROL_PLANE_BIN`, or whatever
//! `scripts/control-plane.sh` builds (once) and prints.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) const BIN_DIR_ENV: &str = "REMORA_CONTROL_PLANE_BIN";

#[derive(Debug)]
pub(crate) struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kube_controller_manager: PathBuf,
}

/// The repository root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the repository")
        .to_path_buf()
}

/// Locates the binaries; `Err` is a message for a panic, saying what is missing and how
/// to fix it.
pub(crate) fn locate() -> Result<Binaries, String> {
    let how_to_skip = "To skip the tests that need a control plane instead, set \
                       REMORA_SKIP_CONTROL_PLANE=1 (they then print SKIPPED and do nothing).";
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return in_dir(&dir).map_err(|missing| {
            format!(
                "{BIN_DIR_ENV}={} does not contain an executable {missing}. Point it at a \
                 directory holding kube-apiserver and etcd, or unset it to build them with \
                 scripts/control-plane.sh. {how_to_skip}",
                dir.display()
            )
        });
    }

    let script = repo_root().join("scripts/control-plane.sh");
    let (status, stdout, progress) =
        run_build_script(&script).map_err(|e| format!("{e}. {how_to_skip}"))?;

    if !status.success() {
        let tail = progress.join("\n");
        let missing_go = progress.iter().any(|l| l.contains("Go toolchain"));
        let fix = if missing_go {
            "Install Go (https://go.dev/dl/, the version e2e/envtest/go.mod asks for) and put \
             `go` on PATH; the first build needs it and network access to the Go module proxy."
        } else {
            "Run `scripts/control-plane.sh` by hand to see the full output."
        };
        return Err(format!(
            "kube-apiserver and etcd are not available: {} exited with {status}.\n{fix}\n\
             Alternatively set {BIN_DIR_ENV} to a directory holding both binaries. \
             {how_to_skip}\n--- script output (last lines) ---\n{tail}",
            script.display()
        ));
    }

    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    in_dir(&dir).map_err(|missing| {
        format!(
            "{} reported {} but it holds no executable {missing}; remove that directory and \
             run the script again. {how_to_skip}",
            script.display(),
            dir.display()
        )
    })
}

/// Runs one of the repository's build-once scripts (`bash <script>`): relays
/// its progress on stderr past libtest's capture (a first build takes minutes)
/// and returns its exit status, its stdout, and the last 20 lines of its
/// stderr (for an error message).
pub fn run_build_script(
    script: &Path,
) -> Result<(std::process::ExitStatus, String, Vec<String>), String> {
    let mut child = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    let mut progress = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            progress.push(line);
        }
    }
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", script.display()))?;
    let tail = progress.split_off(progress.len().saturating_sub(20));
    Ok((status, stdout, tail))
}

fn in_dir(dir: &Path) -> Result<Binaries, &'static str> {
    let kube_apiserver = dir.join("kube-apiserver");
    let etcd = dir.join("etcd");
    if !is_executable(&kube_apiserver) {
        return Err("kube-apiserver");
    }
    if !is_executable(&etcd) {
        return Err("etcd");
    }
    let kube_controller_manager = dir.join("kube-controller-manager");
    if !is_executable(&kube_controller_manager) {
        return Err("kube-controller-manager");
    }
    Ok(Binaries {
        kube_apiserver,
        etcd,
        kube_controller_manager,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
