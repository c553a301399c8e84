//! Worker threads: each owns its queues, its view of guest memory and the device's
//! data-path state, and waits in a mio poll for kicks, device fds and commands.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::device::queues::QueueAccess;
use crate::device::DeviceError;
use crate::device::{FdRegistry, Queue, QueueWorker, Queues};
use crate::memory::{DirtyLog, MemoryTable};
use crate::queue::{RingAddrs, RingState, Virtqueue};

use crate::device::fd_registry::DEVICE_TOKEN_BASE;

const WAKE: Token = Token(usize::MAX);

/// What the connection thread tells a worker.
pub(crate) enum WorkerCommand {
    /// Run this queue (its kick, call and err fds, enabled flag and logging set).
    Start(Box<Virtqueue>),
    /// Stop the queue and answer where it resumes (None if it was not running).
    Stop {
        index: u16,
        reply: Sender<Option<RingState>>,
    },
    /// Enable or disable the queue; answers once applied.
    Enable {
        index: u16,
        enabled: bool,
        done: Sender<()>,
    },
    SetCall {
        index: u16,
        call: Option<Arc<File>>,
    },
    SetErr {
        index: u16,
        err: Option<Arc<File>>,
    },
    /// Dirty logging on or off (VHOST_F_LOG_ALL), with the used-ring log address of each
    /// running ring that asked for it; answers when done.
    SetLog {
        log: Option<Arc<DirtyLog>>,
        rings: Vec<(u16, Option<u64>)>,
        done: Sender<()>,
    },
    /// Switch to a new memory table (and ring addresses) and answer when done.
    SetMemory {
        mem: Arc<MemoryTable>,
        rings: Vec<(u16, RingAddrs)>,
        done: Sender<()>,
    },
    /// The worker's own state for SET_DEVICE_STATE_FD (every ring stopped).
    SaveState {
        reply: Sender<Result<Vec<u8>, String>>,
    },
    /// Whether the worker would take this state; changes nothing.
    CheckState {
        state: Vec<u8>,
        reply: Sender<Result<(), String>>,
    },
    /// Take a state the worker accepted; answers once taken.
    LoadState {
        state: Vec<u8>,
        done: Sender<()>,
    },
}

/// The connection thread's handle on one worker thread.
pub(crate) struct WorkerHandle {
    name: String,
    tx: Sender<WorkerCommand>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    /// Disconnected when the thread ends (its sender is dropped there).
    exited: Receiver<()>,
    /// How long to wait for an answer, or for the thread to end.
    timeout: Duration,
}

/// A worker that did not answer a command in time: device code is stuck (a blocking
/// call that does not return). The connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("{worker} did not {what} within {waited:?}: device code is stuck")]
pub struct WorkerStuck {
    /// The worker thread's name.
    pub worker: String,
    /// What it was asked to do.
    pub what: &'static str,
    /// How long it was waited for.
    pub waited: Duration,
}

/// Set by a worker that died (device panic) so the connection thread closes.
pub(crate) struct FailureSignal {
    pub failed: AtomicBool,
    pub waker: Arc<Waker>,
}

