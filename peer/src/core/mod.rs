//! The peer's sans-IO core: which source to fetch each chunk from, when to hedge, when to fall
//! back to the origin, what to prefetch, whom to serve. No sockets, clocks or global
//! randomness (see `shoal_protocol::sansio`).
