//! Mesh mTLS with rustls.
//!
//! - The workload certificate, its key and the trust bundle come from files
//!   (the mounted certificate Secret) or the config's `trustBundle`. They are
//!   re-read when their bytes change: new handshakes use the new certificate,
//!   open connections carry on. A bad or half-written set is refused and the
//!   old one keeps serving.
//! - Peers are identified by the SPIFFE URI SAN of their certificate and must
//!   chain to the trust bundle. Server names are not checked (sidecars dial pod
//!   IPs); a cluster may pin the identity it expects instead.
//! - Serials on the config's revocation list are refused at handshake, and
//!   connections already open with such a peer are cut when the list changes.
//! - ALPN carries the inner protocol: `remora-h2`, `remora-http/1.1` or
//!   `remora-tcp`. Mesh-only names: in `permissive` mode a ClientHello that
//!   offers none of them is someone else's TLS and passes through untouched.
//! - Session resumption is off, so every connection's peer is verified
//!   against the revocation list of the moment.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use atomic_waker::AtomicWaker;
use remora_api::config;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert, Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{
        ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::metrics::{Counter, Gauge, Registry};

/// How long a peer may take to finish a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The inner protocol a mesh TLS connection carries (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http2,
    Http1,
    Opaque,
}

impl Alpn {
    pub const ALL: [Alpn; 3] = [Alpn::Http2, Alpn::Http1, Alpn::Opaque];

    /// Mesh-only names, so a sidecar can tell a peer sidecar's ClientHello
    /// from other TLS (an app's own, the kube-apiserver's, a scraper's).
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Http2 => b"remora-h2",
            Alpn::Http1 => b"remora-http/1.1",
            Alpn::Opaque => b"remora-tcp",
        }
    }

    pub fn from_id(id: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("tls.{field}: {path} holds no PEM {what}")]
    Pem {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("tls.certFile: {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("tls.keyFile: {key} does not belong to the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("tls.trustBundle: {0}")]
    Trust(String),
}

impl TlsError {
    /// The certificate files are not there yet, or are half-written: the
    /// identity is still being issued or mounted.
    pub fn is_missing_material(&self) -> bool {
        match self {
            TlsError::Read { source, .. } => source.kind() == io::ErrorKind::NotFound,
            TlsError::Pem { .. } => true,
            _ => false,
        }
    }
}

/// Who is on the other end of a verified connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID (first `spiffe://` URI SAN).
    pub identity: Arc<str>,
    /// Lower-case hex, as on the revocation list.
    pub serial: String,
}

/// Reads identity and serial from a DER certificate.
fn peer_of(der: &[u8]) -> Result<Peer, String> {
    let facts = remora_ca::certificate_facts_der(der).map_err(|e| e.to_string())?;
    let identity = facts
        .uris
        .iter()
        .find(|u| u.starts_with("spiffe://"))
        .ok_or("the certificate has no SPIFFE URI SAN")?;
    Ok(Peer {
        identity: identity.as_str().into(),
        serial: facts.serial,
    })
}

/// One consistent set of certificate, key and trust bundle.
struct Material {
    key: Arc<CertifiedKey>,
    own: Peer,
    not_after: SystemTime,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// Hash of every input, to notice changes cheaply.
    fingerprint: u64,
}

/// The files and values a [`Material`] is read from.
#[derive(Clone, Debug, PartialEq)]
struct Sources {
    cert_file: String,
    key_file: String,
    ca_file: Option<String>,
    trust_bundle: String,
}

impl Sources {
    fn of(tls: &config::Tls) -> Self {
        Self {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            ca_file: tls.ca_file.clone(),
            trust_bundle: tls.trust_bundle.clone(),
        }
    }

