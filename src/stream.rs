//! The async face (cargo feature `async`): a job's results as a
//! [`futures::Stream`], and a job's input from one.
//!
//! A pool's results are taken by a thread that blocks while it waits for them; an
//! async program must never block its runtime's threads. So a [`ResultStream`]
//! gives the job to a thread of its own (`pstream-results`), which takes the
//! results and hands them over through a channel that wakes the task awaiting
//! them: `poll_next` never blocks, and the runtime's other tasks run while the
//! workers compute. [`MapStream::map_stream`] reads the input from a `Stream` on a
//! thread of its own too.
//!
//! ```
//! use futures::StreamExt;
//! use pstream::stream::{IntoResultStream, MapStream};
//!
//! pstream::function! {
//!     /// Twice the input.
//!     fn twice(x: i64) -> i64 { x * 2 }
//! }
//!
//! fn main() -> Result<(), pstream::PoolError> {
//!     pstream::init();
//!     let pool = pstream::ProcessPool::builder().workers(2).build()?;
//!     let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//!     runtime.block_on(async {
//!         // Results of an iterator's items, awaited.
//!         let mut results = pool.map(twice, 0..100i64)?.into_stream()?;
//!         let mut sum = 0;
//!         while let Some(result) = results.next().await {
//!             sum += result.expect("twice does not fail");
//!         }
//!         assert_eq!(sum, 99 * 100);
//!
//!         // Input from a stream, results as a stream.
//!         let input = futures::stream::iter(0..10i64);
//!         let doubled: Vec<i64> = pool
//!             .map_stream(twice, input)?
//!             .map(|r| r.expect("twice does not fail"))
//!             .collect()
//!             .await;
//!         assert_eq!(doubled, (0..10).map(|x| x * 2).collect::<Vec<_>>());
//!         Ok::<(), pstream::PoolError>(())
//!     })
//! }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::{SinkExt, Stream};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Function, ItemError, MapResults, PoolError, ProcessPool};

/// How many results the results thread may hand over ahead of the task that
/// awaits them (on top of the pool's window).
const HANDOVER: usize = 256;

/// What the results thread sends.
enum Handover<Out> {
    Item(Result<Out, ItemError>),
    /// The job's end: its results, finished, for [`ResultStream::pool_error`].
    End(Box<MapResults<'static, Out>>),
}

/// A job's results as a [`Stream`] of `Result<Out, ItemError>`, in the order of the
/// [`MapResults`] it was made from. Made by [`IntoResultStream::into_stream`] and
/// [`MapStream::map_stream`].
///
/// A thread of its own takes the results and hands them over with the waker of the
/// task that awaits them (at most 256 ahead of it, on top of the pool's window).
/// Dropping the stream cancels the job: the thread sees it at its next hand-over,
/// and drops the results.
pub struct ResultStream<Out> {
    rx: mpsc::Receiver<Handover<Out>>,
    finished: Option<Box<MapResults<'static, Out>>>,
}

impl<Out> std::fmt::Debug for ResultStream<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("finished", &self.finished.is_some())
            .finish_non_exhaustive()
    }
}

impl<Out: DeserializeOwned + Send + 'static> ResultStream<Out> {
    /// Hand `results` to a thread that takes them as they come.
    pub fn new(results: MapResults<'static, Out>) -> Result<ResultStream<Out>, PoolError> {
        let (mut tx, rx) = mpsc::channel(HANDOVER);
        std::thread::Builder::new()
            .name("pstream-results".into())
            .spawn(move || {
                let mut results = results;
                // This thread's own executor: blocking here is what it is for.
                futures::executor::block_on(async {
                    for result in &mut results {
                        if tx.send(Handover::Item(result)).await.is_err() {
                            // The stream was dropped: dropping the results cancels.
                            return;
                        }
                    }
                    let _ = tx.send(Handover::End(Box::new(results))).await;
                })
            })
            .map_err(PoolError::Socket)?;
        Ok(ResultStream { rx, finished: None })
    }
}

impl<Out: DeserializeOwned> ResultStream<Out> {
    /// The pool error that ended the job early, if one did: known once the stream
    /// has ended.
    pub fn pool_error(&self) -> Option<&PoolError> {
        self.finished.as_deref().and_then(MapResults::pool_error)
    }
}

impl<Out> Stream for ResultStream<Out> {
    type Item = Result<Out, ItemError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished.is_some() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.rx).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Handover::Item(result))) => Poll::Ready(Some(result)),
            Poll::Ready(Some(Handover::End(results))) => {
                this.finished = Some(results);
                Poll::Ready(None)
            }
            // The thread ended without the end: it panicked (a bug), or could not
            // hand over. The stream ends.
            Poll::Ready(None) => Poll::Ready(None),
        }
    }
}

/// `results.into_stream()`: a job's results as a [`Stream`].
pub trait IntoResultStream<Out> {
    /// The results as a [`ResultStream`], taken by a thread of their own.
    ///
    /// # Errors
    /// [`PoolError::Socket`] if the thread cannot be started.
    fn into_stream(self) -> Result<ResultStream<Out>, PoolError>;
}

impl<Out: DeserializeOwned + Send + 'static> IntoResultStream<Out> for MapResults<'static, Out> {
    fn into_stream(self) -> Result<ResultStream<Out>, PoolError> {
        ResultStream::new(self)
    }
}

/// Jobs whose input is a [`Stream`]: `pool.map_stream(f, input)`.
pub trait MapStream {
    /// Map `function` over the items of `input`; results in input order, as a
    /// [`ResultStream`]. The input is polled on a thread of its own
    /// ([`ProcessPool::input_thread`]), never more than the window ahead of the
    /// results taken; a stream of a runtime's channel or socket may be read there
    /// while the runtime runs.
    fn map_stream<In, Out, S>(
        &self,
        function: Function<In, Out>,
        input: S,
    ) -> Result<ResultStream<Out>, PoolError>
    where
        In: Serialize + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
        S: Stream<Item = In> + Send + 'static;

    /// Like [`MapStream::map_stream`], but results come as they are ready.
    fn map_stream_unordered<In, Out, S>(
        &self,
        function: Function<In, Out>,
        input: S,
    ) -> Result<ResultStream<Out>, PoolError>
    where
        In: Serialize + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
        S: Stream<Item = In> + Send + 'static;
}

impl MapStream for ProcessPool {
    fn map_stream<In, Out, S>(
        &self,
        function: Function<In, Out>,
        input: S,
    ) -> Result<ResultStream<Out>, PoolError>
    where
        In: Serialize + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
        S: Stream<Item = In> + Send + 'static,
    {
        let input = futures::executor::block_on_stream(Box::pin(input));
        ResultStream::new(self.input_thread().map(function, input)?)
    }

    fn map_stream_unordered<In, Out, S>(
        &self,
        function: Function<In, Out>,
        input: S,
    ) -> Result<ResultStream<Out>, PoolError>
    where
        In: Serialize + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
        S: Stream<Item = In> + Send + 'static,
    {
        let input = futures::executor::block_on_stream(Box::pin(input));
        ResultStream::new(self.input_thread().map_unordered(function, input)?)
    }
}
