//! In-flight tracking (INFLIGHT_SHMFD) across a backend crash, driven by our frontend:
//! `journal_backend` (a device whose requests have side effects) is killed at every
//! step of a request's life with requests in flight, a new backend takes over the same
//! socket and the frontend's in-flight area, and every request is answered exactly
//! once. Plus the area's untrusted inputs: bad SET_INFLIGHT_FD bodies and fds, and a
//! corrupted area on restart, each refused with the connection still serving.

#[path = "support/backend.rs"]
mod backend;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use backend::{BackendProcess, TempDir};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendError, FrontendMemory};
use vhost_user_sync::protocol::payload::InflightInfo;
use vhost_user_sync::protocol::{virtio, ProtocolFeatures as P};

const T: Duration = Duration::from_secs(10);
const QUEUE_SIZE: u16 = 64;
const ANSWER_MASK: u32 = 0x5a5a_5a5a;

/// One request posted: its id in the ring and where its answer goes.
struct Posted {
    seq: u32,
    answer: u64,
}

/// The frontend's side of one device: memory, the ring and the requests outstanding.
struct Guest {
    mem: FrontendMemory,
    q: DriverQueue,
    posted: HashMap<u16, Posted>,
    /// Sequence numbers answered, in the order their used entries were seen.
    answered: Vec<u32>,
}

fn connect(socket: &Path) -> Frontend {
    connect_as(socket, false)
}

/// A frontend on split or packed rings.
fn connect_as(socket: &Path, packed: bool) -> Frontend {
    let mut fe = Frontend::connect(socket).expect("connect");
    let want = virtio::VERSION_1 | virtio::PROTOCOL_FEATURES | virtio::RING_EVENT_IDX;
    let want_p = (P::REPLY_ACK | P::INFLIGHT_SHMFD | P::MQ).bits();
    let (_, p) = if packed {
        fe.negotiate_packed(want, want_p).expect("negotiate")
    } else {
        fe.negotiate(want, want_p).expect("negotiate")
    };
    assert!(
        p.contains(P::INFLIGHT_SHMFD),
        "INFLIGHT_SHMFD not offered: {p}"
    );
    fe
}

impl Guest {
    fn new(fe: &mut Frontend) -> Self {
        Self::with_layout(fe, false)
    }

    fn with_layout(fe: &mut Frontend, packed: bool) -> Self {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
        fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
        let q = if packed {
            DriverQueue::new_packed(&mem, 0, QUEUE_SIZE).expect("queue")
        } else {
            DriverQueue::new(&mem, 0, QUEUE_SIZE).expect("queue")
        };
        Guest {
            mem,
            q,
            posted: HashMap::new(),
            answered: Vec::new(),
        }
    }

    /// Posts request `seq` with `flags` (bit 0: the backend crashes on it; bit 1: it is
    /// held until a later batch) without kicking.
    fn post(&mut self, seq: u32, flags: u32) {
        let req = self.mem.alloc(8, 8).expect("alloc");
        let answer = self.mem.alloc(4, 4).expect("alloc");
        let mut body = seq.to_le_bytes().to_vec();
        body.extend_from_slice(&flags.to_le_bytes());
        self.mem.table().write(req, &body).expect("write request");
        self.mem
            .table()
            .write(answer, &[0; 4])
            .expect("clear answer");
        let head = self
            .q
            .add(self.mem.table(), &[(req, 8, false), (answer, 4, true)])
            .expect("add");
        assert!(self.posted.insert(head, Posted { seq, answer }).is_none());
    }

    /// Reaps every used entry there is, checking each answer.
    fn reap(&mut self) {
        while let Some(u) = self.q.pop_used(self.mem.table()).expect("used ring") {
            let p = self.posted.remove(&u.id).unwrap_or_else(|| {
                panic!("buffer {} used but not outstanding (used twice?)", u.id)
            });
            let mut a = [0u8; 4];
            self.mem.table().read(p.answer, &mut a).expect("answer");
            assert_eq!(u.len, 4, "request {} answered with {} bytes", p.seq, u.len);
            assert_eq!(
                u32::from_le_bytes(a) ^ ANSWER_MASK,
                p.seq,
                "request {} answer",
                p.seq
            );
            self.answered.push(p.seq);
        }
    }

