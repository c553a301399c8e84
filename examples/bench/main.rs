//! vhost-user load generator: drives any vhost-user backend the way a VMM would
//! (memfd guest memory, kick and call eventfds, EVENT_IDX and INDIRECT_DESC when the
//! backend offers them) and measures it.
//!
//! ```text
//! cargo run --release --example bench -- rng --socket /tmp/rng.sock --bs 4k --iodepth 32
//! cargo run --release --example bench -- blk --socket /tmp/blk.sock --rw randread --bs 4k --iodepth 32
//! cargo run --release --example bench -- net --socket /tmp/net.sock --pkt-size 64 --dir tx
//! cargo run --release --example bench -- rng --socket /tmp/rng.sock --bs 64 --scale 64
//! ```
//!
//! Progress goes to stderr once a second, the summary to stdout (`--json`: one JSON
//! object instead).

mod blk;
mod device;
mod engine;
mod error;
mod net;
mod report;
mod ring;
mod rng;
mod scale;
mod stats;
mod units;
mod watchdog;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use device::{check_socket, Device, DeviceOpts};
use error::{bail, Result};
use report::Report;
use watchdog::{Watchdog, SETUP_TIMEOUT};

/// Settings every workload shares.
#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// The backend's vhost-user socket.
    #[arg(long, visible_alias = "socket-path", value_name = "PATH")]
    socket: PathBuf,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    runtime: f64,
    /// Entries per virtqueue (a power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX even if offered.
    #[arg(long)]
    no_event_idx: bool,
    /// Do not negotiate VIRTIO_RING_F_INDIRECT_DESC even if offered.
    #[arg(long)]
    no_indirect: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Open N devices on the backend and measure per-device cost and kick-to-call
    /// latency with all of them active (one request in flight each).
    #[arg(long, value_name = "N")]
    scale: Option<usize>,
    /// With --scale: the backend's pid, instead of finding it through a connection of
    /// its own (for backends that mishandle a second connection on a socket).
    #[arg(long, value_name = "PID", requires = "scale")]
    backend_pid: Option<i32>,
}

impl Common {
    fn device_opts(&self) -> Result<DeviceOpts> {
        if self.queue_size == 0 || !self.queue_size.is_power_of_two() {
            bail!("--queue-size must be a power of two");
        }
        Ok(DeviceOpts {
            socket: self.socket.clone(),
            event_idx: !self.no_event_idx,
            indirect: !self.no_indirect,
            queue_size: self.queue_size,
        })
    }

    fn runtime(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.runtime)
            .map_err(|e| error::BenchError::new(format!("--runtime {}: {e}", self.runtime)))
    }
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// virtio-rng: request entropy buffers (MB/s, requests/s, latency).
    Rng {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: rng::RngArgs,
    },
    /// virtio-blk, fio-like (IOPS, MB/s, latency percentiles).
    Blk {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: blk::BlkArgs,
    },
    /// virtio-net: TX into the backend, RX out of it (Mpps, Gbit/s).
    Net {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: net::NetArgs,
    },
}

/// Drives a vhost-user backend with a chosen workload and measures it.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

fn run(cli: Cli) -> Result<()> {
    let (common, name) = match &cli.workload {
        Workload::Rng { common, .. } => (common, "rng"),
        Workload::Blk { common, .. } => (common, "blk"),
        Workload::Net { common, .. } => (common, "net"),
    };
    let opts = common.device_opts()?;
    let runtime = common.runtime()?;
    let progress = !common.quiet;
    if let Some(n) = common.scale {
        if n == 0 {
            bail!("--scale needs at least one device");
        }
        let sockets = scale::sockets(&common.socket, n);
        let with = |p: &std::path::Path| DeviceOpts {
            socket: p.to_path_buf(),
            ..opts.clone()
        };
        let (json, s) = (common.json, &sockets);
        return match &cli.workload {
            Workload::Rng { args, .. } => scale::run(
                s,
                common.backend_pid,
                runtime,
                progress,
                json,
                |p| rng::open(&with(p), args),
                |d| rng::probe(d, args),
            ),
            Workload::Blk { args, .. } => scale::run(
                s,
                common.backend_pid,
                runtime,
                progress,
                json,
                |p| blk::open(&with(p), args).map(|(d, _)| d),
                |d| blk::probe(d, args),
            ),
            Workload::Net { args, .. } => scale::run(
                s,
                common.backend_pid,
                runtime,
                progress,
                json,
                |p| net::open(&with(p), args),
                |d| net::probe(d, args),
            ),
        };
    }
    check_socket(&common.socket)?;
    let watch = Watchdog::arm(
        format!(
            "{}: no answer within {SETUP_TIMEOUT:?} while setting the device up",
            common.socket.display()
        ),
        SETUP_TIMEOUT,
    );
    let (mut dev, (meter, params, driver)): (Device, _) = match &cli.workload {
        Workload::Rng { args, .. } => {
            let mut d = rng::open(&opts, args)?;
            drop(watch);
            let r = rng::run(&mut d, args, runtime, progress)?;
            (d, r)
        }
        Workload::Blk { args, .. } => {
            let (mut d, sectors) = blk::open(&opts, args)?;
            drop(watch);
            let r = blk::run(&mut d, sectors, args, runtime, progress)?;
            (d, r)
        }
        Workload::Net { args, .. } => {
            let mut d = net::open(&opts, args)?;
            drop(watch);
            let r = net::run(&mut d, args, runtime, progress)?;
            (d, r)
        }
    };
    let secs = meter.elapsed();
    let report = Report {
        workload: name,
        params,
        device: dev.describe(),
        extra: driver,
    };
    report.print(&meter, secs, common.json);
    let watch = Watchdog::arm(
        format!(
            "{}: the backend did not stop its rings within {SETUP_TIMEOUT:?}",
            common.socket.display()
        ),
        SETUP_TIMEOUT,
    );
    dev.stop();
    drop(watch);
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
