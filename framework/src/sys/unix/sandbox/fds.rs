//! Closing every fd a confined process was not asked to keep.

use std::io;
use std::os::fd::RawFd;

use nix::libc;

/// Closes every fd of the calling process except stdin, stdout, stderr and `keep`:
/// `close_range(2)` over the gaps between the kept fds, or one `close` per fd listed in
/// `/proc/self/fd` on a kernel without it.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut first = 3u32;
    for &fd in &kept {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes two integers and a flag word and touches no memory of
    // ours. The fds it closes are ones the caller asked to give up; nothing in this
    // process uses them afterwards (the caller keeps every fd its objects own).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    let listed: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first && fd <= last)
        .collect();
    for fd in listed {
        // SAFETY: as above, one fd at a time; an fd that is already gone (the directory
        // stream's own) returns EBADF, which is ignored.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn keeps_only_the_listed_fds() {
        // Run in a child process: closing fds under the test harness would break it.
        let a = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let b = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let c = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: the child runs only the checks below and _exits. It takes no lock
        // another harness thread could hold at the fork except malloc's, which glibc
        // makes safe across fork; it writes no stdio.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = close_all_except(&[b, -1, 1]).is_ok()
                    && fd_open(b)
                    && !fd_open(a)
                    && !fd_open(c.as_raw_fd())
                    && fd_open(2);
                // SAFETY: ends the child without running the harness's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        // SAFETY: a and b were turned into raw fds above and are closed once here.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }

    fn fd_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the fd's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }
}
