//! `FaultGuard`: a mapping of a frontend's file that survives the file shrinking under it.
//!
//! Guest memory, the dirty log and the in-flight area are `MAP_SHARED` mappings of fds
//! the frontend keeps. If the frontend truncates such a file (`ftruncate` on an unsealed
//! memfd), the next access to a page past the new end raises SIGBUS, and SIGBUS kills the
//! whole process: every device it serves, not only the one whose frontend misbehaved.
//! Hugetlbfs pages that cannot be allocated and I/O errors on file-backed memory end the
//! same way.
//!
//! A guarded mapping is entered in a process-wide table that a SIGBUS handler (installed
//! once, when the first mapping is guarded) consults. For a fault the kernel raised inside
//! a guarded mapping, the handler maps private, zero-filled anonymous memory over the whole
//! mapping (so the access that faulted, and every later one, completes on memory nobody
//! else sees), records where the fault was, and signals the mapping's [`FaultNotice`]; the
//! connection that owns the notice then closes. Every other SIGBUS goes to the handler that
//! was installed before (Rust's own stack-overflow handler, or the default action), so a
//! fault anywhere else still ends the process as it would have.
//!
//! A memfd sealed with `F_SEAL_SHRINK` (QEMU's `memory-backend-memfd` seals by default)
//! cannot be truncated; it is guarded all the same, against the other causes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nix::libc;
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How many mappings can be guarded at once in a process (each frontend connection
/// holds one per memory region, plus its log). Beyond this a connection's new mappings
/// are refused (`MemoryError::Unguarded`); mappings nobody watches are made unguarded,
/// with a warning.
pub const MAX_GUARDED: usize = 4096;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

/// One guarded mapping, readable from the signal handler (atomics only).
struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    /// The notice's eventfd, or -1.
    notify: AtomicI32,
    /// 0 while intact; after a fault, one more than the offset of the first fault.
    fault: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    notify: AtomicI32::new(-1),
    fault: AtomicUsize::new(0),
};

static SLOTS: [Slot; MAX_GUARDED] = [EMPTY_SLOT; MAX_GUARDED];
/// One past the highest slot ever used: the handler scans no further.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
/// The SIGBUS action in force before ours, saved when ours was installed.
static PREVIOUS: OnceLock<Result<SavedAction, i32>> = OnceLock::new();

/// `libc::sigaction` as saved by [`install`].
struct SavedAction(libc::sigaction);

// SAFETY: the saved action is plain data (a handler address, flags, a mask); it is
// written once before the handler can run and only read afterwards.
unsafe impl Send for SavedAction {}
// SAFETY: as above: never written after it is shared.
unsafe impl Sync for SavedAction {}

/// An eventfd that becomes readable when a guarded mapping faults.
///
/// The connection thread polls it beside its socket; the signal handler writes it.
///
/// # Example
/// ```
/// use vhost_user_sync::sys::unix::FaultNotice;
/// let notice = FaultNotice::new().unwrap();
/// assert!(!notice.take()); // nothing has faulted
/// ```
#[derive(Debug)]
pub struct FaultNotice {
    fd: EventFd,
}

impl FaultNotice {
    /// A fresh notice (a non-blocking, close-on-exec eventfd).
    pub fn new() -> std::io::Result<Arc<Self>> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Arc::new(FaultNotice { fd }))
    }

    /// Whether a fault was signalled since the last call (clears the notice).
    pub fn take(&self) -> bool {
        let mut buf = [0u8; 8];
        matches!(nix::unistd::read(&self.fd, &mut buf), Ok(8))
    }
}

impl AsFd for FaultNotice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The registration of one mapping; dropping it takes the mapping out of the table. The
/// mapping must stay mapped, and its notice open, for as long as the guard lives, so a
/// type holding both a mapping and its guard declares the guard first (dropped first).
///
/// # Example
/// ```
/// use std::io::Read;
/// use vhost_user_sync::memory::GuestRegion;
/// use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// use vhost_user_sync::sys::unix::FaultNotice;
/// let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// let file = std::fs::File::from(fd);
/// file.set_len(0x2000).unwrap();
/// let notice = FaultNotice::new().unwrap();
/// let desc = MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x2000, userspace_addr: 0x7000_0000, mmap_offset: 0 };
/// let region = GuestRegion::map_watched(desc, file.try_clone().unwrap(), Some(notice.clone())).unwrap();
/// file.set_len(0).unwrap(); // the frontend shrinks the memory under the backend
/// let mut byte = [1u8];
/// region.slice(0x1000, 1).unwrap().copy_to(&mut byte[..]); // SIGBUS, survived
/// assert_eq!(byte, [0]);
/// assert_eq!(region.fault_offset(), Some(0x1000));
/// assert!(notice.take());
/// ```
#[derive(Debug)]
pub struct FaultGuard {
    slot: usize,
    _notice: Option<Arc<FaultNotice>>,
}

