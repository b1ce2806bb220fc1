//! Time and modification sequence numbers.
//!
//! The store never reads a clock: callers pass a [`Timestamp`] into every write. MODSEQs come
//! from a hybrid logical clock ([`Hlc`]) with the node's slot in the low bits, so every write on
//! every node gets a distinct, totally ordered MODSEQ that also roughly follows wall time.

/// Milliseconds since the Unix epoch, as passed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Seconds since the Unix epoch.
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

/// A CONDSTORE modification sequence number (RFC 7162): positive, below 2^63.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Modseq(pub u64);

/// Bits of a MODSEQ that hold the writing node's slot.
pub(crate) const SLOT_BITS: u32 = 4;
/// Logical ticks per millisecond before the clock runs ahead of wall time.
const TICK_BITS: u32 = 6;

/// A hybrid logical clock producing MODSEQs for one node.
#[derive(Debug, Clone)]
pub(crate) struct Hlc {
    slot: u8,
    /// The largest logical value issued or observed.
    last: u64,
}

impl Hlc {
    pub(crate) fn new(slot: u8) -> Self {
        Hlc { slot, last: 0 }
    }

    /// Moves the clock past a MODSEQ seen in the store (ours or a peer's).
    pub(crate) fn observe(&mut self, m: Modseq) {
        self.last = self.last.max(m.0 >> SLOT_BITS);
    }

    /// A fresh MODSEQ, greater than everything issued or observed.
    pub(crate) fn tick(&mut self, now: Timestamp) -> Modseq {
        let wall = (now.0.max(0) as u64) << TICK_BITS;
        self.last = (self.last + 1).max(wall);
        Modseq((self.last << SLOT_BITS) | self.slot as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_distinct_and_ordered_across_slots() {
        let mut a = Hlc::new(0);
        let mut b = Hlc::new(1);
        let t = Timestamp(1_800_000_000_000);
        let x = a.tick(t);
        let y = b.tick(t);
        assert_ne!(x, y);
        assert!(a.tick(t) > x);
        b.observe(a.tick(Timestamp(0)));
        let z = b.tick(Timestamp(0));
        assert!(z > x && z > y);
        assert_eq!(z.0 & 15, 1);
        assert!(z.0 < 1 << 63);
    }
}
