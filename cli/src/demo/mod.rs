//! `remoractl demo`: the mesh working on this machine, with no cluster.
//!
//! The demo renders the sidecar config from `examples/` with the operator's
//! own `render`, issues each pod's certificate with the mesh CA code, starts
//! a real sidecar process per pod and the sample apps behind them on
//! loopback addresses ([`topology`]), drives fixed-rate traffic from the
//! client pod ([`traffic`]) while reading the sidecars' `/metrics`
//! ([`scrape`]), shows it live ([`view`]) and ends with a summary in words
//! or JSON ([`report`]). Every child process and file is gone when it
//! returns, also after Ctrl-C ([`processes`]).

pub mod children;
mod greeter;
mod processes;
mod report;
pub(crate) mod scrape;
mod summary;
mod topology;
mod traffic;
mod view;

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use remora_operator::ca::MeshCa;
use tokio::sync::watch;

use crate::dashboard::{Scrape, ScrapeSender, Workload};
use processes::Processes;
use report::{Cleanup, PlaintextProbe, Report};
use topology::{AppKind, Layout, Plan, PodPlan};

#[derive(Args)]
pub struct DemoArgs {
    /// How long to send traffic (`20s`, `1m`).
    #[arg(long, default_value = "20s")]
    duration: remora_api::Duration,
    /// Calls per second, all routes together (75 % reviews, 15 % ratings,
    /// 5 % details, 5 % greeter).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    rate: u32,
    /// `text`: live view on the terminal and a summary in words; `json`:
    /// the summary as one JSON document on stdout, for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Loopback address of the first pod; the others take the next ones.
    #[arg(long, default_value = "127.0.0.10")]
    first_address: IpAddr,
    /// Added to every port the demo binds (when another program holds them
    /// on every address).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Run this `remora-sidecar` binary for each sidecar instead of
    /// remoractl's built-in copy of the proxy.
    #[arg(long)]
    sidecar_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The demo's temporary directories: `<tmp>/remora-demo-XXXXXX`, holding
/// the pid of the remoractl that owns it.
const WORK_DIR_PREFIX: &str = "remora-demo-";
const OWNER_FILE: &str = "owner.pid";

/// How long the sidecars and apps may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    // Everything that starts a child runs on this (the main) thread, inside
    // block_on: see `Processes::spawn`.
    runtime()?.block_on(demo(args, None))
}

/// The demo with every scrape of its sidecars also sent to `tap()`'s
/// channel (`remoractl dashboard --demo`); `tap` runs first, on the demo's
/// runtime.
pub fn run_with<F, Fut>(args: DemoArgs, tap: F) -> Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ScrapeSender>>,
{
    runtime()?.block_on(async move {
        let tx = tap().await?;
        demo(args, Some(tx)).await
    })
}

/// Turns true on Ctrl-C or SIGTERM.
fn interrupt_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

struct Say {
    /// Progress lines on stderr (not a terminal, or JSON mode).
    plain: bool,
}

impl Say {
    fn line(&self, msg: &str) {
        let _ = writeln!(std::io::stderr(), "{msg}");
    }
    fn step(&self, msg: &str) {
        if self.plain {
            self.line(&format!("demo: {msg}"));
        } else {
            self.line(&format!("· {msg}"));
        }
    }
}

