//! Issues a throwaway mesh CA and workload certificates with the operator's
//! issuing code, laid out as the certificate Secret is mounted
//! (`<dir>/<sa>/{tls.crt,tls.key,ca.crt}`). Used by `bench/sidecar.sh`.
//!
//!   cargo run --release -p remora-sidecar --example mesh_certs -- <dir> <sa>...

use std::time::Duration;

use remora_ca::{LeafRequest, MeshCa};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: mesh_certs <dir> <sa>...")?);
    let ca = MeshCa::generate("cluster.local")?;
    for sa in args {
        let leaf = ca.issue(&LeafRequest {
            spiffe_id: format!("spiffe://cluster.local/ns/bench/sa/{sa}"),
            dns_names: vec![],
            extra_uris: vec![],
            ttl: Duration::from_secs(24 * 3600),
        })?;
        let d = dir.join(&sa);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("tls.crt"), &leaf.cert_pem)?;
        std::fs::write(d.join("tls.key"), &leaf.key_pem)?;
        std::fs::write(d.join("ca.crt"), ca.cert_pem())?;
    }
    Ok(())
}
