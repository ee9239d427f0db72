//! The super-peer's sans-IO core: the cluster index of leaf holdings, cache admission and
//! eviction, relay admission. No sockets, clocks or global randomness.
