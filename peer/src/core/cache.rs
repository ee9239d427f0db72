//! The cache policy: an LRU index of which chunks the local disk cache holds, with a byte and
//! an entry limit, deciding what to evict. The disk itself belongs to the driver, which is told
//! what to delete.

use shoal_protocol::ChunkId;

use super::config::CacheConfig;
use super::idmap::IdMap;

/// No slot.
const NIL: u32 = u32::MAX;

/// One cached chunk, linked into the age list (or, when free, into the free list by `next`).
#[derive(Debug, Clone)]
struct Slot {
    id: ChunkId,
    len: u32,
    /// Next older entry.
    prev: u32,
    /// Next newer entry.
    next: u32,
}

/// LRU index of cached chunks: a hash index into slots linked from least to most recently
/// used. Every operation is `O(1)` (eviction `O(1)` per chunk evicted); each chunk costs one
/// slot (its id, length and two links) and one index entry.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    config: CacheConfig,
    /// Chunk → its slot.
    index: IdMap<ChunkId, u32>,
    slots: Vec<Slot>,
    /// First free slot (linked by `next`).
    free: u32,
    /// Least recently used.
    oldest: u32,
    /// Most recently used.
    newest: u32,
    bytes: u64,
}

impl CacheIndex {
    /// An empty index with `config`'s limits.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            index: IdMap::default(),
            slots: Vec::new(),
            free: NIL,
            oldest: NIL,
            newest: NIL,
            bytes: 0,
        }
    }

    /// True when the cache holds `chunk`.
    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.index.contains_key(chunk)
    }

    /// Byte length of `chunk` if held.
    pub fn len_of(&self, chunk: &ChunkId) -> Option<u32> {
        self.index.get(chunk).map(|&i| self.slots[i as usize].len)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.oldest = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.newest = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_newest(&mut self, i: u32) {
        let newest = self.newest;
        {
            let s = &mut self.slots[i as usize];
            s.prev = newest;
            s.next = NIL;
        }
        match newest {
            NIL => self.oldest = i,
            n => self.slots[n as usize].next = i,
        }
        self.newest = i;
    }

    fn alloc(&mut self, id: ChunkId, len: u32) -> u32 {
        let slot = Slot {
            id,
            len,
            prev: NIL,
            next: NIL,
        };
        match self.free {
            NIL => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
            i => {
                self.free = self.slots[i as usize].next;
                self.slots[i as usize] = slot;
                i
            }
        }
    }

    fn release(&mut self, i: u32) {
        self.slots[i as usize].next = self.free;
        self.free = i;
    }

    /// Marks `chunk` as just used.
    pub fn touch(&mut self, chunk: &ChunkId) {
        if let Some(&i) = self.index.get(chunk) {
            if i != self.newest {
                self.unlink(i);
                self.push_newest(i);
            }
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
        let i = self.alloc(chunk, len);
        self.index.insert(chunk, i);
        self.push_newest(i);
        self.bytes += u64::from(len);
        let mut evicted = Vec::new();
        while self.bytes > self.config.max_bytes || self.index.len() > self.config.max_entries {
            let oldest = self.oldest;
            if oldest == NIL {
                break;
            }
            let (id, l) = {
                let s = &self.slots[oldest as usize];
                (s.id, s.len)
            };
            self.unlink(oldest);
            self.release(oldest);
            if self.index.remove(&id).is_some() {
                self.bytes -= u64::from(l);
            }
            evicted.push(id);
        }
        evicted
    }

    /// Every chunk held with its length, least recently used first.
    pub fn oldest_first(&self) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
        let first = (self.oldest != NIL).then_some(self.oldest);
        std::iter::successors(first, move |&i| {
            let next = self.slots[i as usize].next;
            (next != NIL).then_some(next)
        })
        .map(move |i| {
            let s = &self.slots[i as usize];
            (s.id, s.len)
        })
    }

    /// Forgets `chunk` (the driver deleted it, or it failed verification on read).
    pub fn remove(&mut self, chunk: &ChunkId) -> bool {
        match self.index.remove(chunk) {
            Some(i) => {
                let len = self.slots[i as usize].len;
                self.unlink(i);
                self.release(i);
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
