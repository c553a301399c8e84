//! Micro-benchmarks of message decoding: the header, the request shape checks and the
//! payload decoders a backend runs for every message, and one whole message read
//! through a socket pair.
//!
//! `cargo bench --bench protocol`

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use vhost_user_sync::message::{read_message, write_message};
use vhost_user_sync::protocol::payload::{
    decode_u64, MemoryRegionDesc, MemoryTableDesc, RingFd, VringAddr, VringState,
};
use vhost_user_sync::protocol::{FrontendRequest, Header, HeaderFlags};
use vhost_user_sync::sys::unix::SocketPlatformConnection;

fn header(c: &mut Criterion) {
    let bytes = Header {
        request: FrontendRequest::SET_VRING_ADDR.number(),
        flags: HeaderFlags::REQUEST.with_need_reply(),
        size: 40,
    }
    .encode();
    c.bench_function("header/decode", |b| {
        b.iter(|| Header::decode(black_box(&bytes)))
    });
    c.bench_function("header/request_and_size_check", |b| {
        b.iter(|| {
            let r = FrontendRequest::try_from(black_box(9u32))?;
            r.shape().check_size(black_box(40))?;
            r.shape().check_fds(black_box(0), 0)
        })
    });
}

fn payloads(c: &mut Criterion) {
    let state = VringState { index: 1, num: 256 }.encode();
    let addr = VringAddr {
        index: 1,
        flags: 0,
        desc: 0x7f00_0000_0000,
        used: 0x7f00_0000_2000,
        avail: 0x7f00_0000_1000,
        log: 0,
    }
    .encode();
    let ring_fd = RingFd {
        index: 1,
        no_fd: false,
    }
    .encode();
    let table = MemoryTableDesc {
        regions: (0..8u64)
            .map(|i| MemoryRegionDesc {
                guest_phys_addr: i << 32,
                memory_size: 1 << 30,
                userspace_addr: 0x7f00_0000_0000 + (i << 32),
                mmap_offset: 0,
            })
            .collect(),
    }
    .encode();
    let features = (1u64 << 32 | 1 << 29).to_ne_bytes();
    let mut g = c.benchmark_group("payload");
    g.bench_function("u64", |b| {
        b.iter(|| decode_u64("SET_FEATURES", black_box(&features)))
    });
    g.bench_function("vring_state", |b| {
        b.iter(|| VringState::decode("SET_VRING_NUM", black_box(&state)))
    });
    g.bench_function("vring_addr", |b| {
        b.iter(|| VringAddr::decode(black_box(&addr)))
    });
    g.bench_function("ring_fd", |b| {
        b.iter(|| RingFd::decode("SET_VRING_KICK", black_box(&ring_fd)))
    });
    g.bench_function("memory_table_8_regions", |b| {
        b.iter(|| MemoryTableDesc::decode(black_box(&table)))
    });
    g.finish();
}

fn socket_round_trip(c: &mut Criterion) {
    let (a, b) = UnixStream::pair().expect("socket pair");
    let tx = SocketPlatformConnection::new(a).expect("sender");
    let rx = SocketPlatformConnection::new(b).expect("receiver");
    let body = VringState { index: 0, num: 256 }.encode();
    c.bench_function("message/write_and_read_socketpair", |bench| {
        bench.iter(|| {
            write_message(
                &tx,
                FrontendRequest::SET_VRING_NUM.number(),
                HeaderFlags::REQUEST,
                &body,
                &[],
            )
            .expect("write");
            read_message(&rx, true).expect("read")
        })
    });
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = quick();
    targets = header, payloads, socket_round_trip
}
criterion_main!(benches);
