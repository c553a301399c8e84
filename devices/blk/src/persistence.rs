//! What a block device saves for a migration or a snapshot (`Device::save_state`): the
//! cache mode the driver chose (the config space's `writeback` byte) and the request
//! counters, so that the destination goes on where the source stopped. The image and
//! the rings are saved by others (shared storage, the frontend).
//!
//! ```text
//! u8 version (1) | u8 writeback (0 or 1) | 10 x u64 le: reads, read bytes, writes,
//! write bytes, flushes, discards, malformed, I/O errors, bounced, through io_uring
//! ```

use crate::metrics::BlkCounters;

/// The format's version.
const VERSION: u8 = 1;
/// Bytes of a saved state.
pub const STATE_LEN: usize = 2 + 10 * 8;

/// The saved state of a block device.
///
/// # Example
/// ```
/// use vhost_user_sync_blk::persistence::BlkState;
/// use vhost_user_sync_blk::BlkCounters;
/// let s = BlkState { writeback: false, counters: BlkCounters { read_ops: 3, ..Default::default() } };
/// assert_eq!(BlkState::from_bytes(&s.to_bytes()), Ok(s));
/// assert!(BlkState::from_bytes(&[1, 2]).is_err());
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlkState {
    /// Writeback cache (writes complete before they are durable; FLUSH makes them so).
    pub writeback: bool,
    /// The device's request counters.
    pub counters: BlkCounters,
}

impl BlkState {
    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_LEN);
        b.push(VERSION);
        b.push(u8::from(self.writeback));
        for v in self.counters.values() {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Parses and checks the serialised form (it comes from the frontend).
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        if b.len() != STATE_LEN {
            return Err(format!(
                "blk state of {} bytes, {STATE_LEN} expected",
                b.len()
            ));
        }
        if b[0] != VERSION {
            return Err(format!(
                "blk state version {} (this build reads {VERSION})",
                b[0]
            ));
        }
        let writeback = match b[1] {
            0 => false,
            1 => true,
            v => return Err(format!("blk state: writeback byte {v}")),
        };
        let mut v = [0u64; 10];
        for (i, chunk) in b[2..].chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            v[i] = u64::from_le_bytes(w);
        }
        Ok(BlkState {
            writeback,
            counters: BlkCounters::from_values(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_state_is_refused() {
        let good = BlkState {
            writeback: true,
            counters: BlkCounters {
                write_ops: 7,
                ring_ops: 9,
                ..Default::default()
            },
        }
        .to_bytes();
        assert_eq!(good.len(), STATE_LEN);
        assert!(BlkState::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            assert!(BlkState::from_bytes(&good[..cut]).is_err());
        }
        let mut version = good.clone();
        version[0] = 2;
        assert!(BlkState::from_bytes(&version).is_err());
        let mut wce = good.clone();
        wce[1] = 2;
        assert!(BlkState::from_bytes(&wce).is_err());
        let mut long = good;
        long.push(0);
        assert!(BlkState::from_bytes(&long).is_err());
    }
}
