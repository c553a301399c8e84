//! An echo device: each request's readable bytes come back in its writable buffers, up
//! to a limit the guest reads from a 4-byte config field.
//!
//! ```text
//! cargo run --example echo_backend -- /tmp/echo.sock
//! ```

use vhost_user_sync::prelude::*;

/// Not an assigned virtio device id: only a driver written for this device binds it.
const ECHO_DEVICE_ID: u32 = 0xffff;

/// Control plane: one value per frontend connection.
pub struct EchoDevice {
    max_len: u32,
}

impl EchoDevice {
    pub fn new(max_len: u32) -> Self {
        EchoDevice { max_len }
    }
}

impl Device for EchoDevice {
    type Worker = EchoWorker;

    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("echo", ECHO_DEVICE_ID, 1)
            .with_max_queue_size(256)
            .with_config_size(4)
    }

    /// Config space: `le32 max_len`. The framework has checked the range.
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let start = offset as usize;
        data.copy_from_slice(&self.max_len.to_le_bytes()[start..start + data.len()]);
    }

    fn create_worker(&mut self, _index: usize) -> std::io::Result<EchoWorker> {
        Ok(EchoWorker {
            max_len: self.max_len as usize,
            buf: Vec::new(),
        })
    }
}

/// Data path: runs on the worker thread, on split and packed rings alike.
pub struct EchoWorker {
    max_len: usize,
    buf: Vec<u8>,
}

impl QueueWorker for EchoWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = queue.pop() {
            let n = (chain.readable_len() as usize)
                .min(chain.writable_len() as usize)
                .min(self.max_len);
            self.buf.resize(n, 0);
            let copied = chain
                .reader(queue.mem())
                .read_exact_bytes(&mut self.buf)
                .and_then(|()| chain.writer(queue.mem()).write_all(&self.buf));
            match copied {
                Ok(()) => queue.add_used(&chain, n as u32)?,
                Err(e) => {
                    // Return the chain (nothing written), then report the error.
                    queue.add_used(&chain, 0)?;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/vhost-user-echo.sock".to_string());
    let shutdown = Shutdown::new();
    shutdown_on_signals(&shutdown)?;
    let mut listener = VhostUserListener::new(&path, None)?.with_shutdown(shutdown);
    log::info!("listening on {path}");
    listener.serve(|| EchoDevice::new(4096))?;
    Ok(())
}
