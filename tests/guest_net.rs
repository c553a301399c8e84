//! `net_backend` with a tap device carrying a real Linux guest's traffic.
//!
//! The host side lives in a private network namespace made by each test:
//! net_backend runs inside it and opens tap `vhutap0`, which gets 10.77.0.1/24.
//! QEMU runs outside (a unix socket path reaches across namespaces) and gives
//! the guest a virtio-net device served by the backend; the guest's eth0 is
//! 10.77.0.2/24 and can reach nothing but the tap. The host ends of the TCP
//! transfers are threads that enter the namespace.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/guest.rs"]
mod guest;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/payload.rs"]
mod payload;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backend::BackendProcess;
use guest::{GuestConfig, GuestImage, GuestRun};
use netns::NetNs;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use payload::{crc32, crc32_update, pseudo_random};
use vhost_user_sync::protocol::virtio;
use vhost_user_sync_net::features as nf;

const TAP: &str = "vhutap0";
const HOST_ADDR: &str = "10.77.0.1";
const GUEST_ADDR: &str = "10.77.0.2";
/// The host listens here for the guest's stream; the guest listens on the next port.
const TCP_PORT: u16 = 5001;
/// Bytes per TCP direction, kept small: the guest runs under TCG.
const TCP_BYTES: usize = 4 << 20;
/// Frames the host sends to the guest at once: more than QEMU's RX ring (256
/// entries) holds, fewer than the tap queue and its qdisc hold (1000 frames each).
const BURST_FRAMES: usize = 900;
const T: Duration = Duration::from_secs(30);
/// How long the host peer waits for a console line. Generous, as the guest
/// may first wait for another test's guest to finish; when the run ends, the
/// console channel closes and the wait ends with it.
const CONSOLE_WAIT: Duration = Duration::from_secs(30 * 60);
/// One guest run; TCG boots in a few seconds, the transfers take some more.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The host side of one test. The backend is declared first so that it is
/// stopped before the namespace is deleted.
struct HostNet {
    be: BackendProcess,
    ns: NetNs,
}

/// The guest image and a backend with its tap configured in a fresh namespace,
/// or `None` after a SKIP line when this machine cannot have them (panics
/// instead under CI). `rust_log` is the backend's log filter (default: the
/// test's RUST_LOG, else info).
fn host_net(rust_log: Option<&str>) -> Option<(GuestImage, HostNet)> {
    let image = guest::require_guest()?;
    if let Some(why) = netns::unavailable() {
        guest::skip_or_fail(&why);
        return None;
    }
    let ns = NetNs::create();
    let args = ["--tap", TAP];
    let be = match rust_log {
        None => BackendProcess::start_in_netns(ns.name(), "net_backend", &args),
        Some(_) => BackendProcess::start_with(
            &["ip", "netns", "exec", ns.name()],
            rust_log,
            "net_backend",
            &args,
        ),
    };
    ns.ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    Some((image, HostNet { be, ns }))
}

fn net_config(host: &HostNet, tests: &[&str]) -> GuestConfig {
    GuestConfig {
        net_socket: Some(host.be.socket.clone()),
        extra_cmdline: format!(
            "vhu.ip={GUEST_ADDR}/24 vhu.peer={HOST_ADDR} vhu.port={TCP_PORT} vhu.tcp_kib={} \
             vhu.burst={BURST_FRAMES}",
            TCP_BYTES / 1024
        ),
        timeout: RUN_TIMEOUT,
        ..GuestConfig::with_tests(tests)
    }
}

/// The guest's console as the host peer follows it.
struct Console(mpsc::Receiver<String>);

impl Console {
    /// The next line containing `needle`.
    fn wait_for(&self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + CONSOLE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the guest run ended before {needle:?}"))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {needle:?} on the console"))
                }
            }
        }
    }
}

/// What the host end of the TCP transfers saw.
#[derive(Debug)]
struct PeerReport {
    /// Bytes and CRC-32 of the guest's stream.
    received: usize,
    received_crc: u32,
    receive_time: Duration,
}

