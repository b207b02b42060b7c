//! Reports the watcher could not write yet (a full disk, a directory gone read-only): kept in
//! memory in arrival order, up to a cap, and retried. Owns the queue, the cap, the count of what
//! the cap dropped and whether an outage is going on (so that it is logged once, not per retry).
//! Writing and logging are the caller's, so that this is tested without a disk.
use std::collections::VecDeque;

/// Reports held at most. A report is tens of KiB (up to 20 symbolized stacks); a cascade of
/// kills on a full disk must not grow the watcher itself towards the OOM killer.
pub const MAX_HELD: usize = 32;

/// What a flush changed, for the caller to log.
#[derive(Debug)]
pub enum Change {
    /// The first failure after a success: an outage begins (log it, once).
    Failing(std::io::Error),
    /// Writing works again after an outage; `written` held reports went out.
    Recovered { written: usize },
}

#[derive(Debug)]
pub struct Held<T> {
    queue: VecDeque<T>,
    cap: usize,
    dropped: u64,
    failing: bool,
}

impl<T> Held<T> {
    pub fn new(cap: usize) -> Self {
        Held {
            queue: VecDeque::new(),
            cap,
            dropped: 0,
            failing: false,
        }
    }

    /// Queues `item` behind the held ones; when the cap is reached it is refused (returned) and
    /// counted: the first reports of an outage are kept, since the first kill of a cascade is
    /// the one that explains it.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.queue.len() >= self.cap {
            self.dropped += 1;
            return Err(item);
        }
        self.queue.push_back(item);
        Ok(())
    }

    /// Writes held items in order until one fails (it and those behind it stay held). `write`
    /// may update an item before it goes out (e.g. the drop count it reports); `wrote` gets each
    /// item written with what `write` returned.
    pub fn flush<R>(
        &mut self,
        mut write: impl FnMut(&mut T, u64) -> std::io::Result<R>,
        mut wrote: impl FnMut(T, R),
    ) -> Option<Change> {
        let mut written = 0;
        while let Some(item) = self.queue.front_mut() {
            match write(item, self.dropped) {
                Ok(r) => {
                    written += 1;
                    if let Some(item) = self.queue.pop_front() {
                        wrote(item, r);
                    }
                }
                Err(_) if self.failing => return None,
                Err(e) => {
                    self.failing = true;
                    return Some(Change::Failing(e));
                }
            }
        }
        if std::mem::take(&mut self.failing) {
            return Some(Change::Recovered { written });
        }
        None
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The newest held item.
    pub fn last(&self) -> Option<&T> {
        self.queue.back()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Items refused at the cap since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the last flush failed (an outage is going on).
    pub fn failing(&self) -> bool {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn full() -> Error {
        Error::new(ErrorKind::StorageFull, "No space left on device")
    }

    #[test]
    fn an_outage_is_reported_once_and_nothing_is_lost() {
        let mut h = Held::new(4);
        let mut out = Vec::new();
        h.push(1).unwrap();
        let c = h.flush(|_, _| Err::<(), _>(full()), |_, _| {});
        assert!(matches!(c, Some(Change::Failing(_))));
        // Later attempts during the outage say nothing new.
        h.push(2).unwrap();
        assert!(h.flush(|_, _| Err::<(), _>(full()), |_, _| {}).is_none());
        assert!(h.flush(|_, _| Err::<(), _>(full()), |_, _| {}).is_none());
        assert_eq!(h.len(), 2);
        let c = h.flush(|i, _| Ok(*i * 10), |i, r| out.push((i, r)));
        assert!(matches!(c, Some(Change::Recovered { written: 2 })));
        assert_eq!(out, vec![(1, 10), (2, 20)], "in arrival order");
        assert!(h.is_empty() && !h.failing());
        // A normal write afterwards is no news.
        h.push(3).unwrap();
        assert!(h.flush(|_, _| Ok(()), |_, _| {}).is_none());
    }

    #[test]
    fn a_failure_midway_keeps_the_rest_in_order() {
        let mut h = Held::new(4);
        for i in 1..=3 {
            h.push(i).unwrap();
        }
        let mut out = Vec::new();
        let c = h.flush(
            |i, _| if *i == 2 { Err(full()) } else { Ok(()) },
            |i, _| out.push(i),
        );
        assert!(matches!(c, Some(Change::Failing(_))));
        assert_eq!(out, vec![1]);
        assert_eq!(h.len(), 2);
        h.flush(|_, _| Ok(()), |i, _| out.push(i));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn the_cap_refuses_and_counts_and_later_writes_report_the_count() {
        let mut h = Held::new(2);
        assert!(h.push(1).is_ok() && h.push(2).is_ok());
        assert_eq!(h.push(3), Err(3));
        assert_eq!(h.push(4), Err(4));
        assert_eq!(h.dropped(), 2);
        let mut seen = Vec::new();
        h.flush(|i, dropped| Ok((*i, dropped)), |_, r| seen.push(r));
        assert_eq!(
            seen,
            vec![(1, 2), (2, 2)],
            "each written report carries the drop count"
        );
        assert!(h.push(5).is_ok(), "room again once written");
    }
}
