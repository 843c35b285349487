//! Which slots of one gateway's segment are free, leased, or in flight.
//!
//! Plain state owned by that gateway's connection task: no locks. Every
//! slot reference a gateway sends is checked here (index and generation),
//! so a stale or forged reference is an error, never another request's
//! pixels. When the connection ends the table is dropped with it: a dead
//! gateway's leases come back by construction.

use protocol::SlotRef;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Leased to the gateway, which may be writing it.
    Leased { generation: u64 },
    /// Named by an Infer; the host reads it until the request completes.
    InFlight { generation: u64 },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("slot {index} does not exist (segment has {count})")]
    NoSuchSlot { index: u32, count: u32 },
    #[error("slot {index} generation {generation} is not leased to this gateway")]
    NotLeased { index: u32, generation: u64 },
}

pub struct LeaseTable {
    slots: Vec<SlotState>,
    /// Free slot indices; a stack, so recently used (cache-warm) slots go first.
    free: Vec<u32>,
    /// Source of generations; never reused within a connection.
    next_generation: u64,
}

impl LeaseTable {
    pub fn new(slot_count: u32) -> Self {
        Self {
            slots: vec![SlotState::Free; slot_count as usize],
            free: (0..slot_count).rev().collect(),
            next_generation: 1,
        }
    }

    /// Leases a free slot, or None when all are in use.
    pub fn lease(&mut self) -> Option<SlotRef> {
        let index = self.free.pop()?;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.slots[index as usize] = SlotState::Leased { generation };
        Some(SlotRef { index, generation })
    }

    /// The gateway gives back a slot it never sent.
    pub fn release(&mut self, slot: SlotRef) -> Result<(), LeaseError> {
        self.expect(slot, SlotState::Leased { generation: slot.generation })?;
        self.free_slot(slot.index);
        Ok(())
    }

    /// The gateway sent an Infer naming `slot`: it may no longer write it.
    pub fn start_inference(&mut self, slot: SlotRef) -> Result<(), LeaseError> {
        self.expect(slot, SlotState::Leased { generation: slot.generation })?;
        self.slots[slot.index as usize] = SlotState::InFlight { generation: slot.generation };
        Ok(())
    }

    /// The model is done with the slot.
    pub fn finish_inference(&mut self, slot: SlotRef) -> Result<(), LeaseError> {
        self.expect(slot, SlotState::InFlight { generation: slot.generation })?;
        self.free_slot(slot.index);
        Ok(())
    }

    /// Slots not free (leased or in flight).
    pub fn in_use(&self) -> u32 {
        (self.slots.len() - self.free.len()) as u32
    }

    fn expect(&self, slot: SlotRef, want: SlotState) -> Result<(), LeaseError> {
        let count = self.slots.len() as u32;
        let state = self.slots.get(slot.index as usize).ok_or(LeaseError::NoSuchSlot { index: slot.index, count })?;
        if *state != want {
            return Err(LeaseError::NotLeased { index: slot.index, generation: slot.generation });
        }
        Ok(())
    }

    fn free_slot(&mut self, index: u32) {
        self.slots[index as usize] = SlotState::Free;
        self.free.push(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_infer_finish_cycle() {
        let mut t = LeaseTable::new(2);
        let a = t.lease().unwrap();
        let b = t.lease().unwrap();
        assert_ne!(a.index, b.index);
        assert!(t.lease().is_none(), "only two slots");
        assert_eq!(t.in_use(), 2);
        t.start_inference(a).unwrap();
        t.release(b).unwrap();
        t.finish_inference(a).unwrap();
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn stale_and_forged_references_are_refused() {
        let mut t = LeaseTable::new(1);
        let a = t.lease().unwrap();
        t.release(a).unwrap();
        let b = t.lease().unwrap();
        assert_eq!(a.index, b.index);
        assert_ne!(a.generation, b.generation);
        assert_eq!(t.start_inference(a), Err(LeaseError::NotLeased { index: a.index, generation: a.generation }));
        assert_eq!(
            t.start_inference(SlotRef { index: 9, generation: b.generation }),
            Err(LeaseError::NoSuchSlot { index: 9, count: 1 })
        );
        // In flight: the gateway can neither release it nor send it twice.
        t.start_inference(b).unwrap();
        assert!(t.release(b).is_err());
        assert!(t.start_inference(b).is_err());
        t.finish_inference(b).unwrap();
        assert!(t.finish_inference(b).is_err(), "double finish");
    }
}