/// Reads `s` to its end: byte count and CRC-32.
fn drain(s: &mut TcpStream) -> std::io::Result<(usize, u32)> {
    let mut buf = vec![0u8; 64 << 10];
    let (mut n, mut crc) = (0usize, 0u32);
    loop {
        match s.read(&mut buf)? {
            0 => return Ok((n, crc)),
            k => {
                n += k;
                crc = crc32_update(crc, &buf[..k]);
            }
        }
    }
}

/// The host end of both transfers, on a thread inside the namespace; `ready`
/// hears once the listening socket is bound.
///
/// guest to host: the guest announces `VHU-READY tcp_tx` and connects to
/// HOST_ADDR:TCP_PORT; the peer reads to the end and answers one line
/// `bytes=N crc32=X`, which the guest compares with what it sent.
/// host to guest: after `VHU-READY tcp_rx port=P` the peer connects to
/// GUEST_ADDR:P, sends `data` and closes; the guest checks what it got.
/// burst: after `VHU-READY rx_burst frames=N` the peer sends N small UDP
/// datagrams to the guest's discard port as fast as it can; the guest counts
/// the frames that arrive.
fn host_peer(
    ready: mpsc::Sender<Result<(), String>>,
    console: Console,
    data: Vec<u8>,
) -> Result<PeerReport, String> {
    let listener = match TcpListener::bind((HOST_ADDR, TCP_PORT)) {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let why = format!("bind {HOST_ADDR}:{TCP_PORT}: {e}");
            let _ = ready.send(Err(why.clone()));
            return Err(why);
        }
    };
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };

    console.wait_for("VHU-READY tcp_tx")?;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let n = nix::poll::poll(&mut fds, PollTimeout::from(30_000u16))
        .map_err(|e| format!("poll: {e}"))?;
    if n == 0 {
        return Err("the guest did not connect within 30 s".to_string());
    }
    let (mut s, _) = listener.accept().map_err(io("accept"))?;
    s.set_read_timeout(Some(T)).map_err(io("timeout"))?;
    s.set_write_timeout(Some(T)).map_err(io("timeout"))?;
    let t0 = Instant::now();
    let (received, received_crc) = drain(&mut s).map_err(io("receiving from the guest"))?;
    let receive_time = t0.elapsed();
    writeln!(s, "bytes={received} crc32={received_crc:08x}").map_err(io("answering"))?;
    drop(s);

    let line = console.wait_for("VHU-READY tcp_rx")?;
    let port: u16 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {line:?}"))?;
    let to = SocketAddr::new(GUEST_ADDR.parse::<IpAddr>().unwrap(), port);
    let mut s = TcpStream::connect_timeout(&to, T).map_err(io("connecting to the guest"))?;
    s.set_write_timeout(Some(T)).map_err(io("timeout"))?;
    s.write_all(&data).map_err(io("sending to the guest"))?;
    // Closing lets the kernel deliver what is still queued, then the end of
    // the stream, which ends the guest's nc.
    s.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
    drop(s);

    let line = console.wait_for("VHU-READY rx_burst")?;
    let frames: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("frames="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no frame count in {line:?}"))?;
    let udp = UdpSocket::bind((HOST_ADDR, 0)).map_err(io("udp bind"))?;
    for i in 0..frames {
        udp.send_to(&[i as u8; 64], (GUEST_ADDR, 9))
            .map_err(io("udp send"))?;
    }
    Ok(PeerReport {
        received,
        received_crc,
        receive_time,
    })
}

