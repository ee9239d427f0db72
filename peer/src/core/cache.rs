//! The cache policy: an LRU index of which chunks the local disk cache holds, with a byte and
//! an entry limit, deciding what to evict. The disk itself belongs to the driver, which is told
//! what to delete.

use std::collections::{BTreeMap, BTreeSet};

use shoal_protocol::ChunkId;

use super::config::CacheConfig;

/// LRU index of cached chunks. Every operation is `O(log n)`.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    config: CacheConfig,
    /// Chunk → (byte length, last-use tick).
    entries: BTreeMap<ChunkId, (u32, u64)>,
    /// (last-use tick, chunk), oldest first.
    by_age: BTreeSet<(u64, ChunkId)>,
    bytes: u64,
    tick: u64,
}

impl CacheIndex {
    /// An empty index with `config`'s limits.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            by_age: BTreeSet::new(),
            bytes: 0,
            tick: 0,
        }
    }

    /// True when the cache holds `chunk`.
    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.entries.contains_key(chunk)
    }

    /// Byte length of `chunk` if held.
    pub fn len_of(&self, chunk: &ChunkId) -> Option<u32> {
        self.entries.get(chunk).map(|(len, _)| *len)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `chunk` as just used.
    pub fn touch(&mut self, chunk: &ChunkId) {
        if let Some((_, tick)) = self.entries.get_mut(chunk) {
            self.by_age.remove(&(*tick, *chunk));
            self.tick += 1;
            *tick = self.tick;
            self.by_age.insert((self.tick, *chunk));
        }
    }

    /// Records `chunk` (`len` bytes) as held and most recently used; returns the chunks to
    /// evict to stay within the limits, least recently used first. A chunk larger than the
    /// whole cache is not kept (it is returned as evicted itself).
    pub fn insert(&mut self, chunk: ChunkId, len: u32) -> Vec<ChunkId> {
        if self.contains(&chunk) {
            self.touch(&chunk);
            return Vec::new();
        }
        if u64::from(len) > self.config.max_bytes || self.config.max_entries == 0 {
            return vec![chunk];
        }
        self.tick += 1;
        self.entries.insert(chunk, (len, self.tick));
        self.by_age.insert((self.tick, chunk));
        self.bytes += u64::from(len);
        let mut evicted = Vec::new();
        while self.bytes > self.config.max_bytes || self.entries.len() > self.config.max_entries {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((l, _)) = self.entries.remove(&oldest) {
                self.bytes -= u64::from(l);
            }
            evicted.push(oldest);
        }
        evicted
    }

    /// Every chunk held with its length, least recently used first.
    pub fn oldest_first(&self) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
        self.by_age
            .iter()
            .filter_map(|(_, c)| self.entries.get(c).map(|(len, _)| (*c, *len)))
    }

    /// Forgets `chunk` (the driver deleted it, or it failed verification on read).
    pub fn remove(&mut self, chunk: &ChunkId) -> bool {
        match self.entries.remove(chunk) {
            Some((len, tick)) => {
                self.by_age.remove(&(tick, *chunk));
                self.bytes -= u64::from(len);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> ChunkId {
        ChunkId::of(&[i])
    }

    #[test]
    fn evicts_least_recently_used_within_byte_limit() {
        let mut c = CacheIndex::new(CacheConfig {
            max_bytes: 300,
            max_entries: 10,
        });
        assert!(c.insert(id(1), 100).is_empty());
        assert!(c.insert(id(2), 100).is_empty());
        assert!(c.insert(id(3), 100).is_empty());
        c.touch(&id(1));
        assert_eq!(c.insert(id(4), 150), vec![id(2), id(3)]);
        assert!(c.contains(&id(1)) && c.contains(&id(4)));
        assert_eq!(c.bytes(), 250);
        assert_eq!(c.insert(id(5), 301), vec![id(5)]);
        assert!(c.remove(&id(1)));
        assert!(!c.remove(&id(1)));
        assert_eq!(c.bytes(), 150);
    }

    #[test]
    fn entry_limit_bounds_the_index() {
        let mut c = CacheIndex::new(CacheConfig {
            max_bytes: u64::MAX,
            max_entries: 2,
        });
        c.insert(id(1), 1);
        c.insert(id(2), 1);
        assert_eq!(c.insert(id(3), 1), vec![id(1)]);
        assert_eq!(c.len(), 2);
    }
}
