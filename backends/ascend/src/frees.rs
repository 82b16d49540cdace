//! When device memory may be freed. aclnn launches only queue work on the stream, and
//! `aclrtFree` of memory that queued work still uses is undefined on CANN. So a pointer
//! dropped while launches are outstanding is deferred, tagged with the launch count, until a
//! synchronize that started after those launches succeeds. Plain bookkeeping: `Device`
//! holds it under a mutex and makes the CANN calls.

/// Launch accounting and the deferred frees of one stream.
#[derive(Debug, Default)]
pub struct Frees {
    /// Launches queued on the stream so far.
    launched: u64,
    /// Every launch up to this count has completed (a synchronize succeeded after it).
    completed: u64,
    /// Pointers dropped while launches were outstanding, with `launched` at the drop.
    deferred: Vec<(usize, u64)>,
}

impl Frees {
    /// Records one launch queued on the stream.
    pub fn launched(&mut self) {
        self.launched += 1;
    }

    /// The launch count, taken just before a synchronize starts (for [`Frees::completed`]).
    pub fn mark(&self) -> u64 {
        self.launched
    }

    /// `ptr` was dropped: returns it if it can be freed now (no launch outstanding), else
    /// defers it.
    pub fn dropped(&mut self, ptr: usize) -> Option<usize> {
        if self.launched == self.completed {
            return Some(ptr);
        }
        self.deferred.push((ptr, self.launched));
        None
    }

    /// A synchronize that started at `mark` succeeded: the deferred pointers it released.
    pub fn completed(&mut self, mark: u64) -> Vec<usize> {
        self.completed = self.completed.max(mark);
        let (ready, rest) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|&(_, at)| at <= mark);
        self.deferred = rest;
        ready.into_iter().map(|(ptr, _)| ptr).collect()
    }

    /// Every deferred pointer (the stream is done for good).
    pub fn drain(&mut self) -> Vec<usize> {
        self.completed = self.launched;
        std::mem::take(&mut self.deferred)
            .into_iter()
            .map(|(ptr, _)| ptr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Frees;

    #[test]
    fn a_drop_with_nothing_outstanding_frees_at_once() {
        let mut f = Frees::default();
        assert_eq!(f.dropped(1), Some(1));
        f.launched();
        let mark = f.mark();
        assert_eq!(f.completed(mark), Vec::<usize>::new());
        assert_eq!(f.dropped(2), Some(2));
    }

    #[test]
    fn a_drop_while_launches_are_outstanding_waits_for_a_sync_started_after_them() {
        let mut f = Frees::default();
        f.launched();
        let early = f.mark();
        f.launched();
        assert_eq!(f.dropped(7), None);
        // A synchronize that started before the second launch does not cover it.
        assert_eq!(f.completed(early), Vec::<usize>::new());
        assert_eq!(f.dropped(8), None);
        let late = f.mark();
        // Queued after `late`: not covered by that synchronize either.
        f.launched();
        assert_eq!(f.dropped(9), None);
        assert_eq!(f.completed(late), vec![7, 8]);
        assert_eq!(f.drain(), vec![9]);
        assert_eq!(f.dropped(10), Some(10));
    }
}