impl WorkerHandle {
    /// Starts a worker thread for `worker`. With a non-zero `busy_poll`, a queue that
    /// had work is polled for that long after it runs dry before the worker re-enables
    /// notifications and sleeps.
    pub(crate) fn spawn<W: QueueWorker>(
        name: String,
        mut worker: W,
        mem: Arc<MemoryTable>,
        failure: Arc<FailureSignal>,
        busy_poll: Duration,
        timeout: Duration,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        worker.register_fds(&mut FdRegistry {
            registry: poll.registry(),
        })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        let (exit_tx, exited) = bounded::<()>(1);
        let thread_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _exit = exit_tx;
                let mut state = WorkerState {
                    name: name.clone(),
                    worker,
                    mem,
                    queues: Vec::new(),
                    poll,
                    busy_poll,
                    busy_until: None,
                    pending: Vec::new(),
                };
                let result = catch_unwind(AssertUnwindSafe(|| state.run(&rx)));
                alive2.store(false, Ordering::Release);
                if let Err(panic) = result {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    error!("{name}: device code panicked: {what}; closing the connection");
                    failure.failed.store(true, Ordering::Release);
                    let _ = failure.waker.wake();
                }
            })?;
        Ok(WorkerHandle {
            name: thread_name,
            tx,
            waker,
            thread: Some(thread),
            alive,
            exited,
            timeout,
        })
    }

    /// Waits for the answer to a command sent with [`Self::send`]; a worker that ended
    /// meanwhile (its reply sender dropped) is an answer of `None`.
    fn answer<T>(&self, rx: &Receiver<T>, what: &'static str) -> Result<Option<T>, WorkerStuck> {
        match rx.recv_timeout(self.timeout) {
            Ok(v) => Ok(Some(v)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(WorkerStuck {
                worker: self.name.clone(),
                what,
                waited: self.timeout,
            }),
        }
    }

    /// Sends a command; false if the worker is gone.
    pub(crate) fn send(&self, cmd: WorkerCommand) -> bool {
        if !self.alive.load(Ordering::Acquire) || self.tx.send(cmd).is_err() {
            return false;
        }
        self.waker.wake().is_ok()
    }

    /// Stops a queue and waits (bounded) for where it resumes.
    pub(crate) fn stop_queue(&self, index: u16) -> Result<Option<RingState>, WorkerStuck> {
        let (reply, rx) = bounded(1);
        if !self.send(WorkerCommand::Stop { index, reply }) {
            return Ok(None);
        }
        Ok(self.answer(&rx, "stop a ring")?.flatten())
    }

    /// Enables or disables a queue; returns once the worker applies it, so that a
    /// frontend that is told the ring is disabled can post buffers it will not see.
    pub(crate) fn set_enabled(&self, index: u16, enabled: bool) -> Result<(), WorkerStuck> {
        let (done, rx) = bounded(1);
        if self.send(WorkerCommand::Enable {
            index,
            enabled,
            done,
        }) {
            self.answer(&rx, "enable or disable a ring")?;
        }
        Ok(())
    }

    /// Switches dirty logging; returns once the worker applies it.
    pub(crate) fn set_log(
        &self,
        log: Option<Arc<DirtyLog>>,
        rings: Vec<(u16, Option<u64>)>,
    ) -> Result<(), WorkerStuck> {
        let (done, rx) = bounded(1);
        if self.send(WorkerCommand::SetLog { log, rings, done }) {
            self.answer(&rx, "switch dirty logging")?;
        }
        Ok(())
    }

    /// Switches the worker to `mem`; returns once it no longer uses the old table.
    pub(crate) fn set_memory(
        &self,
        mem: Arc<MemoryTable>,
        rings: Vec<(u16, RingAddrs)>,
    ) -> Result<(), WorkerStuck> {
        let (done, rx) = bounded(1);
        if self.send(WorkerCommand::SetMemory { mem, rings, done }) {
            // A worker that dies meanwhile drops `done`: the answer is `None` and its
            // old table is gone with it.
            self.answer(&rx, "switch to the new memory table")?;
        }
        Ok(())
    }
}

impl WorkerHandle {
    /// The worker's own state (see `QueueWorker::save_state`); a worker gone meanwhile
    /// has none to give, which is an error.
    pub(crate) fn save_state(&self) -> Result<Result<Vec<u8>, String>, WorkerStuck> {
        let (reply, rx) = bounded(1);
        let gone = || Err(format!("{} has ended", self.name));
        if !self.send(WorkerCommand::SaveState { reply }) {
            return Ok(gone());
        }
        Ok(self.answer(&rx, "save its state")?.unwrap_or_else(gone))
    }

    /// Whether the worker accepts `state` (see `QueueWorker::check_state`).
    pub(crate) fn check_state(&self, state: &[u8]) -> Result<Result<(), String>, WorkerStuck> {
        let (reply, rx) = bounded(1);
        let gone = || Err(format!("{} has ended", self.name));
        let state = state.to_vec();
        if !self.send(WorkerCommand::CheckState { state, reply }) {
            return Ok(gone());
        }
        Ok(self.answer(&rx, "check a state")?.unwrap_or_else(gone))
    }

