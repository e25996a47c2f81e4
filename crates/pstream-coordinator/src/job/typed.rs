//! [`MapResults`]: a job's results decoded as the output type, and [`Indexed`],
//! the same with each result's input index.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use super::RawResults;
use crate::error::{ItemError, PoolError};
use crate::stats::JobStats;

/// The typed results of [`crate::ProcessPool::map`]: an iterator of
/// `Result<Out, ItemError>`, in input order (or as they come for
/// [`crate::ProcessPool::map_unordered`]). Dropping it cancels the job.
///
/// `'input` is the lifetime of the job's input: results of a job that reads a
/// borrowed input on the consumer's thread cannot outlive the data it borrows.
#[derive(Debug)]
pub struct MapResults<'input, Out> {
    raw: RawResults<'input>,
    _out: PhantomData<fn() -> Out>,
}

impl<'input, Out: DeserializeOwned> MapResults<'input, Out> {
    pub(crate) fn new(raw: RawResults<'input>) -> Self {
        MapResults {
            raw,
            _out: PhantomData,
        }
    }

    /// The next result with its input index (useful when unordered).
    #[inline]
    pub fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        self.raw.next_decoded::<Out>()
    }

    /// Yield `(index, result)` pairs instead of results.
    pub fn indexed(self) -> Indexed<'input, Out> {
        Indexed(self)
    }

    /// The pool error that ended the job early, if one did.
    pub fn pool_error(&self) -> Option<&PoolError> {
        self.raw.pool_error()
    }

    /// What the job has seen so far.
    pub fn stats(&self) -> JobStats {
        self.raw.stats()
    }

    /// Items read from the input and not yet handed out.
    pub fn in_flight(&self) -> usize {
        self.raw.in_flight()
    }
}

impl<Out: DeserializeOwned> Iterator for MapResults<'_, Out> {
    type Item = Result<Out, ItemError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|(_, r)| r)
    }
}

/// [`MapResults`] yielding `(index, result)` pairs.
#[derive(Debug)]
pub struct Indexed<'input, Out>(MapResults<'input, Out>);

impl<Out: DeserializeOwned> Iterator for Indexed<'_, Out> {
    type Item = (u64, Result<Out, ItemError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_indexed()
    }
}

impl<'input, Out> Indexed<'input, Out> {
    /// Back to the results.
    pub fn into_inner(self) -> MapResults<'input, Out> {
        self.0
    }
}
