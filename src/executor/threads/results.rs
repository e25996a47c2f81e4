//! The consumer's side of a thread job: results handed out in input order (or as
//! they come), each batch's permits given back once it is all out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use pstream_coordinator::{Reorder, Window};

use super::worker::{Msg, Shared, WakeAll};
use crate::{ItemError, ItemErrorKind};

/// The consumer's side of a thread job.
pub(crate) struct ThreadResults<Out> {
    pub(super) rx: Receiver<Msg<Out>>,
    pub(super) window: Arc<Window>,
    pub(super) shared: Arc<Shared>,
    /// Wakes the workers waiting for work when the consumer goes away.
    pub(super) waker: Arc<dyn WakeAll>,
    /// Puts the batches back in input order (ordered jobs).
    pub(super) reorder: Reorder<Vec<Result<Out, ItemErrorKind>>>,
    /// The batch being handed out: its first index, its size, and what is left.
    pub(super) current: Option<Current<Out>>,
    pub(super) yielded: u64,
    /// How many items the input had, once it ended.
    pub(super) total: Option<u64>,
    pub(super) input_error: Option<String>,
    pub(super) finished: bool,
}

pub(super) struct Current<Out> {
    pub(super) first_index: u64,
    pub(super) len: usize,
    pub(super) pos: u64,
    pub(super) outcomes: std::vec::IntoIter<Result<Out, ItemErrorKind>>,
}

impl<Out> ThreadResults<Out> {
    pub(crate) fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(outcome) = cur.outcomes.next() {
                    let index = cur.first_index + cur.pos;
                    cur.pos += 1;
                    self.yielded += 1;
                    return Some((index, outcome.map_err(|kind| ItemError { index, kind })));
                }
                // The batch is all handed out: its permits go back.
                self.window.release(cur.len);
                self.current = None;
            }
            if self.finished {
                return None;
            }
            if let Some((first_index, outcomes)) = self.reorder.ready() {
                self.start_batch(first_index, outcomes);
                continue;
            }
            if self.total == Some(self.yielded) {
                self.finished = true;
                self.window.close();
                return self.input_error.take().map(|reason| {
                    let index = self.yielded;
                    (
                        index,
                        Err(ItemError {
                            index,
                            kind: ItemErrorKind::Aborted { reason },
                        }),
                    )
                });
            }
            match self.rx.recv() {
                Ok(Msg::Results {
                    first_index,
                    outcomes,
                }) => {
                    let len = outcomes.len();
                    if let Some((first_index, outcomes)) =
                        self.reorder.arrive(first_index, len, outcomes)
                    {
                        self.start_batch(first_index, outcomes);
                    }
                }
                Ok(Msg::InputDone { total }) => self.total = Some(total),
                Ok(Msg::InputPanicked { total, message }) => {
                    self.total = Some(total);
                    self.input_error = Some(message);
                }
                Err(_) => {
                    // Every thread is gone before the input ended: cannot happen
                    // unless a thread died outside the function (out of memory).
                    self.finished = true;
                    self.window.close();
                    let index = self.reorder.next_index(self.yielded);
                    return Some((
                        index,
                        Err(ItemError {
                            index,
                            kind: ItemErrorKind::Aborted {
                                reason: "the executor's threads stopped early".into(),
                            },
                        }),
                    ));
                }
            }
        }
    }

    fn start_batch(&mut self, first_index: u64, outcomes: Vec<Result<Out, ItemErrorKind>>) {
        let len = outcomes.len();
        self.current = Some(Current {
            first_index,
            len,
            pos: 0,
            outcomes: outcomes.into_iter(),
        });
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.window.in_use()
    }
}

impl<Out> Drop for ThreadResults<Out> {
    fn drop(&mut self) {
        // The reader stops at its next item or permit, the others before their next
        // item or when woken; published batches are dropped with the job.
        self.shared.cancelled.store(true, Ordering::Relaxed);
        self.window.close();
        self.waker.wake_all();
    }
}