    /// Reaps until nothing is outstanding.
    fn reap_all(&mut self) {
        let deadline = std::time::Instant::now() + T;
        while !self.posted.is_empty() {
            self.reap();
            if self.posted.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "requests never answered: {:?}",
                self.posted.values().map(|p| p.seq).collect::<Vec<_>>()
            );
            let _ = self.q.wait_call(Duration::from_millis(100));
        }
    }
}

fn journal_counts(path: &Path) -> HashMap<u32, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        let seq: u32 = line.parse().expect("journal line");
        *counts.entry(seq).or_default() += 1;
    }
    counts
}

const CRASH: u32 = 1;
const HOLD: u32 = 2;

/// A first batch of requests, two of them held by the backend while the others are
/// answered (and published: the used index moves past older requests still in
/// flight); then `count` more, the one at `flagged` marked, and the backend crashes at
/// `step` of it. A new backend on the same socket and area finishes them.
fn crash_and_resume(step: &str, count: u32, flagged: u32) {
    crash_and_resume_on(false, step, count, flagged);
    crash_and_resume_on(true, step, count, flagged);
}

/// A journal backend that will crash at a step, connected, with an in-flight area set
/// and the ring attached.
struct Started {
    first: BackendProcess,
    fe: Frontend,
    g: Guest,
    info: InflightInfo,
    area: File,
}

fn start_with_area(journal_arg: &str, step: &str, packed: bool) -> Started {
    let first = BackendProcess::start(
        "journal_backend",
        &["--journal", journal_arg, "--crash-at", step],
    );
    let mut fe = connect_as(&first.socket, packed);
    let mut g = Guest::with_layout(&mut fe, packed);
    let (info, area) = fe
        .get_inflight_fd(1, QUEUE_SIZE)
        .expect("GET_INFLIGHT_FD")
        .expect("an area");
    assert_eq!(info.num_queues, 1);
    fe.set_inflight_fd(&info, &area).expect("SET_INFLIGHT_FD");
    g.q.attach(&mut fe, &g.mem).expect("attach");
    Started {
        first,
        fe,
        g,
        info,
        area,
    }
}

/// The replacement for a crashed backend: same socket, same area (as QEMU keeps it),
/// the ring resumed at the used index the crashed backend published. Nothing kicked.
fn resume_after_crash(
    socket: &Path,
    journal_arg: &str,
    packed: bool,
    g: &mut Guest,
    info: &InflightInfo,
    area: &File,
) -> (BackendProcess, Frontend) {
    let second = BackendProcess::start_on(socket, "journal_backend", &["--journal", journal_arg]);
    let mut fe = connect_as(socket, packed);
    fe.set_mem_table(&g.mem).expect("SET_MEM_TABLE");
    fe.set_inflight_fd(info, area)
        .expect("SET_INFLIGHT_FD again");
    g.q.attach_after_loss(&mut fe, &g.mem)
        .expect("attach after loss");
    (second, fe)
}

