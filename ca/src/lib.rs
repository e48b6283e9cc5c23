//! The mesh CA: a key pair that signs workload certificates.
//!
//! Pure certificate work, no Kubernetes: the MeshCertificate controller and
//! the sidecar's mTLS code read certificates through the same code, and the
//! sidecar's tests issue theirs with it.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA certificate or key is not valid PEM: {0}")]
    BadCa(String),
    #[error("{0:?} is not a valid URI SAN")]
    BadUri(String),
    #[error("{0:?} is not a valid DNS SAN")]
    BadDns(String),
    #[error("certificate is not valid PEM/X.509: {0}")]
    BadCertificate(String),
}

/// The signing CA.
pub struct MeshCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What a workload certificate is for.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`; always the first URI SAN.
    pub spiffe_id: String,
    pub dns_names: Vec<String>,
    pub extra_uris: Vec<String>,
    pub ttl: Duration,
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lower-case hex, no leading zeros beyond what the DER holds.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Facts read back from a certificate PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub uris: Vec<String>,
}

impl MeshCa {
    /// A new self-signed CA (ECDSA P-256) for `trust_domain`, valid 10 years.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Remora");
        dn.push(
            DnType::CommonName,
            format!("Remora mesh CA ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(|_| CaError::BadUri(trust_domain.into()))?,
        )];
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and private key (PKCS#8 PEM), e.g. from a Secret.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::BadCa(e.to_string()))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a workload certificate (ECDSA P-256, client and server auth).
    pub fn issue(&self, req: &LeafRequest) -> Result<IssuedLeaf, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Remora");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for uri in std::iter::once(&req.spiffe_id).chain(&req.extra_uris) {
            sans.push(SanType::URI(
                uri.clone()
                    .try_into()
                    .map_err(|_| CaError::BadUri(uri.clone()))?,
            ));
        }
        for dns in &req.dns_names {
            sans.push(SanType::DnsName(
                dns.clone()
                    .try_into()
                    .map_err(|_| CaError::BadDns(dns.clone()))?,
            ));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        // Back-date a little so clocks that run slightly behind accept it.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after =
            now + time::Duration::try_from(req.ttl).unwrap_or(time::Duration::days(365));
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex(serial.as_ref()),
            not_before: params.not_before.into(),
            not_after: params.not_after.into(),
        })
    }
}

/// 16 random bytes with the top bit clear (a positive DER integer).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte, so hex round-trips through DER
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("system randomness");
    out
}

pub fn serial_hex(bytes: &[u8]) -> String {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    hex::encode(trimmed)
}

/// Reads serial, validity and URI SANs from the first certificate in `pem`.
pub fn certificate_facts(pem: &str) -> Result<CertificateFacts, CaError> {
    use x509_parser::prelude::*;
    let (_, block) =
        parse_x509_pem(pem.as_bytes()).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    certificate_facts_der(&block.contents)
}

/// Reads serial, validity and URI SANs from one DER certificate (as a TLS
/// handshake presents it).
pub fn certificate_facts_der(der: &[u8]) -> Result<CertificateFacts, CaError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let to_system =
        |t: ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    Ok(CertificateFacts {
        serial: serial_hex(cert.raw_serial()),
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
        uris,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_spiffe_certificate_that_chains_to_the_ca() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let leaf = ca
            .issue(&LeafRequest {
                spiffe_id: "spiffe://cluster.local/ns/bookinfo/sa/reviews".into(),
                dns_names: vec!["reviews.bookinfo.svc.cluster.local".into()],
                extra_uris: vec![],
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        let facts = certificate_facts(&leaf.cert_pem).unwrap();
        assert_eq!(facts.serial, leaf.serial);
        assert_eq!(
            facts.uris,
            ["spiffe://cluster.local/ns/bookinfo/sa/reviews"]
        );
        let lifetime = facts.not_after.duration_since(facts.not_before).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3600 + 300));

        // Verify the chain with a real verifier.
        use x509_parser::prelude::*;
        let (_, ca_block) = parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        let (_, leaf_block) = parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let leaf_cert = leaf_block.parse_x509().unwrap();
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap();
    }

    #[test]
    fn a_ca_round_trips_through_pem_and_keeps_signing() {
        let ca = MeshCa::generate("example.org").unwrap();
        let again = MeshCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let issue = || {
            again
                .issue(&LeafRequest {
                    spiffe_id: "spiffe://example.org/ns/a/sa/b".into(),
                    dns_names: vec![],
                    extra_uris: vec![],
                    ttl: Duration::from_secs(7200),
                })
                .unwrap()
        };
        let (a, b) = (issue(), issue());
        assert_ne!(a.serial, b.serial, "serials are unique");
        assert!(MeshCa::from_pem("not pem", ca.key_pem()).is_err());
    }
}
