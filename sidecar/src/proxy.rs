//! The proxy's lifecycle: start, reload, drain and shut down.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use remora_api::config::{AppProbes, Labels, SidecarConfig};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Notify, watch},
};

use crate::{
    Error,
    access_log::AccessLog,
    balance::hash_bytes,
    metrics::{Counter, Registry},
    pod_overrides::PodOverrides,
    snapshot::Snapshot,
    tls::{self, MeshTls, TlsSlot},
};

/// How the proxy is started besides its config.
#[derive(Default, Clone)]
pub struct Options {
    /// Pod labels (from the downward API) that rate-limit selectors match.
    pub pod_labels: Labels,
    /// Watch this file and reload it when its content changes.
    pub config_path: Option<PathBuf>,
    /// How often the config file is checked (default 1 s).
    pub watch_interval: Option<Duration>,
    /// Follow the config through the API server too (in a pod: the
    /// namespace's rendered ConfigMap, with the pod's token).
    pub config_watch: Option<crate::config_watch::WatchTarget>,
    /// The app's probes, answered on the admin port (`/app-health/...`).
    pub app_probes: AppProbes,
    /// Changes the process's log level (`POST /logging` on the control port).
    pub log_level: Option<LogLevel>,
    /// The pod's own settings, laid over every config loaded (start and reloads).
    pub overrides: PodOverrides,
}

/// Sets the log filter of the process (`tracing_subscriber`'s reload handle,
/// wrapped by the binary) and reports the level now in force.
#[derive(Clone)]
pub struct LogLevel(pub Arc<SetLogLevel>);

/// Given `Some(directive)`, applies it; either way returns the filter in force.
pub type SetLogLevel = dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync;

/// State shared by every listener, connection and the admin server.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub access_log: AccessLog,
    pub pod_labels: Labels,
    pub app_probes: AppProbes,
    pub overrides: PodOverrides,
    /// The workload identity, while the config uses mesh TLS.
    pub tls: TlsSlot,
    /// `true` once draining: `/ready` fails and connections close when their
    /// in-flight requests finish (HTTP/1 `Connection: close`, HTTP/2 GOAWAY).
    /// Listeners still accept until `closed`.
    pub drain: watch::Sender<bool>,
    /// `true` once listeners have stopped accepting.
    pub closed: watch::Sender<bool>,
    pub ready: AtomicBool,
    /// `true` while the API server watch of the config is synced: the file
    /// watcher then only notes the file's changes (`config_watch`).
    pub api_synced: AtomicBool,
    pub log_level: Option<LogLevel>,
    /// When a drain started, `/live` fails after this instant (the drain's
    /// grace and timeout), so the kubelet restarts a proxy left drained.
    not_live_after: std::sync::Mutex<Option<Instant>>,
    connections: AtomicUsize,
    idle: Notify,
    reload_applied: Counter,
    reload_rejected: Counter,
    listeners: Mutex<HashMap<String, RunningListener>>,
}

