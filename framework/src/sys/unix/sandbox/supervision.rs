//! Forking a confined child and watching it: the child's setup sequence, the keeper
//! process of a namespace sandbox, the supervisor's restart loop.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{
    kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, pipe2, ForkResult, Pid};

use super::{fds, framework_syscalls, namespaces, private_root, privileges, seccomp_filter};
use crate::sandbox::{ChildExit, ConfinedChild, Sandbox, SandboxError, SandboxMode};

/// Status a child exits with when it could not confine itself (the reason went
/// through the report pipe).
const SETUP_FAILED: i32 = 125;

/// Signals the supervisor and a keeper take with `sigwait`.
fn watched_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// What the forked process is after its setup.
enum Role {
    /// The confined device process: run the body.
    Device,
    /// A namespace sandbox's keeper: exit with this status (the device's).
    Keeper(i32),
}

pub(crate) fn spawn_confined<F: FnOnce() -> i32>(
    sandbox: &Sandbox,
    body: F,
) -> Result<ConfinedChild, SandboxError> {
    let empty_root = match sandbox.mode {
        SandboxMode::Chroot => Some(make_empty_root()?),
        _ => None,
    };
    let result = fork_confined(sandbox, empty_root.clone(), body);
    if let Some(dir) = empty_root {
        // The child is inside it (or gone): the directory can go, the child keeps an
        // unlinked, empty root.
        let _ = std::fs::remove_dir(dir);
    }
    result
}

fn fork_confined<F: FnOnce() -> i32>(
    sandbox: &Sandbox,
    empty_root: Option<PathBuf>,
    body: F,
) -> Result<ConfinedChild, SandboxError> {
    let (report_rd, report_wr) = pipe2(OFlag::O_CLOEXEC).map_err(SandboxError::Fork)?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only this crate's setup and then `body`, on the one thread
    // fork leaves it; `Sandbox::spawn` documents that the caller forks while no other
    // thread holds a lock the child will take (glibc makes malloc safe across fork).
    match unsafe { fork() }.map_err(SandboxError::Fork)? {
        ForkResult::Parent { child } => {
            drop(report_wr);
            let mut reason = String::new();
            let _ = std::fs::File::from(report_rd).read_to_string(&mut reason);
            let keeper = sandbox.mode == SandboxMode::Namespace;
            if !reason.is_empty() {
                let _ = waitpid(child, None);
                return Err(SandboxError::Setup(reason));
            }
            Ok(ConfinedChild { pid: child, keeper })
        }
        ForkResult::Child => {
            drop(report_rd);
            let code = match confine(sandbox, parent, empty_root, &report_wr) {
                Ok(Role::Device) => {
                    drop(report_wr);
                    body()
                }
                Ok(Role::Keeper(code)) => code,
                Err(reason) => {
                    let _ = std::fs::File::from(report_wr).write_all(reason.as_bytes());
                    SETUP_FAILED
                }
            };
            std::process::exit(code)
        }
    }
}

