//! Reading and writing whole messages: header, body and fds, framed so that no read
//! crosses a message boundary.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, RawFd};

use thiserror::Error;

use crate::protocol::{Header, HeaderFlags, ProtocolError, HEADER_SIZE, MAX_PAYLOAD_SIZE};
use crate::sys::unix::{ConnectionError, SocketPlatformConnection};

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The checked header.
    pub header: Header,
    /// The payload (its size was checked against the global cap before allocation).
    pub body: Vec<u8>,
    /// Fds that came with the header.
    pub fds: Vec<File>,
}

/// Why a message could not be read. All of these end the connection: after them the
/// stream's framing cannot be trusted.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The socket failed or the peer left.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The header is invalid.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one message. With `wait` false, returns `Ok(None)` if no byte of a new message
/// is ready; once the first byte has arrived the rest is awaited (bounded by the
/// socket's stall timeout).
pub fn read_message(
    conn: &SocketPlatformConnection,
    wait: bool,
) -> Result<Option<Message>, ReadError> {
    let mut hdr = [0u8; HEADER_SIZE];
    let first = if wait {
        Some(conn.recv_into_bufs(&mut [IoSliceMut::new(&mut hdr)], true)?)
    } else {
        conn.try_recv_into_bufs(&mut [IoSliceMut::new(&mut hdr)], true)?
    };
    let Some((n, fds)) = first else {
        return Ok(None);
    };
    let fds = fds.unwrap_or_default();
    if n < HEADER_SIZE {
        conn.recv_exact(&mut hdr[n..])?;
    }
    let header = Header::decode(&hdr)?;
    if header.size > MAX_PAYLOAD_SIZE {
        return Err(ProtocolError::PayloadTooLarge {
            request: header.request,
            size: header.size,
            cap: MAX_PAYLOAD_SIZE,
        }
        .into());
    }
    let mut body = vec![0u8; header.size as usize];
    conn.recv_exact(&mut body)?;
    Ok(Some(Message { header, body, fds }))
}

/// Sends a message with `flags` for request number `request`, in one `sendmsg`.
pub fn write_message(
    conn: &SocketPlatformConnection,
    request: u32,
    flags: HeaderFlags,
    body: &[u8],
    fds: &[&File],
) -> Result<(), ConnectionError> {
    let header = Header {
        request,
        flags,
        size: body.len() as u32,
    };
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    conn.send_message(
        &header.encode(),
        body,
        &[],
        if raw.is_empty() { None } else { Some(&raw) },
    )
}
