//! Many listeners served from one thread while they wait: one poll over every listening
//! socket, a thread per connection only while a frontend is connected.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::Scope;
use std::time::Duration;

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{serve_connection_with, ListenerError, VhostUserListener};
use crate::device::Device;
use crate::sys::unix::{release_free_memory, EndpointError, SocketPlatformConnection};

const WAKE: Token = Token(usize::MAX);
/// The first wait before accepting again after an accept failed.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between retries of a failing accept.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

impl VhostUserListener {
    /// Serves every listener of `listeners`, each connection with a fresh device from
    /// `factory(i)` (`i`: the listener's index), until every listener is shut down.
    ///
    /// The listening sockets wait in one poll on the calling thread, so an idle device
    /// costs no thread; a frontend that connects gets a connection thread (and its
    /// device's workers) until it leaves, and each listener still serves one frontend at a
    /// time (the next waits in its backlog). After a disconnect the allocator's free
    /// memory goes back to the kernel. A `--client` or inherited connected endpoint
    /// cannot wait in the shared poll: it is served on a thread of its own.
    ///
    /// ```no_run
    /// # use vhost_user_sync::VhostUserListener;
    /// # fn make_device(_: usize) -> impl vhost_user_sync::device::Device { unimplemented!() as MyDev }
    /// # struct MyDev; impl vhost_user_sync::device::Device for MyDev { type Worker = W; fn info(&self) -> vhost_user_sync::device::DeviceInfo { unimplemented!() } fn create_worker(&mut self, _: usize) -> std::io::Result<W> { unimplemented!() } }
    /// # struct W; impl vhost_user_sync::device::QueueWorker for W { fn process_queue(&mut self, _: &mut vhost_user_sync::device::Queue<'_>) -> Result<(), vhost_user_sync::device::DeviceError> { Ok(()) } }
    /// let mut listeners = (0..512)
    ///     .map(|i| VhostUserListener::new(&format!("/tmp/dev{i}.sock"), None))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// VhostUserListener::serve_all(&mut listeners, make_device)?;
    /// # Ok::<(), vhost_user_sync::backend::ListenerError>(())
    /// ```
    pub fn serve_all<D, F>(
        listeners: &mut [VhostUserListener],
        factory: F,
    ) -> Result<(), ListenerError>
    where
        D: Device,
        F: Fn(usize) -> D + Sync,
    {
        let factory = &factory;
        std::thread::scope(|scope| {
            let mut own = Vec::new();
            let mut shared = Vec::new();
            for (i, l) in listeners.iter_mut().enumerate() {
                if l.endpoint.listening_socket().is_some() {
                    shared.push((i, &*l));
                } else {
                    own.push((i, l));
                }
            }
            let mut threads = Vec::new();
            for (i, l) in own {
                let spawned = std::thread::Builder::new()
                    .name("listener".into())
                    .spawn_scoped(scope, move || l.serve(|| factory(i)));
                threads.push(spawned.map_err(|e| io_error("starting a listener thread for", e))?);
            }
            let mut result = if shared.is_empty() {
                Ok(())
            } else {
                accept_loop(scope, &shared, factory)
            };
            for t in threads {
                let r = t.join().unwrap_or_else(|_| {
                    Err(io_error("a listener thread", io::Error::other("panicked")))
                });
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }
}

fn io_error(what: &'static str, source: io::Error) -> ListenerError {
    EndpointError::Io {
        what,
        path: "listener".into(),
        source,
    }
    .into()
}

/// The shared poll: accepts on every idle listener that may have a frontend waiting,
/// starts a connection thread for it, and marks the listener idle again when the thread
/// reports that its connection ended.
fn accept_loop<'scope, 'env, D, F>(
    scope: &'scope Scope<'scope, 'env>,
    shared: &[(usize, &'env VhostUserListener)],
    factory: &'env F,
) -> Result<(), ListenerError>
where
    D: Device,
    F: Fn(usize) -> D + Sync,
{
    let mut poll = Poll::new().map_err(|e| io_error("creating the poll for", e))?;
    for (k, (_, l)) in shared.iter().enumerate() {
        let Some(socket) = l.endpoint.listening_socket() else {
            continue;
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| io_error("configuring", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&socket.as_raw_fd()),
                Token(k),
                Interest::READABLE,
            )
            .map_err(|e| io_error("watching", e))?;
    }
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| io_error("waking", e))?);
    for (_, l) in shared {
        l.shutdown.watch(&waker);
    }
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    let n = shared.len();
    let mut busy = vec![false; n];
    // Whether a frontend may be waiting: at start, after a readiness event (edge
    // triggered: one per arrival), after a connection ended, after a failed accept.
    let mut check = vec![true; n];
    let mut retry: Option<Duration> = None;
    let mut events = Events::with_capacity(64);
    loop {
        let mut failed = false;
        for k in 0..n {
            let (i, l) = shared[k];
            if busy[k] || !check[k] || l.shutdown.is_triggered() {
                continue;
            }
            match accept(l) {
                Ok(Some(stream)) => {
                    check[k] = false;
                    let conn = match SocketPlatformConnection::new(stream) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!("configuring a connection: {e}");
                            check[k] = true;
                            continue;
                        }
                    };
                    if retry.is_some() {
                        info!("accepting again");
                    }
                    let (tx, w) = (done_tx.clone(), waker.clone());
                    let spawned = std::thread::Builder::new()
                        .name("connection".into())
                        .spawn_scoped(scope, move || {
                            if let Err(e) =
                                serve_connection_with(conn, factory(i), &l.shutdown, &l.options)
                            {
                                warn!("connection ended with an error: {e}; accepting the next frontend");
                            }
                            let _ = tx.send(k);
                            let _ = w.wake();
                        });
                    match spawned {
                        Ok(_) => busy[k] = true,
                        Err(e) => {
                            warn!("cannot start a connection thread: {e}; the frontend is dropped");
                            failed = true;
                            check[k] = true;
                        }
                    }
                }
                Ok(None) => check[k] = false,
                Err(e) => {
                    if retry.is_none() {
                        warn!("accept failed: {e}; retrying until it succeeds");
                    }
                    failed = true;
                }
            }
        }
        retry = failed.then(|| retry.map_or(ACCEPT_RETRY_FIRST, |t| (t * 2).min(ACCEPT_RETRY_MAX)));
        if shared.iter().all(|(_, l)| l.shutdown.is_triggered()) {
            return Ok(());
        }
        if let Err(e) = poll.poll(&mut events, retry) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("polling", e));
            }
        }
        for ev in events.iter() {
            if ev.token() != WAKE {
                check[ev.token().0] = true;
            }
        }
        let mut ended = false;
        while let Ok(k) = done_rx.try_recv() {
            busy[k] = false;
            check[k] = true;
            shared[k].1.shutdown.forget_gone_wakers();
            ended = true;
        }
        if ended {
            release_free_memory();
        }
    }
}

/// One non-blocking accept: `Ok(None)` when no frontend is waiting. The connection is
/// made blocking, as the serve loop expects.
fn accept(l: &VhostUserListener) -> io::Result<Option<UnixStream>> {
    let Some(socket) = l.endpoint.listening_socket() else {
        return Ok(None);
    };
    loop {
        return match socket.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}
