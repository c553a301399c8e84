//! Clean exit on SIGINT/SIGTERM for backend programs.

use std::io;

use nix::sys::signal::{SigSet, Signal};

use super::Shutdown;

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns
/// afterwards) and starts a thread that triggers `shutdown` when one arrives. Call it
/// first thing in `main`.
///
/// # Example
/// ```no_run
/// use vhost_user_sync::backend::Shutdown;
/// let shutdown = Shutdown::new();
/// vhost_user_sync::sys::unix::shutdown_on_signals(&shutdown).unwrap();
/// ```
pub fn shutdown_on_signals(shutdown: &Shutdown) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(io::Error::from)?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                log::info!("{sig}: shutting down");
                shutdown.trigger();
            }
        })?;
    Ok(())
}
