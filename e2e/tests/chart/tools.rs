//! Finding helm, kubeconform and the Kubernetes OpenAPI document: `REMORA_TOOLS_BIN`,
//! or whatever `scripts/tools.sh` builds (once) and prints — the way the testkit finds
//! kube-apiserver through `REMORA_CONTROL_PLANE_BIN` and `scripts/control-plane.sh`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const TOOLS_ENV: &str = "REMORA_TOOLS_BIN";
const SKIP_ENV: &str = "REMORA_SKIP_TOOLS";
/// scripts/tools.sh names the document `kubernetes-<K8S_VERSION>-swagger.json`.
pub const SWAGGER_PREFIX: &str = "kubernetes-";

pub struct Tools {
    pub helm: PathBuf,
    pub kubeconform: PathBuf,
    /// Kubernetes' own OpenAPI v2 document, the source of kubeconform's schemas.
    pub swagger: PathBuf,
}

/// True when `REMORA_SKIP_TOOLS=1`: the caller returns without testing, after a loud
/// `SKIPPED` line on stderr (written past libtest's capture).
pub fn skip_requested() -> bool {
    remora_testkit::skip_requested_by(SKIP_ENV, "helm/kubeconform")
}

/// The tools, located once per test binary. Panics saying what is missing and how to fix it.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(locate) {
        Ok(t) => t,
        Err(message) => panic!("{message}"),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives inside the repository")
        .to_path_buf()
}

fn locate() -> Result<Tools, String> {
    let how_to_skip = format!(
        "To skip the tests that need helm and kubeconform instead, set {SKIP_ENV}=1 \
         (they then print SKIPPED and do nothing)."
    );
    let script = repo_root().join("scripts/tools.sh");
    let dir = match std::env::var_os(TOOLS_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => run_script(&script).map_err(|e| format!("{e}\n{how_to_skip}"))?,
    };
    let in_dir = |name: &str| {
        let path = dir.join(name);
        if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "{TOOLS_ENV}={} holds no executable {name}. Run `scripts/tools.sh` (it builds \
                 helm and kubeconform from the Go module proxy into ~/.cache/remora/bin and \
                 prints the directory) and set {TOOLS_ENV} to what it prints, or unset \
                 {TOOLS_ENV} to let the tests run it. {how_to_skip}",
                dir.display()
            ))
        }
    };
    let helm = in_dir("helm")?;
    let kubeconform = in_dir("kubeconform")?;
    let k8s_version = control_plane_k8s_version()?;
    let swagger = dir.join(format!("{SWAGGER_PREFIX}{k8s_version}-swagger.json"));
    if !swagger.is_file() {
        return Err(format!(
            "{} is missing: kubeconform's schemas are generated from it. Run \
             `scripts/tools.sh` again (it copies it from the k8s.io/kubernetes Go module). \
             {how_to_skip}",
            swagger.display()
        ));
    }
    Ok(Tools {
        helm,
        kubeconform,
        swagger,
    })
}

/// `K8S_VERSION` of scripts/control-plane.sh: the schemas match the API server.
fn control_plane_k8s_version() -> Result<String, String> {
    let path = repo_root().join("scripts/control-plane.sh");
    let script =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    script
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .map(str::to_owned)
        .ok_or_else(|| format!("{} sets no K8S_VERSION", path.display()))
}

fn run_script(script: &Path) -> Result<PathBuf, String> {
    let (status, stdout, tail) = remora_testkit::run_build_script(script)?;
    if !status.success() {
        return Err(format!(
            "helm and kubeconform are not available: {} exited with {status}. It needs Go \
             on PATH and the Go module proxy for its first run; run it by hand to see the \
             full output, or set {TOOLS_ENV} to a directory holding helm, kubeconform and \
             the Kubernetes swagger.json.\n--- script output (last lines) ---\n{}",
            script.display(),
            tail.join("\n")
        ));
    }
    let last = stdout.lines().last().unwrap_or("").trim();
    Ok(PathBuf::from(last))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What one tool run printed.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args`, feeding `stdin` when given.
pub fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_owned();
        // Written from a thread so a large input cannot deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {}: {e}", program.display()));
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `program args` and returns stdout; panics with both outputs when it fails.
pub fn run_ok(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = run(program, args, stdin);
    assert!(
        r.success,
        "`{} {}` failed:\n{}\n{}",
        program.display(),
        args.join(" "),
        r.stderr,
        r.stdout
    );
    r.stdout
}

fn kubeconfig_args(cp: &remora_testkit::ControlPlane) -> Vec<String> {
    vec![
        "--kubeconfig".into(),
        cp.kubeconfig_path().display().to_string(),
    ]
}

/// `helm ARGS` against the test control plane (its kubeconfig, helm's caches in its
/// directory); panics with helm's output unless it succeeds.
pub fn helm_on(cp: &remora_testkit::ControlPlane, args: &[&str]) -> String {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(kubeconfig_args(cp));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    // helm's caches stay with this control plane.
    let cache = cp.dir().join("helm");
    let r = std::process::Command::new(&tools().helm)
        .args(&refs)
        .current_dir(repo_root())
        .env("HELM_CACHE_HOME", cache.join("cache"))
        .env("HELM_CONFIG_HOME", cache.join("config"))
        .env("HELM_DATA_HOME", cache.join("data"))
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&r.stderr),
        String::from_utf8_lossy(&r.stdout)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// Polls `f` every 200 ms until it returns a value; panics after 30 s.
pub async fn eventually<F, Fut, T>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
