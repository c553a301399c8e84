//! `blk_backend` serving a real Linux guest: QEMU's vhost-user-blk-pci on the backend's
//! socket, the guest's virtio_blk driver writing a pattern, dropping its page cache and
//! reading it back, discarding a range it wrote (through the backend's io_uring), then
//! the same after a driver reload and after a guest reboot. The host checks the image
//! file afterwards.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/guest.rs"]
mod guest;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use backend::{BackendProcess, TempDir};
use guest::{md5, GuestConfig, GuestRun};

const T: Duration = Duration::from_secs(30);
const MARKER: &str = "VHU-HOST-MARKER";
const MIB: u64 = 1 << 20;

/// The md5 of `mib` MiB of the image at `off_mib` MiB.
fn image_md5(image: &std::path::Path, off_mib: u64, mib: u64) -> String {
    let f = std::fs::File::open(image).unwrap();
    let mut b = vec![0u8; (mib * MIB) as usize];
    f.read_exact_at(&mut b, off_mib * MIB).unwrap();
    md5(&b)
}

fn field<'a>(run: &'a GuestRun, test: &str, boot: u32, key: &str) -> &'a str {
    run.result_in_boot(test, boot)
        .and_then(|r| r.field(key))
        .unwrap_or_else(|| panic!("{test} boot {boot}: no {key}\n{}", run.report()))
}

#[test]
fn guest_disk_survives_driver_reload_and_reboot() {
    disk_survives_reload_and_reboot(false);
}

#[test]
fn guest_disk_on_a_packed_ring_survives_driver_reload_and_reboot() {
    disk_survives_reload_and_reboot(true);
}

fn disk_survives_reload_and_reboot(packed: bool) {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let dir = TempDir::new("guest-blk");
    let disk = dir.path().join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(32 * MIB).unwrap();
    f.write_all_at(MARKER.as_bytes(), 0).unwrap();
    // The range the guest discards holds data before it does.
    f.write_all_at(&[0x5a; MIB as usize], 8 * MIB).unwrap();
    drop(f);
    let be = BackendProcess::start(
        "blk_backend",
        &["--image", disk.to_str().unwrap(), "--aio", "io-uring"],
    );

    let run = image.run(&GuestConfig {
        blk_socket: Some(be.socket.clone()),
        reboot: true,
        packed,
        extra_cmdline: format!("vhu.blk_marker={MARKER} vhu.blk_mib=2 vhu.blk_off_mib=1"),
        ..GuestConfig::with_tests(&["info", "blk", "blk_discard", "reload_blk"])
    });
    eprintln!(
        "guest run (two boots) took {:.2}s",
        run.elapsed.as_secs_f64()
    );
    run.assert_pass();
    for boot in 1..=2 {
        assert_eq!(field(&run, "info", boot, "virtio0.id"), "0x0002");
        assert_eq!(field(&run, "info", boot, "virtio0.driver"), "virtio_blk");
        let features = run
            .result_in_boot("info", boot)
            .and_then(|r| r.field_u64("virtio0.features"))
            .unwrap_or_else(|| panic!("no feature bits\n{}", run.report()));
        assert_eq!(features & (1 << 34) != 0, packed, "{features:#x}");
        assert_eq!(
            field(&run, "blk", boot, "sectors"),
            (32 * MIB / 512).to_string()
        );
        // What the guest wrote before the reload read back the same after it.
        assert_eq!(
            field(&run, "reload_blk", boot, "kept"),
            field(&run, "blk", boot, "md5")
        );
    }
    // The second boot found the host's marker at sector 0 (its blk test checks it) and
    // wrote over the first boot's data; the image holds what boot 2 wrote.
    assert_eq!(image_md5(&disk, 1, 2), field(&run, "blk", 2, "md5"));
    assert_eq!(image_md5(&disk, 3, 2), field(&run, "reload_blk", 2, "md5"));
    let head = std::fs::read(&disk).unwrap();
    assert_eq!(&head[..MARKER.len()], MARKER.as_bytes());
    // The guest's discards reached the image: the range reads as zeroes there too.
    assert!(head[(8 * MIB) as usize..(9 * MIB) as usize]
        .iter()
        .all(|&b| b == 0));

    // One connection for both boots; the backend is still there.
    let log = be.log_until("frontend disconnected", T);
    let connected = log
        .iter()
        .filter(|l| l.contains("frontend connected"))
        .count();
    assert_eq!(connected, 1, "{log:#?}");
    let mut be = be;
    assert!(be.child.try_wait().unwrap().is_none(), "blk_backend exited");
    // One discard per boot at least, done on the io_uring engine.
    assert!(
        be.startup
            .iter()
            .any(|l| l.contains("requests through io_uring")),
        "{:?}",
        be.startup
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(be.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = be.wait_log("exiting:", T);
    let discards: u64 = exit
        .split(", ")
        .find_map(|part| part.strip_suffix(" discards"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no discard count in {exit:?}"));
    assert!(discards >= 2, "{exit}");
}
