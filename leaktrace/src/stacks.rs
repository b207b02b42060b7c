//! Interning user stacks: the probes copy each allocation's frames into its event, and this table
//! gives every distinct stack a small id, so that the aggregator keys by id and each stack is
//! stored and symbolized once. Ids are never reused: an id always means the same frames.
//! Every allocation event is looked up here, so the map is hashbrown's with its default,
//! randomly seeded foldhash: std's SipHash, here and in the aggregator, took about a quarter
//! of the time of taking an event in.
use hashbrown::HashMap;

use crate::aggregate::StackId;

#[derive(Debug, Default)]
pub struct StackTable {
    ids: HashMap<Box<[u64]>, StackId>,
    frames: Vec<Box<[u64]>>,
}

impl StackTable {
    /// The id of `frames` (innermost first), and whether it was seen for the first time.
    /// An empty stack (the kernel could not take one) has no id.
    pub fn intern(&mut self, frames: &[u64]) -> (StackId, bool) {
        if frames.is_empty() {
            return (StackId(-1), false);
        }
        if let Some(id) = self.ids.get(frames) {
            return (*id, false);
        }
        let id = StackId(i32::try_from(self.frames.len()).unwrap_or(i32::MAX));
        self.frames.push(frames.into());
        self.ids.insert(frames.into(), id);
        (id, true)
    }

    pub fn get(&self, id: StackId) -> Option<&[u64]> {
        usize::try_from(id.0)
            .ok()
            .and_then(|i| self.frames.get(i))
            .map(|f| &f[..])
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_frames_same_id_and_distinct_frames_distinct_ids() {
        let mut t = StackTable::default();
        let (a, new_a) = t.intern(&[1, 2, 3]);
        let (b, new_b) = t.intern(&[1, 2, 3]);
        let (c, _) = t.intern(&[1, 2, 4]);
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(t.get(c), Some(&[1u64, 2, 4][..]));
        assert_eq!(t.intern(&[]).0, StackId(-1));
        assert_eq!(t.get(StackId(-1)), None);
        assert_eq!(t.len(), 2);
    }
}