impl FaultGuard {
    /// Guards `len` bytes mapped at `start`, reporting a fault to `notice`. `None` when
    /// the table is full or the handler could not be installed (logged): the mapping then
    /// works as before, unguarded.
    ///
    /// # Safety
    /// `[start, start + len)` must be one whole mapping owned by the caller, which keeps it
    /// mapped until the guard is dropped and accepts that after a fault its contents are
    /// replaced by private zero-filled memory.
    pub unsafe fn new(
        start: *mut u8,
        len: usize,
        notice: Option<Arc<FaultNotice>>,
    ) -> Option<Self> {
        if len == 0 {
            return None;
        }
        if let Err(errno) = install() {
            log::warn!(
                "cannot install the SIGBUS handler (errno {errno}): a frontend that \
                 truncates shared memory can end the process"
            );
            return None;
        }
        let Some(slot) = (0..MAX_GUARDED).find(|&i| {
            SLOTS[i]
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }) else {
            log::warn!("{MAX_GUARDED} mappings are guarded already: this one ({len} bytes) is not");
            return None;
        };
        let s = &SLOTS[slot];
        s.start.store(start as usize, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.notify.store(
            notice.as_ref().map_or(-1, |n| n.fd.as_raw_fd()),
            Ordering::Relaxed,
        );
        s.fault.store(0, Ordering::Relaxed);
        HIGH_WATER.fetch_max(slot + 1, Ordering::AcqRel);
        s.state.store(ACTIVE, Ordering::Release);
        Some(FaultGuard {
            slot,
            _notice: notice,
        })
    }

    /// Where the mapping first faulted (offset from its start), if it has.
    pub fn fault_offset(&self) -> Option<usize> {
        SLOTS[self.slot]
            .fault
            .load(Ordering::Acquire)
            .checked_sub(1)
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        s.state.store(CLAIMED, Ordering::Release);
        s.notify.store(-1, Ordering::Relaxed);
        s.start.store(0, Ordering::Relaxed);
        s.len.store(0, Ordering::Relaxed);
        s.state.store(FREE, Ordering::Release);
    }
}

/// Installs the handler once for the process; the error (errno) is remembered.
fn install() -> Result<(), i32> {
    let saved = PREVIOUS.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigaction values; `ours` names a handler that
        // is async-signal-safe (atomics, mmap, write, sigaction, raise only).
        let rc = unsafe { libc::sigaction(libc::SIGBUS, &ours, &mut previous) };
        if rc == 0 {
            Ok(SavedAction(previous))
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    saved.as_ref().map(|_| ()).map_err(|e| *e)
}

/// The guarded slot holding `addr`, if any.
fn slot_of(addr: usize) -> Option<&'static Slot> {
    let high = HIGH_WATER.load(Ordering::Acquire).min(MAX_GUARDED);
    SLOTS[..high].iter().find(|s| {
        if s.state.load(Ordering::Acquire) != ACTIVE {
            return false;
        }
        let start = s.start.load(Ordering::Relaxed);
        let len = s.len.load(Ordering::Relaxed);
        addr >= start && addr - start < len
    })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for the signal.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for a memory access (not kill or sigqueue).
    if code > 0 {
        if let Some(slot) = slot_of(addr) {
            if replace(slot, addr) {
                return;
            }
        }
    }
    pass_on(sig, info, ctx);
}

/// Maps zeroes over the slot's mapping and signals its notice; false if that failed.
fn replace(slot: &Slot, addr: usize) -> bool {
    let start = slot.start.load(Ordering::Relaxed);
    let len = slot.len.load(Ordering::Relaxed);
    if slot.fault.load(Ordering::Acquire) == 0 {
        // SAFETY: [start, start + len) is one whole mapping its owner keeps mapped while
        // the slot is active (FaultGuard::new's contract), so MAP_FIXED replaces only
        // memory of that mapping; the owner accepted that its contents are replaced.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        slot.fault.store(addr - start + 1, Ordering::Release);
        let fd = slot.notify.load(Ordering::Relaxed);
        if fd >= 0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: the notice's eventfd stays open while the slot is active (the guard
            // holds the notice); `one` is 8 readable bytes. A full counter (EAGAIN) is
            // fine: the notice is pending already.
            unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        }
    }
    // Another thread may have replaced the mapping first: the access retries either way.
    true
}

/// Hands a SIGBUS that is not ours to the action that was installed before.
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(Ok(SavedAction(prev))) = PREVIOUS.get() else {
        return default_action(sig, info);
    };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: `info` is the kernel's, valid for this call.
        let code = unsafe { (*info).si_code };
        if handler == libc::SIG_IGN && code <= 0 {
            return; // a sent SIGBUS the process ignored before
        }
        return default_action(sig, info);
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action declared SA_SIGINFO, so its handler has this
        // signature; it gets the arguments the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the previous handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// Restores the default action: a fault then repeats and ends the process; a sent