async fn demo(args: DemoArgs, tap: Option<ScrapeSender>) -> Result<ExitCode> {
    let interrupted = interrupt_signal()?;
    let live = args.output == Output::Text && std::io::stderr().is_terminal();
    let say = Say { plain: !live };
    sweep_abandoned_work_dirs(&std::env::temp_dir());
    let layout = Layout {
        first_address: topology::check_first_address(args.first_address)?,
        port_offset: args.port_offset,
    };

    // The mesh CA, as the operator creates it on first start.
    let ca = MeshCa::generate(remora_api::config::DEFAULT_TRUST_DOMAIN)?;
    let plan = Plan::new(layout, ca.cert_pem())?;
    check_addresses_free(&plan)?;

    let work = tempfile::Builder::new().prefix(WORK_DIR_PREFIX).tempdir()?;
    let work_dir = work.path().to_owned();
    std::fs::write(work_dir.join(OWNER_FILE), std::process::id().to_string())?;
    let mut procs = Processes::default();
    let exe = std::env::current_exe().context("finding remoractl's own executable")?;

    say.step(&format!(
        "rendered bookinfo's sidecar config from examples/ ({} route tables, {} rate limits, strict mTLS, {})",
        plan.rendered.routes.len(),
        plan.rendered.rate_limits.len(),
        report::short_hash(plan.rendered.hash.as_deref().unwrap_or_default())
    ));
    start_pods(
        &plan,
        &ca,
        &work_dir,
        &exe,
        args.sidecar_bin.as_deref(),
        &mut procs,
    )?;
    say.step(&format!(
        "started {} sidecars and {} apps on {} (work dir {})",
        plan.pods.len(),
        plan.pods.iter().filter(|p| p.app.is_some()).count(),
        address_range(&plan),
        work_dir.display()
    ));
    let ready = wait_ready(&plan, &mut procs, interrupted.clone()).await;
    if let Err(e) = ready {
        procs.stop(STOP_GRACE);
        return Err(e);
    }
    let probe = plaintext_probe(&plan).await;
    if let Err(e) = traffic::warm_up(plan.client().outbound).await {
        procs.stop(STOP_GRACE);
        return Err(e.context("the mesh is up but does not answer"));
    }

    // Traffic, with the live view (or a line now and then) while it runs.
    let started = Instant::now();
    let total = args.duration.as_std();
    say.step(&format!(
        "sending {} calls/s for {:.0} s through {}'s sidecar",
        args.rate,
        total.as_secs_f64(),
        plan.client().name
    ));
    let stats = traffic::new_stats();
    let driver = tokio::spawn(traffic::drive(
        plan.client().outbound,
        args.rate,
        total,
        stats.clone(),
        interrupted.clone(),
    ));
    let mut view = view::Live::default();
    let mut metrics = BTreeMap::new();
    let mut last_line = Instant::now();
    let mut child_failure = None;
    while !driver.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = procs.check_running() {
            child_failure = Some(e);
            break;
        }
        scrape_all(&plan, &mut metrics).await;
        if let Some(tx) = &tap {
            // A slow page must not slow the demo: a full channel drops one.
            let _ = tx.try_send(dashboard_scrape(&plan, &metrics));
        }
        let elapsed = started.elapsed().as_secs_f64().min(total.as_secs_f64());
        let snapshot = build_report(
            &plan,
            &stats,
            &metrics,
            elapsed,
            &args,
            *interrupted.borrow(),
            probe.clone(),
            Cleanup::default(),
        );
        if live {
            view.draw(&view::frame(
                &snapshot,
                elapsed,
                total.as_secs_f64(),
                &address_range(&plan),
            ));
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let calls: u64 = snapshot.routes.iter().map(|r| r.requests).sum();
            say.step(&format!(
                "{elapsed:.0} s: {} calls",
                report::thousands(calls)
            ));
        }
    }
    if child_failure.is_none() {
        driver.await.context("the traffic task")??;
    } else {
        driver.abort();
    }
    let seconds = started.elapsed().as_secs_f64().min(total.as_secs_f64());
    // The last word from every sidecar, now that all answers are in.
    scrape_all(&plan, &mut metrics).await;
    view.clear();

    let pids = procs.pids();
    let stopped = pids.len();
    procs.stop(STOP_GRACE);
    let removed = work.close().is_ok() && !work_dir.exists();
    if let Some(e) = child_failure {
        return Err(e.context("a demo process stopped while traffic ran"));
    }
    let was_interrupted = *interrupted.borrow();
    let report = build_report(
        &plan,
        &stats,
        &metrics,
        seconds,
        &args,
        was_interrupted,
        probe,
        Cleanup {
            work_dir: work_dir.display().to_string(),
            work_dir_removed: removed,
            pids,
            processes_stopped: stopped,
        },
    );
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", summary::summary(&report)),
    }
    Ok(if was_interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes the work directories of demos that were killed outright (`kill
/// -9` gives no chance to clean up; their children died with them through
/// the parent-death signal). A directory whose owner still runs, or that has
/// no owner file yet (a demo starting right now), is left alone.
fn sweep_abandoned_work_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_string_lossy()
            .starts_with(WORK_DIR_PREFIX);
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("remoractl"))
        });
        if is_ours && !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    plan: &Plan,
    stats: &traffic::Stats,
    metrics: &BTreeMap<String, Vec<scrape::Sample>>,
    seconds: f64,
    args: &DemoArgs,
    interrupted: bool,
    probe: Option<PlaintextProbe>,
    cleanup: Cleanup,
) -> Report {
    let stats: Vec<traffic::RouteStats> = stats
        .iter()
        .map(|s| s.lock().expect("stats lock").clone())
        .collect();
    report::build(report::Inputs {
        plan,
        stats: &stats,
        metrics,
        duration_seconds: seconds,
        rate: args.rate,
        interrupted,
        plaintext_probe: probe,
        cleanup,
    })
}

