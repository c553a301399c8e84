//! `SocketPlatformConnection`: one end of a vhost-user unix socket.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::ConnectionError;
use crate::protocol::MAX_FDS;

/// What one `recvmsg` delivered: the byte count and any fds.
pub type Received = (usize, Option<Vec<File>>);

/// How long a send may wait for the peer to drain its socket, and a receive may wait
/// for the rest of a message that has begun, before the socket counts as broken.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Space for the most fds the kernel passes in one message (SCM_MAX_FD), so that a
/// peer sending too many cannot truncate the control data and leak the ones received.
const SCM_MAX_FD: usize = 253;

/// A unix stream socket carrying vhost-user messages and their fds.
///
/// The socket is non-blocking so that a mio poll loop can own it, but every call here
/// behaves like a blocking one: on `EAGAIN` it waits in `poll(2)` (never spins) and on
/// `EINTR` it retries.
///
/// # Example
/// ```
/// use std::io::IoSliceMut;
/// use std::os::unix::net::UnixStream;
/// use vhost_user_sync::sys::unix::SocketPlatformConnection;
///
/// let (a, b) = UnixStream::pair().unwrap();
/// let (a, b) = (SocketPlatformConnection::new(a).unwrap(), SocketPlatformConnection::new(b).unwrap());
/// a.send_message(b"head", b"body", b"!", None).unwrap();
/// let mut buf = [0u8; 9];
/// let (n, fds) = b.recv_into_bufs(&mut [IoSliceMut::new(&mut buf)], true).unwrap();
/// assert_eq!((n, fds.is_none()), (9, true));
/// assert_eq!(&buf, b"headbody!");
/// ```
#[derive(Debug)]
pub struct SocketPlatformConnection {
    sock: UnixStream,
}

