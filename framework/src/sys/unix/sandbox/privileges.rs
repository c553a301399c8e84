//! Giving up privileges: another uid and gid, every capability the device did not ask
//! for (effective, permitted, inheritable, ambient and bounding sets), and
//! `PR_SET_NO_NEW_PRIVS`.

use std::io;

use nix::libc;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::sandbox::Capability;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs as `uid`/`gid` from now on (supplementary groups: `gid` only), keeping the
/// permitted capabilities across the switch for [`limit_capabilities`] to trim.
pub fn switch_user(uid: Uid, gid: Gid) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, 1)?;
    setgroups(&[gid])?;
    setresgid(gid, gid, gid)?;
    setresuid(uid, uid, uid)?;
    prctl(libc::PR_SET_KEEPCAPS, 0)
}

/// Keeps exactly `keep` as the effective and permitted capabilities, none inheritable or
/// ambient, and drops the others from the bounding set where allowed (it needs
/// CAP_SETPCAP, which a process in a user namespace has and an unprivileged one lacks:
/// there the bounding set is left, the other sets still go).
pub fn limit_capabilities<'a>(keep: impl IntoIterator<Item = &'a Capability>) -> io::Result<()> {
    let mut mask = 0u64;
    for c in keep {
        mask |= 1 << c.number();
    }
    for n in 0..64u32 {
        if mask & (1 << n) != 0 {
            continue;
        }
        if let Err(e) = prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong) {
            match e.raw_os_error() {
                // Past the kernel's last capability: done.
                Some(libc::EINVAL) => break,
                Some(libc::EPERM) => break,
                _ => return Err(e),
            }
        }
    }
    prctl4(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )?;
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        CapData {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads one version-3 header and the two data words it calls for;
    // both are live, correctly laid out (#[repr(C)]) locals for the whole call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective capabilities of the calling thread, as a bit mask.
pub fn effective_capabilities() -> io::Result<u64> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes the two data words of a version-3 header into `data`, a
    // live local array of exactly that size; it reads the header only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// No later `execve` may gain privileges (setuid bits, file capabilities); also what
/// lets an unprivileged process install a seccomp filter.
pub fn no_new_privileges() -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    prctl4(option, arg, 0)
}

fn prctl4(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here (KEEPCAPS, CAPBSET_DROP, CAP_AMBIENT) take integer
    // arguments only; no pointer is passed.
    let r = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
