//! The tracker's sans-IO core: ranking holders nearest-first and expiring soft state in the
//! peer registry. No sockets, clocks or global randomness.