impl SocketPlatformConnection {
    /// Wraps a connected stream, switching it to non-blocking mode.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(SocketPlatformConnection { sock })
    }

    /// Connects to a listening socket at `path`.
    ///
    /// # Example
    /// ```no_run
    /// use vhost_user_sync::sys::unix::SocketPlatformConnection;
    /// let conn = SocketPlatformConnection::connect("/run/vhost-user/rng.sock").unwrap();
    /// ```
    pub fn connect(path: impl AsRef<std::path::Path>) -> io::Result<Self> {
        Self::new(UnixStream::connect(path)?)
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.sock
    }

    fn wait(&self, flags: PollFlags, deadline: Option<Instant>) -> Result<(), ConnectionError> {
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ConnectionError::SocketBroken(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "peer stalled mid-message",
                        )));
                    }
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.sock.as_fd(), flags)];
            match poll(&mut fds, timeout) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ConnectionError::from_errno(e)),
            }
        }
    }

    /// Sends every byte of `iovs`, attaching `fds` to the first chunk only.
    ///
    /// Loops until everything is written; waits in poll while the socket is full.
    ///
    /// # Example
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use vhost_user_sync::sys::unix::SocketPlatformConnection;
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// let a = SocketPlatformConnection::new(a).unwrap();
    /// a.send_iovec_all(&mut [&b"abc"[..], &b"def"[..]], None).unwrap();
    /// ```
    pub fn send_iovec_all(
        &self,
        iovs: &mut [&[u8]],
        fds: Option<&[RawFd]>,
    ) -> Result<(), ConnectionError> {
        let fds = fds.unwrap_or(&[]);
        if fds.len() > MAX_FDS {
            return Err(ConnectionError::SendTooManyFds {
                got: fds.len(),
                max: MAX_FDS,
            });
        }
        let mut fds_pending = !fds.is_empty();
        let mut first = 0;
        let mut deadline = None;
        while first < iovs.len() {
            if iovs[first].is_empty() {
                first += 1;
                continue;
            }
            let slices: Vec<IoSlice<'_>> = iovs[first..].iter().map(|s| IoSlice::new(s)).collect();
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if fds_pending { &rights } else { &[] };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &slices,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(mut n) => {
                    fds_pending = false;
                    while n > 0 && first < iovs.len() {
                        let len = iovs[first].len();
                        if n >= len {
                            n -= len;
                            first += 1;
                        } else {
                            iovs[first] = &iovs[first][n..];
                            n = 0;
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + STALL_TIMEOUT);
                    self.wait(PollFlags::POLLOUT, Some(d))?;
                }
                Err(e) => return Err(ConnectionError::from_errno(e)),
            }
        }
        if fds_pending {
            // Nothing to carry the fds: send them with one empty byte is not allowed by
            // the protocol, so refuse instead of dropping them silently.
            return Err(ConnectionError::SocketError(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file descriptors need at least one byte to travel with",
            )));
        }
        Ok(())
    }

    /// Sends one message: header, body and extra payload in one `sendmsg` where the
    /// socket takes it (strict peers read a reply with a single `recv`).
    pub fn send_message(
        &self,
        hdr: &[u8],
        body: &[u8],
        payload: &[u8],
        fds: Option<&[RawFd]>,
    ) -> Result<(), ConnectionError> {
        self.send_iovec_all(&mut [hdr, body, payload], fds)
    }

    /// Sends one message (no fds) if the socket has room for it now: `Ok(false)`, with
    /// nothing sent, when the peer has not drained what it was sent before. A message
    /// the socket takes only in part is finished as [`Self::send_message`] would, so
    /// the framing holds either way.
    ///
    /// # Example
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use vhost_user_sync::sys::unix::SocketPlatformConnection;
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// let a = SocketPlatformConnection::new(a).unwrap();
    /// assert!(a.try_send_message(b"head", b"body").unwrap());
    /// ```
    pub fn try_send_message(&self, hdr: &[u8], body: &[u8]) -> Result<bool, ConnectionError> {
        let slices = [IoSlice::new(hdr), IoSlice::new(body)];
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &slices,
                &[],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) if n == hdr.len() + body.len() => return Ok(true),
                Ok(n) => {
                    let (h, b) = if n < hdr.len() {
                        (&hdr[n..], body)
                    } else {
                        (&[][..], &body[n - hdr.len()..])
                    };
                    self.send_iovec_all(&mut [h, b], None)?;
                    return Ok(true);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(ConnectionError::from_errno(e)),
            }
        }
    }

    /// Waits until the socket has something to read (or the peer closed it) or
    /// `deadline` passes; returns false on time-out.
    ///
    /// # Example
    /// ```
    /// use std::time::{Duration, Instant};
    /// use std::os::unix::net::UnixStream;
    /// use vhost_user_sync::sys::unix::SocketPlatformConnection;
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// let a = SocketPlatformConnection::new(a).unwrap();
    /// assert!(!a.wait_readable(Instant::now() + Duration::from_millis(1)).unwrap());
    /// ```
    pub fn wait_readable(&self, deadline: Instant) -> Result<bool, ConnectionError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ConnectionError::from_errno(e)),
            }
        }
    }

    /// Receives into `bufs` with one `recvmsg`, returning the byte count and any fds.
    ///
    /// The caller sizes `bufs` to the rest of the current message, so a read never
    /// crosses a message boundary. Received fds are owned (as `File`) at once; if
    /// `allow_fd` is false or more than [`MAX_FDS`] arrive, they are closed and an error
    /// returned. Waits in poll while no data is ready; `Ok((0, _))` never happens: end
    /// of stream is [`ConnectionError::Disconnect`].
    pub fn recv_into_bufs(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        allow_fd: bool,
    ) -> Result<(usize, Option<Vec<File>>), ConnectionError> {
        self.recv_until(bufs, allow_fd, None)
    }

    /// Like [`Self::recv_into_bufs`], but gives up with `SocketBroken` at `deadline`.
    pub fn recv_until(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        allow_fd: bool,
        deadline: Option<Instant>,
    ) -> Result<(usize, Option<Vec<File>>), ConnectionError> {
        loop {
            if let Some(got) = self.try_recv_into_bufs(bufs, allow_fd)? {
                return Ok(got);
            }
            self.wait(PollFlags::POLLIN, deadline)?;
        }
    }

    /// One `recvmsg` that does not wait: `Ok(None)` when no data is ready.
    pub fn try_recv_into_bufs(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        allow_fd: bool,
    ) -> Result<Option<Received>, ConnectionError> {
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        loop {
            let res = recvmsg::<()>(
                self.sock.as_raw_fd(),
                bufs,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match res {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(ConnectionError::from_errno(e)),
            };
            let mut files = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed `fd` in this process for
                            // us (SCM_RIGHTS); nothing else refers to it, so the File is
                            // its only owner and closes it exactly once.
                            files.push(unsafe { File::from_raw_fd(fd) });
                        }
                    }
                }
            }
            let bytes = msg.bytes;
            if bytes == 0 {
                return Err(ConnectionError::Disconnect);
            }
            if files.len() > MAX_FDS {
                return Err(ConnectionError::TooManyFds {
                    got: files.len(),
                    max: MAX_FDS,
                });
            }
            if !files.is_empty() && !allow_fd {
                return Err(ConnectionError::UnexpectedFds { got: files.len() });
            }
            return Ok(Some((
                bytes,
                if files.is_empty() { None } else { Some(files) },
            )));
        }
    }

    /// Reads exactly `buf.len()` bytes (no fds), waiting at most `STALL_TIMEOUT` (10 s) for
    /// a stalled peer.
    pub fn recv_exact(&self, buf: &mut [u8]) -> Result<(), ConnectionError> {
        let deadline = Instant::now() + STALL_TIMEOUT;
        let mut done = 0;
        while done < buf.len() {
            let (n, _) = self.recv_until(
                &mut [IoSliceMut::new(&mut buf[done..])],
                false,
                Some(deadline),
            )?;
            done += n;
        }
        Ok(())
    }
}

