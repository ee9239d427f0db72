//! The super-peer's sans-IO core: the cluster index of leaf holdings, its aggregated sync to
//! the tracker, chunk-cache admission and the relay limits.
//! No sockets, clocks or global randomness: time comes in as a `now` argument.

pub mod admission;
pub mod index;
pub mod limits;
pub mod sync;

pub use admission::{AdmissionConfig, AdmissionStats, CacheAdmission, Observed};
pub use index::{
    Accepted, AggregateDelta, ClusterIndex, IndexConfig, IndexError, IndexStats, LeafHolder,
};
pub use limits::{LimitError, RelayLimits};
pub use sync::{SyncConfig, SyncStats, TrackerSync};
