//! The super-peer's sans-IO core: the cluster index of leaf holdings and the relay limits.
//! No sockets, clocks or global randomness: time comes in as a `now` argument.

pub mod index;
pub mod limits;

pub use index::{
    Accepted, AggregateDelta, ClusterIndex, IndexConfig, IndexError, IndexStats, LeafHolder,
};
pub use limits::{LimitError, RelayLimits};
