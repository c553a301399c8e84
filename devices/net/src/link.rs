//! Link state of the tap: a netlink route socket reports the tap going up or down, and
//! the device's config status follows (with CONFIG_CHANGE_MSG to the frontend).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const NLMSG_HDR: usize = 16;
const IFINFO_LEN: usize = 16;

/// Watches one interface's up/down state.
///
/// # Example
/// ```no_run
/// let mut w = vhost_user_sync_net::link::LinkWatch::new("tap0").unwrap();
/// if let Some(up) = w.poll_change() { println!("tap0 is now {}", if up { "up" } else { "down" }); }
/// ```
#[derive(Debug)]
pub struct LinkWatch {
    sock: OwnedFd,
    ifindex: i32,
    up: bool,
}

impl LinkWatch {
    /// Subscribes to link events and reads the interface's current state.
    pub fn new(ifname: &str) -> io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)? as i32;
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(io::Error::from)?;
        bind(sock.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK)).map_err(io::Error::from)?;
        let up = interface_up(ifname);
        Ok(LinkWatch { sock, ifindex, up })
    }

    /// The socket to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether the link is up (administratively up and running).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Drains pending link events; returns the new state if it changed.
    pub fn poll_change(&mut self) -> Option<bool> {
        let before = self.up;
        let mut buf = [0u8; 8192];
        while let Ok(n) = recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + NLMSG_HDR + IFINFO_LEN <= n {
                let len =
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < NLMSG_HDR || at + len > n {
                    break;
                }
                if kind == RTM_NEWLINK {
                    let info = &buf[at + NLMSG_HDR..];
                    let index = i32::from_ne_bytes([info[4], info[5], info[6], info[7]]);
                    let flags = u32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
                    if index == self.ifindex {
                        self.up = flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING;
                    }
                }
                at += (len + 3) & !3;
            }
        }
        (self.up != before).then_some(self.up)
    }
}

fn interface_up(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & IFF_UP != 0)
        && std::fs::read_to_string(format!("/sys/class/net/{ifname}/carrier"))
            .is_ok_and(|s| s.trim() == "1")
}
