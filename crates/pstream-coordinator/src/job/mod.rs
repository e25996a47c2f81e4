//! One job, from its input to its results. The parts:
//!
//! * `window`: [`Window`], the flow-control window that bounds what a job holds
//!   between its input and its consumer (shared with the thread executor);
//! * `feeder`: reads the input within the window and cuts batches for the engine,
//!   on a thread of its own ([`feed`]) or on the consumer's thread
//!   ([`InlineSource`], a [`Source`]);
//! * `results`: [`RawResults`], the results as encoded bytes, in input order or
//!   as they come; the consumer's thread steps the engine through the hub while it
//!   waits;
//! * `typed`: [`MapResults`] and [`Indexed`], the results decoded as the output
//!   type;
//! * `reorder`: [`Reorder`], which puts batches of results back in input order
//!   (shared with the thread executor).
//!
//! Who imports whom: `feeder` and `results` use `window`; `results` uses the
//! feeder's [`Source`], `reorder` and the hub; `typed` wraps `results`; `window`
//! and `reorder` import nothing of the crate. None of them imports
//! the engine or the pool; the messages they trade with the engine are in
//! [`crate::vocab`].

mod feeder;
mod reorder;
mod results;
mod typed;
mod window;

pub(crate) use feeder::{feed, FeedLimits, InlineSource, Source};
pub use reorder::Reorder;
pub use results::{RawResults, StatsProbe};
pub use typed::{Indexed, MapResults};
pub use window::Window;