struct RunningListener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Counts a downstream connection for draining; drop when it closes.
pub struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Fails `/ready` and asks open connections to finish; listeners go on
    /// accepting (each new connection serves one HTTP/1 request, or HTTP/2
    /// until listeners close) until [`Shared::stop_accepting`].
    pub fn start_drain(&self) {
        self.ready.store(false, Ordering::Release);
        let runtime = &self.snapshot.load().config.runtime;
        let until = Instant::now() + runtime.drain_grace.as_std() + runtime.drain_timeout.as_std();
        self.not_live_after
            .lock()
            .expect("live lock")
            .get_or_insert(until);
        self.drain.send_replace(true);
    }

    /// Stops every listener from accepting.
    pub fn stop_accepting(&self) {
        self.start_drain();
        self.closed.send_replace(true);
    }

    /// Drains as on SIGTERM without exiting: `/ready` fails at once, listeners
    /// accept for `grace` more, then stop.
    pub fn drain_gracefully(self: &Arc<Self>, grace: Duration) {
        self.start_drain();
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            shared.stop_accepting();
        });
    }

    /// False once a drain has outlasted its grace and timeout.
    pub fn live(&self) -> bool {
        self.not_live_after
            .lock()
            .expect("live lock")
            .is_none_or(|t| Instant::now() < t)
    }

    /// Compiles and swaps in a new config. Nothing changes when it fails.
    pub async fn reload(self: &Arc<Self>, config: SidecarConfig) -> Result<(), Error> {
        let result = self.apply(config).await;
        match &result {
            Ok(()) => {
                self.reload_applied.inc();
                tracing::info!(hash = %self.snapshot.load().config.content_hash(), "config reloaded");
            }
            Err(e) => {
                self.reload_rejected.inc();
                tracing::error!("config reload rejected, keeping the running config: {e}");
            }
        }
        result
    }

    /// Parses a document (as read from the config file) and reloads it.
    pub async fn reload_json(self: &Arc<Self>, bytes: &[u8]) -> Result<(), Error> {
        match SidecarConfig::from_json(bytes) {
            Ok(c) => self.reload(c).await,
            Err(e) => {
                self.reload_rejected.inc();
                tracing::error!("config reload rejected, keeping the running config: {e}");
                Err(e.into())
            }
        }
    }

    async fn apply(self: &Arc<Self>, mut config: SidecarConfig) -> Result<(), Error> {
        self.overrides.apply(&mut config);
        crate::pod_overrides::warn_unenforced(&config, &self.pod_labels);
        config.validate().map_err(|e| Error::Load(e.into()))?;
        let mut running = self.listeners.lock().await;
        let old = self.snapshot.load_full();
        if config.admin != old.config.admin {
            tracing::warn!("admin address changes take effect on restart");
        }
        // Read certificates first: a section naming unreadable files is refused.
        enum TlsChange {
            Keep(Arc<MeshTls>, Box<tls::PreparedTls>),
            Start(Arc<MeshTls>),
            Stop,
        }
        let tls_change = match (tls::needed(&config), self.tls.load_full()) {
            (true, Some(t)) => TlsChange::Keep(t.clone(), Box::new(t.prepare(&config.tls)?)),
            (true, None) => match load_identity(&config, &self.registry)? {
                Some(t) => TlsChange::Start(t),
                None => TlsChange::Stop,
            },
            (false, _) => TlsChange::Stop,
        };
        let snap = Snapshot::compile(
            config,
            Some(&old),
            &self.registry,
            &self.pod_labels,
            &self.tls,
        )?;
        for c in snap.clusters.values() {
            if !old.clusters.get(&c.name).is_some_and(|o| Arc::ptr_eq(o, c)) {
                c.resolve_now().await;
            }
        }
        // Bind listeners that are new or moved before swapping, so a bind
        // failure leaves everything as it was.
        let mut bound = Vec::new();
        for l in &snap.config.listeners {
            if running.get(&l.name).is_some_and(|r| r.addr == l.address) {
                continue;
            }
            let moved_from_here = running.values().any(|r| r.addr == l.address);
            if moved_from_here {
                return Err(Error::Config(format!(
                    "listener {} takes address {} from another listener; rename or restart instead",
                    l.name, l.address
                )));
            }
            let socket = bind(&l.name, l.address).await?;
            bound.push((l.name.clone(), socket));
        }
        match tls_change {
            TlsChange::Keep(t, prepared) => t.commit(*prepared),
            TlsChange::Start(t) => self.tls.store(Some(t)),
            TlsChange::Stop => self.tls.store(None),
        }
        crate::metrics::set_config_info(&self.registry, &document_hash(&snap.config));
        self.snapshot.store(Arc::new(snap));
        let snap = self.snapshot.load_full();
        let keep: Vec<&str> = snap
            .config
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        running.retain(|name, r| {
            let stays = keep.contains(&name.as_str())
                && snap
                    .config
                    .listeners
                    .iter()
                    .any(|l| l.name == *name && l.address == r.addr);
            if !stays {
                tracing::info!(listener = %name, "listener stopped by reload");
                r.stop.send_replace(true);
            }
            stays
        });
        for (name, socket) in bound {
            let addr = socket.local_addr()?;
            running.insert(name.clone(), self.spawn_listener(name, socket, addr));
        }
        Ok(())
    }

    fn spawn_listener(
        self: &Arc<Self>,
        name: String,
        socket: TcpListener,
        addr: SocketAddr,
    ) -> RunningListener {
        let (stop, stop_rx) = watch::channel(false);
        tracing::info!(listener = %name, %addr, "listening");
        tokio::spawn(crate::listener::accept_loop(
            socket,
            name,
            self.clone(),
            stop_rx,
        ));
        RunningListener { addr, stop }
    }
}

/// The hash the document carries (the operator's, unchanged by the pod's
/// overrides), or its content hash when it carries none (a hand-written file).
fn document_hash(config: &SidecarConfig) -> String {
    config.hash.clone().unwrap_or_else(|| config.content_hash())
}

