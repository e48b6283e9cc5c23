//! Request matching compiled from the config: regexes compiled and anchored,
//! header names parsed, once per config version.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use regex::Regex;
use remora_api::config::{HeaderEdits, KeyedMatch, RequestMatch, StringMatch};

use crate::Error;

#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StringMatcher {
    pub fn compile(m: &StringMatch) -> Result<Self, Error> {
        Ok(match m {
            StringMatch::Exact(s) => Self::Exact(s.clone()),
            StringMatch::Prefix(s) => Self::Prefix(s.clone()),
            // Anchored: the regex must match the whole string.
            StringMatch::Regex(re) => Self::Regex(
                Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| Error::Config(format!("regex {re:?}: {e}")))?,
            ),
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => s == e,
            Self::Prefix(p) => s.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(s),
        }
    }
}

#[derive(Debug, Clone)]
struct HeaderMatcher {
    name: HeaderName,
    value: Option<StringMatcher>,
    invert: bool,
}

#[derive(Debug, Clone)]
struct QueryMatcher {
    name: String,
    value: Option<StringMatcher>,
    invert: bool,
}

/// All conditions of a `RequestMatch`; an empty one matches everything.
#[derive(Debug, Clone, Default)]
pub struct RequestMatcher {
    path: Option<StringMatcher>,
    method: Option<Method>,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    /// gRPC `package.Service` / method, matched against the `:path`.
    rpc: Option<(Option<String>, Option<String>)>,
}

impl RequestMatcher {
    pub fn compile(m: &RequestMatch) -> Result<Self, Error> {
        let value = |k: &KeyedMatch| k.value.as_ref().map(StringMatcher::compile).transpose();
        Ok(Self {
            path: m.path.as_ref().map(StringMatcher::compile).transpose()?,
            method: m
                .method
                .as_ref()
                .map(|s| Method::from_bytes(s.as_bytes()))
                .transpose()
                .map_err(|e| Error::Config(format!("method: {e}")))?,
            headers: m
                .headers
                .iter()
                .map(|k| {
                    Ok(HeaderMatcher {
                        name: header_name(&k.name)?,
                        value: value(k)?,
                        invert: k.invert,
                    })
                })
                .collect::<Result<_, Error>>()?,
            query: m
                .query
                .iter()
                .map(|k| {
                    Ok(QueryMatcher {
                        name: k.name.clone(),
                        value: value(k)?,
                        invert: k.invert,
                    })
                })
                .collect::<Result<_, Error>>()?,
            rpc: m
                .rpc
                .as_ref()
                .map(|r| (r.service.clone(), r.method.clone())),
        })
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        if let Some(p) = &self.path
            && !p.matches(path)
        {
            return false;
        }
        if let Some(m) = &self.method
            && req.method() != m
        {
            return false;
        }
        for h in &self.headers {
            let found = req
                .headers()
                .get_all(&h.name)
                .iter()
                .any(|v| match &h.value {
                    None => true,
                    Some(m) => v.to_str().is_ok_and(|v| m.matches(v)),
                });
            if found == h.invert {
                return false;
            }
        }
        if !self.query.is_empty() {
            let q = req.uri().query().unwrap_or("");
            for qm in &self.query {
                let found = query_pairs(q)
                    .any(|(k, v)| k == qm.name && qm.value.as_ref().is_none_or(|m| m.matches(v)));
                if found == qm.invert {
                    return false;
                }
            }
        }
        if let Some((service, method)) = &self.rpc {
            // gRPC paths are `/package.Service/Method`.
            let mut parts = path.trim_start_matches('/').splitn(2, '/');
            let (s, m) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if service.as_ref().is_some_and(|x| x != s) || method.as_ref().is_some_and(|x| x != m) {
                return false;
            }
        }
        true
    }
}

/// `k=v` pairs of a query string (values are compared as sent, without
/// percent-decoding, as Envoy does for exact matches on simple values).
fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

pub fn header_name(s: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
        .map_err(|_| Error::Config(format!("{s:?} is not a valid header name")))
}

pub fn header_value(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s)
        .map_err(|_| Error::Config(format!("{s:?} is not a valid header value")))
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct HeaderEditor {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEditor {
    pub fn compile(e: &HeaderEdits) -> Result<Self, Error> {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| Ok((header_name(k)?, header_value(v)?)))
                .collect::<Result<Vec<_>, Error>>()
        };
        Ok(Self {
            remove: e
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(&e.set)?,
            add: pairs(&e.add)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_api::config::RpcMatch;

    fn req(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[test]
    fn regex_is_anchored() {
        let m = StringMatcher::compile(&StringMatch::Regex("/api/v[0-9]+".into())).unwrap();
        assert!(m.matches("/api/v12"));
        assert!(!m.matches("/api/v12/x"));
        assert!(!m.matches("/x/api/v1"));
    }

    #[test]
    fn path_method_header_query_with_invert() {
        let m = RequestMatcher::compile(&RequestMatch {
            path: Some(StringMatch::Prefix("/reviews".into())),
            method: Some("GET".into()),
            headers: vec![
                KeyedMatch {
                    name: "X-Canary".into(),
                    value: Some(StringMatch::Exact("yes".into())),
                    invert: false,
                },
                KeyedMatch {
                    name: "x-debug".into(),
                    value: None,
                    invert: true,
                },
            ],
            query: vec![KeyedMatch {
                name: "v".into(),
                value: Some(StringMatch::Regex("[12]".into())),
                invert: false,
            }],
            rpc: None,
        })
        .unwrap();
        let mut r = req("/reviews/1?a=b&v=2");
        r.headers_mut().insert("x-canary", "yes".parse().unwrap());
        assert!(m.matches(&r));
        r.headers_mut().insert("x-debug", "1".parse().unwrap());
        assert!(!m.matches(&r), "inverted header present");
        let mut r = req("/reviews/1?v=3");
        r.headers_mut().insert("x-canary", "yes".parse().unwrap());
        assert!(!m.matches(&r), "query value");
        let mut r = req("/ratings?v=1");
        r.headers_mut().insert("x-canary", "yes".parse().unwrap());
        assert!(!m.matches(&r), "path");
    }

    #[test]
    fn rpc_matches_grpc_path() {
        let m = RequestMatcher::compile(&RequestMatch {
            rpc: Some(RpcMatch {
                service: Some("echo.Echo".into()),
                method: None,
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(m.matches(&req("/echo.Echo/Unary")));
        assert!(!m.matches(&req("/other.Echo/Unary")));
    }

    #[test]
    fn header_edits_remove_set_add() {
        let mut e = HeaderEdits::default();
        e.remove.push("x-secret".into());
        e.set.insert("x-routed-by".into(), "remora".into());
        e.add.insert("x-multi".into(), "b".into());
        let ed = HeaderEditor::compile(&e).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-routed-by", "other".parse().unwrap());
        h.insert("x-multi", "a".parse().unwrap());
        ed.apply(&mut h);
        assert!(h.get("x-secret").is_none());
        assert_eq!(h["x-routed-by"], "remora");
        assert_eq!(h.get_all("x-multi").iter().count(), 2);
    }
}
