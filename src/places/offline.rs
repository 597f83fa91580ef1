//! The embedded offline places provider's index: the `herd-places` crate (places/),
//! kept apart so that debug builds compile it optimized.

pub use herd_places::*;
