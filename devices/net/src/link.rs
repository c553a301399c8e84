//! Link state of the tap: a netlink route socket reports the tap going up or down, and
//! the device's config status follows (with CONFIG_CHANGE_MSG to the frontend). The
//! same route netlink answers what the interface is now ([`query_link`]: flags and
//! drop counter), without `/sys`, which a sandboxed device process does not have.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `IFLA_STATS64`: `struct rtnl_link_stats64`, 8-byte counters.
const IFLA_STATS64: u16 = 23;
/// Offset of `tx_dropped` in `struct rtnl_link_stats64` (the eighth counter).
const TX_DROPPED_AT: usize = 7 * 8;
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
        let up = query_link(ifindex)?.is_up();
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

/// What route netlink says of an interface now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// `IFF_*` flags.
    pub flags: u32,
    /// Frames the interface dropped on their way out (`tx_dropped`): for a tap, frames
    /// for the guest that nothing took (no RX buffers, or no device attached).
    pub tx_dropped: u64,
}

impl LinkInfo {
    /// Administratively up and running (carrier on).
    pub fn is_up(&self) -> bool {
        self.flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING
    }
}

/// Asks route netlink for interface `ifindex`: one RTM_GETLINK on a socket of its own.
///
/// ```no_run
/// let index = nix::net::if_::if_nametoindex("tap0")? as i32;
/// let info = vhost_user_sync_net::link::query_link(index)?;
/// println!("up {}, {} frames dropped", info.is_up(), info.tx_dropped);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn query_link(ifindex: i32) -> io::Result<LinkInfo> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(io::Error::from)?;
    const LEN: usize = NLMSG_HDR + IFINFO_LEN;
    let mut req = [0u8; LEN];
    req[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&ifindex.to_ne_bytes());
    send(sock.as_raw_fd(), &req, MsgFlags::empty()).map_err(io::Error::from)?;
    let mut buf = vec![0u8; 16384];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
    parse_link_reply(&buf[..n], ifindex)
}

/// The RTM_NEWLINK answer for `ifindex` in `reply`: its flags and IFLA_STATS64's
/// `tx_dropped`. Every length is checked against the bytes received.
fn parse_link_reply(reply: &[u8], ifindex: i32) -> io::Result<LinkInfo> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("RTM_GETLINK: {what}"));
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if reply.len() < NLMSG_HDR {
        return Err(bad("short reply"));
    }
    let len = (u32_at(reply, 0) as usize).min(reply.len());
    match u16_at(reply, 4) {
        RTM_NEWLINK => {}
        NLMSG_ERROR if len >= NLMSG_HDR + 4 => {
            let errno = -(u32_at(reply, NLMSG_HDR) as i32);
            return Err(io::Error::from_raw_os_error(errno));
        }
        kind => return Err(bad(&format!("message type {kind}"))),
    }
    if len < NLMSG_HDR + IFINFO_LEN {
        return Err(bad("short ifinfomsg"));
    }
    let info = &reply[NLMSG_HDR..len];
    if u32_at(info, 4) as i32 != ifindex {
        return Err(bad("another interface answered"));
    }
    let mut link = LinkInfo {
        flags: u32_at(info, 8),
        tx_dropped: 0,
    };
    let mut at = IFINFO_LEN;
    while at + 4 <= info.len() {
        let attr_len = u16_at(info, at) as usize;
        if attr_len < 4 || at + attr_len > info.len() {
            break;
        }
        if u16_at(info, at + 2) == IFLA_STATS64 && attr_len >= 4 + TX_DROPPED_AT + 8 {
            let v = at + 4 + TX_DROPPED_AT;
            link.tx_dropped =
                u64::from_ne_bytes(info[v..v + 8].try_into().map_err(|_| bad("stats"))?);
        }
        at += (attr_len + 3) & !3;
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(index: i32, flags: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFO_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        for (kind, data) in attrs {
            let len = 4 + data.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(data);
            body.resize((body.len() + 3) & !3, 0);
        }
        let mut msg = vec![0u8; NLMSG_HDR];
        msg[0..4].copy_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg.extend(body);
        msg
    }

    #[test]
    fn flags_and_tx_dropped_come_from_the_reply() {
        let mut stats = vec![0u8; 24 * 8];
        stats[TX_DROPPED_AT..TX_DROPPED_AT + 8].copy_from_slice(&42u64.to_ne_bytes());
        let r = reply(
            7,
            IFF_UP | IFF_RUNNING,
            &[(3, b"tap0\0".to_vec()), (IFLA_STATS64, stats)],
        );
        let info = parse_link_reply(&r, 7).unwrap();
        assert!(info.is_up());
        assert_eq!(info.tx_dropped, 42);
        // Down without carrier; no stats attribute: nothing dropped known.
        let info = parse_link_reply(&reply(7, IFF_UP, &[]), 7).unwrap();
        assert!(!info.is_up());
        assert_eq!(info.tx_dropped, 0);
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        assert!(parse_link_reply(&[], 7).is_err());
        assert!(parse_link_reply(&reply(8, 0, &[]), 7).is_err());
        let mut r = reply(7, 0, &[(IFLA_STATS64, vec![1; 64])]);
        // An attribute longer than the message.
        let at = NLMSG_HDR + IFINFO_LEN;
        r[at..at + 2].copy_from_slice(&1000u16.to_ne_bytes());
        assert!(parse_link_reply(&r, 7).is_ok());
        for cut in 0..r.len() {
            let _ = parse_link_reply(&r[..cut], 7);
        }
        let mut err = vec![0u8; NLMSG_HDR + 4];
        let len = err.len() as u32;
        err[0..4].copy_from_slice(&len.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[NLMSG_HDR..].copy_from_slice(&(-19i32).to_ne_bytes());
        assert_eq!(
            parse_link_reply(&err, 7).unwrap_err().raw_os_error(),
            Some(19)
        );
    }

    #[test]
    fn loopback_answers() {
        // Index 1 is the loopback interface of every network namespace.
        query_link(1).unwrap();
        assert!(query_link(i32::MAX).is_err());
    }
}