fn address_range(plan: &Plan) -> String {
    let first = plan
        .pods
        .first()
        .map(|p| p.ip.to_string())
        .unwrap_or_default();
    let last = plan
        .pods
        .last()
        .map(|p| p.ip.octets()[3])
        .unwrap_or_default();
    format!("{first}–{last}")
}

/// Every address the demo will bind, free now; otherwise what holds it
/// and how to get past it.
fn check_addresses_free(plan: &Plan) -> Result<()> {
    for pod in &plan.pods {
        for (addr, what) in pod.bound_addresses() {
            let Err(e) = TcpListener::bind(addr) else {
                continue;
            };
            let fix = match e.kind() {
                std::io::ErrorKind::AddrInUse if port_taken_everywhere(addr.port()) => format!(
                    "port {} is taken on every address (a program listens on 0.0.0.0:{}); \
                     stop it, or move the demo's ports with `--port-offset 1000`",
                    addr.port(),
                    addr.port()
                ),
                std::io::ErrorKind::AddrInUse => format!(
                    "another `remoractl demo` may be running: stop it, or run this one on other \
                     addresses with `--first-address {}`",
                    next_block(plan.layout.first_address)
                ),
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "{} is not an address of this machine. Linux answers on all of 127.0.0.0/8; \
                     elsewhere add the loopback aliases first (macOS: `sudo ifconfig lo0 alias {} up` \
                     for each pod address)",
                    addr.ip(),
                    addr.ip()
                ),
                _ => {
                    "free it, or choose other addresses with --first-address / --port-offset".into()
                }
            };
            bail!("cannot listen on {addr} ({what}): {e}. Fix: {fix}");
        }
    }
    Ok(())
}

