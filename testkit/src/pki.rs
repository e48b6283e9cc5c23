//! Throwaway certificates: the control plane's CA, serving and client certificates, and
//! serving certificates for webhooks that the API server must trust.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// A certificate authority that lives as long as one test process.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a webhook on 127.0.0.1 needs: its serving certificate and key, and the CA that the
/// API server must be given as `caBundle` to trust it.
#[derive(Debug, Clone)]
pub struct WebhookTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A TLS server certificate valid for `sans` (IP addresses or DNS names).
    pub fn serving_cert(&self, common_name: &str, sans: &[&str]) -> Result<IssuedCert, Error> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A TLS client certificate. Kubernetes reads the user from the common name and the
    /// group from the organization.
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> Result<IssuedCert, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<IssuedCert, Error> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A serving certificate for a webhook listening on 127.0.0.1 (SANs `127.0.0.1` and
/// `localhost`), signed by a fresh CA.
pub fn webhook_serving_cert() -> Result<WebhookTls, Error> {
    let ca = TestCa::new("remora-testkit webhook CA")?;
    let serving = ca.serving_cert("remora-test-webhook", &["127.0.0.1", "localhost"])?;
    Ok(WebhookTls {
        ca_pem: ca.cert_pem(),
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
    })
}

/// An ECDSA P-256 key pair for service-account tokens: (private key as PKCS#8 PEM, public
/// key as SPKI PEM). kube-apiserver's `--service-account-key-file` wants the public key.
pub(crate) fn service_account_key_pems() -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_cert_is_pem_and_distinct_from_its_ca() {
        let tls = webhook_serving_cert().unwrap();
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(tls.ca_pem, tls.cert_pem);
    }
}
