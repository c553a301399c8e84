//! The final result: one summary line for people and one JSON object for scripts.

use std::fmt::Write as _;

use crate::stats::{Meter, Stream, Units};

/// A JSON value, written by hand (the report needs nothing more).
#[derive(Debug, Clone)]
pub enum Json {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A number (non-finite values are written as null).
    Num(f64),
    /// true or false.
    Bool(bool),
    /// An object, keys in insertion order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An empty object.
    pub fn obj() -> Self {
        Json::Obj(Vec::new())
    }

    /// Adds `key: value` to an object (ignored on other values).
    pub fn set(&mut self, key: &str, value: impl Into<Json>) -> &mut Self {
        if let Json::Obj(v) = self {
            v.push((key.to_string(), value.into()));
        }
        self
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Str(s) => write_str(out, s),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Num(n) if n.is_finite() => {
                let _ = write!(out, "{}", (n * 1e6).round() / 1e6);
            }
            Json::Num(_) => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Obj(v) => {
                out.push('{');
                for (i, (k, val)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, k);
                    out.push_str(": ");
                    val.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write(&mut s);
        f.write_str(&s)
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<&str> for Json {
    fn from(s: &str) -> Self {
        Json::Str(s.to_string())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Self {
        Json::Str(s)
    }
}

impl From<f64> for Json {
    fn from(n: f64) -> Self {
        Json::Num(n)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Self {
        Json::Bool(b)
    }
}

macro_rules! json_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Json {
            fn from(i: $t) -> Self {
                Json::Int(i64::try_from(i).unwrap_or(i64::MAX))
            }
        }
    )*};
}
json_int!(u8, u16, u32, u64, usize, i32, i64);

/// The result of one stream over `secs`: counts, rates and latency (µs).
pub fn stream_json(s: &Stream, secs: f64) -> Json {
    let secs = secs.max(1e-9);
    let mut j = Json::obj();
    j.set("ops", s.ops).set("bytes", s.bytes);
    let (ops_s, bytes_s) = (s.ops as f64 / secs, s.bytes as f64 / secs);
    match s.units {
        Units::Requests => {
            j.set("req_per_s", ops_s).set("mb_per_s", bytes_s / 1e6);
        }
        Units::Io => {
            j.set("iops", ops_s).set("mb_per_s", bytes_s / 1e6);
        }
        Units::Packets => {
            j.set("mpps", ops_s / 1e6)
                .set("gbit_per_s", bytes_s * 8.0 / 1e9);
        }
    }
    if let Some(h) = &s.latency {
        let us = |ns: u64| ns as f64 / 1e3;
        let mut l = Json::obj();
        l.set("mean", h.mean() / 1e3)
            .set("p50", us(h.quantile(0.5)))
            .set("p99", us(h.quantile(0.99)))
            .set("p99_9", us(h.quantile(0.999)))
            .set("max", us(h.max()));
        j.set("latency_us", l);
    }
    j
}

/// One line for a stream: rates, then latency when kept.
pub fn stream_line(s: &Stream, secs: f64) -> String {
    let mut line = format!("{} {}", s.name, s.rates(s.ops, s.bytes, secs));
    if let Some(h) = &s.latency {
        let us = |ns: u64| ns as f64 / 1e3;
        let _ = write!(
            line,
            " lat us p50 {:.1} p99 {:.1} p99.9 {:.1}",
            us(h.quantile(0.5)),
            us(h.quantile(0.99)),
            us(h.quantile(0.999))
        );
    }
    line
}

/// What a finished run produced: its settings, the device it ran on, and the meter.
pub struct Report {
    /// "rng", "blk" or "net".
    pub workload: &'static str,
    /// Settings of the run (sizes, depth, ...).
    pub params: Json,
    /// What was negotiated with the backend.
    pub device: Json,
    /// Extra results beyond the streams (kicks, waits, ...).
    pub extra: Json,
}

impl Report {
    /// Prints the summary line on stdout, or the JSON object when `json`.
    pub fn print(&self, meter: &Meter, secs: f64, json: bool) {
        if json {
            let mut results = Json::obj();
            for s in &meter.streams {
                results.set(s.name, stream_json(s, secs));
            }
            let mut j = Json::obj();
            j.set("workload", self.workload)
                .set("runtime_s", secs)
                .set("params", self.params.clone())
                .set("device", self.device.clone())
                .set("results", results)
                .set("driver", self.extra.clone());
            println!("{j}");
            return;
        }
        let streams: Vec<String> = meter.streams.iter().map(|s| stream_line(s, secs)).collect();
        println!(
            "{}: {} over {:.1} s ({})",
            self.workload,
            streams.join("; "),
            secs,
            flat(&self.params)
        );
    }
}

/// `key=value` pairs of an object, for summary lines.
pub fn flat(j: &Json) -> String {
    match j {
        Json::Obj(v) => v
            .iter()
            .map(|(k, val)| match val {
                Json::Str(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_escapes() {
        let mut j = Json::obj();
        j.set("a", "x\"y\n")
            .set("b", 3u32)
            .set("c", 0.5)
            .set("d", f64::NAN);
        assert_eq!(
            j.to_string(),
            r#"{"a": "x\"y\n", "b": 3, "c": 0.5, "d": null}"#
        );
    }
}