    /// Hands the worker a state it accepted; returns once it took it.
    pub(crate) fn load_state(&self, state: &[u8]) -> Result<(), WorkerStuck> {
        let (done, rx) = bounded(1);
        let state = state.to_vec();
        if self.send(WorkerCommand::LoadState { state, done }) {
            self.answer(&rx, "load a state")?;
        }
        Ok(())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // Closing the channel and waking the worker makes it exit its loop.
        let (tx, _) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.tx, tx));
        let _ = self.waker.wake();
        let Some(t) = self.thread.take() else {
            return;
        };
        match self.exited.recv_timeout(self.timeout) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Device code blocked in a call that does not return: the connection
                // is closed without it. The thread ends, dropping its device state and
                // memory, when the call returns (it finds its channel closed).
                error!(
                    "{}: did not stop within {:?}; left to end on its own when device code returns",
                    self.name, self.timeout
                );
            }
            _ => {
                let _ = t.join();
            }
        }
    }
}

struct WorkerState<W> {
    name: String,
    worker: W,
    mem: Arc<MemoryTable>,
    queues: Vec<Option<Virtqueue>>,
    poll: Poll,
    /// How long to keep polling the rings after the last work (zero: never poll).
    busy_poll: Duration,
    /// While polling: when the polling period ends unless more work comes.
    busy_until: Option<Instant>,
    /// Queues whose last run stopped with work left: run again on the next pass of the
    /// loop, after the commands.
    pending: Vec<u16>,
}

/// Ring passes with work in a row before the worker looks at its fds and commands again
/// (the passes themselves make no system call).
const PASSES_PER_EVENT_CHECK: u32 = 64;

