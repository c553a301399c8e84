//! What an entropy device saves for a migration or a snapshot (`Device::save_state`):
//! its counters, so that the destination's go on from them. Never the generator's key
//! or any output: the destination keys its own generator from its own source.
//!
//! ```text
//! u8 version (1) | u64 le requests | u64 le bytes
//! ```

/// The format's version.
const VERSION: u8 = 1;
/// Bytes of a saved state.
pub const STATE_LEN: usize = 1 + 8 + 8;

/// The saved state of an rng device.
///
/// # Example
/// ```
/// use vhost_user_sync_rng::persistence::RngState;
/// let s = RngState { requests: 3, bytes: 96 };
/// assert_eq!(RngState::from_bytes(&s.to_bytes()), Ok(s));
/// assert!(RngState::from_bytes(&[1]).is_err());
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngState {
    /// Requests served.
    pub requests: u64,
    /// Bytes delivered.
    pub bytes: u64,
}

impl RngState {
    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.requests.to_le_bytes());
        b.extend_from_slice(&self.bytes.to_le_bytes());
        b
    }

    /// Parses and checks the serialised form (it comes from the frontend).
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        if b.len() != STATE_LEN {
            return Err(format!(
                "rng state of {} bytes, {STATE_LEN} expected",
                b.len()
            ));
        }
        if b[0] != VERSION {
            return Err(format!(
                "rng state version {} (this build reads {VERSION})",
                b[0]
            ));
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Ok(RngState {
            requests: u64_at(1),
            bytes: u64_at(9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_state_is_refused() {
        let good = RngState {
            requests: 1,
            bytes: 2,
        }
        .to_bytes();
        for cut in 0..good.len() {
            assert!(RngState::from_bytes(&good[..cut]).is_err());
        }
        let mut version = good.clone();
        version[0] = 0;
        assert!(RngState::from_bytes(&version).is_err());
        let mut long = good;
        long.push(0);
        assert!(RngState::from_bytes(&long).is_err());
    }
}
