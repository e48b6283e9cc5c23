//! The Prometheus text format, as far as the tests read it.

use std::collections::BTreeMap;

/// One sample: metric name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{k="v",...} value` lines; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => {
                    let (_, c) = chars.next()?;
                    value.push(if c == 'n' { '\n' } else { c });
                }
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// The sum of `name`'s samples whose labels include every `(key, value)` of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# HELP x help\n# TYPE x counter\nx_total 3\n\
                    upstream_request_total{cluster=\"reviews.bookinfo:9080|v1\"} 1900\n\
                    ratelimit_requests_total{limit=\"bookinfo/reviews/limited\",result=\"limited\"} 3\n\
                    odd{v=\"a\\\"b,c\"} 1.5\n";
        let s = parse(text);
        assert_eq!(sum(&s, "x_total", &[]), 3.0);
        assert_eq!(
            sum(
                &s,
                "upstream_request_total",
                &[("cluster", "reviews.bookinfo:9080|v1")]
            ),
            1900.0
        );
        assert_eq!(
            sum(&s, "ratelimit_requests_total", &[("result", "limited")]),
            3.0
        );
        assert_eq!(s[3].labels["v"], "a\"b,c");
        assert_eq!(sum(&s, "missing", &[]), 0.0);
    }
}
