//! Micro-benchmarks of the device-side ring paths: walking a descriptor chain (direct
//! and through an indirect table) and returning used entries with EVENT_IDX
//! (add_used, publish, needs_notification), alone and after popping.
//!
//! `cargo bench --bench queue`

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::protocol::payload::MemoryRegionDesc;
use vhost_user_sync::queue::{
    Descriptor, DescriptorChain, Ring, RingAddrs, RingState, SplitRing, Virtqueue,
};

const SIZE: u16 = 256;
const ADDRS: RingAddrs = RingAddrs {
    desc: 0,
    avail: 0x1000,
    used: 0x2000,
};
const INDIRECT_TABLE: u64 = 0x4000;
const BUFFERS: u64 = 0x10000;
const MEM: u64 = 4 << 20;

fn memory() -> MemoryTable {
    let fd = nix::sys::memfd::memfd_create("bench-guest", nix::sys::memfd::MFdFlags::empty())
        .expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(MEM).expect("sizing guest memory");
    MemoryTable::from_regions(
        &[MemoryRegionDesc {
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: 0,
            mmap_offset: 0,
        }],
        vec![file],
    )
    .expect("memory table")
}

/// Writes `n` linked descriptors at `table` (readable first half, writable second),
/// each pointing at its own 4 KiB buffer.
fn write_chain(mem: &MemoryTable, table: u64, n: u16) {
    for i in 0..n {
        let last = i + 1 == n;
        let d = Descriptor {
            addr: BUFFERS + u64::from(i) * 4096,
            len: 4096,
            flags: if i >= n / 2 { Descriptor::F_WRITE } else { 0 }
                | if last { 0 } else { Descriptor::F_NEXT },
            next: if last { 0 } else { i + 1 },
        };
        mem.write(table + 16 * u64::from(i), &d.to_bytes())
            .expect("descriptor");
    }
}

fn chain_walk(c: &mut Criterion) {
    let mem = memory();
    let mut g = c.benchmark_group("chain_walk");
    for n in [1u16, 3, 16] {
        write_chain(&mem, ADDRS.desc, n);
        g.bench_with_input(BenchmarkId::new("direct", n), &n, |b, _| {
            b.iter(|| DescriptorChain::walk(&mem, black_box(ADDRS.desc), SIZE, 0, true))
        });
        write_chain(&mem, INDIRECT_TABLE, n);
        let head = Descriptor {
            addr: INDIRECT_TABLE,
            len: 16 * u32::from(n),
            flags: Descriptor::F_INDIRECT,
            next: 0,
        };
        mem.write(ADDRS.desc, &head.to_bytes()).expect("descriptor");
        g.bench_with_input(BenchmarkId::new("indirect", n), &n, |b, _| {
            b.iter(|| DescriptorChain::walk(&mem, black_box(ADDRS.desc), SIZE, 0, true))
        });
    }
    g.finish();
}

/// The driver's used_event (asks for a call once that used entry is written).
fn set_used_event(mem: &MemoryTable, v: u16) {
    mem.store::<u16>(ADDRS.avail + 4 + 2 * u64::from(SIZE), v, Ordering::Release)
        .expect("used_event");
}

fn used_ring(c: &mut Criterion) {
    const BATCH: u16 = 32;
    let mem = memory();
    let mut g = c.benchmark_group("used_ring_event_idx");
    g.throughput(criterion::Throughput::Elements(BATCH.into()));

    let mut q = SplitRing::new(&mem, SIZE, ADDRS, 0, true, true).expect("queue");
    let mut used = 0u16;
    g.bench_function("add_used_publish_notify_x32", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                q.add_used(&mem, i, 64).expect("add_used");
            }
            q.publish_used(&mem).expect("publish");
            // The driver keeps up: it wants a call for the last entry of the batch.
            used = used.wrapping_add(BATCH);
            set_used_event(&mem, used.wrapping_sub(1));
            black_box(q.needs_notification(&mem).expect("notify"))
        })
    });

    // Full cycle: the driver offers BATCH one-descriptor chains, the device pops,
    // walks and returns them and decides about the call.
    for i in 0..SIZE {
        let d = Descriptor {
            addr: BUFFERS + u64::from(i) * 4096,
            len: 4096,
            flags: Descriptor::F_WRITE,
            next: 0,
        };
        mem.write(ADDRS.desc + 16 * u64::from(i), &d.to_bytes())
            .expect("descriptor");
    }
    let start = mem
        .load::<u16>(ADDRS.used + 2, Ordering::Acquire)
        .expect("used idx");
    mem.store::<u16>(ADDRS.avail + 2, 0, Ordering::Release)
        .expect("avail idx");
    let ring = Ring::new(&mem, SIZE, ADDRS, RingState::initial(false), true, true).expect("queue");
    let mut q = Virtqueue::new(0, ring, false);
    let (mut avail, mut used) = (0u16, start);
    g.bench_function("pop_add_used_notify_x32", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                let slot = u64::from(avail.wrapping_add(i) % SIZE);
                mem.store::<u16>(ADDRS.avail + 4 + 2 * slot, slot as u16, Ordering::Relaxed)
                    .expect("avail entry");
            }
            avail = avail.wrapping_add(BATCH);
            mem.store::<u16>(ADDRS.avail + 2, avail, Ordering::Release)
                .expect("avail idx");
            while let Some(chain) = q.pop(&mem).expect("pop") {
                q.add_used(&mem, &chain, chain.writable_len())
                    .expect("add_used");
            }
            used = used.wrapping_add(BATCH);
            set_used_event(&mem, used.wrapping_sub(1));
            q.signal(&mem);
            black_box(q.in_flight())
        })
    });
    g.finish();
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
    targets = chain_walk, used_ring
}
criterion_main!(benches);