/// signal is raised again (it stays pending until this handler returns).
fn default_action(sig: libc::c_int, info: *mut libc::siginfo_t) {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `dfl` is a valid action; the old one is not asked for.
    unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
    // SAFETY: `info` is the kernel's, valid for this call.
    if unsafe { (*info).si_code } <= 0 {
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

    fn memfd(len: u64) -> File {
        let fd =
            nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).expect("memfd");
        let f = File::from(fd);
        f.set_len(len).expect("len");
        f
    }

    fn map(file: &File, len: usize) -> MmapRegion {
        MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(file.try_clone().expect("dup"), 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .expect("map")
    }

    #[test]
    fn a_truncated_mapping_reads_zeroes_and_reports_where_it_faulted() {
        let file = memfd(0x4000);
        let region = map(&file, 0x4000);
        region
            .get_slice(0, 4)
            .expect("s")
            .copy_from(&[1u8, 2, 3, 4]);
        let notice = FaultNotice::new().expect("notice");
        // SAFETY: `region` is one whole mapping that outlives the guard.
        let guard =
            unsafe { FaultGuard::new(region.as_ptr(), region.size(), Some(notice.clone())) }
                .expect("guarded");
        file.set_len(0x1000).expect("shrink");
        let mut b = [9u8; 4];
        region.get_slice(0x2004, 4).expect("s").copy_to(&mut b[..]);
        assert_eq!(b, [0; 4]);
        assert_eq!(guard.fault_offset(), Some(0x2004));
        assert!(notice.take());
        assert!(!notice.take());
        // Writes complete too, on private memory.
        region.get_slice(0x3000, 4).expect("s").copy_from(&[5u8; 4]);
        drop(guard);
        drop(region);
    }

    #[test]
    fn slots_are_reused_after_the_guard_drops() {
        let file = memfd(0x1000);
        let region = map(&file, 0x1000);
        // One at a time, more than there are slots: each drop frees its slot.
        for _ in 0..(MAX_GUARDED + 10) {
            // SAFETY: `region` outlives each guard.
            let g = unsafe { FaultGuard::new(region.as_ptr(), region.size(), None) };
            assert!(g.is_some());
        }
    }

    /// Run in a child process by the test below (it takes every slot of the process).
    #[test]
    #[ignore = "run by a_watched_mapping_that_cannot_be_guarded_is_refused in a child process"]
    fn child_fills_every_slot() {
        if std::env::var_os("VHU_FAULT_CHILD").is_none() {
            return;
        }
        let file = memfd(0x1000);
        let region = map(&file, 0x1000);
        let guards: Vec<FaultGuard> = (0..MAX_GUARDED)
            // SAFETY: `region` outlives every guard.
            .map(|_| unsafe { FaultGuard::new(region.as_ptr(), region.size(), None) })
            .collect::<Option<_>>()
            .expect("a free slot");
        let desc = crate::protocol::payload::MemoryRegionDesc {
            guest_phys_addr: 0,
            memory_size: 0x1000,
            userspace_addr: 0,
            mmap_offset: 0,
        };
        let notice = FaultNotice::new().expect("notice");
        let watched = crate::memory::GuestRegion::map_watched(desc, memfd(0x1000), Some(notice));
        assert!(
            matches!(
                watched,
                Err(crate::memory::MemoryError::Unguarded { size: 0x1000 })
            ),
            "{watched:?}"
        );
        // Nobody watches a plain mapping: it is made, unguarded.
        assert!(crate::memory::GuestRegion::map(desc, memfd(0x1000)).is_ok());
        drop(guards);
        let notice = FaultNotice::new().expect("notice");
        assert!(crate::memory::GuestRegion::map_watched(desc, memfd(0x1000), Some(notice)).is_ok());
    }

    fn run_child(test: &str) -> std::process::ExitStatus {
        std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", test, "--ignored", "--test-threads=1"])
            .env("VHU_FAULT_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("child")
    }

    #[test]
    fn a_watched_mapping_that_cannot_be_guarded_is_refused() {
        let status = run_child("sys::unix::fault_guard::tests::child_fills_every_slot");
        assert!(status.success(), "{status:?}");
    }

    /// Run in a child process by the test below: a fault outside any guarded mapping.
    #[test]
    #[ignore = "run by an_unguarded_fault_still_ends_the_process in a child process"]
    fn child_faults_outside_the_guarded_mappings() {
        if std::env::var_os("VHU_FAULT_CHILD").is_none() {
            return;
        }
        let guarded_file = memfd(0x1000);
        let guarded = map(&guarded_file, 0x1000);
        // SAFETY: `guarded` outlives the guard.
        let _g = unsafe { FaultGuard::new(guarded.as_ptr(), guarded.size(), None) };
        let file = memfd(0x2000);
        let region = map(&file, 0x2000);
        file.set_len(0).expect("shrink");
        let mut b = [0u8; 1];
        region.get_slice(0x1000, 1).expect("s").copy_to(&mut b[..]);
        // Not reached: the process ends with SIGBUS above.
        std::process::exit(0);
    }

    #[test]
    fn an_unguarded_fault_still_ends_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let status =
            run_child("sys::unix::fault_guard::tests::child_faults_outside_the_guarded_mappings");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }
}
