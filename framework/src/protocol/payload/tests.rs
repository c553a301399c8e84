//! Round trips and rejections of every payload type.

use super::*;
use crate::protocol::ProtocolError;

fn region(gpa: u64, size: u64) -> MemoryRegionDesc {
    MemoryRegionDesc {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    }
}

#[test]
fn vring_state_rejects_wrong_sizes() {
    for n in [0, 4, 7, 9, 16] {
        assert!(matches!(
            VringState::decode("X", &vec![0; n]),
            Err(ProtocolError::WrongSize { expected: 8, .. })
        ));
    }
}

#[test]
fn vring_addr_rejections() {
    let ok = VringAddr {
        index: 0,
        flags: 0,
        desc: 0x1000,
        used: 0x2000,
        avail: 0x3000,
        log: 0,
    };
    assert_eq!(VringAddr::decode(&ok.encode()), Ok(ok));
    assert_eq!(
        VringAddr::decode(&VringAddr { flags: 1, ..ok }.encode()),
        Ok(VringAddr { flags: 1, ..ok })
    );
    for bad in [
        VringAddr { flags: 2, ..ok },
        VringAddr { desc: 0x1008, ..ok },
        VringAddr {
            avail: 0x3001,
            ..ok
        },
        VringAddr { used: 0x2002, ..ok },
    ] {
        assert!(VringAddr::decode(&bad.encode()).is_err(), "{bad:?}");
    }
    assert!(VringAddr::decode(&[0; 39]).is_err());
}

#[test]
fn ring_fd_round_trip_and_reserved_bits() {
    for r in [
        RingFd {
            index: 0,
            no_fd: false,
        },
        RingFd {
            index: 255,
            no_fd: true,
        },
    ] {
        assert_eq!(RingFd::decode("K", &r.encode()), Ok(r));
    }
    assert!(RingFd::decode("K", &(1u64 << 9).to_ne_bytes()).is_err());
    assert!(RingFd::decode("K", &u64::MAX.to_ne_bytes()).is_err());
}

#[test]
fn memory_table_rejections() {
    let t = MemoryTableDesc {
        regions: vec![region(0, 0x1000), region(0x1000, 0x1000)],
    };
    assert_eq!(MemoryTableDesc::decode(&t.encode()), Ok(t.clone()));
    // num disagreeing with the size
    let mut b = t.encode();
    b[0] = 3;
    assert!(MemoryTableDesc::decode(&b).is_err());
    b[0] = 0;
    assert!(MemoryTableDesc::decode(&b).is_err());
    b[0..4].copy_from_slice(&9u32.to_ne_bytes());
    assert!(MemoryTableDesc::decode(&b).is_err());
    // empty and overflowing regions
    for r in [
        region(0, 0),
        region(u64::MAX - 10, 0x1000),
        MemoryRegionDesc {
            userspace_addr: u64::MAX,
            ..region(0, 2)
        },
        MemoryRegionDesc {
            mmap_offset: u64::MAX,
            ..region(0, 2)
        },
    ] {
        let b = MemoryTableDesc { regions: vec![r] }.encode();
        assert!(MemoryTableDesc::decode(&b).is_err(), "{r:?}");
        assert!(SingleRegion::decode("ADD_MEM_REG", &SingleRegion(r).encode()).is_err());
    }
}

#[test]
fn config_rejections() {
    let c = ConfigAccess {
        offset: 4,
        flags: 1,
        payload: vec![9; 8],
    };
    assert_eq!(
        ConfigAccess::decode("GET_CONFIG", &c.encode()),
        Ok(c.clone())
    );
    let mut b = c.encode();
    b[4..8].copy_from_slice(&300u32.to_ne_bytes());
    assert!(
        ConfigAccess::decode("GET_CONFIG", &b).is_err(),
        "size above 256"
    );
    let mut b = c.encode();
    b[4..8].copy_from_slice(&7u32.to_ne_bytes());
    assert!(
        ConfigAccess::decode("GET_CONFIG", &b).is_err(),
        "size disagrees with body"
    );
    assert!(ConfigAccess::decode(
        "GET_CONFIG",
        &ConfigAccess {
            flags: 2,
            ..c.clone()
        }
        .encode()
    )
    .is_err());
    assert!(
        ConfigAccess::decode("GET_CONFIG", &ConfigAccess { offset: 250, ..c }.encode()).is_err()
    );
    assert!(ConfigAccess::decode("GET_CONFIG", &[0; 11]).is_err());
}

#[test]
fn log_inflight_and_device_state() {
    assert!(LogBase::decode(
        &LogBase {
            mmap_size: 0,
            mmap_offset: 0
        }
        .encode()
    )
    .is_err());
    let i = InflightInfo {
        mmap_size: u64::MAX,
        mmap_offset: 1,
        num_queues: 1,
        queue_size: 1,
    };
    assert!(InflightInfo::decode("SET_INFLIGHT_FD", &i.encode()).is_err());
    assert!(InflightInfo::decode("SET_INFLIGHT_FD", &[0; 20]).is_err());
    assert!(DeviceStateTransfer::decode(
        &DeviceStateTransfer {
            direction: 1,
            phase: 1
        }
        .encode()
    )
    .is_err());
    assert!(decode_u64("X", &[0; 9]).is_err());
}