/// The guest found its virtio-net device driven by virtio_net, with the data
/// path features of the backend negotiated.
fn check_info(run: &GuestRun, boot: Option<u32>) {
    let info = match boot {
        Some(b) => run.result_in_boot("info", b),
        None => run.result("info"),
    }
    .unwrap_or_else(|| panic!("no info result\n{}", run.report()));
    assert_eq!(info.field("devices"), Some("1"), "{}", run.report());
    assert_eq!(info.field("virtio0.id"), Some("0x0001"), "{}", run.report());
    assert_eq!(
        info.field("virtio0.driver"),
        Some("virtio_net"),
        "{}",
        run.report()
    );
    let features = info
        .field_u64("virtio0.features")
        .unwrap_or_else(|| panic!("no feature bits\n{}", run.report()));
    // QEMU serves the control queue itself and adds bits for it; the ring and
    // the frames (merged RX buffers, checksum and segmentation offloads) are
    // the backend's.
    let data_path =
        virtio::VERSION_1 | nf::MAC | nf::MRG_RXBUF | nf::CSUM | nf::HOST_TSO4 | nf::GUEST_CSUM;
    assert_eq!(
        features & data_path,
        data_path,
        "{features:#x}\n{}",
        run.report()
    );
}

/// The guest's ping result: at most one of `count` lost.
fn check_ping(run: &GuestRun, result: &guest::GuestResult) {
    let sent = result.field_u64("sent").unwrap_or(0);
    let received = result.field_u64("received").unwrap_or(0);
    assert!(
        sent > 0 && received + 1 >= sent,
        "ping {received}/{sent}\n{}",
        run.report()
    );
}

/// Stops the backend with SIGTERM: it must exit cleanly and report at least
/// `min_bytes` each way, with no malformed frames.
fn stop_backend(host: &mut HostNet, min_bytes: u64) {
    let status = host.be.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "net_backend exited with {status}");
    let line = host.be.wait_log("exiting:", T);
    // "exiting: tx P packets B bytes, rx P packets B bytes, malformed tx M rx M"
    let numbers: Vec<u64> = line
        .split_once("exiting:")
        .map_or("", |(_, counts)| counts)
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [_, tx_bytes, _, rx_bytes, tx_bad, rx_bad] = numbers[..] else {
        panic!("unexpected exit line {line:?}");
    };
    assert!(tx_bytes >= min_bytes, "{line}");
    assert!(rx_bytes >= min_bytes, "{line}");
    assert_eq!((tx_bad, rx_bad), (0, 0), "{line}");
}

