//! Device state that outlives a connection: the cache mode the driver chose. Saved as
//! one byte.

/// The saved state of a block device.
///
/// # Example
/// ```
/// use vhost_user_sync_blk::persistence::BlkState;
/// let s = BlkState { writeback: false };
/// assert_eq!(BlkState::from_bytes(&s.to_bytes()), Some(s));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlkState {
    /// Writeback cache (writes complete before they are durable; FLUSH makes them so).
    pub writeback: bool,
}

impl BlkState {
    /// Serialised form.
    pub fn to_bytes(&self) -> [u8; 1] {
        [u8::from(self.writeback)]
    }

    /// Parses the serialised form.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match b {
            [0] => Some(BlkState { writeback: false }),
            [1] => Some(BlkState { writeback: true }),
            _ => None,
        }
    }
}
