//! Decoded manifests shared between cores: a process that runs many cores (the simulator runs
//! one per simulated listener) would otherwise hold one decoded copy of a popular track's
//! manifest per core. A core only asks the pool after checking that the bytes hash to the
//! track id, so two cores asking for the same id hold the same bytes and the same decoded
//! manifest: sharing it changes no decision. The real client runs one core and needs no pool.

use std::sync::{Arc, Mutex, Weak};

use shoal_protocol::{Manifest, ManifestError, TrackId};

use super::idmap::IdMap;

/// A handle on a set of shared decoded manifests (clone it to share the set). Entries are
/// weak: a manifest lives as long as some core holds it.
#[derive(Debug, Clone, Default)]
pub struct ManifestPool {
    inner: Arc<Mutex<PoolInner>>,
}

#[derive(Debug, Default)]
struct PoolInner {
    map: IdMap<TrackId, Weak<Manifest>>,
    /// Entries at which dead ones are swept out next.
    sweep_at: usize,
}

impl ManifestPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The track id of the canonical manifest `bytes` (their hash) and its shared decoded
    /// manifest: for a driver that makes manifests itself (the simulator's catalog), so that
    /// it and every core share one decoded copy. While the returned `Arc` lives, so does the
    /// pool's entry.
    pub fn share(&self, bytes: &[u8]) -> Result<(TrackId, Arc<Manifest>), ManifestError> {
        let track = TrackId::of(bytes);
        self.decode(track, bytes).map(|m| (track, m))
    }

    /// The decoded manifest of `track`, whose canonical bytes are `bytes`: the one another
    /// core decoded if it is still alive, otherwise decoded now and shared from now on. The
    /// caller has checked `TrackId::of(bytes) == track`.
    pub(crate) fn decode(
        &self,
        track: TrackId,
        bytes: &[u8],
    ) -> Result<Arc<Manifest>, ManifestError> {
        if let Ok(inner) = self.inner.lock() {
            if let Some(m) = inner.map.get(&track).and_then(Weak::upgrade) {
                return Ok(m);
            }
        }
        let m = Arc::new(Manifest::decode(bytes)?);
        if let Ok(mut inner) = self.inner.lock() {
            if inner.map.len() >= inner.sweep_at {
                inner.map.retain(|_, w| w.strong_count() > 0);
                inner.sweep_at = (inner.map.len() * 2).max(1024);
            }
            inner.map.insert(track, Arc::downgrade(&m));
        }
        Ok(m)
    }
}
