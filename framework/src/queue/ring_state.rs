//! `RingState`: where a stopped ring resumes, as GET/SET_VRING_BASE carry it.

use super::QueueError;

/// The position of a ring between a stop and a start: what GET_VRING_BASE returns and
/// SET_VRING_BASE sets.
///
/// A split ring needs only the next avail index; the used index lives in guest memory.
/// A packed ring has no indices in memory, so both positions travel with their wrap
/// counters, encoded in the 32-bit `num` as bits 0-14 avail index, bit 15 avail wrap
/// counter, bits 16-30 used index and bit 31 used wrap counter.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::RingState;
/// let s = RingState::Packed { next_avail: 3, avail_wrap: true, next_used: 2, used_wrap: false };
/// assert_eq!(s.encode(), 0x0002_8003);
/// assert_eq!(RingState::decode(0x0002_8003, true, 256).unwrap(), s);
/// assert_eq!(RingState::decode(7, false, 256).unwrap(), RingState::Split { next_avail: 7 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingState {
    /// A split ring.
    Split {
        /// The next avail ring index the device reads (free-running, mod 2^16).
        next_avail: u16,
    },
    /// A packed ring.
    Packed {
        /// Ring slot of the next descriptor the device reads.
        next_avail: u16,
        /// The device's avail wrap counter.
        avail_wrap: bool,
        /// Ring slot where the device writes the next used descriptor.
        next_used: u16,
        /// The device's used wrap counter.
        used_wrap: bool,
    },
}

impl RingState {
    /// A ring that starts from scratch.
    pub const fn initial(packed: bool) -> Self {
        if packed {
            RingState::Packed {
                next_avail: 0,
                avail_wrap: true,
                next_used: 0,
                used_wrap: true,
            }
        } else {
            RingState::Split { next_avail: 0 }
        }
    }

    /// The `num` of a VRING_STATE message.
    pub fn encode(&self) -> u32 {
        match *self {
            RingState::Split { next_avail } => next_avail.into(),
            RingState::Packed {
                next_avail,
                avail_wrap,
                next_used,
                used_wrap,
            } => {
                u32::from(next_avail & 0x7fff)
                    | u32::from(avail_wrap) << 15
                    | u32::from(next_used & 0x7fff) << 16
                    | u32::from(used_wrap) << 31
            }
        }
    }

    /// Decodes SET_VRING_BASE's `num` for a ring of `size` entries. A packed state
    /// whose upper half is zero (a frontend that sends only the avail position) resumes
    /// used descriptors where avail ones resume, as a ring with nothing in flight does.
    pub fn decode(num: u32, packed: bool, size: u16) -> Result<Self, QueueError> {
        let bad = QueueError::BadRingState { num, size };
        if !packed {
            return u16::try_from(num)
                .map(|next_avail| RingState::Split { next_avail })
                .map_err(|_| bad);
        }
        let next_avail = (num & 0x7fff) as u16;
        let avail_wrap = num & 0x8000 != 0;
        let (next_used, used_wrap) = if num >> 16 == 0 {
            (next_avail, avail_wrap)
        } else {
            (((num >> 16) & 0x7fff) as u16, num & 0x8000_0000 != 0)
        };
        if next_avail >= size || next_used >= size {
            return Err(bad);
        }
        Ok(RingState::Packed {
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_states_are_refused() {
        assert!(RingState::decode(0x1_0000, false, 256).is_err());
        assert!(RingState::decode(256, true, 256).is_err());
        assert!(RingState::decode(0x0100_0000, true, 256).is_err());
        let s = RingState::decode(0x8005, true, 256).unwrap();
        assert_eq!(
            s,
            RingState::Packed {
                next_avail: 5,
                avail_wrap: true,
                next_used: 5,
                used_wrap: true
            }
        );
    }

    #[test]
    fn encoding_round_trips() {
        for s in [
            RingState::initial(true),
            RingState::initial(false),
            RingState::Packed {
                next_avail: 0x7fff,
                avail_wrap: false,
                next_used: 1,
                used_wrap: true,
            },
        ] {
            let packed = matches!(s, RingState::Packed { .. });
            assert_eq!(RingState::decode(s.encode(), packed, 0x8000).unwrap(), s);
        }
    }
}
