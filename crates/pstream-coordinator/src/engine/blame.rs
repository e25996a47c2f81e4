//! Who is to blame when a worker dies or hangs: a pure function of what the worker
//! held and what it reported, so the policy is tested without processes.
//!
//! The rules:
//! * items the worker reported computed are innocent: sent again, uncharged;
//! * a hang located by a fresh report (the worker, alive, said it was still on that
//!   item) is exactly that item: it alone is charged a try;
//! * a crash, or a hang of a worker that fell silent, may have happened anywhere
//!   from its last report on: that range is split in halves, uncharged, until one
//!   item is left alone;
//! * an item alone in its batch is charged a try; after `1 + retries` tries it
//!   fails for good;
//! * a worker whose connection across the network was lost (closed, reset, or
//!   silent past the heartbeat limit) is no evidence against anything: what it
//!   held is sent again whole and uncharged (its host may be cut off, or gone);
//! * unless the same work was held by [`LOSSES_BEFORE_BLAME`] lost workers in a
//!   row: a remote worker that dies on an item (no agent reports its exit) looks
//!   like a lost connection, and would otherwise be fed the item for ever. Then
//!   it is judged as a crash (`ExitCause::Lost`): split, and charged alone.

use std::time::Duration;

use crate::error::{ExitCause, ItemErrorKind};

/// What the dead (or killed) worker held of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Items in the batch.
    pub len: usize,
    /// Tries charged to it so far (only ever non-zero for a batch of one item).
    pub attempts: u32,
    /// Items whose results came back.
    pub answered: usize,
    /// Items the worker said it computed (at least `answered`).
    pub running: usize,
    /// Workers lost in a row while holding it.
    pub losses: u32,
}

/// How many workers in a row may be lost while holding the same work before the
/// loss counts as a crash (Dask's `allowed-failures` is 3 too).
pub(crate) const LOSSES_BEFORE_BLAME: u32 = 3;

/// Why the worker is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Over the time limit; `located`: a fresh report put it on the item at
    /// `running`.
    Timeout { located: bool },
    /// It died (or broke the protocol, or its local connection ended).
    Crash(ExitCause),
    /// Its connection across the network was lost: nobody is to blame.
    Lost,
}

/// A part of the batch to send again: items `start..end`, with tries charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub start: usize,
    pub end: usize,
    pub attempts: u32,
    /// Workers lost in a row while holding it.
    pub losses: u32,
}

/// The judgement: parts to send again (in input order) and items that failed for
/// good (by position in the batch).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Verdict {
    pub again: Vec<Part>,
    pub failed: Vec<(usize, ItemErrorKind)>,
}

