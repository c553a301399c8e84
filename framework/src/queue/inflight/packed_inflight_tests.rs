use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::super::queue_region::crash;
use super::super::{layout::packed as l, InflightArea, InflightError};
use super::PackedInflight;
use crate::queue::packed::layout::{PackedDescriptor, F_AVAIL, F_NEXT, F_USED};

const SIZE: u16 = 16;

fn area() -> InflightArea {
    InflightArea::create(1, SIZE, true, None).expect("area").0
}

fn queue(a: &InflightArea) -> PackedInflight {
    a.packed_queue(0).expect("queue 0")
}

/// The descriptors of chain `id` of `slots` ring slots (the id in the last one).
fn descs(id: u16, slots: u16) -> Vec<PackedDescriptor> {
    (0..slots)
        .map(|k| PackedDescriptor {
            addr: 0x1000 * u64::from(id) + u64::from(k) * 0x100,
            len: 64 + u32::from(k),
            id,
            flags: F_AVAIL | if k + 1 < slots { F_NEXT } else { 0 },
        })
        .collect()
}

enum Op {
    Pop,
    Use(u16),
    Publish,
}

/// A device model over one region and a ring of 16 slots (one lap: wrap counter 1
/// throughout): chains taken in avail order, used in any order, batches handed over by
/// the first used descriptor's flags, which a simulated crash can miss.
struct Model {
    q: PackedInflight,
    chains: Vec<(u16, u16)>,
    next: usize,
    used_at: u16,
    pending: Vec<(u16, u16)>,
    batch_start: Option<u16>,
    handed: Vec<u16>,
    /// Slots whose used descriptor the driver can see.
    used_slots: HashMap<u16, ()>,
}

impl Model {
    fn run(&mut self, op: &Op) {
        match *op {
            Op::Pop => {
                let (id, slots) = self.chains[self.next];
                self.next += 1;
                self.q.mark(id, &descs(id, slots)).expect("mark");
            }
            Op::Use(id) => {
                let slots = self.chains.iter().find(|c| c.0 == id).expect("chain").1;
                self.batch_start.get_or_insert(self.used_at);
                self.used_at += slots;
                self.q.link_used(id, (self.used_at, true));
                self.pending.push((id, slots));
            }
            Op::Publish => {
                let Some(first) = self.batch_start.take() else {
                    return;
                };
                // The first descriptor's flags: one store that hands the batch over.
                if !crash::store_allowed() {
                    self.batch_start = Some(first);
                    return;
                }
                self.used_slots.insert(first, ());
                self.handed.extend(self.pending.drain(..).map(|p| p.0));
                self.q.published((self.used_at, true));
            }
        }
    }
}

fn crash_everywhere(ops: &[Op]) {
    let chains: Vec<(u16, u16)> = vec![(3, 1), (1, 2), (6, 1), (0, 3), (2, 1), (9, 2), (4, 1)];
    let mut n = 0;
    loop {
        let a = area();
        assert!(queue(&a)
            .recover(SIZE, (0, true), |_| None)
            .expect("new")
            .is_none());
        let mut q = queue(&a);
        let fresh = q.recover(SIZE, (0, true), |_| None).expect("in use");
        assert_eq!(fresh.map(|r| r.chains.len()), Some(0));
        crash::allow(Some(n));
        let mut m = Model {
            q,
            chains: chains.clone(),
            next: 0,
            used_at: 0,
            pending: Vec::new(),
            batch_start: None,
            handed: Vec::new(),
            used_slots: HashMap::new(),
        };
        for op in ops {
            m.run(op);
        }
        let finished = crash::store_allowed();
        crash::allow(None);
        let used_slots = m.used_slots.clone();
        let flags_at = |slot: u16| {
            Some(if used_slots.contains_key(&slot) {
                F_AVAIL | F_USED
            } else {
                F_AVAIL
            })
        };
        let resume = queue(&a)
            .recover(SIZE, (0, true), flags_at)
            .unwrap_or_else(|e| panic!("crash after {n} stores: {e}"))
            .expect("a region in use");
        // Resubmitted from the copies, exactly as taken.
        for (id, d) in &resume.chains {
            let slots = chains.iter().find(|c| c.0 == *id).expect("known chain").1;
            assert_eq!(
                d,
                &descs(*id, slots),
                "crash after {n} stores: chain {id}'s copy"
            );
        }
        // Then the driver's chains from the avail position on.
        let mut start = 0;
        let mut served: Vec<u16> = resume.chains.iter().map(|c| c.0).collect();
        let mut reached = false;
        for &(id, slots) in &chains {
            if start == resume.avail.0 {
                reached = true;
            }
            if reached {
                served.push(id);
            }
            start += slots;
        }
        assert!(
            reached || start == resume.avail.0,
            "crash after {n} stores: avail position {} is inside a chain",
            resume.avail.0
        );
        let mut expected: Vec<u16> = chains
            .iter()
            .map(|c| c.0)
            .filter(|id| !m.handed.contains(id))
            .collect();
        served.sort_unstable();
        expected.sort_unstable();
        assert_eq!(
            served, expected,
            "crash after {n} stores: resumed {resume:?}, driver saw {:?} used",
            m.handed
        );
        // The used position is where the handed-over batches end.
        let handed_slots: u16 = chains
            .iter()
            .filter(|c| m.handed.contains(&c.0))
            .map(|c| c.1)
            .sum();
        assert_eq!(resume.used, (handed_slots, true), "crash after {n} stores");
        if finished {
            break;
        }
        n += 1;
    }
    assert!(n > 20, "the script made only {n} stores");
}

