//! What crosses the rings: the `virtio_net_hdr` in front of every frame, and control
//! commands. Both are validated here before anything else looks at them.

use thiserror::Error;

/// Size of `virtio_net_hdr` with VERSION_1 (it always carries `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame accepted (64 KiB of GSO payload plus an Ethernet header).
pub const MAX_FRAME: usize = 65535 + 14;

/// VIRTIO_NET_HDR_F_NEEDS_CSUM.
pub const F_NEEDS_CSUM: u8 = 1;
/// VIRTIO_NET_HDR_F_DATA_VALID.
pub const F_DATA_VALID: u8 = 2;
/// GSO types.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// UDP (UFO).
pub const GSO_UDP: u8 = 3;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// ECN bit on a TCP GSO type.
pub const GSO_ECN: u8 = 0x80;

/// A frame or command the device refuses.
///
/// # Example
/// ```
/// use vhost_user_sync_net::request::NetError;
/// let e = NetError::HeaderTooShort { len: 10 };
/// assert_eq!(e.to_string(), "virtio_net_hdr needs 12 bytes in the first buffer, got 10");
/// ```
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetError {
    /// The first buffer does not hold the whole header (too short, or split).
    #[error("virtio_net_hdr needs 12 bytes in the first buffer, got {len}")]
    HeaderTooShort {
        /// Bytes in the first buffer.
        len: usize,
    },
    /// The frame is larger than 64 KiB.
    #[error("frame of {len} bytes is larger than {MAX_FRAME}")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
    },
    /// Unknown header flags.
    #[error("unknown header flags {0:#x}")]
    BadFlags(u8),
    /// The checksum position lies outside the frame.
    #[error("checksum at {start}+{offset} is outside a {len}-byte frame")]
    CsumOutOfFrame {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// A GSO type that was not negotiated, or unknown.
    #[error("GSO type {0:#x} not negotiated")]
    GsoNotNegotiated(u8),
    /// gso_size zero or beyond the frame.
    #[error("gso_size {gso_size} invalid for a {len}-byte frame")]
    BadGsoSize {
        /// gso_size.
        gso_size: u16,
        /// Frame length.
        len: usize,
    },
    /// A control command that is malformed.
    #[error("control command: {0}")]
    BadControl(&'static str),
}

/// `virtio_net_hdr` (VERSION_1 layout), copied out of guest memory.
///
/// # Example
/// ```
/// use vhost_user_sync_net::request::NetHdr;
/// let h = NetHdr { num_buffers: 3, ..NetHdr::default() };
/// assert_eq!(NetHdr::from_bytes(&h.to_bytes()), h);
/// assert!(h.validate(60, 0).is_ok());
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetHdr {
    /// F_NEEDS_CSUM, F_DATA_VALID.
    pub flags: u8,
    /// GSO_* type, possibly with GSO_ECN.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from csum_start.
    pub csum_offset: u16,
    /// Buffers a received frame spans (MRG_RXBUF).
    pub num_buffers: u16,
}

impl NetHdr {
    /// Decodes the 12 header bytes (little endian, VERSION_1).
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Checks a TX header against the frame that follows it and the negotiated
    /// features (`features`: the device bits the guest acked).
    pub fn validate(&self, frame_len: usize, features: u64) -> Result<(), NetError> {
        use crate::features::{CSUM, HOST_ECN, HOST_TSO4, HOST_TSO6, HOST_UFO};
        if frame_len > MAX_FRAME {
            return Err(NetError::FrameTooLarge { len: frame_len });
        }
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(NetError::BadFlags(self.flags));
        }
        if self.flags & F_NEEDS_CSUM != 0 {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if features & CSUM == 0 || end > frame_len {
                return Err(NetError::CsumOutOfFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
        }
        let base = self.gso_type & !GSO_ECN;
        let needed = match base {
            GSO_NONE if self.gso_type == GSO_NONE => return Ok(()),
            GSO_TCPV4 => HOST_TSO4,
            GSO_TCPV6 => HOST_TSO6,
            GSO_UDP => HOST_UFO,
            _ => return Err(NetError::GsoNotNegotiated(self.gso_type)),
        };
        let ecn = if self.gso_type & GSO_ECN != 0 {
            HOST_ECN
        } else {
            0
        };
        if features & (needed | ecn) != needed | ecn {
            return Err(NetError::GsoNotNegotiated(self.gso_type));
        }
        if self.gso_size == 0 || usize::from(self.gso_size) > frame_len {
            return Err(NetError::BadGsoSize {
                gso_size: self.gso_size,
                len: frame_len,
            });
        }
        Ok(())
    }
}

/// Control command classes and commands (virtio 1.2, 5.1.6.5).
pub mod ctrl {
    /// RX mode class.
    pub const CLASS_RX: u8 = 0;
    /// MAC class.
    pub const CLASS_MAC: u8 = 1;
    /// Announce class.
    pub const CLASS_ANNOUNCE: u8 = 3;
    /// Multiqueue class.
    pub const CLASS_MQ: u8 = 4;
    /// MAC_TABLE_SET.
    pub const MAC_TABLE_SET: u8 = 0;
    /// MAC_ADDR_SET.
    pub const MAC_ADDR_SET: u8 = 1;
    /// VQ_PAIRS_SET.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// Success.
    pub const OK: u8 = 0;
    /// Failure.
    pub const ERR: u8 = 1;
}

/// A decoded control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtrlCommand {
    /// An RX mode switch (promisc, allmulti, ...): command and on/off.
    RxMode {
        /// The command (0 promisc .. 5 nobcast).
        cmd: u8,
        /// On or off.
        on: bool,
    },
    /// Unicast and multicast MAC filter tables.
    MacTable {
        /// Unicast entries.
        unicast: Vec<[u8; 6]>,
        /// Multicast entries.
        multicast: Vec<[u8; 6]>,
    },
    /// The device's MAC address.
    MacAddr([u8; 6]),
    /// Active queue pairs.
    QueuePairs(u16),
    /// The driver acknowledged an announcement.
    AnnounceAck,
}

impl CtrlCommand {
    /// Decodes class, command and data (everything the driver wrote before the ack).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync_net::request::CtrlCommand;
    /// assert_eq!(CtrlCommand::parse(&[4, 0, 2, 0]), Ok(CtrlCommand::QueuePairs(2)));
    /// assert!(CtrlCommand::parse(&[4, 0, 2]).is_err());
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, NetError> {
        let bad = NetError::BadControl;
        let (&class, rest) = bytes.split_first().ok_or(bad("empty"))?;
        let (&cmd, data) = rest.split_first().ok_or(bad("no command"))?;
        match (class, cmd) {
            (ctrl::CLASS_RX, 0..=5) => match data {
                [v] => Ok(CtrlCommand::RxMode { cmd, on: *v != 0 }),
                _ => Err(bad("rx mode takes one byte")),
            },
            (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET) => {
                let mac: [u8; 6] = data
                    .try_into()
                    .map_err(|_| bad("mac address takes 6 bytes"))?;
                Ok(CtrlCommand::MacAddr(mac))
            }
            (ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET) => {
                let (unicast, rest) = mac_table(data)?;
                let (multicast, rest) = mac_table(rest)?;
                if !rest.is_empty() {
                    return Err(bad("trailing bytes after mac tables"));
                }
                Ok(CtrlCommand::MacTable { unicast, multicast })
            }
            (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET) => match data {
                [a, b] => Ok(CtrlCommand::QueuePairs(u16::from_le_bytes([*a, *b]))),
                _ => Err(bad("queue pairs take two bytes")),
            },
            (ctrl::CLASS_ANNOUNCE, 0) => Ok(CtrlCommand::AnnounceAck),
            _ => Err(bad("unknown class or command")),
        }
    }
}

fn mac_table(data: &[u8]) -> Result<(Vec<[u8; 6]>, &[u8]), NetError> {
    let bad = NetError::BadControl;
    let n = data.get(..4).ok_or(bad("mac table without entry count"))?;
    let entries = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let len = entries.checked_mul(6).ok_or(bad("mac table too large"))?;
    let body = data
        .get(4..4 + len)
        .ok_or(bad("mac table shorter than its count"))?;
    let macs = body
        .chunks_exact(6)
        .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
        .collect();
    Ok((macs, &data[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::*;

    #[test]
    fn checksum_and_gso_fields_must_lie_in_the_frame() {
        let csum = NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(csum.validate(100, CSUM).is_ok());
        assert!(csum.validate(51, CSUM).is_err());
        assert!(csum.validate(100, 0).is_err(), "CSUM not negotiated");
        let gso = NetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            hdr_len: 54,
            ..Default::default()
        };
        assert!(gso.validate(3000, HOST_TSO4).is_ok());
        assert!(gso.validate(3000, 0).is_err());
        assert!(
            gso.validate(1000, HOST_TSO4).is_err(),
            "gso_size beyond the frame"
        );
        assert!(NetHdr { gso_size: 0, ..gso }
            .validate(3000, HOST_TSO4)
            .is_err());
        assert!(NetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..gso
        }
        .validate(3000, HOST_TSO4)
        .is_err());
        assert!(NetHdr { gso_type: 7, ..gso }
            .validate(3000, u64::MAX)
            .is_err());
        assert!(NetHdr {
            flags: 0x80,
            ..Default::default()
        }
        .validate(60, 0)
        .is_err());
        assert!(NetHdr::default().validate(MAX_FRAME + 1, 0).is_err());
    }

    #[test]
    fn control_commands() {
        let mut table = vec![1, 0];
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        table.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            CtrlCommand::parse(&table),
            Ok(CtrlCommand::MacTable {
                unicast: vec![[2, 0, 0, 0, 0, 1]],
                multicast: vec![]
            })
        );
        let mut lying = vec![1, 0];
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(CtrlCommand::parse(&lying).is_err());
        assert_eq!(
            CtrlCommand::parse(&[0, 0, 1]),
            Ok(CtrlCommand::RxMode { cmd: 0, on: true })
        );
        assert!(CtrlCommand::parse(&[0, 9, 1]).is_err());
        assert!(CtrlCommand::parse(&[1, 1, 1, 2]).is_err());
        assert!(CtrlCommand::parse(&[]).is_err());
    }
}