/// ping, TCP both ways with the data checked on both ends, and a burst of
/// frames larger than the RX ring; then a second guest against the same
/// backend process, and a clean exit.
#[test]
fn guest_traffic_through_tap_backend() {
    let Some((image, mut host)) = host_net(None) else {
        return;
    };
    let to_guest = pseudo_random(TCP_BYTES);
    let to_guest_crc = crc32(&to_guest);
    let (console_tx, console_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let peer = host
        .ns
        .spawn(move || host_peer(ready_tx, Console(console_rx), to_guest));
    ready_rx
        .recv_timeout(T)
        .expect("host peer thread")
        .unwrap_or_else(|e| panic!("host peer: {e}"));

    let run = {
        let mut cfg = net_config(&host, &["info", "ping", "tcp_tx", "tcp_rx", "rx_burst"]);
        cfg.extra_cmdline += &format!(" vhu.rx_crc32={to_guest_crc:08x}");
        cfg.console = Some(console_tx);
        image.run(&cfg)
        // cfg (the console sender) is dropped here: the peer cannot wait forever
    };
    eprintln!("guest run 1 took {:.2}s", run.elapsed.as_secs_f64());
    let peer = peer.join().expect("host peer thread panicked");
    run.assert_pass();
    let peer = peer.unwrap_or_else(|e| panic!("host peer: {e}\n{}", run.report()));
    let ms = |r: &guest::GuestResult| r.field_u64("ms").unwrap_or(0);
    eprintln!(
        "guest to host: {} bytes in {} ms (host read them in {} ms); host to guest: {TCP_BYTES} bytes in {} ms",
        peer.received,
        ms(run.expect_pass("tcp_tx")),
        peer.receive_time.as_millis(),
        ms(run.expect_pass("tcp_rx"))
    );

    check_info(&run, None);
    check_ping(&run, run.expect_pass("ping"));
    // guest -> host: what the host got is what the guest sent
    let tx = run.expect_pass("tcp_tx");
    assert_eq!(peer.received, TCP_BYTES, "{}", run.report());
    assert_eq!(tx.field_u64("bytes"), Some(TCP_BYTES as u64));
    let received_crc = format!("{:08x}", peer.received_crc);
    assert_eq!(tx.field("crc32"), Some(received_crc.as_str()));
    // host -> guest: the guest checked the CRC it was given; and reports it
    let rx = run.expect_pass("tcp_rx");
    assert_eq!(rx.field_u64("bytes"), Some(TCP_BYTES as u64));
    let sent_crc = format!("{to_guest_crc:08x}");
    assert_eq!(rx.field("crc32"), Some(sent_crc.as_str()));
    // a burst larger than the RX ring arrived whole, and in time
    let burst = run.expect_pass("rx_burst");
    assert!(burst.field_u64("received") >= Some(BURST_FRAMES as u64));
    eprintln!("{BURST_FRAMES} frames to the guest in {} ms", ms(burst));

    host.be.wait_log("frontend connected", T);
    host.be.wait_log("frontend disconnected", T);
    assert!(
        host.be.child.try_wait().unwrap().is_none(),
        "net_backend exited with its first guest"
    );

    // The same backend process serves the next QEMU.
    let run = image.run(&net_config(&host, &["ping"]));
    eprintln!("guest run 2 took {:.2}s", run.elapsed.as_secs_f64());
    run.assert_pass();
    check_ping(&run, run.expect_pass("ping"));
    host.be.wait_log("frontend connected", T);
    host.be.wait_log("frontend disconnected", T);

    stop_backend(&mut host, TCP_BYTES as u64);
}

/// Device resets from inside the guest, against one backend process: the
/// driver unloaded and loaded again, then the whole guest rebooted (`reboot -f`;
/// QEMU resets the machine and the same kernel boots again), with traffic
/// before and after each.
#[test]
fn guest_driver_reload_and_reboot_on_one_backend() {
    reload_and_reboot(false);
}

#[test]
fn guest_driver_reload_and_reboot_on_packed_rings() {
    reload_and_reboot(true);
}

fn reload_and_reboot(packed: bool) {
    // The session's debug lines say when the rings start.
    let rust_log = format!(
        "{},vhost_user_sync::backend::session=debug",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
    );
    let Some((image, mut host)) = host_net(Some(&rust_log)) else {
        return;
    };
    let run = image.run(&GuestConfig {
        reboot: true,
        packed,
        ..net_config(&host, &["info", "ping", "reload_net"])
    });
    eprintln!(
        "guest run (two boots) took {:.2}s",
        run.elapsed.as_secs_f64()
    );
    run.assert_pass();
    for boot in 1..=2 {
        check_info(&run, Some(boot));
        let features = run
            .result_in_boot("info", boot)
            .and_then(|r| r.field_u64("virtio0.features"))
            .unwrap_or(0);
        assert_eq!(features & virtio::RING_PACKED != 0, packed, "{features:#x}");
        check_ping(&run, run.result_in_boot("ping", boot).unwrap());
        let reload = run.result_in_boot("reload_net", boot).unwrap();
        assert!(reload.pass, "{}", run.report());
    }
    assert!(
        run.console.contains("VHU-REBOOT boot=1 fails=0"),
        "{}",
        run.report()
    );

    // One connection throughout; the rings started at each driver probe:
    // twice in each boot (first probe, and again after the reload).
    let log = host.be.log_until("frontend disconnected", T);
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("frontend connected"), 1, "{log:#?}");
    assert_eq!(count("ring 0 started"), 4, "{log:#?}");
    assert_eq!(count("ring 1 started"), 4, "{log:#?}");
    assert!(
        host.be.child.try_wait().unwrap().is_none(),
        "net_backend exited with its guest"
    );
    stop_backend(&mut host, 1);
}
