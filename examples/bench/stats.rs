//! Counting: latency histograms, per-stream counters and the once-a-second progress
//! line.

use std::time::{Duration, Instant};

/// Sub-buckets per power of two: values are kept to within 1/32 (about 3 %).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// A log-linear histogram of nanosecond values, constant size whatever the run length.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) - SUB;
        ((u64::from(shift) + 1) * SUB + sub) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let low = (SUB + i % SUB) << shift;
        low + (1u64 << shift) / 2
    }

    /// Counts one value.
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    /// The value below which fraction `q` (0..=1) of the values lie.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    /// Mean value.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// How a stream's rates are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// Requests/s and MB/s (rng).
    Requests,
    /// IOPS and MB/s (blk).
    Io,
    /// Mpps and Gbit/s (net).
    Packets,
}

/// One counted flow of operations (rng requests, blk I/Os, TX or RX packets).
#[derive(Debug)]
pub struct Stream {
    /// Name in progress lines and reports.
    pub name: &'static str,
    /// How rates are shown.
    pub units: Units,
    /// Operations completed.
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Completion latencies, when kept.
    pub latency: Option<Histogram>,
    tick_ops: u64,
    tick_bytes: u64,
}

impl Stream {
    /// A stream; `latency` keeps a histogram.
    pub fn new(name: &'static str, units: Units, latency: bool) -> Self {
        Stream {
            name,
            units,
            ops: 0,
            bytes: 0,
            latency: latency.then(Histogram::default),
            tick_ops: 0,
            tick_bytes: 0,
        }
    }

    /// Counts one completed operation.
    pub fn complete(&mut self, bytes: u64, latency_ns: u64) {
        self.ops += 1;
        self.bytes += bytes;
        if let Some(h) = &mut self.latency {
            h.record(latency_ns);
        }
    }

    /// The rates of `ops` and `bytes` over `secs`, as the units show them.
    pub fn rates(&self, ops: u64, bytes: u64, secs: f64) -> String {
        let secs = secs.max(1e-9);
        let (ops_s, bytes_s) = (ops as f64 / secs, bytes as f64 / secs);
        match self.units {
            Units::Requests => format!("{:.1} MB/s {:.0} req/s", bytes_s / 1e6, ops_s),
            Units::Io => format!("{:.0} IOPS {:.1} MB/s", ops_s, bytes_s / 1e6),
            Units::Packets => format!("{:.3} Mpps {:.3} Gbit/s", ops_s / 1e6, bytes_s * 8.0 / 1e9),
        }
    }
}

/// The clock of a run: when it ends, when the next progress line is due, and the
/// streams it counts.
#[derive(Debug)]
pub struct Meter {
    /// The counted streams.
    pub streams: Vec<Stream>,
    label: String,
    start: Instant,
    deadline: Instant,
    last_tick: Instant,
    next_tick: Instant,
    progress: bool,
    /// Times the driver slept on call eventfds.
    pub waits: u64,
}

impl Meter {
    /// Starts a run of `runtime` that prints progress (on stderr) when `progress`.
    pub fn new(
        label: impl Into<String>,
        streams: Vec<Stream>,
        runtime: Duration,
        progress: bool,
    ) -> Self {
        let start = Instant::now();
        Meter {
            streams,
            label: label.into(),
            start,
            deadline: start + runtime,
            last_tick: start,
            next_tick: start + Duration::from_secs(1),
            progress,
            waits: 0,
        }
    }

    /// Whether the run goes on at `now`; prints the progress line when one is due.
    pub fn running(&mut self, now: Instant) -> bool {
        if now >= self.next_tick {
            self.tick(now);
        }
        now < self.deadline
    }

    /// How long the driver may sleep at `now` before it must look at the clock again.
    pub fn sleep_budget(&self, now: Instant) -> Duration {
        self.deadline
            .min(self.next_tick)
            .saturating_duration_since(now)
            .max(Duration::from_micros(100))
    }

    fn tick(&mut self, now: Instant) {
        let secs = now.duration_since(self.last_tick).as_secs_f64();
        if self.progress {
            let parts: Vec<String> = self
                .streams
                .iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        s.name,
                        s.rates(s.ops - s.tick_ops, s.bytes - s.tick_bytes, secs)
                    )
                })
                .collect();
            eprintln!(
                "[{:>4.0}s] {}: {}",
                now.duration_since(self.start).as_secs_f64(),
                self.label,
                parts.join(", ")
            );
        }
        for s in &mut self.streams {
            s.tick_ops = s.ops;
            s.tick_bytes = s.bytes;
        }
        self.last_tick = now;
        while self.next_tick <= now {
            self.next_tick += Duration::from_secs(1);
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5e6).abs() / 5e6 < 0.04, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9.9e6).abs() / 9.9e6 < 0.04, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        h.record(3);
        h.record(31);
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(1.0), 31);
        assert_eq!(Histogram::index(u64::MAX) + 1, h.counts.len());
    }
}
