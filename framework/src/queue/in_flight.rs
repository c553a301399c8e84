//! `InFlight`: the chains a device holds, by buffer id, so that each is used exactly
//! once, handed back only while unused, and (with IN_ORDER) completed in the order the
//! driver made them available.

use std::collections::VecDeque;

use super::QueueError;

/// What a buffer id is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Not in flight.
    Free,
    /// Popped and held by the device.
    Held,
    /// Handed back by the device: offered again by the next pop.
    Returned,
    /// Used with `len` bytes, waiting for earlier chains (IN_ORDER).
    Done(u32),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    seq: u64,
    position: u16,
    slots: u16,
}

const FREE: Slot = Slot {
    state: SlotState::Free,
    seq: 0,
    position: 0,
    slots: 0,
};

/// A used entry to write: buffer id, length, ring slots the chain took.
pub(crate) type UsedEntry = (u16, u32, u16);

/// A chain that `InFlight` knows: its id, sequence number, ring position and slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tracked {
    pub(crate) id: u16,
    pub(crate) seq: u64,
    pub(crate) position: u16,
    pub(crate) slots: u16,
}

/// What became of the chains in flight when a ring stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopAccount {
    /// The oldest of the unused chains at the end of the avail order: the ring resumes
    /// there, so the driver's buffers are read again after a restart.
    pub(crate) resume_at: Option<Tracked>,
    /// Unused chains at the end of the avail order: read again after a restart.
    pub rewound: u32,
    /// Unused chains older than a used one: returned to the driver with length 0.
    pub returned_empty: u32,
    /// Chains left in flight in the in-flight area (INFLIGHT_SHMFD): resubmitted when
    /// the ring starts again, nothing written for them now.
    pub kept_in_flight: u32,
}

/// The in-flight table of one ring of `size` entries.
#[derive(Debug)]
pub(crate) struct InFlight {
    slots: Vec<Slot>,
    /// Ids in avail order while IN_ORDER is negotiated (completion goes by it): the id
    /// of sequence number `seq` at `seq & order_mask`, for `order_head <= seq <
    /// next_seq`. At most one entry per id is in flight, so a power of two at least the
    /// ring size holds them all.
    order: Vec<u16>,
    order_mask: u64,
    /// Sequence number of the oldest chain not yet written back (IN_ORDER).
    order_head: u64,
    /// Chains used and waiting for older ones (IN_ORDER).
    waiting: u32,
    /// Ids handed back, in avail order.
    returned: VecDeque<u16>,
    next_seq: u64,
    in_order: bool,
    outstanding: u32,
}

impl InFlight {
    pub(crate) fn new(size: u16, in_order: bool) -> Self {
        InFlight {
            slots: vec![FREE; usize::from(size)],
            order: if in_order {
                vec![0; usize::from(size).next_power_of_two()]
            } else {
                Vec::new()
            },
            order_mask: u64::from(size).next_power_of_two() - 1,
            order_head: 0,
            waiting: 0,
            returned: VecDeque::new(),
            next_seq: 0,
            in_order,
            outstanding: 0,
        }
    }

    /// Whether completion follows avail order.
    pub(crate) fn in_order(&self) -> bool {
        self.in_order
    }

    /// Chains taken from the ring so far (valid and refused; re-offered ones not again).
    pub(crate) fn taken(&self) -> u64 {
        self.next_seq
    }