impl AsRawFd for SocketPlatformConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;

    fn pair() -> (SocketPlatformConnection, SocketPlatformConnection) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            SocketPlatformConnection::new(a).unwrap(),
            SocketPlatformConnection::new(b).unwrap(),
        )
    }

    fn tmpfile(content: &[u8]) -> File {
        let fd = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let mut f = File::from(fd);
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn fds_travel_with_the_first_chunk() {
        let (a, b) = pair();
        let f = tmpfile(b"hello");
        a.send_iovec_all(&mut [&[1, 2, 3][..], &[4][..]], Some(&[f.as_raw_fd()]))
            .unwrap();
        let mut buf = [0u8; 4];
        let (n, fds) = b
            .recv_into_bufs(&mut [IoSliceMut::new(&mut buf)], true)
            .unwrap();
        assert_eq!(n, 4);
        let mut got = fds.unwrap().pop().unwrap();
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn fds_where_none_are_allowed_are_refused() {
        let (a, b) = pair();
        let f = tmpfile(b"x");
        a.send_iovec_all(&mut [&[9][..]], Some(&[f.as_raw_fd()]))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = b
            .recv_into_bufs(&mut [IoSliceMut::new(&mut buf)], false)
            .unwrap_err();
        assert!(matches!(err, ConnectionError::UnexpectedFds { got: 1 }));
    }

    #[test]
    fn too_many_fds_are_refused_and_closed() {
        let (a, b) = pair();
        let files: Vec<File> = (0..9).map(|_| tmpfile(b"x")).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        // Bypass our own send check to act as a hostile peer.
        let rights = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&[0u8])],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 1];
        let err = b
            .recv_into_bufs(&mut [IoSliceMut::new(&mut buf)], true)
            .unwrap_err();
        assert!(matches!(
            err,
            ConnectionError::TooManyFds { got: 9, max: 8 }
        ));
        assert!(a.send_iovec_all(&mut [&[0u8][..]], Some(&raw)).is_err());
    }

    #[test]
    fn end_of_stream_is_disconnect() {
        let (a, b) = pair();
        drop(a);
        let mut buf = [0u8; 1];
        let err = b
            .recv_into_bufs(&mut [IoSliceMut::new(&mut buf)], true)
            .unwrap_err();
        assert!(matches!(err, ConnectionError::Disconnect));
    }

    #[test]
    fn large_sends_wait_for_the_reader() {
        let (a, b) = pair();
        let big = vec![7u8; 4 << 20];
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 4 << 20];
            b.recv_exact(&mut got).unwrap();
            got
        });
        a.send_iovec_all(&mut [&big[..]], None).unwrap();
        assert_eq!(reader.join().unwrap(), big);
    }
}
