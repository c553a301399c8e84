//! A device that reports what its process may do: each request is a command (one
//! line of text in its readable buffers), the reply (text) goes into its writable ones.
//!
//! - `open PATH`: `opened` or the errno of opening PATH read-only;
//! - `read PATH`: the file's first bytes, or the errno;
//! - `write PATH`: `written` or the errno of opening PATH for writing;
//! - `forbidden`: calls getcwd (not on the framework's seccomp list), then `survived`;
//! - `ping`: `pong`.

use std::io::{Read, Write};

use vhost_user_sync::prelude::*;

pub struct ProbeDevice;

impl Device for ProbeDevice {
    type Worker = ProbeWorker;

    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("probe", 0xfffe, 1).with_max_queue_size(64)
    }

    fn create_worker(&mut self, _index: usize) -> std::io::Result<ProbeWorker> {
        Ok(ProbeWorker)
    }
}

pub struct ProbeWorker;

impl QueueWorker for ProbeWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = queue.pop() {
            let mut command = vec![0u8; chain.readable_len().min(512) as usize];
            chain.reader(queue.mem()).read_exact_bytes(&mut command)?;
            let reply = run(&String::from_utf8_lossy(&command));
            let n = reply.len().min(chain.writable_len() as usize);
            chain
                .writer(queue.mem())
                .write_all(&reply.as_bytes()[..n])?;
            queue.add_used(&chain, n as u32)?;
        }
        Ok(())
    }
}

fn errno(e: std::io::Error) -> String {
    format!("errno {}", e.raw_os_error().unwrap_or(0))
}

fn run(command: &str) -> String {
    let (verb, arg) = command
        .trim()
        .split_once(' ')
        .unwrap_or((command.trim(), ""));
    match verb {
        "open" => match std::fs::File::open(arg) {
            Ok(_) => "opened".into(),
            Err(e) => errno(e),
        },
        "read" => {
            let mut buf = [0u8; 64];
            match std::fs::File::open(arg).and_then(|mut f| f.read(&mut buf)) {
                Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) => errno(e),
            }
        }
        "write" => match std::fs::OpenOptions::new()
            .write(true)
            .open(arg)
            .and_then(|mut f| f.write_all(b"x"))
        {
            Ok(()) => "written".into(),
            Err(e) => errno(e),
        },
        "forbidden" => {
            let mut buf = [0u8; 256];
            // SAFETY: getcwd writes at most buf.len() bytes into the live local buffer.
            unsafe { nix::libc::syscall(nix::libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
            "survived".into()
        }
        "ping" => "pong".into(),
        _ => format!("unknown command {verb:?}"),
    }
}