fn crash_and_resume_on(packed: bool, step: &str, count: u32, flagged: u32) {
    let layout = if packed { "packed" } else { "split" };
    let dir = TempDir::new("inflight");
    let journal = dir.path().join("journal.log");
    let journal_arg = journal.to_string_lossy().into_owned();
    let Started {
        mut first,
        fe,
        mut g,
        info,
        area,
    } = start_with_area(&journal_arg, step, packed);
    let socket = first.socket.clone();
    let early = 6;
    for seq in 0..early {
        g.post(seq, if seq == 0 || seq == 3 { HOLD } else { 0 });
    }
    g.q.kick_now().expect("kick");
    let deadline = std::time::Instant::now() + T;
    while g.answered.len() < early as usize - 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "first batch not answered"
        );
        g.q.wait_call(Duration::from_millis(100)).expect("call");
        g.reap();
    }
    let count = early + count;
    for seq in early..count {
        g.post(seq, if seq == early + flagged { CRASH } else { 0 });
    }
    g.q.kick_now().expect("kick");
    let status = first.wait_exit();
    assert!(
        !status.success(),
        "the backend was to crash at {step}, it exited with {status}"
    );
    drop(fe);
    g.reap();
    let before: Vec<u32> = g.answered.clone();
    let (second, _fe) = resume_after_crash(&socket, &journal_arg, packed, &mut g, &info, &area);
    g.q.kick_now().expect("kick");
    g.reap_all();
    // Exactly once: every request answered once, the answers right (checked in reap).
    let mut all = g.answered.clone();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..count).collect::<Vec<_>>(),
        "{layout}: crash at {step}"
    );
    // Executed at least once; a request the guest saw answered before the crash was
    // not executed again.
    let counts = journal_counts(&journal);
    for seq in 0..count {
        let n = counts.get(&seq).copied().unwrap_or(0);
        assert!(n >= 1, "crash at {step}: request {seq} never executed");
        if before.contains(&seq) {
            assert_eq!(
                n, 1,
                "crash at {step}: request {seq} answered, then run again"
            );
        }
    }
    if step != "signalled" {
        let line = second.wait_log("submitted again", T);
        assert!(line.contains("request(s) left in flight"), "{line}");
    }
    drop(second);
    drop(first);
}

#[test]
fn a_crash_after_taking_a_request_loses_nothing() {
    crash_and_resume("popped", 12, 5);
}

#[test]
fn a_crash_after_executing_a_request_loses_nothing() {
    crash_and_resume("executed", 12, 0);
}

#[test]
fn a_crash_after_answering_before_use_loses_nothing() {
    crash_and_resume("answered", 12, 11);
}

#[test]
fn a_crash_after_use_before_the_signal_loses_nothing() {
    // Used in reverse order: request 3 is used after 11..4, before 2..0.
    crash_and_resume("used", 12, 3);
}

#[test]
fn a_crash_after_everything_was_signalled_repeats_nothing() {
    crash_and_resume("signalled", 12, 7);
}

#[test]
fn a_ring_full_of_requests_survives_a_crash() {
    // 32 requests of two descriptors each: every descriptor of the ring in use.
    crash_and_resume("used", 26, 20);
}

/// A backend and a frontend up to (not including) the ring setup.
fn set_up() -> (BackendProcess, Frontend, Guest, TempDir) {
    let dir = TempDir::new("inflight-bad");
    let journal = dir
        .path()
        .join("journal.log")
        .to_string_lossy()
        .into_owned();
    let be = BackendProcess::start("journal_backend", &["--journal", &journal]);
    let mut fe = connect(&be.socket);
    let g = Guest::new(&mut fe);
    (be, fe, g, dir)
}

