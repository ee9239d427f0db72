//! `shoal-sim`: a discrete-event simulator that drives Shoal's shipped sans-IO cores (peer
//! scheduler, super-peer index and cache, tracker ranking) over a modelled network.
//!
//! It depends on the role crates with `default-features = false`, so no libp2p or tokio is in
//! its dependency tree.
//!
//! - [`engine`]: event heap ordered by (virtual time, sequence), message slab, trace hash;
//! - [`net`], [`rtt`]: links (region RTTs from RIPE Atlas, access latency, jitter, loss,
//!   bandwidth, NAT reachability and relaying);
//! - [`scenario`]: the scenario file, its defaults and validation;
//! - [`cores`]: the integration point with the role cores ([`cores::Cores`]);
//! - [`sim`]: one run (population, churn, listening, faults, sampling);
//! - [`stats`], [`output`], [`plot`], [`sweep`]: what is measured and written;
//! - [`huge_pages`]: restarting with glibc's huge-page tunable (large runs are TLB-bound).

pub mod bench;
pub mod catalog;
pub mod cores;
pub mod engine;
pub mod huge_pages;
pub mod net;
pub mod output;
pub mod plot;
pub mod rng;
pub mod rtt;
pub mod scenario;
pub mod shoal;
pub mod sim;
pub mod stats;
pub mod sweep;
