//! The proxy's lifecycle: start, reload, drain and shut down.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
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
    /// The app's probes, answered on the admin port (`/app-health/...`).
    pub app_probes: AppProbes,
    /// The pod's own settings, laid over every config loaded (start and reloads).
    pub overrides: PodOverrides,
}

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
    /// `true` once draining: listeners stop accepting, connections close
    /// when their in-flight requests finish.
    pub drain: watch::Sender<bool>,
    pub ready: AtomicBool,
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

    /// Stops accepting everywhere and asks connections to finish.
    pub fn start_drain(&self) {
        self.ready.store(false, Ordering::Release);
        self.drain.send_replace(true);
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
        if config.admin.address != old.config.admin.address {
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
            (true, None) => TlsChange::Start(MeshTls::new(&config.tls, &self.registry)?),
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
            tls_slot.store(Some(MeshTls::new(&config.tls, &registry)?));
        }
        let snap = Snapshot::compile(config, None, &registry, &opts.pod_labels, &tls_slot)?;
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
            ready: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            listeners: Mutex::new(HashMap::new()),
        });
        let snap = shared.snapshot.load_full();
        let admin_socket = bind("admin", snap.config.admin.address).await?;
        let admin = admin_socket.local_addr()?;
        {
            let mut running = shared.listeners.lock().await;
            for l in &snap.config.listeners {
                let socket = match bind(&l.name, l.address).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Stop the listeners already started.
                        shared.start_drain();
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
        tokio::spawn(crate::admin::serve(admin_socket, shared.clone()));
        let every = opts.watch_interval.unwrap_or(Duration::from_secs(1));
        if let Some(path) = opts.config_path.clone() {
            tokio::spawn(watch_file(path, shared.clone(), every));
        }
        tokio::spawn(watch_certificates(shared.clone(), every));
        shared.ready.store(true, Ordering::Release);
        tracing::info!(%admin, hash = %snap.config.content_hash(), "remora-sidecar ready");
        Ok(ProxyHandle { shared, admin })
    }
}

impl ProxyHandle {
    /// The bound address of a listener (resolves port 0).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.lock().await.get(name).map(|r| r.addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
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
        self.shared.start_drain();
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
async fn watch_file(path: PathBuf, shared: Arc<Shared>, every: Duration) {
    // Starts unknown: the first read parses the file and finds it equal to
    // the running config (a no-op) unless it changed after startup.
    let mut last = None;
    let mut drain = shared.drain.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::proxy::until_true(&mut drain) => return,
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read config: {e}");
                continue;
            }
        };
        let h = hash_bytes(&bytes);
        if last == Some(h) {
            continue;
        }
        last = Some(h);
        match SidecarConfig::from_json(&bytes).map(|mut c| {
            shared.overrides.apply(&mut c);
            c
        }) {
            Ok(c) if c.content_hash() == shared.snapshot.load().config.content_hash() => {}
            Ok(c) => {
                let _ = shared.reload(c).await;
            }
            Err(_) => {
                let _ = shared.reload_json(&bytes).await;
            }
        }
    }
}

/// Re-reads the workload certificate files (rotation writes new ones).
async fn watch_certificates(shared: Arc<Shared>, every: Duration) {
    let mut drain = shared.drain.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::proxy::until_true(&mut drain) => return,
        }
        if let Some(t) = shared.tls.load_full() {
            t.reload_files();
        }
    }
}

/// Resolves once the flag is `true` (or its sender is gone). Holds no
/// borrow of the channel when it returns, so callers stay `Send`.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
