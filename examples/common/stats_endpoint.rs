//! `--stats-socket PATH`: the counters of every device, served while the program runs to
//! HTTP clients on a unix socket: `GET /metrics` in the Prometheus text format, any
//! other path as one JSON document.
//!
//! ```sh
//! curl --unix-socket /run/blk.stats http://localhost/          # JSON
//! curl --unix-socket /run/blk.stats http://localhost/metrics   # Prometheus
//! ```

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vhost_user_sync::backend::{DeviceSnapshot, DeviceStats};

use super::DeviceCounters;

/// Longest request read.
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Listens at `path` (replacing a stale socket there).
pub fn bind(path: &str) -> std::io::Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    }) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    log::info!("statistics on {path} (HTTP: /metrics for Prometheus, / for JSON)");
    Ok(listener)
}

/// Serves `stats` to the clients of `listener`, one at a time, on a thread of its own.
pub fn serve(
    listener: UnixListener,
    stats: Vec<DeviceStats>,
    device: Option<DeviceCounters>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stats-socket".into())
        .spawn(move || {
            for client in listener.incoming() {
                match client {
                    Ok(c) => {
                        if let Err(e) = answer(c, &stats, device.as_ref()) {
                            log::debug!("statistics client: {e}");
                        }
                    }
                    Err(e) => log::warn!("statistics socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn answer(
    mut c: UnixStream,
    stats: &[DeviceStats],
    device: Option<&DeviceCounters>,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    c.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let snapshots: Vec<DeviceSnapshot> = stats.iter().map(DeviceStats::snapshot).collect();
    let own = device.map(|f| f()).unwrap_or_default();
    let (body, kind) = if path == "/metrics" {
        (prometheus(&snapshots, &own), "text/plain; version=0.0.4")
    } else {
        (json(&snapshots, &own), "application/json")
    };
    write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The queue counters by name, in the order both formats list them.
pub fn queue_fields(q: &vhost_user_sync::queue::QueueCounters) -> [(&'static str, u64); 9] {
    [
        ("kicks", q.kicks),
        ("calls", q.calls),
        ("chains", q.chains),
        ("used", q.used),
        ("bytes_read", q.bytes_read),
        ("bytes_written", q.bytes_written),
        ("malformed", q.malformed),
        ("in_flight", q.in_flight),
        ("broken", q.broken),
    ]
}

/// A JSON string (device names are the program's own, but quotes and controls are
/// escaped all the same).
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(devices: &[DeviceSnapshot], own: &[(&str, u64)]) -> String {
    let mut out = String::from("{\"devices\": [");
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{{\"listener\": {i}, \"device\": {}, \"connected\": {}, \"connections\": {}, \
             \"uptime_s\": {:.3}, \"queues\": [",
            d.device.as_deref().map_or("null".to_string(), quoted),
            d.connected,
            d.connections,
            d.uptime.as_secs_f64()
        );
        for (q, c) in d.queues.iter().enumerate() {
            if q > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{{\"queue\": {q}");
            for (name, v) in queue_fields(c) {
                let _ = write!(out, ", \"{name}\": {v}");
            }
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push_str("], \"counters\": {");
    for (i, (name, v)) in own.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: {v}", quoted(name));
    }
    out.push_str("}}\n");
    out
}

fn prometheus(devices: &[DeviceSnapshot], own: &[(&str, u64)]) -> String {
    let mut out = String::new();
    let gauge = |name: &str| matches!(name, "in_flight" | "broken");
    let header = |out: &mut String, name: &str, kind: &str| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    header(&mut out, "vhost_user_connected", "gauge");
    for (i, d) in devices.iter().enumerate() {
        let _ = writeln!(
            out,
            "vhost_user_connected{{listener=\"{i}\"}} {}",
            u8::from(d.connected)
        );
    }
    header(&mut out, "vhost_user_connections_total", "counter");
    for (i, d) in devices.iter().enumerate() {
        let _ = writeln!(
            out,
            "vhost_user_connections_total{{listener=\"{i}\"}} {}",
            d.connections
        );
    }
    let names = queue_fields(&Default::default()).map(|(n, _)| n);
    for field in names {
        let (metric, kind) = if gauge(field) {
            (format!("vhost_user_queue_{field}"), "gauge")
        } else {
            (format!("vhost_user_queue_{field}_total"), "counter")
        };
        header(&mut out, &metric, kind);
        for (i, d) in devices.iter().enumerate() {
            for (q, c) in d.queues.iter().enumerate() {
                let v = queue_fields(c)
                    .iter()
                    .find(|(n, _)| *n == field)
                    .map_or(0, |f| f.1);
                let _ = writeln!(out, "{metric}{{listener=\"{i}\",queue=\"{q}\"}} {v}");
            }
        }
    }
    for (name, v) in own {
        let metric = format!("vhost_user_device_{name}_total");
        header(&mut out, &metric, "counter");
        let _ = writeln!(out, "{metric} {v}");
    }
    out
}