#[test]
fn a_crash_at_any_store_leaves_a_recoverable_packed_region() {
    use Op::*;
    crash_everywhere(&[
        Pop,
        Pop,
        Pop,
        Use(1),
        Publish,
        Pop,
        Use(6),
        Use(0),
        Publish,
        Pop,
        Use(2),
        Pop,
        Use(3),
        Publish,
        Pop,
        Use(4),
    ]);
}

#[test]
fn recovered_chains_come_back_oldest_first_and_entries_are_reused() {
    let a = area();
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("new");
    for (id, slots) in [(5, 2), (2, 1), (7, 3)] {
        q.mark(id, &descs(id, slots)).expect("mark");
    }
    q.link_used(2, (1, true));
    q.published((1, true));
    let r = queue(&a)
        .recover(SIZE, (9, false), |_| Some(F_AVAIL | F_USED))
        .expect("recover")
        .expect("in use");
    assert_eq!(
        r.chains,
        vec![(5, descs(5, 2)), (7, descs(7, 3))],
        "oldest first, from their copies"
    );
    assert_eq!(
        r.used,
        (1, true),
        "the area's used position, not the frontend's"
    );
    assert_eq!(r.avail, (6, true));
    // Many rounds on the same area never run out of entries.
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("again");
    let mut at = r.used;
    for round in 0..100u16 {
        let id = 8 + round % 4;
        q.mark(id, &descs(id, 3)).expect("entries left");
        at = crate::queue::packed::layout::advance(at.0, at.1, 3, SIZE);
        q.link_used(id, at);
        q.published(at);
    }
}

fn poke<T: vm_memory::AtomicAccess>(a: &InflightArea, at: u64, v: T) {
    a.mem
        .store::<T>(at, v, Ordering::Relaxed)
        .expect("in the area");
}

#[test]
fn untrusted_packed_fields_are_refused() {
    let check = |setup: &dyn Fn(&InflightArea)| {
        let a = area();
        let mut q = queue(&a);
        q.recover(SIZE, (0, true), |_| None).expect("new");
        q.mark(1, &descs(1, 2)).expect("mark");
        setup(&a);
        queue(&a).recover(SIZE, (0, true), |_| Some(F_AVAIL | F_USED))
    };
    assert!(check(&|_| {}).is_ok());
    let head = |a: &InflightArea| {
        (0..SIZE)
            .find(|&i| {
                a.mem
                    .load::<u8>(l::entry(i, l::E_INFLIGHT), Ordering::Relaxed)
                    .unwrap()
                    == 1
            })
            .expect("the chain's first entry")
    };
    let e = check(&|a| poke::<u16>(a, l::VERSION, 3)).unwrap_err();
    assert!(
        matches!(e, InflightError::BadVersion { version: 3, .. }),
        "{e}"
    );
    let e = check(&|a| poke::<u16>(a, l::entry(head(a), l::E_NUM), 40)).unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { .. }), "{e}");
    let e = check(&|a| poke::<u16>(a, l::entry(head(a), l::E_NEXT), 999)).unwrap_err();
    assert!(
        matches!(e, InflightError::BadEntry { index: 999, .. }),
        "{e}"
    );
    // A chain's entries looping back onto themselves.
    let e = check(&|a| {
        let h = head(a);
        poke::<u16>(a, l::entry(h, l::E_NEXT), h)
    })
    .unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { .. }), "{e}");
    // The buffer id is the last entry's (the one the first links to).
    let e = check(&|a| {
        let second = a
            .mem
            .load::<u16>(l::entry(head(a), l::E_NEXT), Ordering::Relaxed)
            .unwrap();
        poke::<u16>(a, l::entry(second, l::E_ID), 200)
    })
    .unwrap_err();
    assert!(
        matches!(e, InflightError::BadEntry { index: 200, .. }),
        "{e}"
    );
    let e = check(&|a| poke::<u8>(a, l::USED_WRAP, 7)).unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { .. }), "{e}");
    let e = check(&|a| poke::<u16>(a, l::OLD_USED_IDX, 300)).unwrap_err();
    assert!(
        matches!(e, InflightError::BadEntry { index: 300, .. }),
        "{e}"
    );
    // A batch list that never reaches its end.
    let e = check(&|a| {
        poke::<u16>(a, l::USED_IDX, 2);
        let h = head(a);
        poke::<u16>(a, l::FREE_HEAD, h);
        poke::<u16>(a, l::entry(h, l::E_LAST), h);
        poke::<u16>(a, l::entry(h, l::E_NEXT), h);
    })
    .unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { .. }), "{e}");
}

