//! vhost-user virtio-blk backend: a raw image file (or a host block device) as a guest
//! disk.
//!
//! ```text
//! truncate -s 1G /tmp/disk.img
//! cargo run --release --example blk_backend -- --image /tmp/disk.img
//! qemu-system-x86_64 ... \
//!     -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem \
//!     -chardev socket,id=blk0,path=/tmp/vhost-user-blk.sock \
//!     -device vhost-user-blk-pci,chardev=blk0,num-queues=1
//! ```

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use vhost_user_sync::backend::Shutdown;
use vhost_user_sync::device::Device;
use vhost_user_sync_blk::{
    Aio, BlkConfig, BlkCounters, BlkDevice, BlkMetrics, DiskImage, DiskOptions,
};

const DEFAULT_SOCKET: &str = "/tmp/vhost-user-blk.sock";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AioArg {
    /// io-uring, except for an image in memory (tmpfs): sync there.
    Auto,
    /// One io_uring per worker.
    #[value(name = "io-uring", alias = "io_uring")]
    IoUring,
    /// Blocking preadv/pwritev.
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Lock {
    /// Refuse to start when another program writes the image, and keep others from
    /// writing it while serving.
    On,
    /// No lock.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Flush {
    /// Writeback cache: writes complete in the host page cache, FLUSH makes them durable.
    On,
    /// Writethrough: every write is durable before it completes.
    Off,
}

/// Serves a virtio-blk device over vhost-user from a raw image.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    listen: common::ListenArgs,
    /// The raw image file or block device to serve (`--blk-file`, the name QEMU's
    /// vhost-user backend conventions give it, is the same option).
    #[arg(
        long,
        alias = "blk-file",
        value_name = "PATH",
        required_unless_present = "print_capabilities"
    )]
    image: Option<String>,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    direct: bool,
    /// Serve the image read-only.
    #[arg(long)]
    read_only: bool,
    /// Lock the image against a second writer (QEMU's lock bytes, seen by
    /// qemu-storage-daemon, QEMU and qemu-img). `off` for an image shared on purpose,
    /// such as shared storage during a migration between two backends.
    #[arg(long, value_enum, default_value = "on")]
    lock: Lock,
    /// How long to wait for the image's lock when another program holds it (a backend
    /// that just ended, whose in-flight I/O the kernel is still finishing, releases it
    /// moments later); 0: fail at once.
    #[arg(long, default_value_t = 5000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    lock_wait_ms: u64,
    /// Cache mode offered at start (the guest may switch it).
    #[arg(long, value_enum, default_value = "on")]
    flush: Flush,
    /// How requests reach the image: io-uring (requests in flight, completed out of
    /// order; falls back to sync, with a log line, where the kernel has no io_uring),
    /// sync (one blocking request at a time per worker), or auto: io-uring, except for
    /// an image in memory (tmpfs), whose copies finish inside the system call.
    #[arg(long, value_enum, default_value = "auto")]
    aio: AioArg,
    /// Request queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Run each queue on its own thread.
    #[arg(long)]
    worker_per_queue: bool,
    /// Device id returned by GET_ID (up to 20 bytes).
    #[arg(long, default_value = "vhost-user-sync")]
    serial: String,
}

/// The device's own counters, in the exit line.
fn describe(c: &BlkCounters) -> String {
    format!(
        "{} reads ({} bytes), {} writes ({} bytes), {} flushes, {} discards, \
         {} malformed, {} I/O errors, {} bounced, {} through io_uring",
        c.read_ops,
        c.read_bytes,
        c.write_ops,
        c.write_bytes,
        c.flush_ops,
        c.discard_ops,
        c.malformed,
        c.io_errors,
        c.bounced,
        c.ring_ops
    )
}

fn fail(msg: impl std::fmt::Display) -> ! {
    log::error!("{msg}");
    std::process::exit(1);
}

