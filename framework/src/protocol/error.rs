//! Errors of the wire layer: everything that can be wrong with a message's bytes.

use thiserror::Error;

/// A message that breaks the vhost-user wire format.
///
/// Every variant carries the offending values so that a log line alone tells what the
/// peer sent.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::{Header, ProtocolError};
/// let bytes = [1u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]; // version 2
/// assert!(matches!(Header::decode(&bytes), Err(ProtocolError::BadVersion { flags: 2 })));
/// ```
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The header's version bits are not 1.
    #[error("header version is not 1 (flags {flags:#x})")]
    BadVersion {
        /// The whole flags word.
        flags: u32,
    },
    /// Reserved header flag bits are set.
    #[error("reserved header flags set (flags {flags:#x})")]
    ReservedFlags {
        /// The whole flags word.
        flags: u32,
    },
    /// A frontend request carries the REPLY flag.
    #[error("request {request} carries the REPLY flag")]
    UnexpectedReply {
        /// The request number.
        request: u32,
    },
    /// A reply lacks the REPLY flag.
    #[error("reply to {request} lacks the REPLY flag (flags {flags:#x})")]
    MissingReplyFlag {
        /// The request number.
        request: u32,
        /// The whole flags word.
        flags: u32,
    },
    /// The request number is not one the protocol defines.
    #[error("unknown request number {0}")]
    UnknownRequest(u32),
    /// The header claims more payload than any message may have.
    #[error("payload of {size} bytes for request {request} exceeds the cap of {cap}")]
    PayloadTooLarge {
        /// The request number.
        request: u32,
        /// The size the header claims.
        size: u32,
        /// The cap.
        cap: u32,
    },
    /// The payload size does not fit the request type.
    #[error("request {request} wants a payload of {expected} bytes, got {got}")]
    WrongSize {
        /// The request name.
        request: &'static str,
        /// What the type needs (for variable bodies, the smallest valid size).
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// The number of attached file descriptors does not fit the request.
    #[error("request {request} wants {expected} file descriptor(s), got {got}")]
    WrongFdCount {
        /// The request name.
        request: &'static str,
        /// How many it needs (the upper bound where a range is allowed).
        expected: usize,
        /// How many arrived.
        got: usize,
    },
    /// A body field is out of range.
    #[error("{request}: {field} = {value:#x} is invalid ({why})")]
    BadField {
        /// The request name.
        request: &'static str,
        /// The field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        why: &'static str,
    },
}
