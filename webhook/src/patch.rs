//! The JSON patch from the pod as received to the injected pod.
//!
//! A plain JSON diff turns "insert a container at index 0" into "replace every element",
//! and a replaced element loses any field our Kubernetes types do not know (a field newer
//! than k8s-openapi). So lists of named objects (containers, volumes, env) are diffed by
//! name: new elements are `add`ed at their index, existing ones are diffed field by field
//! and never replaced whole. Both sides come from the same typed round-trip, so fields we
//! do not model appear in neither and no operation touches them.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

/// The operations that turn `from` into `to`.
pub fn diff(from: &Value, to: &Value) -> Patch {
    let mut ops = Vec::new();
    let mut path = String::new();
    diff_into(from, to, &mut path, &mut ops);
    Patch(ops)
}

fn diff_into(from: &Value, to: &Value, path: &mut String, ops: &mut Vec<PatchOperation>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                with_segment(path, key, |p| {
                    ops.push(PatchOperation::Remove(RemoveOperation { path: pointer(p) }))
                });
            }
            for (key, value) in b {
                with_segment(path, key, |p| match a.get(key) {
                    Some(old) => diff_into(old, value, p, ops),
                    None => ops.push(add(p, value)),
                });
            }
        }
        (Value::Array(a), Value::Array(b)) if insertions_by_name(a, b) => {
            let mut old = a.iter().peekable();
            for (i, value) in b.iter().enumerate() {
                let index = i.to_string();
                with_segment(path, &index, |p| match old.peek() {
                    Some(o) if name(o) == name(value) => {
                        diff_into(o, value, p, ops);
                        old.next();
                    }
                    _ => ops.push(add(p, value)),
                });
            }
        }
        _ => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(path),
            value: to.clone(),
        })),
    }
}

/// True when both lists hold objects with distinct names and `b` keeps every element of
/// `a`, in order, with new ones in between.
fn insertions_by_name(a: &[Value], b: &[Value]) -> bool {
    let names_a: Option<Vec<&str>> = a.iter().map(name).collect();
    let names_b: Option<Vec<&str>> = b.iter().map(name).collect();
    let (Some(names_a), Some(names_b)) = (names_a, names_b) else {
        return false;
    };
    let distinct = |names: &[&str]| {
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.windows(2).all(|w| w[0] != w[1])
    };
    if !distinct(&names_a) || !distinct(&names_b) {
        return false;
    }
    let mut rest = names_b.iter();
    names_a.iter().all(|n| rest.any(|m| m == n))
}

fn name(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

fn with_segment<R>(path: &mut String, segment: &str, f: impl FnOnce(&mut String) -> R) -> R {
    let len = path.len();
    path.push('/');
    for c in segment.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
    let r = f(path);
    path.truncate(len);
    r
}

fn pointer(path: &str) -> PointerBuf {
    PointerBuf::parse(path).expect("built from escaped segments")
}

fn add(path: &str, value: &Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(path),
        value: value.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(from: Value, to: Value) -> Patch {
        let p = diff(&from, &to);
        let mut doc = from.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, to, "patch {}", serde_json::to_string(&p).unwrap());
        p
    }

    #[test]
    fn adds_whole_maps_and_escapes_keys() {
        let p = roundtrip(
            json!({"metadata": {"name": "a"}}),
            json!({"metadata": {"name": "a", "annotations": {"remora.dev/x": "1"}}}),
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"remora.dev/x": "1"}}])
        );
        let p = roundtrip(
            json!({"a": {"k/x~y": "1"}}),
            json!({"a": {"k/x~y": "1", "remora.dev/x": "2"}}),
        );
        assert_eq!(p.0[0].path().to_string(), "/a/remora.dev~1x");
    }

    #[test]
    fn named_lists_get_insertions_not_replacements() {
        let p = roundtrip(
            json!({"c": [{"name": "app", "image": "a"}, {"name": "b"}]}),
            json!({"c": [{"name": "proxy"}, {"name": "app", "image": "a", "env": []}, {"name": "b"}, {"name": "z"}]}),
        );
        let paths: Vec<String> = p.0.iter().map(|o| o.path().to_string()).collect();
        assert_eq!(paths, ["/c/0", "/c/1/env", "/c/3"]);
        assert!(p.0.iter().all(|o| matches!(o, PatchOperation::Add(_))));
    }

    #[test]
    fn other_lists_are_replaced() {
        roundtrip(json!({"a": [1, 2]}), json!({"a": [0, 1, 2]}));
        roundtrip(
            json!({"c": [{"name": "b"}, {"name": "a"}]}),
            json!({"c": [{"name": "a"}, {"name": "b"}]}),
        );
        roundtrip(json!({"x": 1, "y": 2}), json!({"y": 3}));
        assert!(diff(&json!({"a": 1}), &json!({"a": 1})).0.is_empty());
    }
}
