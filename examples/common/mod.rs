//! Conventions shared by the backend programs: where the frontend comes from, signals,
//! and `--print-capabilities`.

use std::os::fd::RawFd;
use std::time::Duration;

use vhost_user_sync::backend::Shutdown;
use vhost_user_sync::sys::unix::shutdown_on_signals;
use vhost_user_sync::VhostUserListener;

/// Where to get frontends, as the vhost-user backend conventions name it.
#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Unix socket path to listen on (or, with --client, to connect to).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<String>,
    /// An inherited socket fd (listening or connected), e.g. from socket activation.
    #[arg(long, value_name = "FD", conflicts_with = "socket_path")]
    pub fd: Option<RawFd>,
    /// Connect to a frontend listening on --socket-path, reconnecting after it leaves.
    #[arg(long, requires = "socket_path")]
    pub client: bool,
    /// Print the backend's capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,
}

/// Sets up logging (RUST_LOG, default info) and clean exit on SIGINT/SIGTERM.
pub fn init(shutdown: &Shutdown) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = shutdown_on_signals(shutdown) {
        log::warn!("cannot watch signals: {e}");
    }
}

/// Prints `{"type": ..., "features": [...]}`.
pub fn print_capabilities(device_type: &str, features: &[&str]) {
    let list = features
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("{{\"type\": \"{device_type}\", \"features\": [{list}]}}");
}

/// Opens the listener the arguments ask for, with `default_path` when none is given.
pub fn listener(
    args: &ListenArgs,
    default_path: &str,
    shutdown: &Shutdown,
) -> Result<VhostUserListener, String> {
    let l = if let Some(fd) = args.fd {
        VhostUserListener::from_fd(fd).map_err(|e| e.to_string())?
    } else {
        let path = args.socket_path.as_deref().unwrap_or(default_path);
        if args.client {
            VhostUserListener::client(path, Duration::from_secs(1))
        } else {
            VhostUserListener::new(path, None).map_err(|e| e.to_string())?
        }
    };
    Ok(l.with_shutdown(shutdown.clone()))
}
