//! What a net device saves for a migration or a snapshot (`Device::save_state`): the MAC
//! address the driver set, the link status the guest was shown, and the features it
//! acked, from which the offloads applied to the tap follow (the destination applies
//! them to its own tap on load).
//!
//! ```text
//! u8 version (1) | 6 bytes mac | u16 le status | u64 le acked features
//! ```

/// The format's version.
const VERSION: u8 = 1;
/// Bytes of a saved state.
pub const STATE_LEN: usize = 1 + 6 + 2 + 8;

/// The saved state of a net device.
///
/// # Example
/// ```
/// use vhost_user_sync_net::persistence::NetState;
/// let s = NetState { mac: [2, 0, 0, 0, 0, 1], status: 1, acked: 1 << 32 };
/// assert_eq!(NetState::from_bytes(&s.to_bytes()), Ok(s));
/// assert!(NetState::from_bytes(&[1; 8]).is_err());
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetState {
    /// MAC address.
    pub mac: [u8; 6],
    /// Config status word (bit 0: link up, bit 1: announce).
    pub status: u16,
    /// The features the driver acked (offloads among them).
    pub acked: u64,
}

impl NetState {
    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.mac);
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&self.acked.to_le_bytes());
        b
    }

    /// Parses and checks the serialised form (it comes from the frontend).
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        if b.len() != STATE_LEN {
            return Err(format!(
                "net state of {} bytes, {STATE_LEN} expected",
                b.len()
            ));
        }
        if b[0] != VERSION {
            return Err(format!(
                "net state version {} (this build reads {VERSION})",
                b[0]
            ));
        }
        let status = u16::from_le_bytes([b[7], b[8]]);
        // Only link up (1) and announce (2) are defined.
        if status & !3 != 0 {
            return Err(format!("net state: status {status:#x}"));
        }
        if b[1] & 1 != 0 {
            return Err("net state: a multicast MAC address".into());
        }
        let mut acked = [0u8; 8];
        acked.copy_from_slice(&b[9..17]);
        Ok(NetState {
            mac: [b[1], b[2], b[3], b[4], b[5], b[6]],
            status,
            acked: u64::from_le_bytes(acked),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_state_is_refused() {
        let good = NetState {
            mac: [2, 0, 0, 0, 0, 7],
            status: 1,
            acked: 0x1_0000_4000,
        }
        .to_bytes();
        assert!(NetState::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            assert!(NetState::from_bytes(&good[..cut]).is_err());
        }
        let mut version = good.clone();
        version[0] = 9;
        assert!(NetState::from_bytes(&version).is_err());
        let mut multicast = good.clone();
        multicast[1] = 1;
        assert!(NetState::from_bytes(&multicast).is_err());
        let mut status = good.clone();
        status[7] = 4;
        assert!(NetState::from_bytes(&status).is_err());
    }
}
