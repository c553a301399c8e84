//! A device whose requests have side effects: each request appends a line to a journal
//! file, then answers. With in-flight tracking, a request the backend took but did not
//! answer before it died is executed by the next backend on the same socket, before
//! anything new, and the guest sees every request answered exactly once.
//!
//! ```text
//! cargo run --example journal_backend -- --socket-path /tmp/journal.sock --journal /tmp/journal.log
//! ```
//!
//! A request is a readable `le32 seq, le32 flags` and a writable `le32` answer
//! (`seq ^ ANSWER_MASK`). Requests are used in reverse order of arrival, and one with
//! flag bit 1 set is held until the end of a later batch: completions are out of order
//! and published while older requests are still in flight. `--crash-at STEP` kills the
//! backend (SIGKILL, as a crash) at that step of a request with flag bit 0 set:
//! `popped` (taken, nothing done), `executed` (journal written), `answered` (answer
//! written, not used), `used` (used, not signalled) or `signalled` (all done).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use vhost_user_sync::prelude::*;

/// Not an assigned virtio device id.
const JOURNAL_DEVICE_ID: u32 = 0xfffe;

/// What the answer is: the request's sequence number with these bits flipped.
pub const ANSWER_MASK: u32 = 0x5a5a_5a5a;

/// Where the backend dies (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Step {
    Popped,
    Executed,
    Answered,
    Used,
    Signalled,
}

#[derive(Parser, Debug)]
struct Args {
    /// Unix socket path to listen on.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/tmp/vhost-user-journal.sock"
    )]
    socket_path: String,
    /// The journal: one line per executed request.
    #[arg(long, value_name = "FILE")]
    journal: String,
    /// Die at this step of the first request flagged for it.
    #[arg(long, value_name = "STEP")]
    crash_at: Option<Step>,
}

struct JournalDevice {
    journal: Arc<File>,
    crash_at: Option<Step>,
}

impl Device for JournalDevice {
    type Worker = JournalWorker;

    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("journal", JOURNAL_DEVICE_ID, 1)
            .with_max_queue_size(256)
            .with_inflight_tracking()
    }

    fn create_worker(&mut self, _index: usize) -> std::io::Result<JournalWorker> {
        Ok(JournalWorker {
            journal: self.journal.clone(),
            crash_at: self.crash_at,
            held: Vec::new(),
            later: Vec::new(),
        })
    }
}

struct JournalWorker {
    journal: Arc<File>,
    crash_at: Option<Step>,
    /// This batch: chain, sequence number, flagged for the crash, to hold.
    held: Vec<(DescriptorChain, u32, bool, bool)>,
    /// Executed in an earlier batch, used at the end of a later one.
    later: Vec<DescriptorChain>,
}

impl JournalWorker {
    fn maybe_crash(&self, step: Step, flagged: bool) {
        if flagged && self.crash_at == Some(step) {
            log::info!("journal: crashing at step {step:?}");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl QueueWorker for JournalWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        let carried = std::mem::take(&mut self.later);
        while let Some(chain) = queue.pop() {
            let mut req = [0u8; 8];
            if chain
                .reader(queue.mem())
                .read_exact_bytes(&mut req)
                .is_err()
            {
                queue.add_used(&chain, 0)?;
                continue;
            }
            let seq = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
            let (flagged, hold) = (req[4] & 1 != 0, req[4] & 2 != 0);
            self.maybe_crash(Step::Popped, flagged);
            self.held.push((chain, seq, flagged, hold));
        }
        for (chain, seq, flagged, _) in &self.held {
            (&*self.journal).write_all(format!("{seq}\n").as_bytes())?;
            self.maybe_crash(Step::Executed, *flagged);
            chain
                .writer(queue.mem())
                .write_all(&(seq ^ ANSWER_MASK).to_le_bytes())?;
            self.maybe_crash(Step::Answered, *flagged);
        }
        // Out of order: the newest first, then what earlier batches held.
        let mut crash_after_signal = false;
        while let Some((chain, _, flagged, hold)) = self.held.pop() {
            if hold {
                self.later.push(chain);
                continue;
            }
            queue.add_used(&chain, 4)?;
            self.maybe_crash(Step::Used, flagged);
            crash_after_signal |= flagged;
        }
        for chain in carried {
            queue.add_used(&chain, 4)?;
        }
        queue.notify();
        self.maybe_crash(Step::Signalled, crash_after_signal);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let journal = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.journal)?,
    );
    let shutdown = Shutdown::new();
    shutdown_on_signals(&shutdown)?;
    let mut listener = VhostUserListener::new(&args.socket_path, None)?.with_shutdown(shutdown);
    log::info!("listening on {}", args.socket_path);
    let crash_at = args.crash_at;
    listener.serve(|| JournalDevice {
        journal: journal.clone(),
        crash_at,
    })?;
    Ok(())
}
