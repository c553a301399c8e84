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

use clap::Parser;
use vhost_user_sync::backend::Shutdown;
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
    common::init(&shutdown);
    let mut listeners = match common::listeners(&args.listen, "/tmp/vhost-user-rng.sock", &shutdown)
    {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            std::process::exit(1);
        }
    };
    for p in listeners.iter().filter_map(|l| l.path()) {
        log::info!("listening on {}", p.display());
    }
    if let Err(e) = common::report_stats(&args.listen, &listeners, None) {
        log::error!("{e}");
        std::process::exit(1);
    }
    let (source, passthrough) = (args.source, args.passthrough);
    let device = || {
        let dev = RngDevice::new(&source);
        if passthrough {
            dev.passthrough()
        } else {
            dev
        }
    };
    if let Err(e) = common::serve_all(&mut listeners, device) {
        log::error!("{e}");
        drop(listeners);
        std::process::exit(1);
    }
    log::info!("exiting");
}