impl<W: QueueWorker> WorkerState<W> {
    fn run(&mut self, rx: &Receiver<WorkerCommand>) {
        let mut events = Events::with_capacity(64);
        loop {
            // While polling the rings, or with queues owed a run, only look for events;
            // otherwise sleep until one.
            let timeout = if self.busy_until.is_some() || !self.pending.is_empty() {
                Some(Duration::ZERO)
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!("{}: poll failed: {e}", self.name);
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {}
                    Token(t) if t < DEVICE_TOKEN_BASE => {
                        let index = t as u16;
                        self.drain_kick(index);
                        self.kicked(index);
                    }
                    Token(t) => self.device_event(t - DEVICE_TOKEN_BASE),
                }
            }
            // Commands are drained on every wake-up (a Waker event may coalesce).
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        debug!("{}: worker exits", self.name);
                        return;
                    }
                }
            }
            for index in std::mem::take(&mut self.pending) {
                self.kicked(index);
            }
            self.spin();
        }
    }

    /// While polling: passes over the rings, processing what came, until a pass finds
    /// nothing (back to the event check) or [`PASSES_PER_EVENT_CHECK`] passes had work.
    /// When the polling period is over, notifications are re-enabled and the worker
    /// sleeps again.
    fn spin(&mut self) {
        for _ in 0..PASSES_PER_EVENT_CHECK {
            let Some(until) = self.busy_until else {
                return;
            };
            let mut progress = false;
            for index in 0..self.queues.len() {
                let ready = match &self.queues[index] {
                    Some(q) if q.is_live() => q.has_available(&self.mem),
                    _ => false,
                };
                if ready {
                    progress |= self.run_queue(index as u16);
                }
            }
            let now = Instant::now();
            if progress {
                self.busy_until = Some(now + self.busy_poll);
                continue;
            }
            if now >= until {
                self.busy_until = None;
                self.rearm();
            }
            return;
        }
    }

    /// Ends a polling period: every ring asks for kicks again; one that received
    /// entries meanwhile is processed as if kicked.
    fn rearm(&mut self) {
        for index in 0..self.queues.len() {
            let Some(q) = &mut self.queues[index] else {
                continue;
            };
            if !q.is_live() {
                continue;
            }
            match q.enable_notification(&self.mem) {
                Ok(false) => {}
                Ok(true) => self.kicked(index as u16),
                Err(e) => q.set_broken(e),
            }
        }
    }

    fn slot(&mut self, index: u16) -> &mut Option<Virtqueue> {
        let i = usize::from(index);
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || None);
        }
        &mut self.queues[i]
    }

    fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Start(vq) => {
                let index = vq.index();
                if let Some(k) = vq.kick() {
                    let fd: RawFd = k.as_raw_fd();
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(usize::from(index)),
                        Interest::READABLE,
                    ) {
                        error!("{}: queue {index}: cannot watch kick fd: {e}", self.name);
                    }
                }
                if let Some(old) = self.slot(index).take() {
                    self.release(old);
                }
                *self.slot(index) = Some(*vq);
                self.worker.queue_state_changed(index, true);
                // The guest may have queued work before the kick fd arrived.
                self.kicked(index);
            }
            WorkerCommand::Stop { index, reply } => {
                let state = self.slot(index).take().map(|mut q| {
                    // The device finishes what it can of the chains it holds first.
                    self.worker
                        .queue_stopping(&mut Queue::new(&mut q, &self.mem));
                    let (state, account) = q.stop(&self.mem);
                    debug!(
                        "{}: queue {index} stopped at {state:?} after {} chain(s)",
                        self.name,
                        q.taken()
                    );
                    if account.rewound > 0 || account.returned_empty > 0 {
                        info!(
                            "{}: queue {index} stopped with {} chain(s) in flight: {} unused at \
                             the end of the ring are read again on restart, {} returned empty",
                            self.name,
                            account.rewound + account.returned_empty,
                            account.rewound,
                            account.returned_empty
                        );
                    }
                    self.release(q);
                    state
                });
                if state.is_some() {
                    self.worker.queue_state_changed(index, false);
                }
                let _ = reply.send(state);
            }
            WorkerCommand::Enable {
                index,
                enabled,
                done,
            } => {
                if let Some(q) = self.slot(index) {
                    q.set_enabled(enabled);
                }
                let _ = done.send(());
                if enabled {
                    self.kicked(index);
                }
            }
            WorkerCommand::SetCall { index, call } => {
                if let Some(q) = self.slot(index) {
                    q.set_call(call);
                }
            }
            WorkerCommand::SetErr { index, err } => {
                if let Some(q) = self.slot(index) {
                    q.set_err(err);
                }
            }
            WorkerCommand::SetLog { log, rings, done } => {
                for (index, used_gpa) in rings {
                    if let Some(q) = self.slot(index) {
                        q.set_ring_log(log.clone().zip(used_gpa));
                        q.set_buffer_log(log.clone());
                    }
                }
                let _ = done.send(());
            }
            WorkerCommand::SetMemory { mem, rings, done } => {
                self.mem = mem;
                for (index, addrs) in rings {
                    if let Some(q) = self.slot(index) {
                        q.set_addrs(addrs);
                    }
                }
                let _ = done.send(());
            }
            WorkerCommand::SaveState { reply } => {
                let _ = reply.send(self.worker.save_state().map_err(|e| e.to_string()));
            }
            WorkerCommand::CheckState { state, reply } => {
                let _ = reply.send(self.worker.check_state(&state).map_err(|e| e.to_string()));
            }
            WorkerCommand::LoadState { state, done } => {
                self.worker.load_state(&state);
                let _ = done.send(());
            }
        }
    }

    fn release(&mut self, q: Virtqueue) {
        if let Some(k) = q.kick() {
            let fd = k.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
    }

    fn drain_kick(&mut self, index: u16) {
        if let Some(Some(q)) = self.queues.get(usize::from(index)) {
            if let Some(k) = q.kick() {
                let mut buf = [0u8; 8];
                // Non-blocking eventfd: one read resets the counter; EAGAIN is fine.
                if nix::unistd::read(k, &mut buf).is_ok() {
                    q.stats().kicked();
                }
            }
        }
    }

    /// Processes queue `index` if it is running and enabled. A disabled ring is left
    /// alone (no side effects); enabling it calls this again, so what arrived in the
    /// meantime is processed and no kick is lost.
    fn kicked(&mut self, index: u16) {
        if self.run_queue(index) {
            self.busy_until = Some(Instant::now() + self.busy_poll);
        }
    }

    /// Processes queue `index` (if running and enabled); returns whether it took
    /// chains and the worker is polling (the ring is then left with notifications off).
    fn run_queue(&mut self, index: u16) -> bool {
        let mem = &self.mem;
        let worker = &mut self.worker;
        let polling = !self.busy_poll.is_zero();
        let Some(Some(q)) = self.queues.get_mut(usize::from(index)) else {
            return false;
        };
        if !q.is_live() {
            return false;
        }
        let ran = process(&self.name, worker, q, mem, polling);
        if ran.more && !self.pending.contains(&index) {
            self.pending.push(index);
        }
        ran.polled
    }

    fn device_event(&mut self, token: usize) {
        let mut access = QueueSet {
            queues: &mut self.queues,
            mem: &self.mem,
            refilled: Vec::new(),
        };
        let mut queues = Queues { inner: &mut access };
        if let Err(e) = self.worker.handle_event(token, &mut queues) {
            warn!("{}: device event {token}: {e}", self.name);
        }
        for index in std::mem::take(&mut access.refilled) {
            self.kicked(index);
        }
    }
}