    /// Chains popped and neither used nor refused.
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding
    }

    fn slot(&mut self, id: u16) -> Result<&mut Slot, QueueError> {
        let size = self.slots.len();
        // The error is built only when it is returned: a `QueueError` has drop glue,
        // and one built and dropped on every chain showed in the per-packet cost.
        match self.slots.get_mut(usize::from(id)) {
            Some(slot) => Ok(slot),
            None => Err(QueueError::BadIndex {
                index: id,
                size: size as u32,
            }),
        }
    }

    /// Records a chain the driver made available with buffer `id` at `position`; returns
    /// its sequence number. An id already in flight is a broken ring (the driver reused
    /// a buffer the device still holds).
    pub(crate) fn begin(&mut self, id: u16, position: u16, slots: u16) -> Result<u64, QueueError> {
        let seq = self.next_seq;
        let in_order = self.in_order;
        let slot = self.slot(id)?;
        if slot.state != SlotState::Free {
            return Err(QueueError::IdInFlight { id });
        }
        *slot = Slot {
            state: SlotState::Held,
            seq,
            position,
            slots,
        };
        if in_order {
            self.order[(seq & self.order_mask) as usize] = id;
        }
        self.next_seq += 1;
        self.outstanding += 1;
        Ok(seq)
    }

    /// A chain the framework refused as malformed: it goes back with length 0, in its
    /// turn. The entries that may now be written are passed to `emit`.
    pub(crate) fn refuse(
        &mut self,
        id: u16,
        position: u16,
        slots: u16,
        emit: impl FnMut(UsedEntry) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        if !self.in_order {
            // Nothing is held for it, but an id the device holds is not the driver's to
            // offer again.
            if self.slot(id)?.state != SlotState::Free {
                return Err(QueueError::IdInFlight { id });
            }
            self.next_seq += 1;
            let mut emit = emit;
            return emit((id, 0, slots));
        }
        let seq = self.begin(id, position, slots)?;
        self.complete(id, seq, 0, emit)
    }

    fn check_held(&mut self, id: u16, seq: u64) -> Result<&mut Slot, QueueError> {
        let slot = self.slot(id)?;
        if slot.state != SlotState::Held || slot.seq != seq {
            return Err(QueueError::ChainNotInFlight { id });
        }
        Ok(slot)
    }

    /// The device used chain (`id`, `seq`) with `len` bytes. Passes to `emit` what may be
    /// written now: the entry itself, or with IN_ORDER every completed entry up to the
    /// first one still held.
    pub(crate) fn complete(
        &mut self,
        id: u16,
        seq: u64,
        len: u32,
        mut emit: impl FnMut(UsedEntry) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let in_order = self.in_order;
        self.check_held(id, seq)?;
        self.outstanding -= 1;
        let slot = &mut self.slots[usize::from(id)];
        if !in_order {
            let slots = slot.slots;
            *slot = FREE;
            return emit((id, len, slots));
        }
        if seq == self.order_head {
            // The oldest chain: it goes out now, without waiting in the table.
            let slots = slot.slots;
            *slot = FREE;
            self.order_head += 1;
            emit((id, len, slots))?;
        } else {
            slot.state = SlotState::Done(len);
            self.waiting += 1;
            return Ok(());
        }
        while self.waiting > 0 && self.order_head < self.next_seq {
            let front = self.order[(self.order_head & self.order_mask) as usize];
            let slot = &mut self.slots[usize::from(front)];
            let SlotState::Done(len) = slot.state else {
                break;
            };
            let slots = slot.slots;
            *slot = FREE;
            self.order_head += 1;
            self.waiting -= 1;
            emit((front, len, slots))?;
        }
        Ok(())
    }

    /// The device hands chain (`id`, `seq`) back unused: the next pop offers it again.
    pub(crate) fn give_back(&mut self, id: u16, seq: u64) -> Result<(), QueueError> {
        let slot = self.check_held(id, seq)?;
        slot.state = SlotState::Returned;
        // Kept in avail order: devices usually give back their newest chains.
        let at = self
            .returned
            .iter()
            .rposition(|&r| self.slots[usize::from(r)].seq < seq)
            .map_or(0, |p| p + 1);
        self.returned.insert(at, id);
        Ok(())
    }

    /// Whether chains were handed back and wait to be offered again.
    pub(crate) fn has_returned(&self) -> bool {
        !self.returned.is_empty()
    }

    /// The oldest handed-back chain, now held again.
    pub(crate) fn take_returned(&mut self) -> Option<Tracked> {
        let id = self.returned.pop_front()?;
        let slot = &mut self.slots[usize::from(id)];
        slot.state = SlotState::Held;
        Some(Tracked {
            id,
            seq: slot.seq,
            position: slot.position,
            slots: slot.slots,
        })
    }

    /// The ring stops. Unused chains at the end of the avail order are forgotten, and
    /// the ring is to resume at the oldest of them (`resume_at`), so they are read again
    /// after a restart. Unused chains older than a completed one cannot be read again
    /// without repeating it: they are returned to the driver with length 0 through
    /// `emit` (in order, with what waited behind them).
    /// Stops with the chains held left as they are: an in-flight area records them
    /// and the next start resubmits them.
    pub(crate) fn stop_keeping(&mut self) -> StopAccount {
        let kept = self
            .slots
            .iter()
            .filter(|s| s.state != SlotState::Free)
            .count() as u32;
        self.slots.fill(FREE);
        self.order_head = self.next_seq;
        self.waiting = 0;
        self.returned.clear();
        self.outstanding = 0;
        StopAccount {
            kept_in_flight: kept,
            ..StopAccount::default()
        }
    }

    pub(crate) fn stop(
        &mut self,
        mut emit: impl FnMut(UsedEntry) -> Result<(), QueueError>,
    ) -> Result<StopAccount, QueueError> {
        let mut unused: Vec<Tracked> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, SlotState::Held | SlotState::Returned))
            .map(|(id, s)| Tracked {
                id: id as u16,
                seq: s.seq,
                position: s.position,
                slots: s.slots,
            })
            .collect();
        unused.sort_by_key(|t| std::cmp::Reverse(t.seq));
        let mut account = StopAccount::default();
        let mut expect = self.next_seq;
        for t in &unused {
            if t.seq + 1 != expect {
                break;
            }
            expect = t.seq;
            account.resume_at = Some(*t);
            account.rewound += 1;
        }
        let tail = account.rewound as usize;
        for t in &unused[tail..] {
            self.slots[usize::from(t.id)].state = SlotState::Held;
        }
        // Oldest first, so IN_ORDER completion writes them in turn.
        for t in unused[tail..].iter().rev() {
            self.complete(t.id, t.seq, 0, &mut emit)?;
            account.returned_empty += 1;
        }
        self.slots.fill(FREE);
        self.order_head = self.next_seq;
        self.waiting = 0;
        self.returned.clear();
        self.outstanding = 0;
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(f: &mut InFlight, id: u16, seq: u64, len: u32) -> Vec<UsedEntry> {
        let mut out = Vec::new();
        f.complete(id, seq, len, |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn out_of_order_completion_writes_at_once() {
        let mut f = InFlight::new(8, false);
        let a = f.begin(3, 0, 1).unwrap();
        let b = f.begin(5, 1, 1).unwrap();
        assert_eq!(collect(&mut f, 5, b, 10), vec![(5, 10, 1)]);
        assert_eq!(collect(&mut f, 3, a, 20), vec![(3, 20, 1)]);
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn in_order_completion_waits_for_earlier_chains() {
        let mut f = InFlight::new(8, true);
        let a = f.begin(3, 0, 1).unwrap();
        let b = f.begin(5, 1, 1).unwrap();
        let c = f.begin(1, 2, 1).unwrap();
        assert!(collect(&mut f, 1, c, 1).is_empty());
        assert!(collect(&mut f, 5, b, 2).is_empty());
        assert_eq!(
            collect(&mut f, 3, a, 3),
            vec![(3, 3, 1), (5, 2, 1), (1, 1, 1)]
        );
    }

    #[test]
    fn a_refused_chain_waits_its_turn_in_order() {
        let mut f = InFlight::new(8, true);
        let a = f.begin(0, 0, 1).unwrap();
        let mut out = Vec::new();
        f.refuse(1, 1, 1, |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        assert!(
            out.is_empty(),
            "the refused chain must not pass the held one"
        );
        assert_eq!(collect(&mut f, 0, a, 9), vec![(0, 9, 1), (1, 0, 1)]);
    }

    #[test]
    fn twice_stale_and_reused_ids_are_errors() {
        let mut f = InFlight::new(8, false);
        let a = f.begin(2, 0, 1).unwrap();
        assert!(matches!(
            f.begin(2, 1, 1),
            Err(QueueError::IdInFlight { id: 2 })
        ));
        collect(&mut f, 2, a, 0);
        assert!(matches!(
            f.complete(2, a, 0, |_| Ok(())),
            Err(QueueError::ChainNotInFlight { id: 2 })
        ));
        assert!(matches!(
            f.give_back(2, a),
            Err(QueueError::ChainNotInFlight { id: 2 })
        ));
        // The id is popped again: the old copy is still stale.
        let b = f.begin(2, 1, 1).unwrap();
        assert!(f.complete(2, a, 0, |_| Ok(())).is_err());
        assert!(f.complete(2, b, 0, |_| Ok(())).is_ok());
        assert!(f.begin(8, 0, 1).is_err(), "id outside the ring");
    }

    #[test]
    fn handed_back_chains_come_again_oldest_first() {
        let mut f = InFlight::new(8, false);
        let seqs: Vec<u64> = (0..4).map(|i| f.begin(i, i, 1).unwrap()).collect();
        f.give_back(3, seqs[3]).unwrap();
        f.give_back(1, seqs[1]).unwrap();
        f.give_back(2, seqs[2]).unwrap();
        let again: Vec<u16> = std::iter::from_fn(|| f.take_returned().map(|t| t.id)).collect();
        assert_eq!(again, vec![1, 2, 3]);
        assert!(
            f.give_back(1, seqs[1]).is_ok(),
            "held again after the re-offer"
        );
    }

    #[test]
    fn stop_rewinds_the_unused_tail_and_returns_older_chains_empty() {
        let mut f = InFlight::new(8, false);
        let s: Vec<u64> = (0..5).map(|i| f.begin(i, 10 + i, 1).unwrap()).collect();
        // 0 held, 1 used, 2 held, 3 handed back, 4 held.
        collect(&mut f, 1, s[1], 0);
        f.give_back(3, s[3]).unwrap();
        let mut out = Vec::new();
        let acct = f
            .stop(|e| {
                out.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(acct.resume_at.map(|t| t.position), Some(12));
        assert_eq!((acct.rewound, acct.returned_empty), (3, 1));
        assert_eq!(out, vec![(0, 0, 1)]);
        assert_eq!(f.outstanding(), 0);
        assert!(f.begin(2, 0, 1).is_ok(), "every id is free after the stop");
    }

    #[test]
    fn stop_after_a_refused_chain_does_not_rewind_over_it() {
        let mut f = InFlight::new(8, false);
        let _held = f.begin(0, 0, 1).unwrap();
        f.refuse(1, 1, 1, |_| Ok(())).unwrap();
        let mut out = Vec::new();
        let acct = f
            .stop(|e| {
                out.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            acct.resume_at, None,
            "re-reading would refuse chain 1 twice"
        );
        assert_eq!(out, vec![(0, 0, 1)]);
    }
}
