//! `BackendChannel`: requests from the backend to the frontend (SET_BACKEND_REQ_FD).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::message::{read_message, write_message};
use crate::protocol::{BackendRequest, HeaderFlags};
use crate::sys::unix::{ConnectionError, SocketPlatformConnection};

/// The socket the frontend gave for backend-initiated messages. Cloneable; device code
/// may use it from any thread.
///
/// [`Self::send`] (and [`Self::config_changed`]) never wait for the frontend: they ask
/// for no ack and drop the message with an error when the frontend has stopped reading
/// the channel, so a worker that announces a change is not held up by the frontend.
/// [`Self::send_awaiting_ack`] waits for the frontend's answer and is for threads that may
/// block (not a worker's `process_queue` or `handle_event`).
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
    reply_timeout: Duration,
}

impl BackendChannel {
    /// How long [`BackendChannel::send_awaiting_ack`] waits for the frontend's ack.
    pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long [`BackendChannel::send`] waits for another thread's exchange on the
    /// channel to finish before it gives up.
    pub const BUSY_TIMEOUT: Duration = Duration::from_millis(20);

    pub(crate) fn new(conn: SocketPlatformConnection, reply_ack: bool) -> Self {
        BackendChannel {
            conn: Arc::new(Mutex::new(conn)),
            reply_ack,
            reply_timeout: Self::REPLY_TIMEOUT,
        }
    }

    /// Sends `request` with `body` without asking for an ack, and without waiting: an
    /// error when the frontend has not read what it was sent before (the message is not
    /// sent) or another thread is in [`Self::send_awaiting_ack`].
    pub fn send(&self, request: BackendRequest, body: &[u8]) -> Result<(), ConnectionError> {
        let conn = self
            .conn
            .try_lock_for(Self::BUSY_TIMEOUT)
            .ok_or_else(|| busy(request, "another request is waiting for its ack"))?;
        let mut header = Vec::with_capacity(12);
        header.extend_from_slice(&request.number().to_ne_bytes());
        header.extend_from_slice(&HeaderFlags::REQUEST.bits().to_ne_bytes());
        header.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        if conn.try_send_message(&header, body)? {
            Ok(())
        } else {
            Err(busy(
                request,
                "the frontend is not reading its backend channel",
            ))
        }
    }

    /// Sends `request` with `body`; with REPLY_ACK negotiated waits for the ack (at most
    /// [`Self::REPLY_TIMEOUT`]) and returns its value (0 = success). A reply that is not the
    /// ack of this request, or none in time, is an error; the channel should then be
    /// dropped (its framing can no longer be trusted). Blocks: not for a worker.
    pub fn send_awaiting_ack(
        &self,
        request: BackendRequest,
        body: &[u8],
    ) -> Result<u64, ConnectionError> {
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
        let deadline = Instant::now() + self.reply_timeout;
        let reply = loop {
            if let Some(reply) = read_message(&conn, false).map_err(|e| match e {
                crate::message::ReadError::Connection(c) => c,
                crate::message::ReadError::Protocol(p) => {
                    ConnectionError::SocketError(io::Error::other(p.to_string()))
                }
            })? {
                break reply;
            }
            if !conn.wait_readable(deadline)? {
                return Err(ConnectionError::SocketError(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no reply to {} within {:?}",
                        request.name(),
                        self.reply_timeout
                    ),
                )));
            }
        };
        if reply.header.request != request.number() || !reply.header.flags.is_reply() {
            return Err(ConnectionError::SocketError(io::Error::other(format!(
                "the answer to {} was request {} with flags {:#x}",
                request.name(),
                reply.header.request,
                reply.header.flags.bits()
            ))));
        }
        let bytes: [u8; 8] = reply.body.as_slice().try_into().map_err(|_| {
            ConnectionError::SocketError(io::Error::other(format!(
                "the ack of {} has {} bytes, not 8",
                request.name(),
                reply.body.len()
            )))
        })?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Tells the frontend that the config space changed (CONFIG_CHANGE_MSG), without
    /// waiting (see [`Self::send`]).
    pub fn config_changed(&self) -> Result<(), ConnectionError> {
        self.send(BackendRequest::CONFIG_CHANGE_MSG, &[])
    }
}