fn main() {
    let args = Args::parse();
    if args.listen.print_capabilities {
        // QEMU's docs/interop/vhost-user.json: type "block", features "blk-file"
        // (the image as --blk-file) and "read-only" (--read-only).
        common::print_capabilities("block", &["blk-file", "read-only"]);
        return;
    }
    let shutdown = Shutdown::new();
    common::init_logging();
    let Some(image) = &args.image else {
        fail("--image is required");
    };
    let options = DiskOptions {
        read_only: args.read_only,
        direct: args.direct,
        skip_lock: args.lock == Lock::Off,
    };
    let disk =
        Arc::new(open_waiting(image, options, args.lock_wait_ms).unwrap_or_else(|e| fail(e)));
    log::info!(
        "serving {image}: {} sectors, {}-byte blocks{}{}{}",
        disk.capacity(),
        disk.block_size(),
        if args.read_only { ", read-only" } else { "" },
        if args.direct { ", O_DIRECT" } else { "" },
        if args.lock == Lock::Off {
            ", unlocked"
        } else {
            ""
        }
    );
    let aio = match args.aio {
        AioArg::Auto => Aio::Auto,
        AioArg::IoUring => Aio::IoUring,
        AioArg::Sync => Aio::Sync,
    };
    match (args.aio, aio.wants_io_uring(&disk)) {
        (AioArg::Sync, _) => log::info!("requests done synchronously (--aio sync)"),
        (_, false) => log::info!(
            "requests done synchronously: {image} is in memory, where a copy finishes \
             inside the system call (--aio io-uring to use io_uring anyway)"
        ),
        (_, true) => match vhost_user_sync_blk::probe_io_uring() {
            Ok(()) => log::info!("requests through io_uring"),
            Err(e) => log::warn!("io_uring is not available ({e}): synchronous I/O"),
        },
    }
    let config = BlkConfig {
        num_queues: args.queues,
        worker_per_queue: args.worker_per_queue,
        writeback: args.flush == Flush::On,
        serial: args.serial.clone(),
        aio,
        ..BlkConfig::default()
    };
    if args.listen.socket_count > 1 && !args.read_only {
        log::warn!(
            "{} devices share one writable image: the guests must coordinate",
            args.listen.socket_count
        );
    }
    let mut listeners =
        common::listeners(&args.listen, DEFAULT_SOCKET, &shutdown).unwrap_or_else(|e| fail(e));
    for p in listeners.iter().filter_map(|l| l.path()) {
        log::info!("listening on {}", p.display());
        log::info!(
            "connect QEMU with: -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \
             -chardev socket,id=blk0,path={} -device vhost-user-blk-pci,chardev=blk0,num-queues={}",
            p.display(),
            args.queues
        );
    }
    let metrics = Arc::new(BlkMetrics::default());
    let counted = metrics.clone();
    let counters: common::DeviceCounters = Arc::new(move || {
        BlkCounters::NAMES
            .into_iter()
            .zip(counted.snapshot().values())
            .collect()
    });
    let make = || BlkDevice::new(config.clone(), disk.clone(), metrics.clone());
    let device = common::DeviceProcess {
        fds: disk.raw_fds(),
        needs: make().sandbox_needs(),
        counters: Some(counters),
    };
    let result = common::run_device_process(&args.listen, &shutdown, &mut listeners, device, |l| {
        let result = common::serve_all(l, make);
        log::info!("exiting: {}", describe(&metrics.snapshot()));
        result
    });
    if let Err(e) = result {
        drop(listeners);
        fail(e);
    }
}

/// Opens the image, waiting up to `wait_ms` for a lock another program holds.
fn open_waiting(image: &str, options: DiskOptions, wait_ms: u64) -> std::io::Result<DiskImage> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut said = false;
    loop {
        match DiskImage::open(image, options) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ResourceBusy
                    && std::time::Instant::now() < deadline =>
            {
                if !said {
                    log::warn!("{e}; waiting up to {wait_ms} ms for it to be released");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
