//! The serving certificate, reloaded from disk when its files change (cert-manager or a
//! Secret volume rotating it), without dropping connections: rustls asks the resolver for
//! the certificate at every handshake and the resolver hands out the current one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("certificate {cert} and key {key} do not make a serving identity: {source}")]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The current certificate and key, and the files they came from.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file contents `current` was built from.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    pub fn load(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Arc<Self>, TlsError> {
        let cert_path = cert_path.as_ref().to_owned();
        let key_path = key_path.as_ref().to_owned();
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let key = certified_key(&cert_path, &key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(key),
            loaded: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Reads the files again; swaps in the new certificate when they changed and are
    /// valid. A broken pair (e.g. caught half-written) leaves the old one serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(key));
        *loaded = (cert_pem, key_pem);
        Ok(true)
    }

    /// The certificate chain being served (DER).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Polls the files every `interval`. Polling (rather than inotify) sees every way a
    /// file is replaced, including the symlink swap of a Kubernetes Secret volume.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.record_certificate_reload(true);
                        tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        metrics.record_certificate_reload(false);
                        tracing::warn!(error = %e, "serving certificate not reloaded; keeping the old one");
                    }
                }
            }
        })
    }

    /// A rustls server configuration serving this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(self: Arc<Self>) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey {
        path: key_path.to_owned(),
    })?;
    CertifiedKey::from_der(chain, key, &default_provider()).map_err(|source| TlsError::Invalid {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}
