//! What the blk device needs in a sandbox: its I/O system calls. The image is opened
//! (and locked) before the device process is confined, so no path is bound.

use nix::libc;
use vhost_user_sync::sandbox::SandboxNeeds;

use crate::device::Aio;

/// Vectored and positioned I/O, syncs, and io_uring unless the device runs synchronously.
pub fn needs(aio: Aio) -> SandboxNeeds {
    let needs = SandboxNeeds::new().syscalls(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
        libc::SYS_fstatfs,
    ]);
    match aio {
        Aio::Sync => needs,
        Aio::Auto | Aio::IoUring => needs.syscalls(&[
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_only_when_it_may_be_used() {
        assert!(!needs(Aio::Sync).allows(libc::SYS_io_uring_enter));
        assert!(needs(Aio::Auto).allows(libc::SYS_io_uring_enter));
        assert!(needs(Aio::IoUring).allows(libc::SYS_io_uring_setup));
        assert!(needs(Aio::Sync).allows(libc::SYS_fdatasync));
        assert_eq!(needs(Aio::Auto).paths().count(), 0);
    }
}
