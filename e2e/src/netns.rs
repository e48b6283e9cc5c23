//! Pods as Linux network namespaces, for end-to-end tests without a cluster.
//!
//! A [`Node`] is one network namespace holding a bridge (the node's pod
//! network, [`POD_CIDR`]); each [`Pod`] is a namespace joined to it by a veth
//! pair, with loopback up and a default route to the bridge. Nothing is
//! created in the root namespace (no links, routes or rules), so the pod
//! network cannot collide with the host's routes nor leak traffic: the node
//! namespace has no route out. Cluster DNS is `/etc/netns/<ns>/hosts` (which
//! `ip netns exec` bind-mounts over `/etc/hosts`); a ClusterIP is a DNAT in the
//! node namespace, as kube-proxy installs it.
//!
//! Names are `remora-e2e-<pid>-<tag>-<pod>`: a run sweeps what runs of dead
//! processes left behind, and [`Node`]'s `Drop` removes its processes,
//! namespaces (with their links) and files, also when a test panics.

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Once, mpsc},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Every namespace, `/etc/netns` entry and work directory we create starts so.
pub const PREFIX: &str = "remora-e2e-";
/// The pod network. It exists only inside a node namespace, so every node can
/// use the same one.
pub const POD_CIDR: &str = "10.251.0.0/24";
/// The node's address on the bridge: the pods' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// ClusterIPs live outside the pod network, so pods send them to the gateway,
/// where the node's DNAT picks a backend.
pub const SERVICE_CIDR: &str = "10.251.128.0/17";

