//! Starting etcd and kube-apiserver, once per test binary.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};

use crate::Error;
use crate::binaries::{self, Binaries};
use crate::pki::{self, TestCa};
use crate::process::{self, ManagedProcess};

/// How long kube-apiserver may take to answer `/readyz` with `ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of each log quoted when startup fails.
const LOG_TAIL_LINES: usize = 30;

pub(crate) const SKIP_ENV: &str = "REMORA_SKIP_CONTROL_PLANE";

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static NAMESPACE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A running etcd and kube-apiserver on 127.0.0.1, with an admin client certificate
/// (user `remora-test`, group `system:masters`).
///
/// kube-controller-manager runs only its garbage collector and namespace controllers,
/// so owner references and namespace deletion behave as on a cluster. There is no
/// kubelet or scheduler: pods are stored but never run. Each test works in its own
/// namespace.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    kubeconfig_path: PathBuf,
    ca_pem: String,
    etcd_url: String,
    startup_time: Duration,
    etcd: ManagedProcess,
    apiserver: ManagedProcess,
    // Held for the life of the control plane; the process is killed at exit.
    _controller_manager: Option<ManagedProcess>,
}

/// A fresh namespace, and a client to work in it.
#[derive(Clone)]
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// An `Api` for a namespaced resource kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    ///
    /// Panics if it cannot start, with the reason and the tail of both logs. Every later
    /// caller panics with the same message instead of trying again.
    pub async fn shared() -> &'static ControlPlane {
        let started = match SHARED.get() {
            Some(started) => started,
            None => match tokio::task::spawn_blocking(|| SHARED.get_or_init(Self::start)).await {
                Ok(started) => started,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
        };
        match started {
            Ok(cp) => cp,
            Err(message) => panic!("{message}"),
        }
    }

    /// [`ControlPlane::shared`] for code that is not async. Blocks the calling thread.
    pub fn shared_blocking() -> &'static ControlPlane {
        match SHARED.get_or_init(Self::start) {
            Ok(cp) => cp,
            Err(message) => panic!("{message}"),
        }
    }

    /// True when `REMORA_SKIP_CONTROL_PLANE=1`: the caller should return without testing.
    /// Prints a loud notice naming the test thread, so a skipped run is never mistaken
    /// for a passing one. See [`require_control_plane!`](crate::require_control_plane).
    pub fn skip_requested() -> bool {
        skip_requested_by(SKIP_ENV, "a kube-apiserver")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// A kubeconfig for the admin user, for `kubectl --kubeconfig` or any other client.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The CA that signed the API server's serving certificate and the client certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The directory holding logs (`etcd.log`, `kube-apiserver.log`), certificates and
    /// etcd's data; removed at exit unless `REMORA_KEEP_CONTROL_PLANE_DIR=1`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the control plane took to become ready (binaries already built).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// The last `lines` lines of kube-apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    /// A new admin client for the calling test's runtime. Clients are not shared between
    /// tests because each `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> Result<Client, Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Creates a namespace named `<prefix>-<n>`, unique within this control plane.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace, Error> {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// Like [`ControlPlane::namespace`], with labels (for webhook namespace selectors).
    pub async fn namespace_with_labels(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> Result<TestNamespace, Error> {
        let name = format!(
            "{}-{}",
            dns_label_prefix(prefix),
            NAMESPACE_SEQ.fetch_add(1, Ordering::Relaxed) + 1
        );
        let client = self.client().await?;
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: (!labels.is_empty()).then(|| {
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        Ok(TestNamespace { name, client })
    }

    fn start() -> Result<ControlPlane, String> {
        let binaries = binaries::locate()?;
        let began = Instant::now();
        let dir =
            state_dir().map_err(|e| format!("cannot create the control plane's directory: {e}"))?;
        process::remove_at_exit(&dir);
        let cp = Self::start_in(&binaries, &dir, began)?;
        tracing::info!(
            server = %cp.server_url,
            dir = %dir.display(),
            seconds = cp.startup_time.as_secs_f64(),
            "control plane ready"
        );
        eprintln!(
            "remora-testkit: kube-apiserver ready at {} after {:.1} s (logs in {})",
            cp.server_url,
            cp.startup_time.as_secs_f64(),
            dir.display()
        );
        Ok(cp)
    }

    fn start_in(binaries: &Binaries, dir: &Path, began: Instant) -> Result<ControlPlane, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("control plane: {what}: {e}");

        let pki = Pki::write(&dir.join("pki")).map_err(|e| fail("generating certificates", &e))?;

        let [etcd_client_port, etcd_peer_port, apiserver_port] =
            free_ports().map_err(|e| fail("finding free ports", &e))?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");

        let mut etcd = Command::new(&binaries.etcd);
        etcd.args([
            "--name=remora-test".to_string(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=remora-test={peer_url}"),
            "--unsafe-no-fsync".to_string(),
        ]);
        let etcd = process::spawn("etcd", etcd, &dir.join("etcd.log"))
            .map_err(|e| fail(&format!("starting {}", binaries.etcd.display()), &e))?;
        wait_for_etcd(&etcd, etcd_client_port)?;

        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let mut apiserver = Command::new(&binaries.kube_apiserver);
        apiserver.args([
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--secure-port={apiserver_port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            "--authorization-mode=RBAC".to_string(),
            "--disable-admission-plugins=ServiceAccount".to_string(),
            format!("--service-account-issuer={server_url}/"),
            format!(
                "--service-account-key-file={}",
                pki.service_account_pub.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ),
        ]);
        let apiserver =
            process::spawn("kube-apiserver", apiserver, &dir.join("kube-apiserver.log")).map_err(
                |e| {
                    fail(
                        &format!("starting {}", binaries.kube_apiserver.display()),
                        &e,
                    )
                },
            )?;

        let kubeconfig_path = dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, kubeconfig(&server_url, &pki))
            .map_err(|e| fail(&format!("writing {}", kubeconfig_path.display()), &e))?;

        let cp = ControlPlane {
            dir: dir.to_path_buf(),
            server_url,
            kubeconfig_path,
            ca_pem: pki.ca_pem,
            etcd_url,
            startup_time: Duration::ZERO,
            etcd,
            apiserver,
            _controller_manager: None,
        };
        cp.wait_until_ready()?;

        // Garbage collection (owner references) and namespace deletion, as on a cluster.
        let mut kcm = Command::new(&binaries.kube_controller_manager);
        kcm.args([
            format!("--kubeconfig={}", cp.kubeconfig_path.display()),
            format!(
                "--authentication-kubeconfig={}",
                cp.kubeconfig_path.display()
            ),
            format!(
                "--authorization-kubeconfig={}",
                cp.kubeconfig_path.display()
            ),
            "--controllers=garbagecollector,namespace".to_string(),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
        ]);
        let controller_manager = process::spawn(
            "kube-controller-manager",
            kcm,
            &dir.join("kube-controller-manager.log"),
        )
        .map_err(|e| {
            fail(
                &format!("starting {}", binaries.kube_controller_manager.display()),
                &e,
            )
        })?;
        Ok(ControlPlane {
            startup_time: began.elapsed(),
            _controller_manager: Some(controller_manager),
            ..cp
        })
    }

    /// Polls `/readyz` with the admin client until it says `ok`, on a runtime of its own
    /// (the caller may be inside another test's runtime).
    fn wait_until_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    runtime.block_on(async {
                        let mut last = String::from("no answer yet");
                        while Instant::now() < deadline {
                            for process in [&self.etcd, &self.apiserver] {
                                if let Some(status) = process.exit_status() {
                                    return Err(format!("{} exited with {status}", process.name));
                                }
                            }
                            match self.readyz().await {
                                Ok(body) if body.trim() == "ok" => return Ok(()),
                                Ok(body) => last = format!("/readyz answered {body:?}"),
                                Err(e) => last = e.to_string(),
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(format!(
                            "kube-apiserver not ready after {} s (last: {last})",
                            READY_TIMEOUT.as_secs()
                        ))
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the readiness check panicked".into()))
        });
        outcome.map_err(|reason| self.startup_failure(&reason))
    }

    async fn readyz(&self) -> Result<String, Error> {
        let client = self.client().await?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a static request is valid");
        Ok(client.request_text(request).await?)
    }

    fn startup_failure(&self, reason: &str) -> String {
        format!(
            "control plane failed to start: {reason}\n\
             (set {keep}=1 to keep {dir} for inspection)\n\
             --- kube-apiserver log, last {n} lines ({apiserver_log}) ---\n{apiserver}\n\
             --- etcd log, last {n} lines ({etcd_log}) ---\n{etcd}",
            keep = process::KEEP_DIR_ENV,
            dir = self.dir.display(),
            n = LOG_TAIL_LINES,
            apiserver_log = self.apiserver.log.display(),
            apiserver = self.apiserver.log_tail(LOG_TAIL_LINES),
            etcd_log = self.etcd.log.display(),
            etcd = self.etcd.log_tail(LOG_TAIL_LINES),
        )
    }
}

/// Paths of the certificate material written for the API server and its admin user.
struct Pki {
    ca_pem: String,
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    service_account_key: PathBuf,
    service_account_pub: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Pki, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let ca = TestCa::new("remora-testkit CA")?;
        let serving = ca.serving_cert(
            "kube-apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        )?;
        let client = ca.client_cert("remora-test", Some("system:masters"))?;
        let pki = Pki {
            ca_pem: ca.cert_pem(),
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            client_cert: dir.join("remora-test.crt"),
            client_key: dir.join("remora-test.key"),
            service_account_key: dir.join("service-account.key"),
            service_account_pub: dir.join("service-account.pub"),
        };
        let (sa_key, sa_pub) = pki::service_account_key_pems()?;
        let files = [
            (&pki.ca_cert, pki.ca_pem.clone()),
            (&pki.serving_cert, serving.cert_pem),
            (&pki.serving_key, serving.key_pem),
            (&pki.client_cert, client.cert_pem),
            (&pki.client_key, client.key_pem),
            (&pki.service_account_key, sa_key),
            (&pki.service_account_pub, sa_pub),
        ];
        for (path, pem) in files {
            std::fs::write(path, pem).map_err(Error::io(path))?;
        }
        Ok(pki)
    }
}

fn kubeconfig(server_url: &str, pki: &Pki) -> String {
    // JSON strings are valid YAML scalars, and quote any path safely.
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string");
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: remora-test\n  \
           cluster:\n    \
             server: {server_url}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: remora-test\n  \
           user:\n    \
             client-certificate: {cert}\n    \
             client-key: {key}\n\
         contexts:\n\
         - name: remora-test\n  \
           context:\n    \
             cluster: remora-test\n    \
             user: remora-test\n\
         current-context: remora-test\n",
        ca = quote(&pki.ca_cert),
        cert = quote(&pki.client_cert),
        key = quote(&pki.client_key),
    )
}

/// A fresh directory `remora-control-plane-<pid>-<n>` under the system temp dir; leftovers
/// from test binaries that were killed (their pid no longer exists) are removed first.
fn state_dir() -> std::io::Result<PathBuf> {
    let tmp = std::env::temp_dir();
    let prefix = "remora-control-plane-";
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let pid = std::process::id();
    for n in 0.. {
        let dir = tmp.join(format!("{prefix}{pid}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("an unbounded range always yields")
}

/// Ports the kernel reports free right now. Listeners are held until all are chosen so
/// the three are distinct.
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Waits until etcd's `/health` says it is healthy (plain HTTP, so a raw request does).
fn wait_for_etcd(etcd: &ManagedProcess, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(status) = etcd.exit_status() {
            last = format!("etcd exited with {status}");
            break;
        }
        match etcd_health(addr) {
            Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok(body) => last = format!("/health answered {body:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "control plane failed to start: etcd is not healthy ({last})\n\
         --- etcd log, last {LOG_TAIL_LINES} lines ({}) ---\n{}",
        etcd.log.display(),
        etcd.log_tail(LOG_TAIL_LINES)
    ))
}

fn etcd_health(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Lowercase alphanumerics and dashes, short enough to leave room for the sequence number.
fn dns_label_prefix(prefix: &str) -> String {
    let mut label: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    label.truncate(50);
    let label = label.trim_matches('-');
    if label.is_empty() {
        "test".to_string()
    } else {
        label.to_string()
    }
}

/// True when the environment variable `env` is `1` or `true`: the calling test
/// should return without testing. Prints a loud `SKIPPED` line naming the test
/// thread and what it `needs`, so a skipped run is never mistaken for a passing one.
pub fn skip_requested_by(env: &str, needs: &str) -> bool {
    let skip = std::env::var(env).is_ok_and(|v| v == "1" || v == "true");
    if skip {
        let thread = std::thread::current();
        // Written to stderr directly: libtest captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {} needs {needs} and {env}=1 is set; nothing was tested",
            thread.name().unwrap_or("this test")
        );
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_prefixes_become_dns_labels() {
        assert_eq!(dns_label_prefix("Inject_Pods"), "inject-pods");
        assert_eq!(dns_label_prefix("--"), "test");
        assert_eq!(dns_label_prefix(&"a".repeat(80)).len(), 50);
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().unwrap();
        assert!(a != b && b != c && a != c);
    }
}