/// Runs the device on queue `q` with notifications off. Without `polling` it re-enables
/// them when the ring is dry (going round again for entries that came meanwhile) and
/// returns false. With `polling`, a round that took chains returns true at once and
/// leaves notifications off: the worker's polling passes come back to the ring.
fn process<W: QueueWorker>(
    name: &str,
    worker: &mut W,
    q: &mut Virtqueue,
    mem: &Arc<MemoryTable>,
    polling: bool,
) -> Processed {
    let index = q.index();
    let mut idle_round = false;
    let mut polled = false;
    let mut more = false;
    for round in 0.. {
        if round == ROUNDS_PER_RUN {
            // Work keeps coming: leave notifications off and come back after the
            // commands and the other queues.
            more = true;
            break;
        }
        if let Err(e) = q.disable_notification(mem) {
            q.set_broken(e);
            break;
        }
        let before = q.taken();
        let mut queue = Queue::new(q, mem);
        let result = worker.process_queue(&mut queue);
        let spent = queue.budget_spent;
        if let Err(e) = result {
            log_device_error(name, index, &e);
        }
        if q.broken().is_some() {
            break;
        }
        // Entries published while notifications were off came without a kick: go
        // round again. A device that leaves entries it cannot use yet makes no
        // progress twice in a row; stop then, or this would spin.
        let progress = q.taken() != before;
        if polling && progress {
            polled = true;
            break;
        }
        if spent {
            // A ring's worth in one call: the ring is not dry, and the device is owed
            // another call without waiting for a kick.
            continue;
        }
        match q.enable_notification(mem) {
            Ok(true) if progress || !idle_round => {
                idle_round = !progress;
                continue;
            }
            Ok(_) => break,
            Err(e) => {
                q.set_broken(e);
                break;
            }
        }
    }
    q.signal(mem);
    Processed {
        polled: polled && q.broken().is_none(),
        more: more && q.broken().is_none(),
    }
}

/// How a run of [`process`] ended.
struct Processed {
    /// Chains were taken and the worker is polling (notifications left off).
    polled: bool,
    /// The run stopped with work left ([`ROUNDS_PER_RUN`] rounds had work): the queue
    /// must be run again without a kick.
    more: bool,
}

/// Calls of the device per run of a queue before the worker sees to its commands and
/// events again (each call takes at most a ring's worth of chains).
const ROUNDS_PER_RUN: u32 = 4;

fn log_device_error(name: &str, index: u16, e: &DeviceError) {
    warn!("{name}: queue {index}: {e}");
}