    /// The certificate chain, key and trust bundle bytes.
    fn read(&self) -> Result<[Vec<u8>; 3], TlsError> {
        let read = |field, path: &str| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                field,
                path: path.to_string(),
                source,
            })
        };
        let cert = read("certFile", &self.cert_file)?;
        let key = read("keyFile", &self.key_file)?;
        let ca = match &self.ca_file {
            Some(p) => read("caFile", p)?,
            None => self.trust_bundle.as_bytes().to_vec(),
        };
        Ok([cert, key, ca])
    }

    fn fingerprint(cert: &[u8], key: &[u8], ca: &[u8]) -> u64 {
        let mut all = Vec::with_capacity(cert.len() + key.len() + ca.len() + 2);
        all.extend_from_slice(cert);
        all.push(0);
        all.extend_from_slice(key);
        all.push(0);
        all.extend_from_slice(ca);
        crate::balance::hash_bytes(&all)
    }

    fn load(&self, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
        let [cert, key, ca] = self.read()?;
        let fingerprint = Self::fingerprint(&cert, &key, &ca);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate {
                path: self.cert_file.clone(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem {
                field: "certFile",
                path: self.cert_file.clone(),
                what: "certificate",
            });
        };
        let own = peer_of(leaf).map_err(|reason| TlsError::Certificate {
            path: self.cert_file.clone(),
            reason,
        })?;
        let not_after = remora_ca::certificate_facts_der(leaf)
            .map(|f| f.not_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let private = PrivateKeyDer::from_pem_slice(&key).map_err(|_| TlsError::Pem {
            field: "keyFile",
            path: self.key_file.clone(),
            what: "private key",
        })?;
        let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
            TlsError::KeyMismatch {
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&ca).filter_map(Result::ok));
        if added == 0 {
            return Err(TlsError::Trust(match &self.ca_file {
                Some(p) => format!("{p} holds no usable CA certificate"),
                None => "holds no usable CA certificate".into(),
            }));
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Trust(e.to_string()))?;
        Ok(Material {
            key: Arc::new(certified),
            own,
            not_after,
            roots,
            client_verifier,
            fingerprint,
        })
    }
}

/// What the rustls callbacks read at handshake time.
struct Live {
    material: ArcSwap<Material>,
    revoked: ArcSwap<HashSet<String>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.material.load().own.identity)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Identity and revocation checks shared by both directions.
    fn check_peer(&self, der: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let peer = peer_of(der).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(io::Error::other(e)),
            )))
        })?;
        if self.revoked.load().contains(&peer.serial) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }
}

impl ResolvesServerCert for Live {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.material.load().key.clone())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.material.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Live {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let m = self.material.load();
        m.client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check_peer(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Live {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let m = self.material.load();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &m.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.check_peer(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(self)
    }
}

/// Cuts one connection from outside (revocation) by failing its next read
/// or write.
#[derive(Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl KillSwitch {
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.killed.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "peer certificate revoked",
            ))
        } else {
            Ok(())
        }
    }
}

/// A live TLS connection's entry in the revocation registry; removes itself
/// when the connection closes.
pub struct Tracked {
    id: u64,
    switch: Arc<KillSwitch>,
    registry: Weak<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.map.lock().expect("tls registry").remove(&self.id);
        }
    }
}

#[derive(Default)]
struct Connections {
    next: AtomicU64,
    map: Mutex<HashMap<u64, (String, Arc<KillSwitch>)>>,
}

struct TlsMetrics {
    registry: Registry,
    expiry: Gauge,
    reload_applied: Counter,
    reload_rejected: Counter,
    revoked_closed: Counter,
}

impl TlsMetrics {
    fn handshake(&self, direction: &'static str, result: &'static str) {
        self.registry
            .counter(
                "tls_handshake_total",
                "Mesh TLS handshakes by direction and result",
                vec![("direction", direction.into()), ("result", result.into())],
            )
            .inc();
    }
}

/// The sidecar's mesh identity and TLS configurations.
pub struct MeshTls {
    live: Arc<Live>,
    sources: Mutex<Sources>,
    server: Arc<ServerConfig>,
    clients: [Arc<ClientConfig>; 3],
    connections: Arc<Connections>,
    metrics: TlsMetrics,
}

/// A config's `tls` section, read and checked, ready to apply.
pub struct PreparedTls {
    sources: Sources,
    material: Option<Material>,
    revoked: HashSet<String>,
}

/// Whether a config needs a workload certificate: inbound TLS, or a cluster
/// that speaks mesh TLS (`mesh` or `auto`).
pub fn needed(c: &config::SidecarConfig) -> bool {
    c.tls.mode != config::TlsMode::Disabled
        || c.clusters
            .iter()
            .any(|c| c.tls.mode != config::UpstreamTlsMode::Disabled)
}