/// Judge a batch its worker left unanswered.
pub(crate) fn judge(held: Held, cause: Cause, retries: u32, limit: Duration) -> Verdict {
    let Held {
        len,
        attempts,
        answered,
        running,
        losses,
    } = held;
    let running = running.max(answered);
    let mut verdict = Verdict::default();
    let cause = match cause {
        Cause::Lost if losses + 1 < LOSSES_BEFORE_BLAME => {
            // Whole, with the tries it had: a lost connection charges nothing.
            if answered < len {
                verdict.again.push(Part {
                    start: answered,
                    end: len,
                    attempts,
                    losses: losses + 1,
                });
            }
            return verdict;
        }
        Cause::Lost => Cause::Crash(ExitCause::Lost),
        other => other,
    };
    let failure = |attempts| match cause {
        Cause::Timeout { .. } => ItemErrorKind::TimedOut { limit, attempts },
        Cause::Crash(cause) => ItemErrorKind::Crashed { cause, attempts },
        Cause::Lost => unreachable!("handled above"),
    };
    if running >= len {
        // It computed every item and died before the last results were out:
        // nothing of this batch was running.
        verdict.again.push(Part {
            start: answered.min(len),
            end: len,
            attempts: 0,
            losses: 0,
        });
        verdict.again.retain(|p| p.start < p.end);
        return verdict;
    }
    if len == 1 {
        // Alone: this item was the one running.
        let attempts = attempts + 1;
        if attempts > retries {
            verdict.failed.push((0, failure(attempts)));
        } else {
            verdict.again.push(Part {
                start: 0,
                end: 1,
                attempts,
                losses: 0,
            });
        }
        return verdict;
    }
    let innocent = Part {
        start: answered,
        end: running,
        attempts: 0,
        losses: 0,
    };
    if innocent.start < innocent.end {
        verdict.again.push(innocent);
    }
    match cause {
        Cause::Timeout { located: true } => {
            // Its first try alone, spent in this batch.
            if retries == 0 {
                verdict.failed.push((running, failure(1)));
            } else {
                verdict.again.push(Part {
                    start: running,
                    end: running + 1,
                    attempts: 1,
                    losses: 0,
                });
            }
            if running + 1 < len {
                verdict.again.push(Part {
                    start: running + 1,
                    end: len,
                    attempts: 0,
                    losses: 0,
                });
            }
        }
        Cause::Timeout { located: false } | Cause::Crash(_) | Cause::Lost => {
            let suspects = len - running;
            let mid = running + suspects.div_ceil(2);
            verdict.again.push(Part {
                start: running,
                end: mid,
                attempts: 0,
                losses: 0,
            });
            if mid < len {
                verdict.again.push(Part {
                    start: mid,
                    end: len,
                    attempts: 0,
                    losses: 0,
                });
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(1);
    const SEGV: Cause = Cause::Crash(ExitCause::Signal(11));

    fn held(len: usize, answered: usize, running: usize) -> Held {
        Held {
            len,
            attempts: 0,
            answered,
            running,
            losses: 0,
        }
    }

    fn part(start: usize, end: usize, attempts: u32) -> Part {
        Part {
            start,
            end,
            attempts,
            losses: 0,
        }
    }

    #[test]
    fn a_crash_with_no_report_splits_the_batch_in_halves_uncharged() {
        let v = judge(held(8, 0, 0), SEGV, 1, LIMIT);
        assert_eq!(v.again, vec![part(0, 4, 0), part(4, 8, 0)]);
        assert!(v.failed.is_empty());
    }

    #[test]
    fn items_reported_computed_go_back_whole_and_uncharged() {
        let v = judge(held(10, 3, 5), SEGV, 1, LIMIT);
        assert_eq!(v.again, vec![part(3, 5, 0), part(5, 8, 0), part(8, 10, 0)]);
    }

    #[test]
    fn an_item_alone_is_charged_and_fails_after_its_retries() {
        let v = judge(held(1, 0, 0), SEGV, 1, LIMIT);
        assert_eq!(v.again, vec![part(0, 1, 1)]);
        let second = Held {
            attempts: 1,
            ..held(1, 0, 0)
        };
        let v = judge(second, SEGV, 1, LIMIT);
        assert!(v.again.is_empty());
        assert_eq!(
            v.failed,
            vec![(
                0,
                ItemErrorKind::Crashed {
                    cause: ExitCause::Signal(11),
                    attempts: 2
                }
            )]
        );
    }

    #[test]
    fn a_located_hang_is_that_item_and_nothing_else() {
        let located = Cause::Timeout { located: true };
        let v = judge(held(10, 2, 6), located, 1, LIMIT);
        assert_eq!(
            v.again,
            vec![part(2, 6, 0), part(6, 7, 1), part(7, 10, 0)],
            "the hung item is charged its first try alone; the others go on"
        );
        let v = judge(held(10, 2, 6), located, 0, LIMIT);
        assert_eq!(v.again, vec![part(2, 6, 0), part(7, 10, 0)]);
        assert_eq!(
            v.failed,
            vec![(
                6,
                ItemErrorKind::TimedOut {
                    limit: LIMIT,
                    attempts: 1
                }
            )]
        );
    }

    #[test]
    fn a_silent_hang_is_bisected_like_a_crash() {
        let frozen = Cause::Timeout { located: false };
        let v = judge(held(10, 2, 6), frozen, 0, LIMIT);
        assert_eq!(v.again, vec![part(2, 6, 0), part(6, 8, 0), part(8, 10, 0)]);
        assert!(v.failed.is_empty(), "nobody is charged: {v:?}");
    }

    #[test]
    fn a_batch_computed_whole_charges_nobody() {
        let v = judge(held(1, 0, 1), SEGV, 0, LIMIT);
        assert_eq!(v.again, vec![part(0, 1, 0)]);
        let v = judge(held(5, 3, 5), SEGV, 0, LIMIT);
        assert_eq!(v.again, vec![part(3, 5, 0)]);
    }

    fn lost(len: usize, answered: usize, attempts: u32, losses: u32) -> Verdict {
        let held = Held {
            attempts,
            losses,
            ..held(len, answered, answered)
        };
        judge(held, Cause::Lost, 1, LIMIT)
    }

    #[test]
    fn a_lost_connection_charges_nothing_and_keeps_the_batch_whole() {
        // Not split: nothing points at any item.
        let v = lost(8, 0, 0, 0);
        assert_eq!(
            v.again,
            vec![Part {
                losses: 1,
                ..part(0, 8, 0)
            }]
        );
        assert!(v.failed.is_empty());
        let v = lost(10, 3, 0, 1);
        assert_eq!(
            v.again,
            vec![Part {
                losses: 2,
                ..part(3, 10, 0)
            }],
            "answered items are not sent again"
        );
        // An item alone keeps the tries it had: none is added, none fails.
        let v = lost(1, 0, 1, 0);
        assert_eq!(
            v.again,
            vec![Part {
                losses: 1,
                ..part(0, 1, 1)
            }]
        );
        assert!(v.failed.is_empty());
        assert_eq!(lost(4, 4, 0, 0), Verdict::default(), "all answered");
    }

    #[test]
    fn work_lost_again_and_again_is_judged_like_a_crash() {
        // The third loss in a row: split like a crash, uncharged.
        let v = lost(8, 0, 0, LOSSES_BEFORE_BLAME - 1);
        assert_eq!(v.again, vec![part(0, 4, 0), part(4, 8, 0)]);
        // Alone: charged, and failed after its retries, named as lost.
        let v = lost(1, 0, 1, LOSSES_BEFORE_BLAME - 1);
        assert_eq!(
            v.failed,
            vec![(
                0,
                ItemErrorKind::Crashed {
                    cause: ExitCause::Lost,
                    attempts: 2
                }
            )]
        );
    }

    /// Replay a poison item at `poison` of a batch of `len` through repeated deaths,
    /// each part run on a fresh worker that dies at the poison (reporting nothing):
    /// only the poison fails, after `1 + retries` tries alone, and it takes at most
    /// `ceil(log2(len)) + 1 + retries` deaths.
    fn replay(len: usize, poison: usize, retries: u32) -> (Vec<usize>, u32) {
        let mut queue = vec![(0usize, len, 0u32)];
        let mut failed = Vec::new();
        let mut deaths = 0;
        while let Some((start, end, attempts)) = queue.pop() {
            if !(start..end).contains(&poison) {
                continue; // Runs through.
            }
            deaths += 1;
            assert!(
                deaths < 10_000,
                "no end to the deaths: the poison is never named"
            );
            let v = judge(
                Held {
                    len: end - start,
                    attempts,
                    answered: 0,
                    running: 0,
                    losses: 0,
                },
                SEGV,
                retries,
                LIMIT,
            );
            failed.extend(v.failed.iter().map(|(i, _)| start + i));
            for p in v.again.iter().rev() {
                queue.push((start + p.start, start + p.end, p.attempts));
            }
        }
        (failed, deaths)
    }

    #[test]
    fn bisection_names_the_poison_in_logarithmic_deaths() {
        for len in [1usize, 2, 3, 7, 8, 100, 1250, 4096] {
            for poison in [0, len / 3, len / 2, len - 1] {
                for retries in [0, 1, 3] {
                    let (failed, deaths) = replay(len, poison, retries);
                    assert_eq!(failed, vec![poison], "len {len} poison {poison}");
                    let bound = (len as f64).log2().ceil() as u32 + 1 + retries;
                    assert!(
                        deaths <= bound,
                        "len {len} poison {poison} retries {retries}: {deaths} > {bound}"
                    );
                }
            }
        }
    }
}
