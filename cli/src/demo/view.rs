//! The live terminal view: a progress bar and, per route, calls, success,
//! latency and what the route shows (canary split, 429s), then the caller
//! identities the servers' apps received. Redrawn in place on a terminal.

use std::{fmt::Write as _, io::Write as _};

use super::report::{Report, short_hash, thousands};

/// Redraws a frame over the previous one.
#[derive(Default)]
pub struct Live {
    lines: usize,
}

impl Live {
    pub fn draw(&mut self, frame: &str) {
        // A wrapped line would throw off the count of lines to move up.
        let frame = fit(frame, terminal_width());
        let frame = frame.as_str();
        let mut err = std::io::stderr().lock();
        if self.lines > 0 {
            // Up to the first line of the last frame, and clear below.
            let _ = write!(err, "\x1b[{}F\x1b[J", self.lines);
        }
        let _ = err.write_all(frame.as_bytes());
        let _ = err.flush();
        self.lines = frame.lines().count();
    }

    /// Removes the last frame (the summary replaces it).
    pub fn clear(&mut self) {
        if self.lines > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\x1b[{}F\x1b[J", self.lines);
            let _ = err.flush();
            self.lines = 0;
        }
    }
}

/// The width of the terminal on stderr, if it is one.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the winsize we pass; on failure we ignore it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some(ws.ws_col as usize)
    }
}

/// Every line cut to `width - 1` characters.
fn fit(frame: &str, width: Option<usize>) -> String {
    let Some(width) = width else {
        return frame.to_owned();
    };
    let mut out = String::with_capacity(frame.len());
    for line in frame.lines() {
        out.extend(line.chars().take(width.saturating_sub(1)));
        out.push('\n');
    }
    out
}

pub fn progress_bar(elapsed: f64, total: f64, width: usize) -> String {
    let done = if total > 0.0 {
        ((elapsed / total).clamp(0.0, 1.0) * width as f64).round() as usize
    } else {
        width
    };
    format!("[{}{}]", "█".repeat(done), "░".repeat(width - done))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

/// One frame from the numbers so far.
pub fn frame(r: &Report, elapsed: f64, total: f64, addresses: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "remoractl demo · {} · {} sidecars on {} · {} mTLS · config {}",
        r.config.namespace,
        r.pods.len(),
        addresses,
        r.mtls.mode,
        short_hash(&r.config.hash)
    );
    let _ = writeln!(
        o,
        "{} {:>5.1} s / {:.0} s · {} calls/s\n",
        progress_bar(elapsed, total, 30),
        elapsed,
        total,
        r.rate
    );
    let _ = writeln!(
        o,
        "{:<9} {:<9} {:>7} {:>7} {:>9} {:>9}   SHOWS",
        "ROUTE", "PROTOCOL", "CALLS", "OK %", "P50", "P99"
    );
    for route in &r.routes {
        let shows = match route.service.as_str() {
            s if r.canary.as_ref().is_some_and(|c| c.service == s) => {
                let c = r.canary.as_ref().expect("checked");
                let split: Vec<String> = c
                    .served
                    .iter()
                    .map(|(k, n)| format!("{k} {} ({:.1} %)", thousands(*n), c.percent[k]))
                    .collect();
                let target: Vec<String> = c.target.values().map(u32::to_string).collect();
                format!("{} · target {}", split.join(" · "), target.join("/"))
            }
            s if r.rate_limit.as_ref().is_some_and(|l| l.service == s) => {
                let l = r.rate_limit.as_ref().expect("checked");
                let tenants: Vec<String> = l
                    .tenants
                    .iter()
                    .map(|(t, x)| format!("{t} 429 × {}", thousands(x.limited_429)))
                    .collect();
                format!(
                    "{} · limit {}/s per {}",
                    tenants.join(" · "),
                    l.requests_per_second,
                    l.per_header.as_deref().unwrap_or("pod"),
                )
            }
            _ => match route.failed {
                0 => String::new(),
                n => format!("{} failed", thousands(n)),
            },
        };
        let _ = writeln!(
            o,
            "{:<9} {:<9} {:>7} {:>7.1} {:>9} {:>9}   {}",
            route.service,
            route.protocol,
            thousands(route.requests),
            route.success_percent,
            ms(route.p50_ms),
            ms(route.p99_ms),
            shows
        );
    }
    let _ = writeln!(
        o,
        "\nCALLERS THE SERVERS' APPS RECEIVED (x-forwarded-client-cert, verified by their sidecars)"
    );
    for s in &r.mtls.servers {
        let callers: Vec<String> = s
            .callers
            .iter()
            .map(|(id, n)| format!("{id} × {}", thousands(*n)))
            .collect();
        let _ = writeln!(
            o,
            "{:<12} {}",
            s.pod,
            if callers.is_empty() {
                "-".into()
            } else {
                callers.join(", ")
            }
        );
    }
    let handshakes: Vec<String> = r
        .mtls
        .handshakes
        .iter()
        .map(|(k, v)| format!("{k} {}", thousands(*v as u64)))
        .collect();
    let _ = writeln!(
        o,
        "\nSIDECARS (/metrics) · TLS handshakes: {}",
        if handshakes.is_empty() {
            "-".into()
        } else {
            handshakes.join(" · ")
        }
    );
    let _ = writeln!(o, "Ctrl-C stops early and still prints the summary.");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_to_the_terminal() {
        assert_eq!(fit("abcdef\n█████\n", Some(4)), "abc\n███\n");
        assert_eq!(fit("abc\n", None), "abc\n");
    }

    #[test]
    fn the_bar_fills_with_time() {
        assert_eq!(progress_bar(0.0, 10.0, 4), "[░░░░]");
        assert_eq!(progress_bar(5.0, 10.0, 4), "[██░░]");
        assert_eq!(progress_bar(12.0, 10.0, 4), "[████]");
    }
}
