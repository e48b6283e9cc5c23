//! Inbound authorization: which peer identities may call which requests.
//!
//! A pod with no selecting policy allows everything. Once a policy selects
//! the pod, a call is allowed only when some rule of some selecting policy
//! names its caller (`from`) and, when the rule lists requests, matches one
//! of them (`to`). Plaintext callers have no identity and match no rule.

use http::Request;
use remora_api::config::{AuthzPolicy, Labels, selector_matches};

use crate::{Error, matching::RequestMatcher};

enum Caller {
    /// `*`: any authenticated caller.
    Any,
    Exact(String),
    /// `spiffe://td/ns/shop/*`.
    Prefix(String),
}

impl Caller {
    fn compile(s: &str) -> Self {
        if s == "*" {
            Caller::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Caller::Prefix(p.to_string())
        } else {
            Caller::Exact(s.to_string())
        }
    }

    fn matches(&self, id: &str) -> bool {
        match self {
            Caller::Any => true,
            Caller::Exact(e) => e == id,
            Caller::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

struct Rule {
    from: Vec<Caller>,
    to: Vec<RequestMatcher>,
}

impl Rule {
    fn names(&self, identity: Option<&str>) -> bool {
        identity.is_some_and(|id| self.from.iter().any(|c| c.matches(id)))
    }
}

/// The policies that select this pod, compiled.
pub struct Authz {
    /// Names of the selecting policies (for logs).
    pub policies: Vec<String>,
    rules: Vec<Rule>,
}

impl Authz {
    /// `None` when no policy selects a pod with these labels (allow all).
    pub fn compile(policies: &[AuthzPolicy], pod_labels: &Labels) -> Result<Option<Self>, Error> {
        // With their index in the config, for messages.
        let selected: Vec<(usize, &AuthzPolicy)> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| selector_matches(&p.pod_selector, pod_labels))
            .collect();
        if selected.is_empty() {
            return Ok(None);
        }
        let mut rules = Vec::new();
        for &(pi, p) in &selected {
            for (ri, r) in p.rules.iter().enumerate() {
                let to =
                    r.to.iter()
                        .map(RequestMatcher::compile)
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            Error::Config(format!("authz[{pi}] {} rules[{ri}].to: {e}", p.name))
                        })?;
                rules.push(Rule {
                    from: r.from.iter().map(|s| Caller::compile(s)).collect(),
                    to,
                });
            }
        }
        Ok(Some(Self {
            policies: selected.iter().map(|(_, p)| p.name.clone()).collect(),
            rules,
        }))
    }

    /// An HTTP or gRPC request from `identity`.
    pub fn allows<B>(&self, identity: Option<&str>, req: &Request<B>) -> bool {
        self.rules
            .iter()
            .any(|r| r.names(identity) && (r.to.is_empty() || r.to.iter().any(|m| m.matches(req))))
    }

    /// An opaque connection: only rules that do not restrict requests apply.
    pub fn allows_connection(&self, identity: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.names(identity) && r.to.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(json: &str) -> Vec<AuthzPolicy> {
        serde_json::from_str(json).unwrap()
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn no_selecting_policy_allows_everything() {
        let p = policies(
            r#"[{"name":"other","podSelector":{"app":"ratings"},"rules":[{"from":["*"]}]}]"#,
        );
        let labels = Labels::from([("app".to_string(), "reviews".to_string())]);
        assert!(Authz::compile(&p, &labels).unwrap().is_none());
    }

    #[test]
    fn rules_name_callers_and_requests() {
        let p = policies(
            r#"[{"name":"reviews","rules":[
                {"from":["spiffe://cluster.local/ns/shop/sa/frontend"],"to":[{"path":{"prefix":"/api/"},"method":"GET"}]},
                {"from":["spiffe://cluster.local/ns/ops/*"]}
            ]}]"#,
        );
        let a = Authz::compile(&p, &Labels::new()).unwrap().unwrap();
        let frontend = Some("spiffe://cluster.local/ns/shop/sa/frontend");
        assert!(a.allows(frontend, &get("/api/reviews")));
        assert!(!a.allows(frontend, &get("/admin")), "path not in `to`");
        assert!(
            !a.allows(frontend, &Request::post("/api/x").body(()).unwrap()),
            "method not in `to`"
        );
        assert!(a.allows(
            Some("spiffe://cluster.local/ns/ops/sa/debug"),
            &get("/admin")
        ));
        assert!(!a.allows(
            Some("spiffe://cluster.local/ns/shop/sa/cart"),
            &get("/api/x")
        ));
        assert!(!a.allows(None, &get("/api/x")), "plaintext has no identity");
        assert!(
            !a.allows_connection(frontend),
            "request rules don't open TCP"
        );
        assert!(a.allows_connection(Some("spiffe://cluster.local/ns/ops/sa/x")));
    }

    #[test]
    fn star_means_any_authenticated_caller() {
        let p = policies(r#"[{"name":"mesh-only","rules":[{"from":["*"]}]}]"#);
        let a = Authz::compile(&p, &Labels::new()).unwrap().unwrap();
        assert!(a.allows(Some("spiffe://x/ns/a/sa/b"), &get("/")));
        assert!(!a.allows(None, &get("/")));
    }
}
