//! The webhook serving certificate against its registration: the caBundle
//! must verify it (or the API server refuses the TLS handshake and, failing
//! open, creates pods without sidecars), it must name the Service, and it
//! must not expire soon.

use std::time::{Duration, SystemTime};

use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, pem::Pem, prelude::FromDer,
};

use super::Outcome;

const WEBHOOK: &str = "remora-webhook";

/// Every certificate in a PEM bundle, as DER.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

pub fn check(
    cert_pem: &[u8],
    bundle_pem: &[u8],
    dns_name: &str,
    secret: &str,
    config: &str,
    now: SystemTime,
    warn_before: Duration,
) -> Vec<Outcome> {
    let rotate = format!(
        "delete the Secret {secret} and run `helm upgrade` with the same values: the chart \
         generates a new pair and caBundle, and the webhook reloads it"
    );
    let leaf_der = pem_certificates(cert_pem);
    let Some(leaf_der) = leaf_der.first() else {
        return vec![Outcome::fail(
            WEBHOOK,
            "certificate",
            format!("{secret} has no PEM certificate in tls.crt"),
            rotate,
        )];
    };
    let leaf = match X509Certificate::from_der(leaf_der) {
        Ok((_, c)) => c,
        Err(e) => {
            return vec![Outcome::fail(
                WEBHOOK,
                "certificate",
                format!("{secret} tls.crt does not parse: {e}"),
                rotate,
            )];
        }
    };
    let mut out = Vec::new();

    let cas = pem_certificates(bundle_pem);
    let verified = cas.iter().any(|der| {
        X509Certificate::from_der(der)
            .is_ok_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
    });
    out.push(if verified {
        Outcome::pass(
            WEBHOOK,
            "ca-bundle",
            format!("{config}'s caBundle verifies the serving certificate in {secret}"),
        )
    } else {
        Outcome::fail(
            WEBHOOK,
            "ca-bundle",
            format!(
                "{config}'s caBundle ({} certificates) did not sign the serving certificate in \
                 {secret}: the API server cannot call the webhook, so pods start without sidecars",
                cas.len()
            ),
            rotate.clone(),
        )
    });

    let names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    out.push(if names.iter().any(|n| n == dns_name) {
        Outcome::pass(
            WEBHOOK,
            "certificate-names",
            format!("the serving certificate names {dns_name}"),
        )
    } else {
        Outcome::fail(
            WEBHOOK,
            "certificate-names",
            format!("the serving certificate names {names:?}, not the Service {dns_name}"),
            rotate.clone(),
        )
    });

    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let not_after = leaf.validity().not_after.timestamp();
    let not_before = leaf.validity().not_before.timestamp();
    let left = not_after - unix(now);
    let days = left / 86_400;
    out.push(if left <= 0 {
        Outcome::fail(
            WEBHOOK,
            "certificate-validity",
            format!(
                "the serving certificate expired {} days ago",
                (-left) / 86_400
            ),
            rotate,
        )
    } else if not_before > unix(now) {
        Outcome::fail(
            WEBHOOK,
            "certificate-validity",
            "the serving certificate is not valid yet (is this machine's clock right?)",
            rotate,
        )
    } else if left < warn_before.as_secs() as i64 {
        Outcome::warn(
            WEBHOOK,
            "certificate-validity",
            format!(
                "the serving certificate expires in {days} days (less than {})",
                warn_before.as_secs() / 86_400
            ),
            rotate,
        )
    } else {
        Outcome::pass(
            WEBHOOK,
            "certificate-validity",
            format!("the serving certificate is valid for {days} more days"),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_operator::ca::{LeafRequest, MeshCa};

    fn issue(ca: &MeshCa, dns: &str, ttl: Duration) -> String {
        ca.issue(&LeafRequest {
            spiffe_id: "spiffe://cluster.local/ns/remora-system/sa/remora-webhook".into(),
            dns_names: vec![dns.into()],
            extra_uris: vec![],
            ttl,
        })
        .unwrap()
        .cert_pem
    }

    fn by_name<'a>(out: &'a [Outcome], name: &str) -> &'a Outcome {
        out.iter().find(|o| o.name == name).unwrap()
    }

    #[test]
    fn a_matching_long_lived_certificate_passes_and_a_foreign_one_fails() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let other = MeshCa::generate("cluster.local").unwrap();
        let dns = "remora-webhook.remora-system.svc";
        let year = Duration::from_secs(365 * 86_400);
        let cert = issue(&ca, dns, year);
        let warn = Duration::from_secs(30 * 86_400);
        let now = SystemTime::now();
        let good = check(
            cert.as_bytes(),
            ca.cert_pem().as_bytes(),
            dns,
            "s",
            "c",
            now,
            warn,
        );
        assert!(good.iter().all(|o| o.ok && !o.warning), "{good:?}");

        let foreign = check(
            cert.as_bytes(),
            other.cert_pem().as_bytes(),
            "other.remora-system.svc",
            "s",
            "c",
            now,
            warn,
        );
        assert!(!by_name(&foreign, "ca-bundle").ok);
        assert!(!by_name(&foreign, "certificate-names").ok);

        let soon = now + year - Duration::from_secs(10 * 86_400);
        let aging = check(
            cert.as_bytes(),
            ca.cert_pem().as_bytes(),
            dns,
            "s",
            "c",
            soon,
            warn,
        );
        let v = by_name(&aging, "certificate-validity");
        assert!(v.ok && v.warning, "{v:?}");
        let later = now + year + Duration::from_secs(86_400);
        let expired = check(
            cert.as_bytes(),
            ca.cert_pem().as_bytes(),
            dns,
            "s",
            "c",
            later,
            warn,
        );
        let v = by_name(&expired, "certificate-validity");
        assert!(!v.ok && v.message.contains("expired"), "{v:?}");
        assert!(v.hint.as_deref().unwrap().contains("helm upgrade"));
    }
}