/// The workload identity the config's `tls` section names. Files that are
/// not there yet (the certificate is still being issued or mounted) are no
/// error: the proxy starts without mesh TLS — `permissive` serves and calls
/// in plaintext, `strict` refuses inbound and is not ready — and picks the
/// identity up when the files appear.
fn load_identity(
    config: &SidecarConfig,
    registry: &Registry,
) -> Result<Option<Arc<MeshTls>>, Error> {
    match MeshTls::new(&config.tls, registry) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_missing_material() => {
            tracing::warn!(
                mode = ?config.tls.mode,
                "no workload identity yet ({e}); waiting for it"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the proxy can serve as its config says: `strict` needs the
/// workload identity.
impl Shared {
    pub fn has_needed_identity(&self) -> bool {
        self.snapshot.load().config.tls.mode != remora_api::config::TlsMode::Strict
            || self.tls.load().is_some()
    }
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, Error> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let socket = socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(1024)
        })
        .map_err(|source| Error::Bind {
            listener: name.to_string(),
            addr,
            source,
        })?;
    Ok(socket)
}

pub struct Proxy;

/// A running proxy: its bound addresses, reload and shutdown.
pub struct ProxyHandle {
    pub shared: Arc<Shared>,
    admin: SocketAddr,
    control: SocketAddr,
}

impl Proxy {
    /// Compiles the config, binds every listener and the admin port, and
    /// starts serving. Listeners may use port 0; see [`ProxyHandle::listener_addr`].
    pub async fn start(mut config: SidecarConfig, opts: Options) -> Result<ProxyHandle, Error> {
        opts.overrides.apply(&mut config);
        crate::pod_overrides::warn_unenforced(&config, &opts.pod_labels);
        config.validate().map_err(|e| Error::Load(e.into()))?;
        let registry = Registry::default();
        let access_log = if config.access_log.enabled {
            let app = opts.pod_labels.get("app").cloned().unwrap_or_default();
            AccessLog::start(&config.access_log.path, &registry, app)?
        } else {
            AccessLog::disabled()
        };
        let tls_slot = TlsSlot::default();
        if tls::needed(&config) {
            tls_slot.store(load_identity(&config, &registry)?);
        }
        let snap = Snapshot::compile(config, None, &registry, &opts.pod_labels, &tls_slot)?;
        crate::metrics::set_config_info(&registry, &document_hash(&snap.config));
        for c in snap.clusters.values() {
            c.resolve_now().await;
        }
        let help = "Config reloads by result";
        let shared = Arc::new(Shared {
            reload_applied: registry.counter(
                "config_reload_total",
                help,
                vec![("result", "applied".into())],
            ),
            reload_rejected: registry.counter(
                "config_reload_total",
                help,
                vec![("result", "rejected".into())],
            ),
            snapshot: ArcSwap::from_pointee(snap),
            registry,
            access_log,
            pod_labels: opts.pod_labels.clone(),
            app_probes: opts.app_probes.clone(),
            overrides: opts.overrides.clone(),
            tls: tls_slot,
            drain: watch::channel(false).0,
            closed: watch::channel(false).0,
            ready: AtomicBool::new(false),
            api_synced: AtomicBool::new(false),
            log_level: opts.log_level.clone(),
            not_live_after: std::sync::Mutex::new(None),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            listeners: Mutex::new(HashMap::new()),
        });
        let snap = shared.snapshot.load_full();
        let admin_socket = bind("admin", snap.config.admin.address).await?;
        let admin = admin_socket.local_addr()?;
        let control_socket = bind("admin-control", snap.config.admin.control_address).await?;
        let control = control_socket.local_addr()?;
        {
            let mut running = shared.listeners.lock().await;
            for l in &snap.config.listeners {
                let socket = match bind(&l.name, l.address).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Stop the listeners already started.
                        shared.stop_accepting();
                        return Err(e);
                    }
                };
                let addr = socket.local_addr()?;
                running.insert(
                    l.name.clone(),
                    shared.spawn_listener(l.name.clone(), socket, addr),
                );
            }
        }
        tokio::spawn(crate::admin::serve(
            admin_socket,
            shared.clone(),
            crate::admin::Scope::Public,
        ));
        tokio::spawn(crate::admin::serve(
            control_socket,
            shared.clone(),
            crate::admin::Scope::Control,
        ));
        let every = opts.watch_interval.unwrap_or(Duration::from_secs(1));
        if let Some(path) = opts.config_path.clone() {
            tokio::spawn(watch_file(path, shared.clone(), every));
        }
        if let Some(target) = opts.config_watch.clone() {
            let metrics = crate::config_watch::WatchMetrics::new(&shared.registry);
            tokio::spawn(crate::config_watch::run(target, shared.clone(), metrics));
        }
        tokio::spawn(watch_certificates(shared.clone(), every));
        shared.ready.store(true, Ordering::Release);
        tracing::info!(%admin, %control, hash = %snap.config.content_hash(), "remora-sidecar ready");
        Ok(ProxyHandle {
            shared,
            admin,
            control,
        })
    }
}