/// The child's setup, in order: die with the parent, close fds, namespaces (and the
/// keeper fork) or chroot, user, capabilities, no_new_privs, seccomp.
fn confine(
    sandbox: &Sandbox,
    parent: Pid,
    empty_root: Option<PathBuf>,
    report: &OwnedFd,
) -> Result<Role, String> {
    die_with_parent(Some(parent))?;
    let mut keep = sandbox.keep.clone();
    keep.push(report.as_raw_fd());
    fds::close_all_except(&keep).map_err(|e| format!("closing inherited fds: {e}"))?;
    match sandbox.mode {
        SandboxMode::Namespace => {
            let ns = namespaces::enter(!sandbox.needs.keeps_host_network())
                .map_err(|e| format!("entering new namespaces: {e}"))?;
            if ns.user && sandbox.user.is_some() {
                return Err("--user needs root outside a user namespace".into());
            }
            // Blocked before the fork, so that the device's SIGCHLD waits for the keeper.
            watched_signals()
                .thread_block()
                .map_err(|e| format!("signal mask: {e}"))?;
            // SAFETY: as in `fork_confined`: this process has one thread.
            match unsafe { fork() }.map_err(|e| format!("starting pid 1 of the sandbox: {e}"))? {
                ForkResult::Parent { child } => {
                    // The keeper holds nothing of the device's: it only waits.
                    let _ = fds::close_all_except(&[]);
                    return Ok(Role::Keeper(keep_until_exit(child)));
                }
                ForkResult::Child => {
                    // The keeper is outside this pid namespace: getppid() says 0.
                    die_with_parent(None)?;
                    end_on_termination_signals()?;
                }
            }
            let paths: Vec<_> = sandbox
                .needs
                .paths()
                .map(|(p, a)| (p.to_path_buf(), a))
                .collect();
            private_root::pivot_to_private_root(&paths)
                .map_err(|e| format!("{}: {}", e.what, e.source))?;
        }
        SandboxMode::Chroot => {
            let dir = empty_root.ok_or("no empty root was made")?;
            private_root::chroot_into(&dir).map_err(|e| format!("{}: {}", e.what, e.source))?;
        }
        SandboxMode::None => {}
    }
    if let Some((uid, gid)) = sandbox.user {
        privileges::switch_user(uid, gid)
            .map_err(|e| format!("switching to uid {uid} gid {gid}: {e}"))?;
        // A change of credentials clears the parent-death signal: ask again.
        die_with_parent(None)?;
    }
    privileges::limit_capabilities(sandbox.needs.capabilities())
        .map_err(|e| format!("dropping capabilities: {e}"))?;
    privileges::no_new_privileges().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    let rules = framework_syscalls::rules_with(sandbox.needs.syscall_set().iter().copied());
    seccomp_filter::install(sandbox.seccomp, rules).map_err(|e| format!("seccomp: {e}"))?;
    // The body starts with no signal blocked (supervision blocks some in the parent).
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("signal mask: {e}"))?;
    Ok(Role::Device)
}

/// Asks for SIGKILL when the parent exits, then checks (where the parent is visible)
/// that it has not already.
fn die_with_parent(parent: Option<Pid>) -> Result<(), String> {
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal number; no pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "PR_SET_PDEATHSIG: {}",
            std::io::Error::last_os_error()
        ));
    }
    if parent.is_some_and(|p| getppid() != p) {
        return Err("the parent exited during setup".into());
    }
    Ok(())
}

/// Pid 1 of a namespace ignores signals it has no handler for. A device that does not
/// take SIGTERM, SIGINT or SIGHUP itself must still end on them, as it would outside:
/// these handlers end it with the status a shell gives a process killed by the signal.
fn end_on_termination_signals() -> Result<(), String> {
    extern "C" fn end(signal: libc::c_int) {
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(128 + signal) }
    }
    let action = SigAction::new(SigHandler::Handler(end), SaFlags::empty(), SigSet::empty());
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only calls _exit, which is async-signal-safe.
        unsafe { sigaction(s, &action) }.map_err(|e| format!("handler for {s}: {e}"))?;
    }
    Ok(())
}

/// The keeper: passes signals on to the device process and exits as it did (a
/// signal `s` as status 128 + s).
fn keep_until_exit(device: Pid) -> i32 {
    let set = watched_signals();
    if set.thread_block().is_err() {
        return SETUP_FAILED;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(device, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                Ok(_) => {}
                Err(_) => return SETUP_FAILED,
            },
            Ok(s) => {
                let _ = kill(device, s);
            }
            Err(_) => return SETUP_FAILED,
        }
    }
}

