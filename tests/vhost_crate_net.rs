//! rust-vmm's `vhost` crate as the frontend of `net_backend`: handshake, multiqueue
//! negotiation and the config space, as that crate encodes them.

#[path = "support/backend.rs"]
mod backend;

use backend::BackendProcess;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures as Proto};
use vhost::VhostBackend;

const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;

#[test]
fn multiqueue_handshake_and_config_space() {
    let be = BackendProcess::start(
        "net_backend",
        &[
            "--backend",
            "null",
            "--queues",
            "4",
            "--mac",
            "02:11:22:33:44:55",
            "--mtu",
            "9000",
        ],
    );
    let mut fe = Frontend::connect(&be.socket, 9).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    for bit in [VIRTIO_NET_F_MQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_CTRL_VQ] {
        assert_ne!(features & bit, 0, "{bit:#x} missing from {features:#x}");
    }
    let protocol = fe.get_protocol_features().unwrap();
    for p in [
        Proto::MQ,
        Proto::CONFIG,
        Proto::REPLY_ACK,
        Proto::MTU,
        Proto::RARP,
    ] {
        assert!(protocol.contains(p), "{p:?} missing from {protocol:?}");
    }
    fe.set_protocol_features(protocol).unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    // 4 pairs and the control queue.
    assert_eq!(fe.get_queue_num().unwrap(), 9);
    // Split rings: the packed layout is offered but not acked.
    fe.set_features(features & !(1 << 34)).unwrap();
    let (_, config) = fe
        .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0u8; 12])
        .unwrap();
    assert_eq!(&config[..6], &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([config[8], config[9]]),
        4,
        "max_virtqueue_pairs"
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 9000, "mtu");
    // A read past the 12-byte config space is refused (an empty reply), and the
    // connection goes on.
    assert!(fe
        .get_config(8, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .is_err());
    // NET_SET_MTU is accepted with the MTU protocol feature.
    // Split rings: the packed layout is offered but not acked.
    fe.set_features(features & !(1 << 34)).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 9);
    // Writing the MAC (legacy config write) is seen in the next read.
    fe.set_config(0, VhostUserConfigFlags::WRITABLE, &[2, 0, 0, 0, 0, 7])
        .unwrap();
    let (_, config) = fe
        .get_config(0, 6, VhostUserConfigFlags::WRITABLE, &[0u8; 6])
        .unwrap();
    assert_eq!(config, [2, 0, 0, 0, 0, 7]);
    // The read-only part of the config space cannot be written.
    assert!(fe
        .set_config(6, VhostUserConfigFlags::WRITABLE, &[0, 0])
        .is_err());
}
