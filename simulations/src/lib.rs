//! `shoal-sim`: a discrete-event simulator that drives Shoal's shipped sans-IO cores (peer
//! scheduler, super-peer index and cache, tracker ranking) over a modelled network.
//!
//! It depends on the role crates with `default-features = false`, so no libp2p or tokio is in
//! its dependency tree.