/// The error of a [`BackendChannel::send`] that could not go out now.
fn busy(request: BackendRequest, why: &str) -> ConnectionError {
    ConnectionError::SocketRetry(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("{} not sent: {why}", request.name()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(timeout: Duration) -> (BackendChannel, SocketPlatformConnection) {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut ch = BackendChannel::new(SocketPlatformConnection::new(a).expect("a"), true);
        ch.reply_timeout = timeout;
        (ch, SocketPlatformConnection::new(b).expect("b"))
    }

    /// The frontend side: reads the request and answers with `request`, `flags`, `body`.
    fn answer(fe: SocketPlatformConnection, request: u32, flags: HeaderFlags, body: Vec<u8>) {
        std::thread::spawn(move || {
            let got = read_message(&fe, true).expect("read").expect("message");
            assert!(got.header.flags.need_reply());
            write_message(&fe, request, flags, &body, &[]).expect("write");
            // Keep the socket open until the backend side is done with it.
            let _ = read_message(&fe, true);
        });
    }

    const CHANGE: BackendRequest = BackendRequest::CONFIG_CHANGE_MSG;

    #[test]
    fn the_ack_of_the_request_is_returned() {
        let (ch, fe) = pair(Duration::from_secs(10));
        answer(
            fe,
            CHANGE.number(),
            HeaderFlags::REPLY_FLAGS,
            0u64.to_ne_bytes().to_vec(),
        );
        assert_eq!(ch.send_awaiting_ack(CHANGE, &[]).expect("ack"), 0);
    }

    #[test]
    fn a_frontend_that_never_answers_times_out() {
        let (ch, _fe) = pair(Duration::from_millis(50));
        let e = ch.send_awaiting_ack(CHANGE, &[]).expect_err("no answer");
        assert!(e.to_string().contains("no reply to"), "{e}");
    }

    #[test]
    fn send_asks_for_no_ack_even_with_reply_ack() {
        let (ch, fe) = pair(Duration::from_secs(10));
        ch.config_changed().expect("sent");
        let got = read_message(&fe, true).expect("read").expect("message");
        assert_eq!(got.header.request, CHANGE.number());
        assert!(!got.header.flags.need_reply());
    }

    #[test]
    fn send_gives_up_at_once_on_a_frontend_that_stopped_reading() {
        let (ch, fe) = pair(Duration::from_secs(10));
        // Fill the socket: the frontend reads nothing.
        let body = [0u8; 200];
        let mut sent = 0usize;
        let e = loop {
            match ch.send(CHANGE, &body) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        assert!(sent > 0);
        assert!(e.to_string().contains("not reading"), "{e}");
        // Every message that went out is whole: the frontend reads them all in step.
        for _ in 0..sent {
            let m = read_message(&fe, true).expect("read").expect("message");
            assert_eq!(m.body.len(), body.len());
        }
    }

    #[test]
    fn an_answer_to_something_else_is_refused() {
        let n = BackendRequest::CONFIG_CHANGE_MSG.number();
        let cases = [
            (n + 1, HeaderFlags::REPLY_FLAGS, 8),
            (n, HeaderFlags::REQUEST, 8),
            (n, HeaderFlags::REPLY_FLAGS, 4),
        ];
        for (request, flags, len) in cases {
            let (ch, fe) = pair(Duration::from_secs(10));
            answer(fe, request, flags, vec![0; len]);
            assert!(
                ch.send_awaiting_ack(CHANGE, &[]).is_err(),
                "request {request} flags {:#x} body {len}",
                flags.bits()
            );
        }
    }
}