fn expect_nack(r: Result<(), FrontendError>, what: &str) {
    match r {
        Err(FrontendError::Nack { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_in_flight_areas_are_refused_and_the_connection_serves_on() {
    let (be, mut fe, mut g, _dir) = set_up();
    let (info, area) = fe
        .get_inflight_fd(1, QUEUE_SIZE)
        .expect("GET_INFLIGHT_FD")
        .expect("area");
    let bad = |f: &dyn Fn(&mut InflightInfo)| {
        let mut i = info;
        f(&mut i);
        i
    };
    expect_nack(
        fe.set_inflight_fd(&bad(&|i| i.num_queues = 0), &area),
        "no queues",
    );
    expect_nack(
        fe.set_inflight_fd(&bad(&|i| i.num_queues = 9), &area),
        "more queues than the device has",
    );
    expect_nack(
        fe.set_inflight_fd(&bad(&|i| i.queue_size = 4096), &area),
        "queue size above the device's maximum",
    );
    expect_nack(
        fe.set_inflight_fd(&bad(&|i| i.mmap_size = 64), &area),
        "area smaller than its geometry",
    );
    expect_nack(
        fe.set_inflight_fd(&bad(&|i| i.mmap_offset = 1 << 20), &area),
        "offset beyond the file",
    );
    let eventfd = File::from(std::os::fd::OwnedFd::from(
        nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::empty())
            .expect("eventfd"),
    ));
    expect_nack(fe.set_inflight_fd(&info, &eventfd), "an eventfd");
    // A GET_INFLIGHT_FD the backend refuses is answered with an empty area.
    assert!(fe
        .get_inflight_fd(0, QUEUE_SIZE)
        .expect("answered")
        .is_none());
    be.wait_log("GET_INFLIGHT_FD refused", T);
    // The good area still works, and the ring serves.
    fe.set_inflight_fd(&info, &area).expect("SET_INFLIGHT_FD");
    g.q.attach(&mut fe, &g.mem).expect("attach");
    g.post(1, 0);
    g.q.kick_now().expect("kick");
    g.reap_all();
    assert_eq!(g.answered, vec![1]);
    drop(be);
}

#[test]
fn a_corrupted_area_on_restart_is_refused_by_name() {
    let (be, mut fe, mut g, _dir) = set_up();
    let (info, area) = fe
        .get_inflight_fd(1, QUEUE_SIZE)
        .expect("GET_INFLIGHT_FD")
        .expect("area");
    // The area is sealed against resizing, not against writes: version 9 at offset 8.
    area.write_all_at(&9u16.to_ne_bytes(), 8)
        .expect("write the area");
    fe.set_inflight_fd(&info, &area).expect("SET_INFLIGHT_FD");
    let refused = g.q.attach(&mut fe, &g.mem);
    assert!(
        matches!(refused, Err(FrontendError::Nack { .. })),
        "a ring started on a corrupted area: {refused:?}"
    );
    be.wait_log("has version 9", T);
    // A sealed area cannot be shrunk under the backend.
    assert!(area.set_len(0).is_err(), "the area is not sealed");
    drop(be);
}

#[test]
fn an_area_truncated_under_a_running_ring_ends_only_that_connection() {
    let (be, mut fe, mut g, _dir) = set_up();
    // The frontend's own memfd (not sealed), zeroed: a new area of version 0.
    let stride = (16 + 16 * u64::from(QUEUE_SIZE)).div_ceil(64) * 64;
    let fd = nix::sys::memfd::memfd_create("frontend-area", nix::sys::memfd::MFdFlags::empty())
        .expect("memfd");
    let area = File::from(fd);
    area.set_len(stride).expect("size");
    let info = InflightInfo {
        mmap_size: stride,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
    };
    fe.set_inflight_fd(&info, &area).expect("SET_INFLIGHT_FD");
    g.q.attach(&mut fe, &g.mem).expect("attach");
    g.post(1, 0);
    g.q.kick_now().expect("kick");
    g.reap_all();
    // Shrunk under the backend's mapping: the next request's record faults.
    area.set_len(0).expect("truncate");
    g.post(2, 0);
    g.q.kick_now().expect("kick");
    let line = be.wait_log("connection closed", T);
    assert!(
        line.contains("became inaccessible (in-flight area)"),
        "the close does not name the area: {line}"
    );
    // The backend serves the next frontend.
    let mut again = connect(&be.socket);
    assert!(again.get_features().is_ok());
    drop(be);
}

/// A backend can die between publishing used entries and writing the call eventfd, and
/// the driver then waits for an interrupt that never comes (a QEMU guest's disk stalls
/// for good). A ring that resumes from a previous process's area calls the driver once,
/// with no kick and nothing new posted.
#[test]
fn a_ring_resumed_after_a_crash_calls_the_driver() {
    for packed in [false, true] {
        let dir = TempDir::new("inflight-call");
        let journal = dir.path().join("journal.log");
        let mut run = start_with_area(journal.to_str().expect("utf-8"), "signalled", packed);
        run.g.post(0, 0);
        run.g.post(1, CRASH);
        run.g.q.kick_now().expect("kick");
        assert!(!run.first.wait_exit().success());
        drop(run.fe);
        run.g.reap();
        while run.g.q.wait_call(Duration::ZERO).expect("call fd") {}
        let (_second, _fe) = resume_after_crash(
            &run.first.socket,
            journal.to_str().expect("utf-8"),
            packed,
            &mut run.g,
            &run.info,
            &run.area,
        );
        assert!(
            run.g.q.wait_call(T).expect("call fd"),
            "{}: the resumed ring never called the driver",
            if packed { "packed" } else { "split" }
        );
    }
}
