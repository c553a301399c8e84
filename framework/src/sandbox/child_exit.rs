//! `ChildExit`: how a confined device process ended.

use std::fmt;

use nix::sys::signal::Signal;

/// How a device process ended.
///
/// # Example
/// ```
/// use nix::sys::signal::Signal;
/// use vhost_user_sync::sandbox::ChildExit;
/// assert!(ChildExit::Exited(0).is_clean());
/// assert!(!ChildExit::Killed(Signal::SIGSYS).is_clean());
/// assert!(ChildExit::Killed(Signal::SIGSYS).to_string().contains("seccomp"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (SIGSYS: seccomp killed it).
    Killed(Signal),
}

impl ChildExit {
    /// Exited with status 0.
    pub fn is_clean(self) -> bool {
        self == ChildExit::Exited(0)
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Exited(0) => f.write_str("exited cleanly"),
            ChildExit::Exited(n) => write!(f, "exited with status {n}"),
            ChildExit::Killed(Signal::SIGSYS) => {
                f.write_str("killed by SIGSYS (a system call outside its seccomp allowlist)")
            }
            ChildExit::Killed(s) => write!(f, "killed by {s}"),
        }
    }
}