#[test]
fn an_id_still_recorded_is_not_recorded_again() {
    let a = area();
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("new");
    q.mark(1, &descs(1, 2)).expect("mark");
    // The driver offers buffer 1 again while the device holds it: refused, and the
    // area still holds one chain for it (a new process could not start on two).
    let e = q.mark(1, &descs(1, 1)).unwrap_err();
    assert!(matches!(e, InflightError::BadEntry { index: 1, .. }), "{e}");
    let r = queue(&a)
        .recover(SIZE, (0, true), |_| None)
        .expect("one chain for buffer 1")
        .expect("in use");
    assert_eq!(r.chains, vec![(1, descs(1, 2))]);
    // Used but not yet handed over: its entries are still the area's record of it,
    // and handing the batch over must not clear a newer chain's record instead.
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("again");
    q.link_used(1, (2, true));
    assert!(q.mark(1, &descs(1, 1)).is_err());
    q.published((2, true));
    q.mark(1, &descs(1, 1))
        .expect("handed over: the id is free again");
    let r = queue(&a)
        .recover(SIZE, (2, true), |_| None)
        .expect("recover")
        .expect("in use");
    assert_eq!(r.chains, vec![(1, descs(1, 1))], "only the newer chain");
}

#[test]
fn a_batch_in_entries_used_before_is_cleared_when_handed_over() {
    let a = area();
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("new");
    q.mark(3, &descs(3, 1)).expect("mark");
    q.link_used(3, (1, true));
    q.published((1, true));
    // Buffer 5 takes the entry buffer 3 had; it is used and handed over, and the
    // process dies before the area hears of it.
    q.mark(5, &descs(5, 1)).expect("mark");
    q.link_used(5, (2, true));
    let r = queue(&a)
        .recover(SIZE, (0, true), |_| Some(F_AVAIL | F_USED))
        .expect("recover")
        .expect("in use");
    assert_eq!(r.chains, vec![], "buffer 5 was handed over");
    assert_eq!(r.used, (2, true));
}

#[test]
fn a_resubmitted_chain_gets_its_last_entry_from_its_links() {
    let a = area();
    let mut q = queue(&a);
    q.recover(SIZE, (0, true), |_| None).expect("new");
    q.mark(1, &descs(1, 2)).expect("mark");
    let head = (0..SIZE)
        .find(|&i| {
            a.mem
                .load::<u8>(l::entry(i, l::E_INFLIGHT), Ordering::Relaxed)
                .unwrap()
                == 1
        })
        .expect("the chain's first entry");
    // The frontend's `last` names the first entry itself (recovery reads the links).
    poke::<u16>(&a, l::entry(head, l::E_LAST), head);
    let mut q = queue(&a);
    let r = q.recover(SIZE, (0, true), |_| None).expect("recover");
    assert_eq!(r.expect("in use").chains, vec![(1, descs(1, 2))]);
    // Used and handed over, then the process dies before the area hears of it: the
    // batch list must lead from the chain's first entry past its last one.
    q.link_used(1, (2, true));
    let r = queue(&a)
        .recover(SIZE, (0, true), |_| Some(F_AVAIL | F_USED))
        .expect("the batch list ends")
        .expect("in use");
    assert_eq!(r.chains, vec![], "buffer 1 was handed over");
    assert_eq!(r.used, (2, true));
}
