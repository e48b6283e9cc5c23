//! The iptables redirect that transparent capture needs, as Istio installs
//! it: inbound TCP to the inbound listener, outbound TCP to the outbound
//! listener, except traffic of the proxy itself (by uid), loopback, and the
//! excluded ports and CIDRs. Rendered in `iptables-restore` format.

use std::{fmt::Write, net::IpAddr};

#[derive(Debug, Clone, Default)]
pub struct CaptureRules {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
}

impl CaptureRules {
    /// Checks CIDRs (`10.0.0.0/8`) so a typo is an error, not a rule iptables
    /// refuses halfway through. IPv6 is refused: only IPv4 is captured (no
    /// ip6tables rules), and an IPv6 CIDR would break `iptables-restore`.
    pub fn validate(&self) -> Result<(), String> {
        if self.inbound_port == 0 || self.outbound_port == 0 {
            return Err("--inbound-port and --outbound-port must be 1-65535".into());
        }
        for c in &self.exclude_outbound_cidrs {
            let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{c:?} is not a CIDR (e.g. 10.0.0.0/8)"))?;
            if ip.is_ipv6() {
                return Err(format!(
                    "{c:?} is an IPv6 CIDR: Remora captures IPv4 only, so there is no IPv6 \
                     capture to exclude it from; remove it from --exclude-outbound-cidrs"
                ));
            }
            match len.parse::<u8>() {
                Ok(l) if l <= 32 => {}
                _ => return Err(format!("{c:?} has an invalid prefix length (0-32)")),
            }
        }
        Ok(())
    }

    /// The `iptables-restore --noflush` input for the nat table (IPv4).
    pub fn render(&self) -> String {
        let uid = self.proxy_uid;
        let mut s = String::new();
        s.push_str("*nat\n");
        for chain in [
            "REMORA_INBOUND",
            "REMORA_IN_REDIRECT",
            "REMORA_REDIRECT",
            "REMORA_OUTPUT",
        ] {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        let _ = writeln!(
            s,
            "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            s,
            "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        // Inbound: everything to the pod, except excluded ports (and ssh).
        s.push_str("-A PREROUTING -p tcp -j REMORA_INBOUND\n");
        for p in &self.exclude_inbound_ports {
            let _ = writeln!(s, "-A REMORA_INBOUND -p tcp --dport {p} -j RETURN");
        }
        s.push_str("-A REMORA_INBOUND -p tcp --dport 22 -j RETURN\n");
        s.push_str("-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT\n");
        // Outbound: what the app sends.
        s.push_str("-A OUTPUT -p tcp -j REMORA_OUTPUT\n");
        // The proxy calling its own pod IP over lo is inbound traffic.
        s.push_str("-A REMORA_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\n");
        let _ = writeln!(
            s,
            "-A REMORA_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {uid} -j REMORA_IN_REDIRECT"
        );
        // The app talking to itself over loopback is not captured.
        let _ = writeln!(
            s,
            "-A REMORA_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"
        );
        // The proxy's own upstream connections leave as they are.
        let _ = writeln!(s, "-A REMORA_OUTPUT -m owner --uid-owner {uid} -j RETURN");
        s.push_str("-A REMORA_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
        for p in &self.exclude_outbound_ports {
            let _ = writeln!(s, "-A REMORA_OUTPUT -p tcp --dport {p} -j RETURN");
        }
        for c in &self.exclude_outbound_cidrs {
            let _ = writeln!(s, "-A REMORA_OUTPUT -d {c} -j RETURN");
        }
        s.push_str("-A REMORA_OUTPUT -j REMORA_REDIRECT\n");
        s.push_str("COMMIT\n");
        s
    }

    /// Applies the rules with `iptables-restore --noflush` (needs NET_ADMIN).
    pub fn apply(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(self.render().as_bytes())?;
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "iptables-restore failed: {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CaptureRules {
        CaptureRules {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound_ports: vec![15000, 15020],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into()],
        }
    }

    #[test]
    fn renders_istio_style_nat_rules() {
        let text = rules().render();
        let expected = "\
*nat
:REMORA_INBOUND - [0:0]
:REMORA_IN_REDIRECT - [0:0]
:REMORA_REDIRECT - [0:0]
:REMORA_OUTPUT - [0:0]
-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j REMORA_INBOUND
-A REMORA_INBOUND -p tcp --dport 15000 -j RETURN
-A REMORA_INBOUND -p tcp --dport 15020 -j RETURN
-A REMORA_INBOUND -p tcp --dport 22 -j RETURN
-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT
-A OUTPUT -p tcp -j REMORA_OUTPUT
-A REMORA_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A REMORA_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j REMORA_IN_REDIRECT
-A REMORA_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A REMORA_OUTPUT -d 127.0.0.1/32 -j RETURN
-A REMORA_OUTPUT -p tcp --dport 5432 -j RETURN
-A REMORA_OUTPUT -d 169.254.169.254/32 -j RETURN
-A REMORA_OUTPUT -j REMORA_REDIRECT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn proxy_uid_exclusion_precedes_the_redirect() {
        let text = rules().render();
        let own = text.find("--uid-owner 1337 -j RETURN").unwrap();
        let redirect = text.find("-A REMORA_OUTPUT -j REMORA_REDIRECT").unwrap();
        assert!(own < redirect);
    }

    #[test]
    fn bad_cidrs_are_refused() {
        let mut r = rules();
        r.exclude_outbound_cidrs = vec!["10.0.0.0/33".into()];
        assert!(r.validate().unwrap_err().contains("prefix length"));
        r.exclude_outbound_cidrs = vec!["ten/8".into()];
        assert!(r.validate().unwrap_err().contains("not a CIDR"));
        r.exclude_outbound_cidrs = vec!["10.0.0.0/8".into(), "192.168.1.7".into()];
        assert!(r.validate().is_ok());
        r.exclude_outbound_cidrs = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
        let err = r.validate().unwrap_err();
        assert!(err.contains("\"fd00::/8\" is an IPv6 CIDR"), "{err}");
        r.exclude_outbound_cidrs = vec!["::1".into()];
        assert!(r.validate().unwrap_err().contains("IPv6"));
    }
}
