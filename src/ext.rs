//! [`MapIn`]: `iter.map_in(&pool, f)`, rayon's word order for [`ProcessPool::map`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Function, MapResults, PoolError, ProcessPool};

/// `input.map_in(&pool, f)`: the input first, as rayon writes `iter.par_iter().map(f)`.
///
/// Exactly [`ProcessPool::map`] (and [`ProcessPool::map_unordered`]) with the
/// arguments in another order: each method is an `#[inline]` call of the pool's,
/// monomorphised for the same types, so it costs nothing over calling the pool.
/// Brought in by `use pstream::MapIn;` for anything iterable.
///
/// ```
/// use pstream::MapIn;
///
/// pstream::function! {
///     /// The input in uppercase.
///     fn shout(s: String) -> String { s.to_uppercase() }
/// }
///
/// fn main() -> Result<(), pstream::PoolError> {
///     pstream::init();
///     let pool = pstream::ProcessPool::builder().workers(2).build()?;
///     let words = vec!["a".to_string(), "b".to_string()];
///     let loud: Vec<String> = words
///         .iter()
///         .cloned()
///         .map_in(&pool, shout)?
///         .map(|r| r.expect("shout does not fail"))
///         .collect();
///     assert_eq!(loud, ["A", "B"]);
///     Ok(())
/// }
/// ```
pub trait MapIn: IntoIterator + Sized {
    /// [`ProcessPool::map`]: map `function` over these items on `pool`; results in
    /// input order.
    #[inline]
    fn map_in<'input, Out>(
        self,
        pool: &ProcessPool,
        function: Function<Self::Item, Out>,
    ) -> Result<MapResults<'input, Out>, PoolError>
    where
        Self::Item: Serialize + 'input,
        Self::IntoIter: Send + 'input,
        Out: DeserializeOwned,
    {
        pool.map(function, self)
    }

    /// [`ProcessPool::map_unordered`]: the same, results as they are ready.
    #[inline]
    fn map_unordered_in<'input, Out>(
        self,
        pool: &ProcessPool,
        function: Function<Self::Item, Out>,
    ) -> Result<MapResults<'input, Out>, PoolError>
    where
        Self::Item: Serialize + 'input,
        Self::IntoIter: Send + 'input,
        Out: DeserializeOwned,
    {
        pool.map_unordered(function, self)
    }
}

impl<I: IntoIterator> MapIn for I {}
