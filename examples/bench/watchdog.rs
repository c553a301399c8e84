//! A timer that ends the program with a message when a step hangs: the frontend's
//! requests block until the backend answers, and a backend that never does (one that
//! serves a single connection at a time, say) must not hang the benchmark.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long a device's handshake (or teardown) may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Exits the process with `message` unless dropped within the timeout.
#[derive(Debug)]
pub struct Watchdog {
    _disarm: Sender<()>,
}

impl Watchdog {
    /// Starts the timer.
    pub fn arm(message: String, timeout: Duration) -> Self {
        let (tx, rx) = channel::<()>();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                eprintln!("bench: {message}");
                std::process::exit(1);
            }
        });
        Watchdog { _disarm: tx }
    }
}
