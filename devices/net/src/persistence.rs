//! Device state that outlives a connection: the MAC address the driver set and the
//! link status. Saved as 8 bytes (mac, status).

/// The saved state of a net device.
///
/// # Example
/// ```
/// use vhost_user_sync_net::persistence::NetState;
/// let s = NetState { mac: [2, 0, 0, 0, 0, 1], status: 1 };
/// assert_eq!(NetState::from_bytes(&s.to_bytes()), Some(s));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetState {
    /// MAC address.
    pub mac: [u8; 6],
    /// Config status word (bit 0: link up).
    pub status: u16,
}

impl NetState {
    /// Serialised form.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&self.mac);
        b[6..].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// Parses the serialised form.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 8] = b.try_into().ok()?;
        Some(NetState {
            mac: [b[0], b[1], b[2], b[3], b[4], b[5]],
            status: u16::from_le_bytes([b[6], b[7]]),
        })
    }
}
