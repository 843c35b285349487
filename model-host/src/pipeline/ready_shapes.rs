//! The batch shapes a batch may be padded to now. On a GPU some shapes
//! are warmed up and captured after READY (`[optimization]
//! warm_up_after_ready`): until one is, the feeder pads to the next larger
//! ready shape, because the model thread's first pass of a shape it has not
//! met costs 0.2-0.4 s of cuDNN set-up, which a request must never wait on.
//! The largest shape is ready from the start, so every batch has one.

use std::sync::{PoisonError, RwLock};

#[derive(Debug)]
pub struct ReadyShapes {
    /// Sorted; written by the model thread, read by the feeder per batch.
    shapes: RwLock<Vec<u32>>,
}

impl ReadyShapes {
    pub fn new(mut shapes: Vec<u32>) -> Self {
        shapes.sort_unstable();
        shapes.dedup();
        Self { shapes: RwLock::new(shapes) }
    }

    /// Call only once the model runs this shape as fast as it ever will
    /// (its graph is with the model thread).
    pub fn add(&self, shape: u32) {
        let mut shapes = self.shapes.write().unwrap_or_else(PoisonError::into_inner);
        if let Err(at) = shapes.binary_search(&shape) {
            shapes.insert(at, shape);
        }
    }

    /// The shapes ready now, smallest first.
    pub fn now(&self) -> Vec<u32> {
        self.shapes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::padded_batch;

    #[test]
    fn a_batch_pads_to_the_next_ready_shape_until_its_own_is_ready() {
        let ready = ReadyShapes::new(vec![128, 1, 32, 4]);
        assert_eq!(padded_batch(&ready.now(), 2), 4);
        assert_eq!(padded_batch(&ready.now(), 5), 32);
        assert_eq!(padded_batch(&ready.now(), 33), 128);
        ready.add(8);
        ready.add(48);
        ready.add(8);
        assert_eq!(ready.now(), vec![1, 4, 8, 32, 48, 128]);
        assert_eq!(padded_batch(&ready.now(), 5), 8);
        assert_eq!(padded_batch(&ready.now(), 33), 48);
        assert_eq!(padded_batch(&ready.now(), 128), 128);
    }
}
