//! A request is a chain of device-writable buffers to fill; readable buffers are
//! ignored.

use vhost_user_sync::queue::DescriptorChain;

/// The most bytes served for one request (the Linux driver asks for at most a page at a
/// time; larger chains are filled up to this bound).
pub const MAX_REQUEST: usize = 64 * 1024;

/// How many bytes to write into `chain`.
///
/// # Example
/// ```
/// assert_eq!(vhost_user_sync_rng::request::MAX_REQUEST, 65536);
/// ```
pub fn request_len(chain: &DescriptorChain) -> usize {
    (chain.writable_len() as usize).min(MAX_REQUEST)
}