/// The sidecar's [`MeshTls`], when its config uses TLS; clusters hold this
/// slot so they see the current one.
pub type TlsSlot = Arc<ArcSwapOption<MeshTls>>;

impl MeshTls {
    /// Reads the certificate, key and trust bundle named in `tls`.
    pub fn new(tls: &config::Tls, registry: &Registry) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sources = Sources::of(tls);
        let material = sources.load(&provider)?;
        let live = Arc::new(Live {
            material: ArcSwap::from_pointee(material),
            revoked: ArcSwap::from_pointee(tls.revoked_serials.iter().cloned().collect()),
            provider: provider.clone(),
        });
        let versions = &[&rustls::version::TLS13];
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(live.clone())
            .with_cert_resolver(live.clone());
        server.alpn_protocols = Alpn::ALL.iter().map(|a| a.id().to_vec()).collect();
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let client = |alpn: Alpn| {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .expect("ring supports TLS 1.3")
                .dangerous()
                .with_custom_certificate_verifier(live.clone())
                .with_client_cert_resolver(live.clone());
            c.alpn_protocols = vec![alpn.id().to_vec()];
            c.resumption = Resumption::disabled();
            Arc::new(c)
        };
        let metrics = TlsMetrics {
            expiry: registry.gauge(
                "tls_certificate_expiration_timestamp_seconds",
                "When the workload certificate expires (Unix time)",
                vec![],
            ),
            reload_applied: registry.counter(
                "tls_certificate_reload_total",
                "Certificate and trust bundle reloads by result",
                vec![("result", "applied".into())],
            ),
            reload_rejected: registry.counter(
                "tls_certificate_reload_total",
                "Certificate and trust bundle reloads by result",
                vec![("result", "rejected".into())],
            ),
            revoked_closed: registry.counter(
                "tls_revoked_connections_closed_total",
                "Open connections closed because their peer's certificate was revoked",
                vec![],
            ),
            registry: registry.clone(),
        };
        let this = Arc::new(Self {
            server: Arc::new(server),
            clients: Alpn::ALL.map(client),
            live,
            sources: Mutex::new(sources),
            connections: Arc::default(),
            metrics,
        });
        this.set_expiry();
        let own = this.identity();
        tracing::info!(identity = %own, "mesh TLS identity loaded");
        Ok(this)
    }

    /// This workload's SPIFFE ID.
    pub fn identity(&self) -> Arc<str> {
        self.live.material.load().own.identity.clone()
    }

    fn set_expiry(&self) {
        let m = self.live.material.load();
        let secs = m
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.metrics.expiry.set(secs);
    }

    /// Reads what a new config's `tls` section names (when its sources
    /// moved), without changing anything yet.
    pub fn prepare(&self, tls: &config::Tls) -> Result<PreparedTls, TlsError> {
        let sources = Sources::of(tls);
        let material = if *self.sources.lock().expect("tls sources") != sources {
            Some(sources.load(&self.live.provider)?)
        } else {
            None
        };
        Ok(PreparedTls {
            sources,
            material,
            revoked: tls.revoked_serials.iter().cloned().collect(),
        })
    }

    /// Applies a prepared `tls` section: new material, and the revocation
    /// list (cutting open connections of newly revoked peers).
    pub fn commit(&self, p: PreparedTls) {
        if let Some(m) = p.material {
            self.live.material.store(Arc::new(m));
            *self.sources.lock().expect("tls sources") = p.sources;
            self.set_expiry();
        }
        if **self.live.revoked.load() != p.revoked {
            self.live.revoked.store(Arc::new(p.revoked));
            self.cut_revoked();
        }
    }

    /// Re-reads the files; a changed, consistent set replaces the current one.
    /// Returns whether anything changed.
    pub fn reload_files(&self) -> bool {
        let sources = self.sources.lock().expect("tls sources").clone();
        let Ok([cert, key, ca]) = sources.read() else {
            // Mid-rotation the files may briefly be missing; try again later.
            return false;
        };
        if Sources::fingerprint(&cert, &key, &ca) == self.live.material.load().fingerprint {
            return false;
        }
        match sources.load(&self.live.provider) {
            Ok(m) => {
                let serial = m.own.serial.clone();
                self.live.material.store(Arc::new(m));
                self.set_expiry();
                self.metrics.reload_applied.inc();
                tracing::info!(%serial, "workload certificate reloaded");
                true
            }
            Err(e) => {
                self.metrics.reload_rejected.inc();
                tracing::warn!(
                    "certificate files changed but were refused, keeping the current ones: {e}"
                );
                false
            }
        }
    }

    fn cut_revoked(&self) {
        let revoked = self.live.revoked.load();
        let map = self.connections.map.lock().expect("tls registry");
        for (serial, switch) in map.values() {
            if revoked.contains(serial) && !switch.killed.swap(true, Ordering::AcqRel) {
                switch.waker.wake();
                self.metrics.revoked_closed.inc();
                tracing::info!(%serial, "closing a connection: peer certificate revoked");
            }
        }
    }

    fn track(&self, peer: &Peer) -> Tracked {
        let id = self.connections.next.fetch_add(1, Ordering::Relaxed);
        let switch = Arc::new(KillSwitch::default());
        self.connections
            .map
            .lock()
            .expect("tls registry")
            .insert(id, (peer.serial.clone(), switch.clone()));
        // Revoked between the handshake and now.
        if self.live.revoked.load().contains(&peer.serial) {
            switch.kill();
        }
        Tracked {
            id,
            switch,
            registry: Arc::downgrade(&self.connections),
        }
    }

    /// Counts a plaintext connection refused by `strict` mode.
    pub fn refuse_plaintext(&self) {
        self.metrics.handshake("inbound", "plaintext_refused");
    }

    fn result_of(e: &io::Error) -> &'static str {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => "revoked",
            Some(rustls::Error::InvalidCertificate(_)) => "untrusted",
            Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
            Some(rustls::Error::AlertReceived(_)) => "peer_refused",
            _ if e.kind() == io::ErrorKind::TimedOut => "timeout",
            _ => "error",
        }
    }

    /// Runs a handshake with the timeout, counting failures by cause.
    async fn handshake<S>(
        &self,
        direction: &'static str,
        hs: impl Future<Output = io::Result<S>>,
    ) -> io::Result<S> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.metrics.handshake(direction, Self::result_of(&e));
                Err(e)
            }
            Err(_) => {
                self.metrics.handshake(direction, "timeout");
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// Server side: completes a handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(Io, Peer, Option<Alpn>), io::Error> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let tls = self.handshake("inbound", acceptor.accept(tcp)).await?;
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().and_then(Alpn::from_id);
        let peer = verified_peer(conn.peer_certificates(), "client")?;
        self.metrics.handshake("inbound", "success");
        let tracked = self.track(&peer);
        Ok((Io::server(tls, tracked), peer, alpn))
    }

    /// Client side: a handshake to `addr` offering `alpn`; when `expect` is
    /// set, the server must present that SPIFFE ID.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        alpn: Alpn,
        expect: Option<&str>,
    ) -> Result<(Io, Peer), io::Error> {
        let addr = tcp.peer_addr()?;
        let connector = tokio_rustls::TlsConnector::from(self.clients[alpn.index()].clone());
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = self
            .handshake("outbound", connector.connect(name, tcp))
            .await?;
        let (_, conn) = tls.get_ref();
        let peer = verified_peer(conn.peer_certificates(), "server")?;
        if let Some(want) = expect
            && *peer.identity != *want
        {
            self.metrics.handshake("outbound", "identity_mismatch");
            return Err(io::Error::other(format!(
                "{addr} presented identity {} but {want} was expected",
                peer.identity
            )));
        }
        self.metrics.handshake("outbound", "success");
        let tracked = self.track(&peer);
        Ok((Io::client(tls, tracked), peer))
    }
}

