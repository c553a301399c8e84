//! The system calls the framework itself makes while serving a device: the poll loop,
//! the connection (SCM_RIGHTS messages, memory tables mapped from fds, in-flight memfds),
//! worker threads, signals and what the Rust runtime does underneath. A device adds its
//! own with [`SandboxNeeds`](crate::sandbox::SandboxNeeds).

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Allowed with any arguments.
const ALWAYS: &[i64] = &[
    // Connection: messages with fds, the accept or connect that starts it.
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    // Poll loops, kick/call eventfds, wakers.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    // Guest memory and the in-flight region: maps of received fds, a sealed memfd.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    // Files the device opens inside its (empty) root; nothing is there to open unless
    // the device declared it.
    libc::SYS_openat,
    // Checking that a passed fd is an eventfd (`/proc/self/fd`).
    libc::SYS_readlinkat,
    // Threads, their names, locks and signals.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    // A sleep or poll interrupted by a handled signal (the SIGBUS guard) resumes here.
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
];

#[cfg(target_arch = "x86_64")]
const ALWAYS_X86_64: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_poll,
    libc::SYS_open,
    libc::SYS_readlink,
    libc::SYS_arch_prctl,
];

#[cfg(not(target_arch = "x86_64"))]
const ALWAYS_X86_64: &[i64] = &[];

/// The framework's allowlist as seccompiler rules: `socket` only for unix sockets
/// (a `--client` reconnect), everything else with any arguments.
pub fn framework_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALWAYS
        .iter()
        .chain(ALWAYS_X86_64)
        .map(|&n| (n, Vec::new()))
        .collect();
    if let Ok(unix_only) = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    {
        rules.insert(libc::SYS_socket, vec![unix_only]);
    }
    rules
}

/// `framework_rules` with `extra` allowed with any arguments (a device's list: its
/// entry replaces a conditional one of the framework's).
pub fn rules_with(extra: impl IntoIterator<Item = i64>) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = framework_rules();
    for n in extra {
        rules.insert(n, Vec::new());
    }
    rules
}
