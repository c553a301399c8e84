use std::sync::atomic::Ordering;

use super::super::queue_region::crash;
use super::super::{layout::split as l, InflightArea, InflightError};
use super::SplitInflight;

fn area(size: u16) -> InflightArea {
    InflightArea::create(1, size, false, None).expect("area").0
}

fn queue(a: &InflightArea) -> SplitInflight {
    a.split_queue(0).expect("queue 0")
}

fn poke<T: vm_memory::AtomicAccess>(a: &InflightArea, at: u64, v: T) {
    a.mem
        .store::<T>(at, v, Ordering::Relaxed)
        .expect("in the area");
}

/// A device model over one region: chains taken in avail order, used in any order,
/// published in batches; the ring's used index is a store like any other, so a
/// simulated crash can fall before or after it.
struct Model {
    q: SplitInflight,
    avail: Vec<u16>,
    next: usize,
    used_pending: Vec<u16>,
    used_published: Vec<u16>,
    ring_used: u16,
}

enum Op {
    Pop,
    Use(u16),
    Publish,
}

impl Model {
    fn run(&mut self, op: &Op) {
        match *op {
            Op::Pop => {
                let head = self.avail[self.next];
                self.next += 1;
                self.q.mark(head);
            }
            Op::Use(head) => {
                self.q.link_used(head);
                // The used element itself.
                if crash::store_allowed() {
                    self.used_pending.push(head);
                }
            }
            Op::Publish => {
                if !crash::store_allowed() {
                    return;
                }
                self.ring_used = self.ring_used.wrapping_add(self.used_pending.len() as u16);
                self.used_published.append(&mut self.used_pending);
                self.q.published(self.ring_used);
            }
        }
    }
}

/// After a crash at every store of `ops`, a new process recovers exactly the chains
/// the guest has not seen used: each either resubmitted or read again from the avail
/// ring, none twice, none used twice.
fn crash_everywhere(ops: &[Op]) {
    let avail: Vec<u16> = vec![6, 1, 4, 3, 0, 2, 7, 5];
    let mut n = 0;
    loop {
        let a = area(8);
        queue(&a).recover(8, 0).expect("new area");
        crash::allow(Some(n));
        let mut m = Model {
            q: queue(&a),
            avail: avail.clone(),
            next: 0,
            used_pending: Vec::new(),
            used_published: Vec::new(),
            ring_used: 0,
        };
        for op in ops {
            m.run(op);
        }
        let finished = crash::store_allowed();
        crash::allow(None);
        let resubmit = queue(&a)
            .recover(8, m.ring_used)
            .unwrap_or_else(|e| panic!("crash after {n} stores: {e}"));
        let resume = usize::from(m.ring_used) + resubmit.len();
        let mut served: Vec<u16> = resubmit.clone();
        served.extend_from_slice(&avail[resume.min(avail.len())..]);
        let mut expected: Vec<u16> = avail
            .iter()
            .copied()
            .filter(|h| !m.used_published.contains(h))
            .collect();
        served.sort_unstable();
        expected.sort_unstable();
        assert_eq!(
            served, expected,
            "crash after {n} stores: resubmitted {resubmit:?}, resumed at {resume}, \
             guest saw {:?} used",
            m.used_published
        );
        if finished {
            break;
        }
        n += 1;
    }
    assert!(n > 10, "the script made only {n} stores");
}

#[test]
fn a_crash_at_any_store_leaves_a_recoverable_region() {
    use Op::*;
    crash_everywhere(&[
        Pop,
        Pop,
        Pop,
        Use(1),
        Publish,
        Pop,
        Use(6),
        Use(3),
        Publish,
        Pop,
        Use(4),
        Pop,
        Use(0),
        Publish,
        Pop,
        Use(2),
    ]);
}

#[test]
fn in_flight_heads_come_back_in_the_order_they_were_taken() {
    let a = area(8);
    let mut q = queue(&a);
    q.recover(8, 0).expect("new");
    for h in [6, 1, 4, 3] {
        q.mark(h);
    }
    q.link_used(1);
    q.published(1);
    let mut again = queue(&a);
    assert_eq!(again.recover(8, 1).expect("recover"), vec![6, 4, 3]);
    // Taken again (and new ones after them), the order holds for the next start.
    for h in [6, 4, 3, 0] {
        again.mark(h);
    }
    again.link_used(4);
    again.published(2);
    assert_eq!(queue(&a).recover(8, 2).expect("recover"), vec![6, 3, 0]);
}