/// Checks what the netns tests need. Returns `false` (after saying so loudly)
/// when `REMORA_SKIP_NETNS=1`; panics when not root or a tool is missing, so
/// the tests never pass by doing nothing.
pub fn preflight(test: &str) -> bool {
    if std::env::var_os("REMORA_SKIP_NETNS").is_some_and(|v| v == "1") {
        eprintln!(
            "\n*** SKIPPED {test}: REMORA_SKIP_NETNS=1 (the network-namespace e2e test did not run) ***\n"
        );
        return false;
    }
    let euid = effective_uid().unwrap_or(u32::MAX);
    assert!(
        euid == 0,
        "{test} needs root (network namespaces, veths, iptables); run it as root, \
         or set REMORA_SKIP_NETNS=1 to skip it (loudly)"
    );
    for tool in [
        "ip",
        "setpriv",
        "sysctl",
        "iptables",
        "iptables-restore",
        "curl",
    ] {
        assert!(
            which(tool).is_some(),
            "{test} needs `{tool}` on PATH: run scripts/e2e-deps.sh (installs them from Debian's \
             packages), or set REMORA_SKIP_NETNS=1 to skip it (loudly)"
        );
    }
    true
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Finds `tool` on PATH (plus the sbin directories a non-login root shell may lack).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

static SWEEP: Once = Once::new();

/// Removes namespaces, `/etc/netns` entries and work directories of earlier
/// runs whose process is gone (or that carry our pid: a reused pid, since this
/// runs before we create anything). Runs once per process.
pub fn sweep_stale() {
    SWEEP.call_once(|| {
        let me = std::process::id();
        let stale = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                return false;
            };
            match rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
                Some(pid) => pid == me || !Path::new(&format!("/proc/{pid}")).exists(),
                None => false,
            }
        };
        for ns in netns_list() {
            if stale(&ns) {
                eprintln!("netns: removing stale namespace {ns}");
                delete_netns(&ns);
            }
        }
        for dir in [Path::new("/etc/netns").to_path_buf(), std::env::temp_dir()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(&name) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

fn netns_list() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Kills whatever still runs in `ns`, then deletes it (and with it its links).
fn delete_netns(ns: &str) {
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// A pod: a network namespace on the node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    /// The pod's short name (`reviews-v1`).
    pub name: String,
    /// Its network namespace (`remora-e2e-<pid>-<tag>-reviews-v1`).
    pub netns: String,
    pub ip: Ipv4Addr,
}

struct Process {
    label: String,
    child: Child,
    log: PathBuf,
}

/// One node: the bridge namespace, its pods, the processes running in them,
/// and a work directory. Everything goes away on drop.
pub struct Node {
    run: String,
    netns: String,
    dir: PathBuf,
    pods: Vec<Pod>,
    processes: Vec<Process>,
    masquerade: bool,
}

impl Node {
    /// A node named `remora-e2e-<pid>-<tag>` with an empty pod network.
    pub fn new(tag: &str) -> Result<Self> {
        sweep_stale();
        let run = format!("{PREFIX}{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&run);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // The sidecar and app users read their files from here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let node = Self {
            netns: format!("{run}-node"),
            run,
            dir,
            pods: Vec::new(),
            processes: Vec::new(),
            masquerade: false,
        };
        ip(&["netns", "add", &node.netns])?;
        let ns = node.netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        // Forwarding only matters for ClusterIP traffic coming back out of br0:
        // the node has no other route.
        node.exec_root(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(node)
    }

    /// The work directory (logs, configs, certificates), readable by every user.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Adds a pod at the next free address (`10.251.0.10`, `.11`, ...).
    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        let index = self.pods.len();
        let pod = Pod {
            name: name.to_owned(),
            netns: format!("{}-{name}", self.run),
            ip: Ipv4Addr::new(
                10,
                251,
                0,
                10 + u8::try_from(index).context("too many pods")?,
            ),
        };
        let veth = format!("veth{index}");
        ip(&["netns", "add", &pod.netns])?;
        // Both ends are created in their namespaces: nothing appears in the root one.
        ip(&[
            "link",
            "add",
            &veth,
            "netns",
            &self.netns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.netns,
        ])?;
        ip(&[
            "-n",
            &self.netns,
            "link",
            "set",
            &veth,
            "master",
            "br0",
            "up",
        ])?;
        interfaces_up(&pod, 24)?;
        let ns = pod.netns.as_str();
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ])?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Adds a pod the host can reach, off the node's bridge: its namespace
    /// is joined to the root namespace by a veth pair on a /30 of its own
    /// (`10.253.<n>.<4i>`), so a kube-apiserver running on this machine can
    /// proxy to it (the API server refuses loopback pod IPs). The only things
    /// in the root namespace are the host end of the pair and its connected
    /// route; both go when the pod's namespace is deleted. Returns the pod
    /// and the host end's address.
    pub fn add_host_pod(&mut self, name: &str) -> Result<(Pod, Ipv4Addr)> {
        let index = u8::try_from(self.pods.len()).context("too many pods")?;
        if index >= 63 {
            bail!("at most 63 pods on a node with host pods");
        }
        let pid = std::process::id();
        // One /24 per test process, one /30 per pod.
        let net = u8::try_from(pid % 250).expect("below 250");
        let host_ip = Ipv4Addr::new(10, 253, net, index * 4 + 1);
        let pod = Pod {
            name: name.to_owned(),
            netns: format!("{}-{name}", self.run),
            ip: Ipv4Addr::new(10, 253, net, index * 4 + 2),
        };
        let host_end = format!("rmh{}-{index}", pid % 100_000);
        ip(&["netns", "add", &pod.netns])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &pod.netns,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_end])?;
        ip(&["link", "set", &host_end, "up"])?;
        interfaces_up(&pod, 30)?;
        self.pods.push(pod.clone());
        Ok((pod, host_ip))
    }

    /// In `pod`, redirects inbound TCP to `port` into the sidecar's inbound
    /// listener at `to`: the one capture rule remora-init would add for the
    /// app's port, for tests that call the app from the host.
    pub fn redirect_inbound(&self, pod: &Pod, port: u16, to: u16) -> Result<()> {
        let (port, to) = (port.to_string(), to.to_string());
        self.exec_in_pod(
            pod,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "REDIRECT",
                "--to-ports",
                &to,
            ],
        )?;
        Ok(())
    }

    /// Writes every pod's `/etc/hosts`: localhost plus `entries` (cluster DNS).
    pub fn set_hosts(&self, entries: &[(Ipv4Addr, String)]) -> Result<()> {
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for (ip, name) in entries {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        for pod in &self.pods {
            let dir = Path::new("/etc/netns").join(&pod.netns);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("hosts"), &text)?;
            fs::set_permissions(dir.join("hosts"), fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// A ClusterIP as kube-proxy makes it: connections to `cluster_ip:port`
    /// are DNATed at the node to one of `backends` (uniformly), and
    /// masqueraded so replies come back through the node.
    pub fn add_cluster_ip(
        &mut self,
        cluster_ip: Ipv4Addr,
        port: u16,
        backends: &[(Ipv4Addr, u16)],
    ) -> Result<()> {
        if backends.is_empty() {
            bail!("ClusterIP {cluster_ip}:{port} needs at least one backend");
        }
        let ns = self.netns.clone();
        for (i, (ip, target)) in backends.iter().enumerate() {
            let left = backends.len() - i;
            let dest = format!("{cluster_ip}/32");
            let dport = port.to_string();
            let to = format!("{ip}:{target}");
            let probability = format!("{:.5}", 1.0 / left as f64);
            let mut args = vec![
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &dest,
                "-p",
                "tcp",
                "--dport",
                &dport,
            ];
            if left > 1 {
                args.extend(["-m", "statistic", "--mode", "random", "--probability"]);
                args.push(&probability);
            }
            args.extend(["-j", "DNAT", "--to-destination", &to]);
            self.exec_root(&ns, &args)?;
        }
        if !self.masquerade {
            self.exec_root(
                &ns,
                &[
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT",
                    "-j",
                    "MASQUERADE",
                ],
            )?;
            self.masquerade = true;
        }
        Ok(())
    }

    /// `argv` in `pod` as `uid` (root when `None`): `ip netns exec <ns>
    /// [setpriv --reuid --regid --clear-groups] argv...`. The process sees the
    /// pod's network and `/etc/hosts`; a non-root uid has no capabilities.
    pub fn command<S: AsRef<std::ffi::OsStr>>(
        &self,
        pod: &Pod,
        uid: Option<u32>,
        argv: &[S],
    ) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns]);
        if let Some(uid) = uid {
            c.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "--"]);
        }
        c.args(argv);
        c
    }

    /// Starts a long-running process; its stdout and stderr go to
    /// `<dir>/<pod>-<label>.log`. It is killed when the node drops.
    pub fn spawn(&mut self, pod: &Pod, label: &str, mut cmd: Command) -> Result<u32> {
        let log = self.dir.join(format!("{}-{label}.log", pod.name));
        let file = fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label} in {}", pod.name))?;
        let pid = child.id();
        self.processes.push(Process {
            label: format!("{}/{label}", pod.name),
            child,
            log,
        });
        Ok(pid)
    }

    /// Fails, with the log's tail, if a process started with [`Node::spawn`] has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for p in &mut self.processes {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); its log:\n{}",
                    p.label,
                    tail(&p.log, 40)
                );
            }
        }
        Ok(())
    }

    /// Runs `cmd` to completion within `timeout` (killed after it).
    pub fn run(&self, mut cmd: Command, timeout: Duration) -> Result<Output> {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => Ok(out?),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                bail!("{what} did not finish within {timeout:?}; killed it")
            }
        }
    }

    /// Runs `argv` as root in namespace `ns`; fails with its stderr unless it succeeds.
    fn exec_root<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, argv: &[S]) -> Result<Output> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(argv);
        let out = self.run(c, Duration::from_secs(30))?;
        if !out.status.success() {
            let shown: Vec<_> = argv
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect();
            bail!(
                "`{}` in {ns} failed: {}",
                shown.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Runs `argv` as root in `pod`, like an init container with NET_ADMIN.
    pub fn exec_in_pod<S: AsRef<std::ffi::OsStr>>(&self, pod: &Pod, argv: &[S]) -> Result<Output> {
        self.exec_root(&pod.netns, argv)
    }

    /// Prints the tail of every process log (on failure, to see why).
    pub fn print_logs(&self) {
        for p in &self.processes {
            eprintln!("----- {} ({}) -----", p.label, p.log.display());
            eprintln!("{}", tail(&p.log, 30));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for p in &mut self.processes {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for pod in self.pods.iter().rev() {
            delete_netns(&pod.netns);
        }
        delete_netns(&self.netns);
        if std::env::var_os("REMORA_E2E_KEEP").is_some() {
            eprintln!("netns: kept {} (REMORA_E2E_KEEP)", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Loopback and `eth0` up in the pod, `eth0` at the pod's address.
fn interfaces_up(pod: &Pod, prefix_len: u8) -> Result<()> {
    let ns = pod.netns.as_str();
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    let addr = format!("{}/{prefix_len}", pod.ip);
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `contents` to `path` with `mode`, owned by `uid` (a mounted Secret
/// readable only by the sidecar).
pub fn write_owned(path: &Path, contents: &[u8], mode: u32, uid: u32) -> Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(contents)?;
    drop(f);
    std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}
