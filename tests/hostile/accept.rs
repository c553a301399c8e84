//! The listener when accepting fails: a backend out of file descriptors (EMFILE) must
//! serve the waiting frontend as soon as it has fds again, not only once another
//! frontend connects.

use nix::libc;

use crate::hostile::{class, connect, Case, Ctx, ALL};

pub static CASES: &[Case] = &[case!(accept_recovers_after_emfile, class::ACCEPT, ALL)];

/// The backend's RLIMIT_NOFILE, lowered for the life of this value.
struct LoweredFdLimit {
    pid: i32,
    saved: libc::rlimit,
}

impl LoweredFdLimit {
    fn to(pid: i32, soft: u64) -> LoweredFdLimit {
        let mut saved = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `saved` is a valid rlimit to write; no new limit is passed.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut saved) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let lowered = libc::rlimit {
            rlim_cur: soft,
            rlim_max: saved.rlim_max,
        };
        // SAFETY: `lowered` is a valid rlimit; the old one is not asked for.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lowered, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        LoweredFdLimit { pid, saved }
    }
}

impl Drop for LoweredFdLimit {
    fn drop(&mut self) {
        // SAFETY: `saved` is the limit read above; the old one is not asked for.
        unsafe {
            libc::prlimit(
                self.pid,
                libc::RLIMIT_NOFILE,
                &self.saved,
                std::ptr::null_mut(),
            )
        };
    }
}

fn accept_recovers_after_emfile(ctx: &Ctx<'_>) {
    let pid = ctx.proc.pid();
    // The kernel hands out the lowest free fd number: a limit there refuses the next.
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).expect("a free fd");
    let limit = LoweredFdLimit::to(pid, lowest_free);
    // The kernel queues the connection; the backend's accept fails for want of an fd.
    let mut fe = connect(ctx.socket);
    ctx.proc
        .wait_log(|l| l.contains("accept failed"), crate::hostile::T);
    drop(limit);
    // Nothing else connects: the queued frontend must be served all the same.
    fe.negotiate(u64::MAX, u64::MAX)
        .expect("the waiting frontend is served once fds are free");
}