/// An empty directory for a chroot sandbox, mode 0: nothing in it, nothing to list.
fn make_empty_root() -> Result<PathBuf, SandboxError> {
    let base = std::env::temp_dir();
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = base.join(format!("vhost-user-sandbox-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o000)
        .create(&dir)
        .map_err(|source| SandboxError::EmptyRoot {
            dir: base.display().to_string(),
            source,
        })?;
    Ok(dir)
}

/// Reaps `child` (with WNOHANG when `poll`): `Ok(None)` while it runs.
pub(crate) fn wait_child(
    child: &ConfinedChild,
    poll: bool,
) -> Result<Option<ChildExit>, SandboxError> {
    let flags = poll.then_some(WaitPidFlag::WNOHANG);
    loop {
        match waitpid(child.pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(decode(child, code))),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(Some(ChildExit::Killed(s))),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => {
                if poll {
                    return Ok(None);
                }
            }
            Err(Errno::EINTR) => {}
            Err(source) => {
                return Err(SandboxError::Wait {
                    pid: child.pid.as_raw(),
                    source,
                })
            }
        }
    }
}

/// A keeper reports a device killed by signal `s` as status 128 + s.
fn decode(child: &ConfinedChild, code: i32) -> ChildExit {
    if child.keeper && code > 128 {
        if let Ok(s) = Signal::try_from(code - 128) {
            return ChildExit::Killed(s);
        }
    }
    ChildExit::Exited(code)
}

pub(crate) fn supervise<F: FnMut() -> i32>(
    sandbox: &Sandbox,
    mut body: F,
    max_restarts: u32,
    window: Duration,
) -> Result<ChildExit, SandboxError> {
    let set = watched_signals();
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(SandboxError::Fork)?;
    let result = supervise_blocked(sandbox, &mut body, &set, max_restarts, window);
    let _ = old.thread_set_mask();
    result
}

fn supervise_blocked<F: FnMut() -> i32>(
    sandbox: &Sandbox,
    body: &mut F,
    set: &SigSet,
    max_restarts: u32,
    window: Duration,
) -> Result<ChildExit, SandboxError> {
    let mut failures: Vec<Instant> = Vec::new();
    loop {
        let child = spawn_confined(sandbox, &mut *body)?;
        info!(
            "sandbox: device process {} started ({} sandbox, seccomp {})",
            child.pid, sandbox.mode, sandbox.seccomp
        );
        let mut stopping = false;
        let exit = loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => {
                    if let Some(exit) = wait_child(&child, true)? {
                        break exit;
                    }
                }
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)) => {
                    info!("{s}: stopping device process {}", child.pid);
                    stopping = true;
                    let _ = child.signal(Signal::SIGTERM);
                }
                Ok(s) => {
                    let _ = child.signal(s);
                }
                Err(source) => {
                    return Err(SandboxError::Wait {
                        pid: child.pid.as_raw(),
                        source,
                    })
                }
            }
        };
        if stopping || exit.is_clean() {
            info!("sandbox: device process {} {exit}", child.pid);
            return Ok(exit);
        }
        let now = Instant::now();
        failures.retain(|t| now.duration_since(*t) < window);
        failures.push(now);
        let count = failures.len() as u32;
        if count > max_restarts {
            return Err(SandboxError::TooManyRestarts {
                count,
                window,
                last: exit,
            });
        }
        warn!(
            "sandbox: device process {} {exit}; starting another ({count} of at most {max_restarts} failures within {window:?})",
            child.pid
        );
        // Back off a little more after each failure; a stop signal ends the wait.
        let pause = Duration::from_millis(50u64 << count.min(6));
        if let Some(s) = wait_for_stop(pause)? {
            info!("{s}: not restarting the device process");
            return Ok(exit);
        }
    }
}

/// Waits up to `pause` for SIGTERM, SIGINT or SIGHUP (blocked by the caller).
fn wait_for_stop(pause: Duration) -> Result<Option<Signal>, SandboxError> {
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    let deadline = Instant::now() + pause;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: sigtimedwait reads the set and the timeout (live locals) and writes no
        // siginfo (null is allowed).
        let r = unsafe { libc::sigtimedwait(stop.as_ref(), std::ptr::null_mut(), &ts) };
        if r > 0 {
            return Ok(Signal::try_from(r).ok());
        }
        match Errno::last() {
            Errno::EAGAIN => return Ok(None),
            Errno::EINTR => {}
            source => return Err(SandboxError::Wait { pid: 0, source }),
        }
    }
}

/// The strongest mode available here, found by trying it in a child.
pub(crate) fn probe_strongest() -> (SandboxMode, String) {
    let try_in_child = |attempt: fn() -> bool| -> bool {
        // SAFETY: the child runs `attempt` (an unshare or chroot call) and _exits.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: ends the probe child without running destructors.
                unsafe { libc::_exit(if attempt() { 0 } else { 1 }) }
            }
            Ok(ForkResult::Parent { child }) => {
                matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0)))
            }
            Err(_) => false,
        }
    };
    if try_in_child(|| namespaces::enter(true).is_ok()) {
        let how = if nix::unistd::geteuid().is_root() {
            "as root"
        } else {
            "through a user namespace"
        };
        return (
            SandboxMode::Namespace,
            format!("new namespaces are permitted {how}"),
        );
    }
    if try_in_child(|| nix::unistd::chroot("/").is_ok()) {
        return (
            SandboxMode::Chroot,
            "namespaces are not permitted here, chroot is".into(),
        );
    }
    (
        SandboxMode::None,
        "neither namespaces nor chroot are permitted here".into(),
    )
}