struct QueueSet<'a> {
    queues: &'a mut Vec<Option<Virtqueue>>,
    mem: &'a Arc<MemoryTable>,
    /// Queues that ran dry in the device event and have chains again: processed as if
    /// kicked once the event is handled.
    refilled: Vec<u16>,
}

impl QueueAccess for QueueSet<'_> {
    fn with_queue(&mut self, index: u16, f: &mut dyn FnMut(&mut Queue<'_>)) {
        let Some(Some(q)) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        if !q.is_live() {
            return;
        }
        let (ran_dry, spent) = {
            let mut queue = Queue::new(q, self.mem);
            f(&mut queue);
            (queue.ran_dry, queue.budget_spent)
        };
        if spent && !self.refilled.contains(&index) {
            // The device took a ring's worth: more may be waiting.
            self.refilled.push(index);
        }
        // Chains taken here, outside `process`, leave the point at which the guest
        // kicks behind (with EVENT_IDX, avail_event stays where the last `process` put
        // it): once the device has emptied the ring, the guest would refill it without
        // a kick, and a device waiting for buffers would wait until its next event.
        // Move that point up to what was taken; chains that came in the meantime came
        // without a kick, so they are processed as if kicked.
        if ran_dry && q.broken().is_none() {
            match q.enable_notification(self.mem) {
                Ok(true) if !self.refilled.contains(&index) => self.refilled.push(index),
                Ok(_) => {}
                Err(e) => q.set_broken(e),
            }
        }
        q.signal(self.mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Descriptor, DescriptorChain, Ring};
    use crossbeam_channel::RecvTimeoutError;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    const A: RingAddrs = RingAddrs {
        desc: 0,
        avail: 0x1000,
        used: 0x2000,
    };
    const SIZE: u16 = 8;
    const T: Duration = Duration::from_secs(5);

    /// What the test device does with the chains it pops.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Uses every chain (8 bytes).
        Use,
        /// Uses the first chain it ever pops and holds every later one.
        UseFirstHoldRest,
        /// Panics in `process_queue`.
        Panic,
        /// Blocks in `process_queue` until the test releases it (a read on a source
        /// that never answers).
        Block,
        /// Uses every chain and offers it again at once, as buffers that overlap the
        /// avail ring make the device's own writes do: the ring never runs dry.
        Feed,
    }

    /// What the worker saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Running(u16, bool),
        Popped(u16),
        Blocked,
    }

    struct TestWorker {
        mode: Mode,
        held: Vec<DescriptorChain>,
        used_one: bool,
        seen: Sender<Seen>,
        release: Option<Receiver<()>>,
        _alive: Arc<()>,
    }

    impl QueueWorker for TestWorker {
        fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
            if self.mode == Mode::Panic {
                panic!("device bug");
            }
            if let Some(release) = &self.release {
                let _ = self.seen.send(Seen::Blocked);
                let _ = release.recv();
            }
            while let Some(chain) = queue.pop() {
                if self.mode == Mode::Feed {
                    queue.add_used(&chain, 8)?;
                    offer(queue.mem(), &[chain.id()]);
                    continue;
                }
                let _ = self.seen.send(Seen::Popped(chain.id()));
                if self.mode == Mode::Use || !self.used_one {
                    self.used_one = true;
                    queue.add_used(&chain, 8)?;
                } else {
                    self.held.push(chain);
                }
            }
            Ok(())
        }

        fn queue_state_changed(&mut self, index: u16, running: bool) {
            if !running {
                self.held.clear();
            }
            let _ = self.seen.send(Seen::Running(index, running));
        }
    }

    fn eventfd() -> File {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap();
        File::from(std::os::fd::OwnedFd::from(fd))
    }

    /// Memory with a split ring of 8 at `A` whose descriptors are 8-byte writable
    /// buffers.
    fn memory() -> Arc<MemoryTable> {
        let m = crate::memory::test_table(0x10000);
        for i in 0..SIZE {
            let d = Descriptor {
                addr: 0x4000 + 0x100 * u64::from(i),
                len: 8,
                flags: Descriptor::F_WRITE,
                next: 0,
            };
            m.write(16 * u64::from(i), &d.to_bytes()).unwrap();
        }
        Arc::new(m)
    }

    /// The driver offers `heads`.
    fn offer(m: &MemoryTable, heads: &[u16]) {
        let mut idx = m.load::<u16>(A.avail + 2, Ordering::Acquire).unwrap();
        for &h in heads {
            let at = A.avail + 4 + 2 * u64::from(idx % SIZE);
            m.store::<u16>(at, h, Ordering::Relaxed).unwrap();
            idx = idx.wrapping_add(1);
        }
        m.store::<u16>(A.avail + 2, idx, Ordering::Release).unwrap();
    }

    fn used_idx(m: &MemoryTable) -> u16 {
        m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap()
    }

    fn signal(f: &File) {
        nix::unistd::write(f, &1u64.to_ne_bytes()).unwrap();
    }

    /// Waits until `f` (an eventfd) is signalled.
    fn wait_signalled(f: &File) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(f),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap() == 1
    }

    struct Setup {
        mem: Arc<MemoryTable>,
        handle: WorkerHandle,
        seen: Receiver<Seen>,
        kick: File,
        call: Arc<File>,
        failure: Arc<FailureSignal>,
        failure_poll: Poll,
        alive: Arc<()>,
    }

    fn spawn(mode: Mode) -> Setup {
        spawn_with(mode, T, None)
    }

    fn spawn_with(mode: Mode, timeout: Duration, release: Option<Receiver<()>>) -> Setup {
        let mem = memory();
        let (tx, seen) = crossbeam_channel::unbounded();
        let alive = Arc::new(());
        let worker = TestWorker {
            mode,
            held: Vec::new(),
            used_one: false,
            seen: tx,
            release,
            _alive: alive.clone(),
        };
        let failure_poll = Poll::new().unwrap();
        let failure = Arc::new(FailureSignal {
            failed: AtomicBool::new(false),
            waker: Arc::new(Waker::new(failure_poll.registry(), Token(7)).unwrap()),
        });
        let handle = WorkerHandle::spawn(
            "test-worker".into(),
            worker,
            mem.clone(),
            failure.clone(),
            Duration::ZERO,
            timeout,
        )
        .unwrap();
        Setup {
            mem,
            handle,
            seen,
            kick: eventfd(),
            call: Arc::new(eventfd()),
            failure,
            failure_poll,
            alive,
        }
    }

    impl Setup {
        /// Starts queue 0 on the worker.
        fn start(&self, enabled: bool) {
            let ring =
                Ring::new(&self.mem, SIZE, A, RingState::initial(false), false, false).unwrap();
            let mut vq = Virtqueue::new(0, ring, false);
            vq.set_kick(Some(self.kick.try_clone().unwrap()));
            vq.set_call(Some(self.call.clone()));
            vq.set_enabled(enabled);
            assert!(self.handle.send(WorkerCommand::Start(Box::new(vq))));
        }

        fn next_seen(&self) -> Seen {
            self.seen.recv_timeout(T).expect("the worker reports")
        }
    }

    #[test]
    fn a_kick_runs_the_queue_and_the_guest_is_called() {
        let s = spawn(Mode::Use);
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[3, 5]);
        signal(&s.kick);
        assert!(wait_signalled(&s.call), "the guest was called");
        assert_eq!(s.next_seen(), Seen::Popped(3));
        assert_eq!(s.next_seen(), Seen::Popped(5));
        assert_eq!(used_idx(&s.mem), 2);
    }

    #[test]
    fn a_stop_answers_where_the_ring_resumes_after_the_used_chains() {
        // Chain 0 used, chains 1 and 2 held when the ring stops: they are the unused
        // tail, so the ring resumes at 1 and the device is told to drop them.
        let s = spawn(Mode::UseFirstHoldRest);
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[0, 1, 2]);
        signal(&s.kick);
        for id in 0..3 {
            assert_eq!(s.next_seen(), Seen::Popped(id));
        }
        assert_eq!(
            s.handle.stop_queue(0).unwrap(),
            Some(RingState::Split { next_avail: 1 })
        );
        assert_eq!(s.next_seen(), Seen::Running(0, false));
        assert_eq!(used_idx(&s.mem), 1);
        // A queue that is not running has no state to give.
        assert_eq!(s.handle.stop_queue(0).unwrap(), None);
        assert_eq!(s.handle.stop_queue(200).unwrap(), None);
    }

    #[test]
    fn a_disabled_queue_is_left_alone_until_enabled() {
        let s = spawn(Mode::Use);
        s.start(false);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[4]);
        signal(&s.kick);
        // A command round trip: the kick, written before it, was handled first.
        s.handle.set_log(None, Vec::new()).unwrap();
        assert_eq!(used_idx(&s.mem), 0, "a disabled queue was processed");
        assert!(matches!(
            s.seen.try_recv(),
            Err(crossbeam_channel::TryRecvError::Empty)
        ));
        s.handle.set_enabled(0, true).unwrap();
        assert!(wait_signalled(&s.call));
        assert_eq!(s.next_seen(), Seen::Popped(4));
        assert_eq!(used_idx(&s.mem), 1);
    }

    #[test]
    fn a_ring_that_never_runs_dry_does_not_keep_the_worker_from_its_commands() {
        let s = spawn_with(Mode::Feed, Duration::from_secs(2), None);
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[0, 1, 2]);
        signal(&s.kick);
        // Every chain the device uses comes back at once; the worker still answers.
        s.handle
            .set_log(None, Vec::new())
            .expect("the worker answers");
        let state = s.handle.stop_queue(0).expect("the worker answers");
        assert!(state.is_some());
        assert_eq!(s.next_seen(), Seen::Running(0, false));
    }

    #[test]
    fn a_stuck_device_is_given_up_and_ends_once_released() {
        let (release, blocked) = bounded::<()>(1);
        let s = spawn_with(Mode::Block, Duration::from_millis(100), Some(blocked));
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[0]);
        signal(&s.kick);
        assert_eq!(s.next_seen(), Seen::Blocked);
        // The worker cannot answer: the wait ends with an error, not a hang.
        let e = s.handle.stop_queue(0).expect_err("a stuck worker answered");
        assert_eq!(e.what, "stop a ring");
        assert!(e.to_string().contains("test-worker"), "{e}");
        let e = s.handle.set_log(None, Vec::new()).expect_err("answered");
        assert_eq!(e.what, "switch dirty logging");
        // Dropping the handle gives up on joining it...
        let Setup {
            handle,
            seen,
            alive,
            ..
        } = s;
        drop(handle);
        assert!(
            Arc::strong_count(&alive) > 1,
            "the stuck device was dropped"
        );
        // ...and once device code returns, the thread ends and drops the device.
        release.send(()).unwrap();
        while seen.recv_timeout(T).is_ok() {}
        let deadline = Instant::now() + T;
        while Arc::strong_count(&alive) > 1 {
            assert!(Instant::now() < deadline, "the released worker did not end");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_panic_in_device_code_raises_the_failure_signal_and_ends_the_worker() {
        let mut s = spawn(Mode::Panic);
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        offer(&s.mem, &[0]);
        signal(&s.kick);
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + T;
        while !s.failure.failed.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "no failure signal");
            s.failure_poll.poll(&mut events, Some(T)).unwrap();
        }
        // The worker is gone: commands are refused, and the device state was dropped.
        let deadline = Instant::now() + T;
        while s.handle.send(WorkerCommand::SetCall {
            index: 0,
            call: None,
        }) {
            assert!(Instant::now() < deadline, "the worker still takes commands");
            std::thread::yield_now();
        }
        assert_eq!(s.handle.stop_queue(0).unwrap(), None);
        assert!(matches!(
            s.seen.recv_timeout(T),
            Err(RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn dropping_the_handle_joins_the_thread_and_drops_the_device() {
        let s = spawn(Mode::Use);
        s.start(true);
        assert_eq!(s.next_seen(), Seen::Running(0, true));
        let Setup { handle, alive, .. } = s;
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(handle);
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the worker's state outlived it"
        );
    }
}
