//! The vhost-user wire protocol: headers, request numbers, feature bits and typed
//! payloads, each validated when decoded.
//!
//! Validation runs in layers, each its own function: [`Header::decode`] (version and
//! flags), [`RequestShape::check_size`] (size per request type, after the global
//! [`MAX_PAYLOAD_SIZE`] cap), [`RequestShape::check_fds`] (fd count), then the payload
//! type's `decode` (field values). Negotiated features and request order are checked by
//! the backend session.

mod error;
mod features;
mod header;
pub mod payload;
mod request;
mod wire;

pub use error::ProtocolError;
pub use features::{virtio, ProtocolFeatures};
pub use header::{Header, HeaderFlags, HEADER_SIZE};
pub use request::{
    BackendRequest, BodyRule, FdRule, FrontendRequest, ReplyRule, RequestShape, MAX_FDS,
    MAX_PAYLOAD_SIZE,
};