impl ProxyHandle {
    /// The bound address of a listener (resolves port 0).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.lock().await.get(name).map(|r| r.addr)
    }

    /// The pod-reachable admin port: health, metrics, app probes.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The loopback control port: drain, config dump, log level.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    pub async fn reload(&self, config: SidecarConfig) -> Result<(), Error> {
        self.shared.reload(config).await
    }

    pub fn metrics_text(&self) -> String {
        self.shared.registry.render()
    }

    /// Stops accepting, lets in-flight requests finish (up to `timeout`),
    /// and returns how many connections were still open at the deadline.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.shutdown_gracefully(Duration::ZERO, timeout).await
    }

    /// What SIGTERM does: `/ready` fails and open connections are asked to
    /// close at once, listeners keep accepting for `grace` (callers whose
    /// endpoint lists still name this pod are served), then stop; in-flight
    /// requests get up to `timeout` more. Returns the connections still open.
    pub async fn shutdown_gracefully(&self, grace: Duration, timeout: Duration) -> usize {
        self.shared.start_drain();
        tokio::time::sleep(grace).await;
        self.shared.stop_accepting();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.open_connections() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.shared.open_connections();
            }
        }
    }
}

/// Polls the config file's content; a changed document is reloaded, an
/// invalid one refused (once per distinct content) while the old one serves.
/// A refusal for a passing reason (a port still taken, certificate files not
/// mounted yet) is retried every tick until it applies or the file changes.
async fn watch_file(path: PathBuf, shared: Arc<Shared>, every: Duration) {
    // Starts unknown: the first read parses the file and finds it equal to
    // the running config (a no-op) unless it changed after startup.
    let mut settled = None;
    let mut retrying = None;
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::proxy::until_true(&mut closed) => return,
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read config: {e}");
                continue;
            }
        };
        let h = hash_bytes(&bytes);
        if settled == Some(h) {
            continue;
        }
        if shared.api_synced.load(Ordering::Acquire) {
            // The API server's copy is newer than any kubelet sync: note
            // the file, so only a later change applies if the watch is lost.
            settled = Some(h);
            retrying = None;
            continue;
        }
        let parsed = SidecarConfig::from_json(&bytes).map(|mut c| {
            shared.overrides.apply(&mut c);
            c
        });
        let config = match parsed {
            Ok(c) if c.content_hash() == shared.snapshot.load().config.content_hash() => {
                settled = Some(h);
                continue;
            }
            Ok(c) => c,
            Err(_) => {
                // Parse and validation errors are the content's own: final.
                let _ = shared.reload_json(&bytes).await;
                settled = Some(h);
                continue;
            }
        };
        let result = if retrying == Some(h) {
            // Counted and logged once already; try again quietly.
            shared.apply(config).await.inspect(|()| {
                shared.reload_applied.inc();
                tracing::info!("config reloaded after a retry");
            })
        } else {
            shared.reload(config).await
        };
        match result {
            Err(e) if e.is_transient() => {
                if retrying != Some(h) {
                    tracing::warn!("will retry the config reload every {every:?}: {e}");
                }
                retrying = Some(h);
            }
            _ => {
                settled = Some(h);
                retrying = None;
            }
        }
    }
}

/// Re-reads the workload certificate files (rotation writes new ones).
async fn watch_certificates(shared: Arc<Shared>, every: Duration) {
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::proxy::until_true(&mut closed) => return,
        }
        match shared.tls.load_full() {
            Some(t) => {
                t.reload_files();
            }
            None => {
                let snap = shared.snapshot.load_full();
                if tls::needed(&snap.config)
                    && let Ok(t) = MeshTls::new(&snap.config.tls, &shared.registry)
                {
                    shared.tls.store(Some(t));
                    tracing::info!("workload identity loaded: mesh TLS on");
                    // Clusters that called in plaintext meanwhile get fresh pools.
                    if let Err(e) = shared.apply((*snap.config).clone()).await {
                        tracing::warn!("could not rebuild clusters for mesh TLS: {e}");
                    }
                }
            }
        }
    }
}

/// Resolves once the flag is `true` (or its sender is gone). Holds no
/// borrow of the channel when it returns, so callers stay `Send`.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