/// True when the port is also taken on a loopback address the demo never uses.
fn port_taken_everywhere(port: u16) -> bool {
    let probe = SocketAddr::from((Ipv4Addr::new(127, 254, 254, 254), port));
    matches!(TcpListener::bind(probe), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

fn next_block(first: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = first.octets();
    Ipv4Addr::new(a, b, c.wrapping_add(1), d)
}

/// Writes each pod's files and starts its sidecar, then its app; the
/// client's sidecar first.
fn start_pods(
    plan: &Plan,
    ca: &MeshCa,
    work: &Path,
    exe: &Path,
    sidecar_bin: Option<&Path>,
    procs: &mut Processes,
) -> Result<()> {
    std::fs::write(work.join("ca.crt"), ca.cert_pem())?;
    let mut pods: Vec<&PodPlan> = plan.pods.iter().collect();
    pods.sort_by_key(|p| p.app.is_some());
    for pod in pods {
        let dir = work.join(&pod.name);
        let identity = dir.join("identity");
        std::fs::create_dir_all(&identity)?;
        let leaf = ca
            .issue(&plan.leaf_request(pod))
            .with_context(|| format!("issuing the certificate of pod {}", pod.name))?;
        std::fs::write(identity.join("tls.crt"), &leaf.cert_pem)?;
        write_private(&identity.join("tls.key"), leaf.key_pem.as_bytes())?;
        let config = plan.sidecar_config(pod, &identity, &dir.join("access.log"))?;
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.to_pretty_json())?;
        let labels = dir.join("labels");
        std::fs::write(&labels, pod.labels_file())?;

        let mut argv: Vec<String> = match sidecar_bin {
            Some(bin) => vec![bin.display().to_string()],
            None => vec![exe.display().to_string(), "demo-sidecar".into()],
        };
        argv.extend([
            "run".into(),
            "--config".into(),
            config_path.display().to_string(),
            "--pod-labels".into(),
            labels.display().to_string(),
        ]);
        procs.spawn(
            &format!("{} sidecar", pod.name),
            &argv,
            &dir.join("sidecar.log"),
        )?;
        if let Some(app) = &pod.app {
            let kind = match app.kind {
                AppKind::Echo => "echo",
                AppKind::Greeter => "greeter",
            };
            let mut argv = vec![exe.display().to_string(), "demo-app".into(), kind.into()];
            argv.extend(app.args.iter().cloned());
            procs.spawn(&format!("{} app", pod.name), &argv, &dir.join("app.log"))?;
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// Every sidecar's `/ready` is 200 and every app accepts connections.
async fn wait_ready(
    plan: &Plan,
    procs: &mut Processes,
    interrupted: watch::Receiver<bool>,
) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        procs.check_running()?;
        if *interrupted.borrow() {
            bail!("interrupted while the demo was starting");
        }
        let mut waiting = Vec::new();
        for pod in &plan.pods {
            if !scrape::ready(pod.admin).await {
                waiting.push(format!("{} sidecar ({})", pod.name, pod.admin));
            }
            if let Some(app) = &pod.app
                && tokio::net::TcpStream::connect(app.address).await.is_err()
            {
                waiting.push(format!("{} app ({})", pod.name, app.address));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "not ready after {} s: {}",
                START_TIMEOUT.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last scrape of every pod's sidecar, as the dashboard's workloads.
fn dashboard_scrape(plan: &Plan, metrics: &BTreeMap<String, Vec<scrape::Sample>>) -> Scrape {
    let workloads = plan
        .pods
        .iter()
        .filter_map(|p| {
            Some(Workload {
                name: p.name.clone(),
                service: p
                    .labels
                    .get("app")
                    .cloned()
                    .unwrap_or_else(|| p.name.clone()),
                version: p.labels.get("version").cloned(),
                identity: Some(p.spiffe_id(&plan.trust_domain, &plan.namespace)),
                samples: metrics.get(&p.name)?.clone(),
            })
        })
        .collect();
    Scrape {
        at: Instant::now(),
        workloads,
        errors: Vec::new(),
    }
}

async fn scrape_all(plan: &Plan, into: &mut BTreeMap<String, Vec<scrape::Sample>>) {
    for pod in &plan.pods {
        // A failed scrape keeps the last one: the view must not flicker to zero.
        if let Ok(m) = scrape::metrics(pod.admin).await {
            into.insert(pod.name.clone(), m);
        }
    }
}

/// A plaintext HTTP request straight to the first canary pod's inbound
/// listener, bypassing the caller's sidecar: strict mTLS must refuse it.
async fn plaintext_probe(plan: &Plan) -> Option<PlaintextProbe> {
    let pod = plan.pods.iter().find(|p| p.inbound.is_some())?;
    let addr = pod.inbound?;
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /reviews/0 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")?;
        let mut buf = Vec::new();
        let _ = s.take(64).read_to_end(&mut buf);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .ok()?;
    let (refused, answer) = match answer {
        Ok(text) if text.starts_with("HTTP/") => (
            false,
            format!("it answered {}", text.lines().next().unwrap_or_default()),
        ),
        Ok(text) if text.is_empty() => (true, "the connection was closed without an answer".into()),
        Ok(_) => (true, "no HTTP answer came back".into()),
        Err(e) => (true, format!("the connection failed ({e})")),
    };
    Some(PlaintextProbe {
        pod: pod.name.clone(),
        address: addr.to_string(),
        refused,
        answer,
    })
}
