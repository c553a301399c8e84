//! Sockets handed over by a service manager (systemd's socket activation: `LISTEN_FDS`
//! sockets from fd 3 on, meant for the process `LISTEN_PID`).

use std::os::fd::RawFd;

/// The first fd a service manager passes.
pub const LISTEN_FDS_START: RawFd = 3;

/// More passed fds than this is taken for a malformed `LISTEN_FDS`.
pub const MAX_LISTEN_FDS: RawFd = 1024;

/// The fds a service manager passed to this process, `LISTEN_FDS_START` on, or none when
/// `LISTEN_FDS` is absent, malformed (not a number from 1 to [`MAX_LISTEN_FDS`]) or meant
/// for another process (`LISTEN_PID`). The
/// variables are removed, so children do not take the fds for theirs, and each fd is
/// marked close-on-exec. Call it once, early, before other threads read the environment.
///
/// # Example
/// ```
/// // Run without a service manager: nothing was passed.
/// assert!(vhost_user_sync::sys::unix::listen_fds().is_empty());
/// ```
pub fn listen_fds() -> Vec<RawFd> {
    let fds = passed_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    for &fd in &fds {
        // SAFETY: borrowed only for this call; the service manager passed the fd open.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let cloexec = nix::fcntl::FdFlag::FD_CLOEXEC;
        if let Err(e) = nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_SETFD(cloexec)) {
            log::warn!("socket activation: fd {fd}: {e}");
        }
    }
    fds
}

/// The fds `LISTEN_PID` and `LISTEN_FDS` name for process `pid`.
fn passed_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Vec<RawFd> {
    let for_us = listen_pid.and_then(|p| p.parse::<u32>().ok()) == Some(pid);
    let count = listen_fds
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    if !for_us || !(1..=MAX_LISTEN_FDS).contains(&count) {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_are_taken_only_when_meant_for_this_process() {
        assert_eq!(passed_fds(Some("42"), Some("2"), 42), vec![3, 4]);
        assert_eq!(passed_fds(Some("42"), Some("1"), 43), Vec::<RawFd>::new());
        assert_eq!(passed_fds(None, Some("1"), 42), Vec::<RawFd>::new());
        assert_eq!(passed_fds(Some("42"), None, 42), Vec::<RawFd>::new());
        assert_eq!(passed_fds(Some("42"), Some("0"), 42), Vec::<RawFd>::new());
        assert_eq!(passed_fds(Some("42"), Some("-1"), 42), Vec::<RawFd>::new());
        assert_eq!(passed_fds(Some("x"), Some("1"), 42), Vec::<RawFd>::new());
        assert_eq!(
            passed_fds(Some("42"), Some("many"), 42),
            Vec::<RawFd>::new()
        );
        assert_eq!(
            passed_fds(Some("42"), Some("1025"), 42),
            Vec::<RawFd>::new()
        );
        assert_eq!(passed_fds(Some("42"), Some("1024"), 42).len(), 1024);
    }
}
