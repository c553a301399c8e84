//! `BackendChannel`: requests from the backend to the frontend (SET_BACKEND_REQ_FD).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::message::{read_message, write_message};
use crate::protocol::{BackendRequest, HeaderFlags};
use crate::sys::unix::{ConnectionError, SocketPlatformConnection};

/// The socket the frontend gave for backend-initiated messages. Cloneable; device code
/// may use it from any thread.
///
/// # Example
/// ```no_run
/// # fn f(channel: vhost_user_sync::backend::BackendChannel) {
/// // The device's config space changed (a resized disk, a link going down).
/// channel.config_changed().ok();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BackendChannel {
    conn: Arc<Mutex<SocketPlatformConnection>>,
    reply_ack: bool,
}

impl BackendChannel {
    pub(crate) fn new(conn: SocketPlatformConnection, reply_ack: bool) -> Self {
        BackendChannel {
            conn: Arc::new(Mutex::new(conn)),
            reply_ack,
        }
    }

    /// Sends `request` with `body`; with REPLY_ACK negotiated waits for the ack and
    /// returns its value (0 = success).
    pub fn send(&self, request: BackendRequest, body: &[u8]) -> Result<u64, ConnectionError> {
        let conn = self.conn.lock();
        let flags = if self.reply_ack {
            HeaderFlags::REQUEST.with_need_reply()
        } else {
            HeaderFlags::REQUEST
        };
        write_message(&conn, request.number(), flags, body, &[])?;
        if !self.reply_ack {
            return Ok(0);
        }
        let reply = read_message(&conn, true).map_err(|e| match e {
            crate::message::ReadError::Connection(c) => c,
            crate::message::ReadError::Protocol(p) => {
                ConnectionError::SocketError(std::io::Error::other(p.to_string()))
            }
        })?;
        let Some(reply) = reply else {
            return Err(ConnectionError::Disconnect);
        };
        let bytes: [u8; 8] = reply.body.as_slice().try_into().unwrap_or([0xff; 8]);
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Tells the frontend that the config space changed (CONFIG_CHANGE_MSG).
    pub fn config_changed(&self) -> Result<u64, ConnectionError> {
        self.send(BackendRequest::CONFIG_CHANGE_MSG, &[])
    }
}
