//! The host side: a tap device opened through `/dev/net/tun`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::features::{GUEST_CSUM, GUEST_ECN, GUEST_TSO4, GUEST_TSO6, GUEST_UFO};
use crate::request::NET_HDR_LEN;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_UFO: u32 = 0x10;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqMtu {
    name: [u8; 16],
    mtu: i32,
    _pad: [u8; 20],
}

nix::ioctl_write_ptr_bad!(tun_set_iff, 0x4004_54ca, IfReq);
nix::ioctl_read_bad!(siocgifmtu, 0x8921, IfReqMtu);
nix::ioctl_write_int_bad!(tun_set_offload, 0x4004_54d0);
nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, 0x4004_54d8, i32);

/// One queue of a tap device, carrying a 12-byte `virtio_net_hdr` in front of every
/// frame, non-blocking.
///
/// Opening a tap that exists and belongs to the caller needs no privilege; creating one
/// needs CAP_NET_ADMIN. A tap created here lives as long as an fd to it is open.
///
/// # Example
/// ```no_run
/// let tap = vhost_user_sync_net::tap::Tap::open("tap0", false).unwrap();
/// tap.set_offload_for(0).unwrap();
/// ```
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) tap `name`; `multi_queue` for one of several queues.
    pub fn open(name: &str, multi_queue: bool) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad tap name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        if multi_queue {
            req.flags |= IFF_MULTI_QUEUE;
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update) a properly sized, initialised ifreq
        // that lives for the call; the fd is an open /dev/net/tun.
        unsafe { tun_set_iff(file.as_raw_fd(), &req) }.map_err(io::Error::from)?;
        let hdr = NET_HDR_LEN as i32;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        unsafe { tun_set_vnet_hdr_sz(file.as_raw_fd(), &hdr) }.map_err(io::Error::from)?;
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's MTU now (the largest frame the tap hands over is this plus the
    /// Ethernet and VLAN headers, unless GSO offloads are on).
    pub fn mtu(&self) -> io::Result<u16> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let mut req = IfReqMtu {
            name: [0; 16],
            mtu: 0,
            _pad: [0; 20],
        };
        req.name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into a properly
        // sized, initialised ifreq that lives for the call; the fd is an open socket.
        unsafe { siocgifmtu(sock.as_raw_fd(), &mut req) }.map_err(io::Error::from)?;
        u16::try_from(req.mtu).map_err(|_| io::Error::other(format!("MTU {}", req.mtu)))
    }

    /// The queue's fd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Another handle on the same queue.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Lets the tap hand the guest what its acked offloads allow (GUEST_* bits).
    pub fn set_offload_for(&self, guest_features: u64) -> io::Result<()> {
        let mut flags = 0;
        if guest_features & GUEST_CSUM != 0 {
            flags |= TUN_F_CSUM;
            if guest_features & GUEST_TSO4 != 0 {
                flags |= TUN_F_TSO4;
            }
            if guest_features & GUEST_TSO6 != 0 {
                flags |= TUN_F_TSO6;
            }
            if guest_features & GUEST_ECN != 0 && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
                flags |= TUN_F_TSO_ECN;
            }
            if guest_features & GUEST_UFO != 0 {
                flags |= TUN_F_UFO;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is an open tap.
        unsafe { tun_set_offload(self.file.as_raw_fd(), flags as i32) }.map_err(io::Error::from)?;
        Ok(())
    }
}