#[test]
fn a_batch_published_but_not_cleared_is_cleared_on_recovery() {
    let a = area(8);
    let mut q = queue(&a);
    q.recover(8, 0).expect("new");
    for h in [2, 5, 7] {
        q.mark(h);
    }
    q.link_used(5);
    q.link_used(2);
    // The ring's used index reached 2, the area was not updated.
    assert_eq!(queue(&a).recover(8, 2).expect("recover"), vec![7]);
}

#[test]
fn untrusted_fields_are_refused() {
    let check = |setup: &dyn Fn(&InflightArea), ring_size: u16, ring_used: u16| {
        let a = area(8);
        queue(&a).recover(8, 0).expect("new");
        setup(&a);
        queue(&a).recover(ring_size, ring_used)
    };
    let e = check(&|a| poke::<u16>(a, l::VERSION, 9), 8, 0).unwrap_err();
    assert!(
        matches!(e, InflightError::BadVersion { version: 9, .. }),
        "{e}"
    );
    let e = check(&|a| poke::<u16>(a, l::DESC_NUM, 4), 8, 0).unwrap_err();
    assert!(
        matches!(e, InflightError::BadDescNum { desc_num: 4, .. }),
        "{e}"
    );
    let e = check(&|_| {}, 16, 0).unwrap_err();
    assert!(matches!(e, InflightError::BadDescNum { .. }), "{e}");
    let e = check(&|a| poke::<u8>(a, l::entry(3, l::E_INFLIGHT), 2), 8, 0).unwrap_err();
    assert!(
        matches!(
            e,
            InflightError::BadFlag {
                index: 3,
                value: 2,
                ..
            }
        ),
        "{e}"
    );
    // A ring of 4 in an area of 8: an in-flight head 6 cannot be one of its chains.
    let e = check(&|a| poke::<u8>(a, l::entry(6, l::E_INFLIGHT), 1), 4, 0).unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { index: 6, .. }), "{e}");
    // The ring's used index 40 ahead of the area's: more than a ring's batch.
    let e = check(&|_| {}, 8, 40).unwrap_err();
    assert!(
        matches!(e, InflightError::BadBatch { batch: 40, .. }),
        "{e}"
    );
    // A batch link leading out of the ring.
    let e = check(
        &|a| {
            poke::<u16>(a, l::LAST_BATCH_HEAD, 1);
            poke::<u16>(a, l::entry(1, l::E_NEXT), 300);
        },
        8,
        2,
    )
    .unwrap_err();
    assert!(
        matches!(e, InflightError::BadEntry { index: 300, .. }),
        "{e}"
    );
}

#[test]
fn a_zeroed_region_from_the_frontend_is_set_up_as_new() {
    let a = area(8);
    poke::<u16>(&a, l::DESC_NUM, 0);
    poke::<u8>(&a, l::entry(2, l::E_INFLIGHT), 1);
    assert!(queue(&a).recover(8, 5).expect("new").is_empty());
    assert_eq!(
        a.mem.load::<u16>(l::DESC_NUM, Ordering::Relaxed).unwrap(),
        8
    );
    assert_eq!(
        a.mem.load::<u16>(l::USED_IDX, Ordering::Relaxed).unwrap(),
        5
    );
    assert!(queue(&a).recover(8, 5).expect("in use").is_empty());
}

#[test]
fn areas_of_impossible_geometry_are_refused() {
    assert!(InflightArea::create(0, 8, false, None).is_err());
    assert!(InflightArea::create(1, 0, false, None).is_err());
    let (a, fd) = InflightArea::create(2, 8, false, None).expect("area");
    let mut info = a.info();
    info.num_queues = 3;
    let e = InflightArea::map(&info, fd.try_clone().unwrap(), false, None).unwrap_err();
    assert!(matches!(e, InflightError::TooSmall { .. }), "{e}");
    // A size larger than the file.
    let mut info = a.info();
    info.mmap_size += 4096;
    assert!(InflightArea::map(&info, fd, false, None).is_err());
}
