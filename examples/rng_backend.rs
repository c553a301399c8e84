//! vhost-user virtio-rng backend.
//!
//! ```text
//! cargo run --release --example rng_backend -- --socket-path /tmp/vhost-user-rng.sock
//! qemu-system-x86_64 ... \
//!     -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem \
//!     -chardev socket,id=rng0,path=/tmp/vhost-user-rng.sock \
//!     -device vhost-user-rng-pci,chardev=rng0
//! ```

#[path = "common/mod.rs"]
mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use clap::Parser;
use vhost_user_sync::backend::Shutdown;
use vhost_user_sync::device::Device;
use vhost_user_sync_rng::RngDevice;

/// Serves a virtio-rng device over vhost-user, with entropy from the host.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    listen: common::ListenArgs,
    /// Where entropy comes from: it keys (and every megabyte reseeds) the ChaCha20
    /// generator that serves the guest.
    #[arg(long, default_value = "/dev/urandom")]
    source: String,
    /// Serve every request with a read of --source instead of the generator (for a
    /// hardware source whose bytes should reach the guest unchanged).
    #[arg(long)]
    passthrough: bool,
}

fn main() {
    let args = Args::parse();
    if args.listen.print_capabilities {
        common::print_capabilities("rng", &[]);
        return;
    }
    let shutdown = Shutdown::new();
    common::init_logging();
    // Opened here, before the device process is confined; every worker reads a duplicate.
    let source = match std::fs::File::open(&args.source) {
        Ok(f) => Arc::new(f),
        Err(e) => fail(format!("--source {}: {e}", args.source)),
    };
    let mut listeners = common::listeners(&args.listen, "/tmp/vhost-user-rng.sock", &shutdown)
        .unwrap_or_else(|e| fail(e));
    for p in listeners.iter().filter_map(|l| l.path()) {
        log::info!("listening on {}", p.display());
    }
    let passthrough = args.passthrough;
    let make = || {
        let dev = RngDevice::from_file(source.clone());
        if passthrough {
            dev.passthrough()
        } else {
            dev
        }
    };
    let device = common::DeviceProcess {
        fds: vec![source.as_raw_fd()],
        needs: make().sandbox_needs(),
        counters: None,
    };
    let result = common::run_device_process(&args.listen, &shutdown, &mut listeners, device, |l| {
        let result = common::serve_all(l, make);
        log::info!("exiting");
        result
    });
    if let Err(e) = result {
        drop(listeners);
        fail(e);
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    log::error!("{msg}");
    std::process::exit(1);
}
