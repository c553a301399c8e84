//! The connection thread: a mio poll over the socket and a waker, reading one message
//! at a time, validating it and replying.

use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use super::session::{Reply, Session};
use super::worker::FailureSignal;
use super::{RequestError, ServeOptions, Shutdown};
use crate::device::Device;
use crate::message::{read_message, write_message, Message, ReadError};
use crate::protocol::{FrontendRequest, HeaderFlags, ProtocolError};
use crate::sys::unix::{ConnectionError, FaultNotice, SocketPlatformConnection};

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
const FAULT: Token = Token(2);

/// Why a connection ended.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Socket failure.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The frontend broke the message framing; the connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// Device code panicked on a worker.
    #[error("device worker failed")]
    DeviceFailed,
    /// A file the frontend shared shrank under its mapping (or its memory could not be
    /// provided): the access completed on zeroes and the connection was closed.
    #[error("shared memory became inaccessible ({0}): did the frontend truncate it?")]
    MemoryFault(String),
    /// A request was refused in a way that leaves no consistent session: a refusal the
    /// frontend could not be told about (a ring address or memory table without
    /// REPLY_ACK), GET_VRING_BASE (its reply cannot say failure), or workers that could
    /// not be rebuilt.
    #[error("{request} refused, and the session cannot go on: {source}")]
    Refused {
        /// The request.
        request: &'static str,
        /// Why it was refused.
        source: RequestError,
    },
    /// Setting up poll or threads failed.
    #[error("setup failed: {0}")]
    Setup(#[from] std::io::Error),
}

impl ServeError {
    /// Whether this is an ordinary end (the frontend left, or shutdown).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ServeError::Connection(c) if c.is_disconnect())
    }
}

/// Serves `device` on `conn` until the frontend disconnects (`Ok`), `shutdown` is
/// triggered (`Ok`), or the connection fails.
pub fn serve_connection<D: Device>(
    conn: SocketPlatformConnection,
    device: D,
    shutdown: &Shutdown,
) -> Result<(), ServeError> {
    serve_connection_with(conn, device, shutdown, &ServeOptions::default())
}

/// [`serve_connection`] with settings the operator chose for every device served.
pub fn serve_connection_with<D: Device>(
    conn: SocketPlatformConnection,
    device: D,
    shutdown: &Shutdown,
    options: &ServeOptions,
) -> Result<(), ServeError> {
    let mut poll = Poll::new()?;
    let fd = conn.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    shutdown.watch(&waker);
    let failure = Arc::new(FailureSignal {
        failed: false.into(),
        waker,
    });
    let notice = FaultNotice::new()?;
    let notice_fd = notice.as_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&notice_fd), FAULT, Interest::READABLE)?;
    let mut session = Session::new(device, failure.clone(), notice.clone(), options)?;
    info!("{}: frontend connected", session.name());
    let mut events = Events::with_capacity(8);
    let result = loop {
        if shutdown.is_triggered() {
            break Ok(());
        }
        if failure.failed.load(Ordering::Acquire) {
            break Err(ServeError::DeviceFailed);
        }
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e.into());
        }
        if events.iter().any(|e| e.token() == FAULT) && notice.take() {
            break Err(ServeError::MemoryFault(session.fault_report()));
        }
        if events.iter().any(|e| e.token() == SOCKET) {
            if let Err(e) = drain_socket(&conn, &mut session) {
                break Err(e);
            }
        }
    };
    match &result {
        Ok(()) => info!("{}: connection closed (shutdown)", session.name()),
        Err(e) if e.is_disconnect() => info!("{}: frontend disconnected", session.name()),
        Err(e) => error!("{}: connection closed: {e}", session.name()),
    }
    drop(session);
    match result {
        Err(e) if e.is_disconnect() => Ok(()),
        other => other,
    }
}

/// Reads and handles every message that is ready (the poll is edge-triggered).
fn drain_socket<D: Device>(
    conn: &SocketPlatformConnection,
    session: &mut Session<D>,
) -> Result<(), ServeError> {
    loop {
        let msg = match read_message(conn, false) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(ReadError::Connection(e)) => return Err(e.into()),
            Err(ReadError::Protocol(e)) => return Err(e.into()),
        };
        handle_message(conn, session, msg)?;
    }
}

fn handle_message<D: Device>(
    conn: &SocketPlatformConnection,
    session: &mut Session<D>,
    msg: Message,
) -> Result<(), ServeError> {
    let number = msg.header.request;
    let flags = msg.header.flags;
    if flags.is_reply() {
        return Err(ProtocolError::UnexpectedReply { request: number }.into());
    }
    let req = match FrontendRequest::try_from(number) {
        Ok(r) => r,
        Err(_) => {
            warn!("{}: {}", session.name(), RequestError::Unknown(number));
            if flags.need_reply() && session.reply_ack() {
                send_ack(conn, number, 1)?;
            }
            return Ok(());
        }
    };
    let need_reply = flags.need_reply();
    let always = session.always_replies(req);
    let body_copy = if always { msg.body.clone() } else { Vec::new() };
    // Device hooks run here (config, features, reset): a panic in them ends only this
    // connection, like a panic on a worker.
    let outcome = match catch_unwind(AssertUnwindSafe(|| session.handle(req, msg))) {
        Ok(o) => o,
        Err(_) => {
            error!(
                "{}: device code panicked handling {}",
                session.name(),
                req.name()
            );
            return Err(ServeError::DeviceFailed);
        }
    };
    // REPLY_ACK is read after handling: SET_PROTOCOL_FEATURES may have just enabled it
    // (the ack then follows the new rule, as the frontend expects).
    let ack = need_reply && session.reply_ack();
    match outcome {
        Ok(Reply::Body(body)) => {
            write_message(conn, number, HeaderFlags::REPLY_FLAGS, &body, &[])?;
        }
        Ok(Reply::BodyWithFd(body, fd)) => {
            write_message(conn, number, HeaderFlags::REPLY_FLAGS, &body, &[&fd])?;
        }
        Ok(Reply::Done) => {
            if ack {
                send_ack(conn, number, 0)?;
            }
        }
        Err(e) => {
            warn!("{}: {} refused: {e}", session.name(), req.name());
            let answered = if always {
                match session.failure_reply(req, &body_copy) {
                    Some(body) => {
                        write_message(conn, number, HeaderFlags::REPLY_FLAGS, &body, &[])?;
                        true
                    }
                    None => false,
                }
            } else if ack {
                send_ack(conn, number, 1)?;
                true
            } else {
                !session.closes_when_unanswered(req)
            };
            if !answered || e.ends_connection() {
                return Err(ServeError::Refused {
                    request: req.name(),
                    source: e,
                });
            }
        }
    }
    debug!("{}: handled {}", session.name(), req.name());
    Ok(())
}

/// A REPLY_ACK reply: 0 success, anything else failure.
fn send_ack(
    conn: &SocketPlatformConnection,
    request: u32,
    value: u64,
) -> Result<(), ConnectionError> {
    write_message(
        conn,
        request,
        HeaderFlags::REPLY_FLAGS,
        &value.to_ne_bytes(),
        &[],
    )
}
