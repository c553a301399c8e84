//! Running a device in a confined child process.
//!
//! The parent (a VMM, or a backend program's `main`) creates the listener or holds a
//! connected socket, then forks the device into a child that keeps only the fds it is
//! given, enters new namespaces with an empty read-only root (or a chroot), drops its
//! uid, capabilities and the right to gain privileges, and installs a seccomp allowlist
//! made of the framework's system calls and the device's [`SandboxNeeds`]. The parent
//! keeps what outlives a child (the socket path, see
//! [`VhostUserListener::take_parent_process_resources`](crate::VhostUserListener::take_parent_process_resources)),
//! reaps it and, with [`Sandbox::supervise`], starts a new one when it crashes.
//!
//! # Example
//! ```no_run
//! use vhost_user_sync::sandbox::{Sandbox, SandboxMode, SandboxNeeds, SeccompMode};
//! use vhost_user_sync::VhostUserListener;
//! # fn make_device() -> impl vhost_user_sync::device::Device { unimplemented!() as MyDev }
//! # struct MyDev; impl vhost_user_sync::device::Device for MyDev { type Worker = W; fn info(&self) -> vhost_user_sync::device::DeviceInfo { unimplemented!() } fn create_worker(&mut self, _: usize) -> std::io::Result<W> { unimplemented!() } }
//! # struct W; impl vhost_user_sync::device::QueueWorker for W { fn process_queue(&mut self, _: &mut vhost_user_sync::device::Queue<'_>) -> Result<(), vhost_user_sync::device::DeviceError> { Ok(()) } }
//! let mut keep = Vec::new();
//! let mut listener = VhostUserListener::new("/tmp/dev.sock", Some(&mut keep))?;
//! // The parent removes the socket file when it exits; children never do.
//! let _socket_file = listener.take_parent_process_resources();
//! let (mode, _why) = SandboxMode::strongest_available();
//! let sandbox = Sandbox::new(mode)
//!     .seccomp(SeccompMode::Kill)
//!     .keep_fds(&keep)
//!     .needs(&SandboxNeeds::new());
//! // Runs the closure in a confined child, restarting it when it crashes, until it
//! // exits cleanly or this process gets SIGTERM.
//! sandbox.supervise(|| match listener.serve(make_device) {
//!     Ok(()) => 0,
//!     Err(_) => 1,
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod capability;
mod child_exit;
mod sandbox_error;
mod sandbox_mode;
mod sandbox_needs;

use std::os::fd::RawFd;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};

pub use capability::Capability;
pub use child_exit::ChildExit;
pub use sandbox_error::SandboxError;
pub use sandbox_mode::{SandboxMode, SeccompMode};
pub use sandbox_needs::{PathAccess, SandboxNeeds};

use crate::sys::unix::sandbox as platform;

/// How a device process is confined and supervised; see the [module](self) example.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub(crate) mode: SandboxMode,
    pub(crate) seccomp: SeccompMode,
    pub(crate) user: Option<(Uid, Gid)>,
    pub(crate) keep: Vec<RawFd>,
    pub(crate) needs: SandboxNeeds,
    max_restarts: u32,
    restart_window: Duration,
}

impl Sandbox {
    /// A sandbox of `mode` with the seccomp filter killing on a system call outside the
    /// list, no uid change, no fd kept but stdin, stdout and stderr, and the framework's
    /// own needs only.
    pub fn new(mode: SandboxMode) -> Self {
        Sandbox {
            mode,
            seccomp: SeccompMode::Kill,
            user: None,
            keep: Vec::new(),
            needs: SandboxNeeds::new(),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        }
    }

    /// What a system call outside the allowlist does.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// Runs the device as `uid`/`gid` (needs root).
    pub fn user(mut self, uid: Uid, gid: Gid) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Fds the child keeps open (every fd its objects own: the listener's, an image's,
    /// a tap's). All others are closed in the child.
    pub fn keep_fds(mut self, fds: &[RawFd]) -> Self {
        self.keep.extend_from_slice(fds);
        self
    }

    /// Adds what a device declares it needs.
    pub fn needs(mut self, needs: &SandboxNeeds) -> Self {
        self.needs = self.needs.merge(needs);
        self
    }

    /// [`Self::supervise`] gives up when the device process fails more than `count`
    /// times within `window` (default: 5 in 60 s).
    pub fn max_restarts(mut self, count: u32, window: Duration) -> Self {
        self.max_restarts = count;
        self.restart_window = window;
        self
    }

    /// The mode.
    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// Forks a confined child that runs `body` and exits with the status it returns.
    /// Returns once the child is confined (or with the reason it could not be), for the
    /// caller to supervise.
    ///
    /// Call it while the process has one thread, or at least while no other thread
    /// holds a lock the child's code will take (the child has only this thread).
    pub fn spawn<F: FnOnce() -> i32>(&self, body: F) -> Result<ConfinedChild, SandboxError> {
        self.check()?;
        platform::spawn_confined(self, body)
    }

    /// Runs `body` in a confined child, and a new one each time the child fails,
    /// until a child exits cleanly or this process gets SIGTERM, SIGINT or SIGHUP
    /// (passed on to the child as SIGTERM; SIGUSR1 and SIGUSR2 are passed on as they
    /// are). Returns how the last child ended.
    ///
    /// Meant for a program's main thread: the signals are taken with `sigwait`, so no
    /// other thread of the process should be left to take them first.
    pub fn supervise<F: FnMut() -> i32>(&self, body: F) -> Result<ChildExit, SandboxError> {
        self.check()?;
        platform::supervise(self, body, self.max_restarts, self.restart_window)
    }

    fn check(&self) -> Result<(), SandboxError> {
        if let Some((uid, _)) = self.user {
            if !nix::unistd::geteuid().is_root() {
                return Err(SandboxError::UserNeedsRoot { uid: uid.as_raw() });
            }
        }
        if self.mode == SandboxMode::Chroot {
            if let Some((path, _)) = self.needs.paths().next() {
                return Err(SandboxError::PathNeedsNamespace {
                    path: path.display().to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A confined device process started by [`Sandbox::spawn`].
#[derive(Debug)]
pub struct ConfinedChild {
    pub(crate) pid: Pid,
    /// A namespace sandbox's child is a small keeper process outside the new pid
    /// namespace that waits for the device (pid 1 inside it) and exits as it did.
    pub(crate) keeper: bool,
}

impl ConfinedChild {
    /// The child's pid (in namespace mode: the keeper's; the device process is its only
    /// child).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `signal` to the child (a keeper passes SIGTERM, SIGINT, SIGHUP, SIGUSR1
    /// and SIGUSR2 on to the device).
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(self.pid, signal)
    }

    /// Waits for the child to end.
    pub fn wait(self) -> Result<ChildExit, SandboxError> {
        platform::wait_child(&self, false).map(|e| e.unwrap_or(ChildExit::Exited(0)))
    }

    /// How the child ended, if it has.
    pub fn try_wait(&self) -> Result<Option<ChildExit>, SandboxError> {
        platform::wait_child(self, true)
    }
}
