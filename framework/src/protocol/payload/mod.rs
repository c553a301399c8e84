//! Typed views of message bodies: each validates on decode and encodes back.

mod config;
mod device_state;
mod inflight;
mod log_base;
mod memory_region;
mod memory_table;
mod ring_fd;
mod vring_addr;
mod vring_state;

pub use config::ConfigAccess;
pub use device_state::DeviceStateTransfer;
pub use inflight::InflightInfo;
pub use log_base::LogBase;
pub use memory_region::{MemoryRegionDesc, SingleRegion};
pub use memory_table::MemoryTableDesc;
pub use ring_fd::RingFd;
pub use vring_addr::VringAddr;
pub use vring_state::VringState;

use super::ProtocolError;

/// Decodes a u64 body (features, status, ack values).
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::decode_u64;
/// assert_eq!(decode_u64("SET_FEATURES", &7u64.to_ne_bytes()), Ok(7));
/// assert!(decode_u64("SET_FEATURES", &[0; 4]).is_err());
/// ```
pub fn decode_u64(request: &'static str, body: &[u8]) -> Result<u64, ProtocolError> {
    let bytes: [u8; 8] = body.try_into().map_err(|_| ProtocolError::WrongSize {
        request,
        expected: 8,
        got: body.len(),
    })?;
    Ok(u64::from_ne_bytes(bytes))
}

pub(crate) fn check_len(
    request: &'static str,
    body: &[u8],
    expected: usize,
) -> Result<(), ProtocolError> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(ProtocolError::WrongSize {
            request,
            expected,
            got: body.len(),
        })
    }
}

#[cfg(test)]
mod tests;
