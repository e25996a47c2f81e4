//! [`Reorder`]: runs of consecutive results put back in input order.

use std::collections::BTreeMap;

/// Runs of consecutive results (a batch's outcomes) that may arrive in any order,
/// handed out in input order, or as they come when not `ordered`. The one reorder
/// loop of the process pool's result iterator and the thread executor's.
///
/// A run that arrives in its turn is handed out at once; one that arrives early
/// waits here until the runs before it are out.
#[doc(hidden)]
#[derive(Debug)]
pub struct Reorder<R> {
    ordered: bool,
    /// Runs that came before their turn: first index → (length, run).
    early: BTreeMap<u64, (u64, R)>,
    /// Where the next run handed out starts (in order).
    next: u64,
}

impl<R> Reorder<R> {
    /// Nothing arrived yet; the first run starts at index 0.
    pub fn new(ordered: bool) -> Reorder<R> {
        Reorder {
            ordered,
            early: BTreeMap::new(),
            next: 0,
        }
    }

    /// A run of `len` results from index `first` arrived: it, with its first index,
    /// if it may be handed out now; else it waits for its turn ([`Reorder::ready`]).
    #[inline]
    pub fn arrive(&mut self, first: u64, len: usize, run: R) -> Option<(u64, R)> {
        if !self.ordered {
            return Some((first, run));
        }
        if first == self.next {
            self.next += len as u64;
            return Some((first, run));
        }
        self.early.insert(first, (len as u64, run));
        None
    }

    /// The run whose turn has come, among those that arrived early.
    #[inline]
    pub fn ready(&mut self) -> Option<(u64, R)> {
        let entry = self.early.first_entry()?;
        let first = *entry.key();
        if first != self.next {
            return None;
        }
        let (len, run) = entry.remove();
        self.next += len;
        Some((first, run))
    }

    /// The index of the next result handed out, after `handed_out` results: where a
    /// stream that stops early says it stopped.
    pub fn next_index(&self, handed_out: u64) -> u64 {
        if self.ordered {
            self.next
        } else {
            handed_out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reorder;

    /// Every run handed out, in the order it comes out, with `arrivals` arriving in
    /// the order given.
    fn hand_out(ordered: bool, arrivals: &[(u64, usize)]) -> Vec<u64> {
        let mut reorder = Reorder::new(ordered);
        let mut out = Vec::new();
        for &(first, len) in arrivals {
            if let Some((at, run)) = reorder.arrive(first, len, first) {
                assert_eq!(at, run);
                out.push(run);
            }
            while let Some((at, run)) = reorder.ready() {
                assert_eq!(at, run);
                out.push(run);
            }
        }
        out
    }

    #[test]
    fn runs_come_out_in_input_order_whatever_order_they_arrive_in() {
        let arrivals = [(5, 2), (0, 1), (7, 3), (1, 4), (10, 1)];
        assert_eq!(hand_out(true, &arrivals), [0, 1, 5, 7, 10]);
        // In order already: each at once.
        let mut reorder = Reorder::new(true);
        assert_eq!(reorder.arrive(0, 3, 'a'), Some((0, 'a')));
        assert_eq!(reorder.arrive(3, 1, 'b'), Some((3, 'b')));
        assert_eq!(reorder.ready(), None);
        assert_eq!(reorder.next_index(99), 4);
    }

    #[test]
    fn a_run_waits_until_every_run_before_it_is_out() {
        let mut reorder = Reorder::new(true);
        assert_eq!(reorder.arrive(4, 2, 'c'), None);
        assert_eq!(reorder.arrive(2, 2, 'b'), None);
        assert_eq!(reorder.ready(), None, "0..2 is not there");
        assert_eq!(reorder.next_index(0), 0);
        assert_eq!(reorder.arrive(0, 2, 'a'), Some((0, 'a')));
        assert_eq!(reorder.ready(), Some((2, 'b')));
        assert_eq!(reorder.ready(), Some((4, 'c')));
        assert_eq!(reorder.ready(), None);
        assert_eq!(reorder.next_index(0), 6);
    }

    #[test]
    fn unordered_hands_out_as_they_come() {
        let arrivals = [(5, 2), (0, 1), (7, 3), (1, 4)];
        assert_eq!(hand_out(false, &arrivals), [5, 0, 7, 1]);
        let reorder = Reorder::<()>::new(false);
        assert_eq!(reorder.next_index(3), 3);
    }
}