/// The peer of a completed handshake (its certificate was verified by then).
fn verified_peer(certs: Option<&[CertificateDer<'_>]>, who: &str) -> io::Result<Peer> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::other(format!("the {who} presented no certificate")))?;
    peer_of(leaf).map_err(io::Error::other)
}

enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection's byte stream, plaintext or TLS; TLS ones can be cut when
/// their peer is revoked.
pub struct Io {
    stream: Stream,
    tracked: Option<Tracked>,
}

impl Io {
    pub fn plain(tcp: TcpStream) -> Self {
        Self {
            stream: Stream::Plain(tcp),
            tracked: None,
        }
    }

    fn server(s: tokio_rustls::server::TlsStream<TcpStream>, t: Tracked) -> Self {
        Self {
            stream: Stream::Server(Box::new(s)),
            tracked: Some(t),
        }
    }

    fn client(s: tokio_rustls::client::TlsStream<TcpStream>, t: Tracked) -> Self {
        Self {
            stream: Stream::Client(Box::new(s)),
            tracked: Some(t),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    /// The plaintext socket (for peeking), if this is one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Plain(s) => Some(s),
            _ => None,
        }
    }

    fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        match &self.tracked {
            Some(t) => t.switch.check(cx),
            None => Ok(()),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.stream {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        each!(this, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        each!(this, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        each!(this, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        each!(this, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        each!(this, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The first byte of a TLS record carrying a handshake (ClientHello).
pub const TLS_HANDSHAKE: u8 = 0x16;

/// What the first TLS record says about the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello offering one of our ALPN names: a peer sidecar.
    Mesh,
    /// A complete ClientHello without them: another TLS client.
    Other,
    /// Not all of the record has arrived yet.
    Incomplete,
}

/// Reads the ALPN offer of the ClientHello at the start of `buf` (peeked,
/// never consumed). Anything that does not parse as a ClientHello is `Other`.
pub fn classify_hello(buf: &[u8]) -> Hello {
    // Record header: type, version, length.
    let Some(&[TLS_HANDSHAKE, _, _, hi, lo]) = buf.get(..5) else {
        return if buf.len() < 5 {
            Hello::Incomplete
        } else {
            Hello::Other
        };
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some(record) = buf.get(5..5 + len) else {
        return Hello::Incomplete;
    };
    match alpn_offer(record) {
        Some(names) if names.iter().any(|n| Alpn::from_id(n).is_some()) => Hello::Mesh,
        _ => Hello::Other,
    }
}

/// The ALPN protocol names of a ClientHello handshake message.
fn alpn_offer(msg: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let body = r.take(body_len)?;
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    let session = usize::from(r.u8()?);
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    r.take(compression)?;
    let exts = r.u16()?;
    let mut exts = Reader(r.take(exts)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data_len = exts.u16()?;
        let data = exts.take(data_len)?;
        if kind == 16 {
            let mut d = Reader(data);
            let list = d.u16()?;
            let mut list = Reader(d.take(list)?);
            let mut names = Vec::new();
            while !list.0.is_empty() {
                let n = usize::from(list.u8()?);
                names.push(list.take(n)?);
            }
            return Some(names);
        }
    }
    Some(Vec::new())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_ids_round_trip() {
        for a in Alpn::ALL {
            assert_eq!(Alpn::from_id(a.id()), Some(a));
        }
        assert_eq!(Alpn::from_id(b"spdy/3"), None);
    }

    /// The first flight of a rustls client offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(c), "example.com".try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn client_hellos_are_told_apart_by_their_alpn() {
        let mesh = client_hello(&[Alpn::Http2.id()]);
        assert_eq!(classify_hello(&mesh), Hello::Mesh);
        assert_eq!(classify_hello(&mesh[..mesh.len() - 1]), Hello::Incomplete);
        assert_eq!(classify_hello(&mesh[..3]), Hello::Incomplete);
        assert_eq!(
            classify_hello(&client_hello(&[b"h2", b"http/1.1"])),
            Hello::Other
        );
        assert_eq!(classify_hello(&client_hello(&[])), Hello::Other);
        assert_eq!(classify_hello(b"GET / HTTP/1.1\r\n"), Hello::Other);
    }

    #[test]
    fn errors_name_the_field_and_file() {
        let tls = config::Tls {
            cert_file: "/nonexistent/tls.crt".into(),
            ..Default::default()
        };
        let err = MeshTls::new(&tls, &Registry::default())
            .err()
            .expect("missing file");
        let msg = err.to_string();
        assert!(
            msg.contains("tls.certFile") && msg.contains("/nonexistent/tls.crt"),
            "{msg}"
        );
    }
}
