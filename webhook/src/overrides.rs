//! Per-pod annotations that override the template, as Istio's `sidecar.istio.io/*` and
//! Linkerd's `config.linkerd.io/*` do. A value that does not parse is ignored with a
//! warning (shown by kubectl) and the template's value stays: injection never fails on it.

use std::collections::BTreeMap;

use remora_api::crd::{CaptureMode, LogLevel, Port, Quantity, SidecarTemplateSpec};

use crate::annotations as a;

/// Applies the pod's override annotations to `spec`; returns one warning per ignored value.
pub fn apply_overrides(
    spec: &mut SidecarTemplateSpec,
    pod_annotations: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(ann) = pod_annotations else {
        return warnings;
    };
    let mut bad = |key: &str, value: &str, expected: &str| {
        warnings.push(format!(
            "remora: ignored annotation {key}={value:?}: expected {expected}"
        ));
    };

    if let Some(v) = ann.get(a::PROXY_IMAGE) {
        if v.trim().is_empty() || v.chars().any(char::is_whitespace) {
            bad(a::PROXY_IMAGE, v, "an image reference");
        } else {
            spec.image = v.clone();
        }
    }
    let r = &mut spec.resources;
    for (key, slot) in [
        (a::PROXY_CPU, &mut r.cpu_request),
        (a::PROXY_MEMORY, &mut r.memory_request),
    ] {
        if let Some(v) = ann.get(key) {
            match quantity_value(v) {
                Some(_) => *slot = Quantity(v.trim().to_owned()),
                None => bad(key, v, "a quantity such as 100m or 64Mi"),
            }
        }
    }
    for (key, slot) in [
        (a::PROXY_CPU_LIMIT, &mut r.cpu_limit),
        (a::PROXY_MEMORY_LIMIT, &mut r.memory_limit),
    ] {
        if let Some(v) = ann.get(key) {
            match quantity_value(v) {
                Some(_) => *slot = Some(Quantity(v.trim().to_owned())),
                None => bad(key, v, "a quantity such as 100m or 64Mi"),
            }
        }
    }
    // The API server refuses a request above its limit: raise the limit to the request.
    for (request, limit) in [
        (&r.cpu_request, &mut r.cpu_limit),
        (&r.memory_request, &mut r.memory_limit),
    ] {
        if let Some(l) = limit.as_ref()
            && quantity_value(&request.0) > quantity_value(&l.0)
        {
            *limit = Some(request.clone());
        }
    }
    if let Some(v) = ann.get(a::LOG_LEVEL) {
        match serde_json::from_value::<LogLevel>(serde_json::Value::String(v.trim().to_lowercase()))
        {
            Ok(level) => spec.log_level = level,
            Err(_) => bad(a::LOG_LEVEL, v, "error, warn, info, debug or trace"),
        }
    }
    if let Some(v) = ann.get(a::CAPTURE_MODE) {
        match v.trim().to_lowercase().as_str() {
            "iptables" => spec.capture_mode = CaptureMode::Iptables,
            "explicit" => spec.capture_mode = CaptureMode::Explicit,
            _ => bad(a::CAPTURE_MODE, v, "iptables or explicit"),
        }
    }
    for (key, slot) in [
        (a::EXCLUDE_INBOUND_PORTS, &mut spec.exclude_inbound_ports),
        (a::EXCLUDE_OUTBOUND_PORTS, &mut spec.exclude_outbound_ports),
    ] {
        if let Some(v) = ann.get(key) {
            match parse_ports(v) {
                Some(ports) => *slot = ports,
                None => bad(key, v, "comma-separated ports 1-65535"),
            }
        }
    }
    warnings
}

/// `"8080, 9090"` → ports; `""` → none.
pub fn parse_ports(s: &str) -> Option<Vec<Port>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().ok().filter(|&n| n > 0).map(Port))
        .collect()
}

/// The numeric value of a Kubernetes quantity (`250m` → 0.25, `64Mi` → 67108864), or
/// `None` when it does not parse.
pub fn quantity_value(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::builtin_template;

    fn ann(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_apply() {
        let mut spec = builtin_template("img");
        let warnings = apply_overrides(
            &mut spec,
            Some(&ann(&[
                (a::PROXY_IMAGE, "registry.example/proxy:2"),
                (a::PROXY_CPU, "200m"),
                (a::PROXY_MEMORY, "256Mi"),
                (a::LOG_LEVEL, "debug"),
                (a::CAPTURE_MODE, "explicit"),
                (a::EXCLUDE_INBOUND_PORTS, "8081, 9090"),
                (a::EXCLUDE_OUTBOUND_PORTS, ""),
            ])),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(spec.image, "registry.example/proxy:2");
        assert_eq!(spec.resources.cpu_request.0, "200m");
        assert_eq!(spec.resources.memory_request.0, "256Mi");
        // 256Mi is above the default 128Mi limit: the limit follows.
        assert_eq!(spec.resources.memory_limit.as_ref().unwrap().0, "256Mi");
        assert_eq!(spec.log_level, LogLevel::Debug);
        assert_eq!(spec.capture_mode, CaptureMode::Explicit);
        assert_eq!(spec.exclude_inbound_ports, vec![Port(8081), Port(9090)]);
        assert!(spec.exclude_outbound_ports.is_empty());
    }

    #[test]
    fn bad_values_are_ignored_with_a_warning() {
        let mut spec = builtin_template("img");
        let before = spec.clone();
        let warnings = apply_overrides(
            &mut spec,
            Some(&ann(&[
                (a::PROXY_CPU, "lots"),
                (a::LOG_LEVEL, "loud"),
                (a::CAPTURE_MODE, "ebpf"),
                (a::EXCLUDE_INBOUND_PORTS, "80,70000"),
            ])),
        );
        assert_eq!(spec, before);
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(
            warnings[0].contains("remora.dev/proxy-cpu=\"lots\""),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_value("250m"), Some(0.25));
        assert_eq!(quantity_value("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1.5"), Some(1.5));
        assert_eq!(quantity_value("1x"), None);
        assert_eq!(quantity_value("Mi"), None);
    }
}
