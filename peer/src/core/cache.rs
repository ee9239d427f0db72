//! The cache policy: an LRU index of which chunks the local disk cache holds, with a byte and
//! an entry limit, deciding what to evict. The disk itself belongs to the driver, which is told
//! what to delete.

use hashbrown::HashTable;
use shoal_protocol::ChunkId;

use super::config::CacheConfig;
use super::idmap::id_hash;
pub use super::names::ChunkNames;
use super::names::{IdStore, push_sparingly};

/// No slot.
const NIL: u32 = u32::MAX;

/// One cached chunk, linked into the age list (or, when free, into the free list by `next`).
/// Its id is in the index's `ids`: 16 bytes a slot.
#[derive(Debug, Clone)]
struct Slot {
    /// Its key in [`ChunkNames`] (unused when the ids are inline).
    key: u32,
    len: u32,
    /// Next older entry.
    prev: u32,
    /// Next newer entry.
    next: u32,
}

/// LRU index of cached chunks: a hash index into slots linked from least to most recently
/// used. Every operation is `O(1)` (eviction `O(1)` per chunk evicted); each chunk costs one
/// slot (its length and two links), its id (inline, or a key into shared [`ChunkNames`]) and
/// one index entry.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    config: CacheConfig,
    /// Slot numbers, hashed by their slot's chunk id: the id is stored once, in `ids` (a map
    /// keyed by the id would store it twice; a simulated listener caches thousands).
    index: HashTable<u32>,
    slots: Vec<Slot>,
    ids: IdStore<ChunkId>,
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
            index: HashTable::new(),
            slots: Vec::new(),
            ids: IdStore::Inline(Vec::new()),
            free: NIL,
            oldest: NIL,
            newest: NIL,
            bytes: 0,
        }
    }

    /// Keeps the ids in `names`, shared with other indexes, instead of beside each slot. What
    /// the index holds, and every answer it gives, stay the same.
    pub fn set_names(&mut self, names: ChunkNames) {
        let held: Vec<(ChunkId, u32)> = self.oldest_first().collect();
        let mut named = Self {
            ids: IdStore::Named(names),
            ..Self::new(self.config.clone())
        };
        for (chunk, len) in held {
            named.insert(chunk, len);
        }
        *self = named;
    }

    /// The id of slot `i`.
    fn id_at(ids: &IdStore<ChunkId>, slots: &[Slot], i: u32) -> Option<ChunkId> {
        ids.get(i, slots.get(i as usize).map(|s| s.key))
    }

    /// Slot `i` holds `chunk`.
    fn holds(ids: &IdStore<ChunkId>, slots: &[Slot], i: u32, chunk: &ChunkId) -> bool {
        Self::id_at(ids, slots, i).as_ref() == Some(chunk)
    }

    /// The slot holding `chunk`.
    fn slot_of(&self, chunk: &ChunkId) -> Option<u32> {
        let (ids, slots) = (&self.ids, &self.slots);
        self.index
            .find(id_hash(chunk), |&i| Self::holds(ids, slots, i, chunk))
            .copied()
    }

    /// Takes `chunk` out of the index; its slot, if it had one.
    fn unindex(&mut self, chunk: &ChunkId) -> Option<u32> {
        let (ids, slots) = (&self.ids, &self.slots);
        self.index
            .find_entry(id_hash(chunk), |&i| Self::holds(ids, slots, i, chunk))
            .ok()
            .map(|e| e.remove().0)
    }

    /// True when the cache holds `chunk`.
    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.slot_of(chunk).is_some()
    }

    /// The limits.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Byte length of `chunk` if held.
    pub fn len_of(&self, chunk: &ChunkId) -> Option<u32> {
        self.slot_of(chunk).map(|i| self.slots[i as usize].len)
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

    /// A slot for `id`; `None` when a shared name table is full.
    fn alloc(&mut self, id: ChunkId, len: u32) -> Option<u32> {
        let key = match &self.ids {
            IdStore::Inline(_) => 0,
            IdStore::Named(n) => n.key_of(&id)?,
        };
        let slot = Slot {
            key,
            len,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free {
            NIL => {
                push_sparingly(&mut self.slots, slot, 16);
                (self.slots.len() - 1) as u32
            }
            i => {
                self.free = self.slots[i as usize].next;
                self.slots[i as usize] = slot;
                i
            }
        };
        if let IdStore::Inline(v) = &mut self.ids {
            match v.get_mut(i as usize) {
                Some(x) => *x = id,
                None => push_sparingly(v, id, 16),
            }
        }
        Some(i)
    }

    fn release(&mut self, i: u32) {
        self.slots[i as usize].next = self.free;
        self.free = i;
    }

    /// Marks `chunk` as just used.
    pub fn touch(&mut self, chunk: &ChunkId) {
        if let Some(i) = self.slot_of(chunk) {
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
        let Some(i) = self.alloc(chunk, len) else {
            return vec![chunk];
        };
        let (ids, slots) = (&self.ids, &self.slots);
        self.index.insert_unique(id_hash(&chunk), i, |&j| {
            Self::id_at(ids, slots, j).map_or(0, |id| id_hash(&id))
        });
        self.push_newest(i);
        self.bytes += u64::from(len);
        let mut evicted = Vec::new();
        while self.bytes > self.config.max_bytes || self.index.len() > self.config.max_entries {
            let oldest = self.oldest;
            if oldest == NIL {
                break;
            }
            let l = self.slots[oldest as usize].len;
            let Some(id) = Self::id_at(&self.ids, &self.slots, oldest) else {
                break;
            };
            // Out of the index first: finding it there needs its id still in the slot.
            let indexed = self.unindex(&id).is_some();
            self.unlink(oldest);
            self.release(oldest);
            if indexed {
                self.bytes -= u64::from(l);
            }
            evicted.push(id);
        }
        evicted
    }

    /// Every chunk held with its length, least recently used first.
    pub fn oldest_first(&self) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
        self.slots_oldest_first().filter_map(move |i| {
            let id = Self::id_at(&self.ids, &self.slots, i)?;
            Some((id, self.slots[i as usize].len))
        })
    }

    /// Every chunk held as its key in `names`, least recently used first, when the index keeps
    /// its ids there (`None` otherwise): [`CacheIndex::oldest_first`] without looking each id
    /// up and its key up again in a table of every chunk of a simulated run.
    pub fn oldest_first_keys<'a>(
        &'a self,
        names: &ChunkNames,
    ) -> Option<impl Iterator<Item = u32> + 'a> {
        if !matches!(&self.ids, IdStore::Named(n) if n.same_as(names)) {
            return None;
        }
        Some(
            self.slots_oldest_first()
                .map(move |i| self.slots[i as usize].key),
        )
    }

    /// The held slots, least recently used first.
    fn slots_oldest_first(&self) -> impl Iterator<Item = u32> + '_ {
        let first = (self.oldest != NIL).then_some(self.oldest);
        std::iter::successors(first, move |&i| {
            let next = self.slots[i as usize].next;
            (next != NIL).then_some(next)
        })
    }

    /// Forgets `chunk` (the driver deleted it, or it failed verification on read).
    pub fn remove(&mut self, chunk: &ChunkId) -> bool {
        match self.unindex(chunk) {
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

    /// A plain list kept least recently used first: what the index must agree with.
    #[derive(Default)]
    struct ModelLru(Vec<(ChunkId, u32)>);

    impl ModelLru {
        fn pos(&self, c: &ChunkId) -> Option<usize> {
            self.0.iter().position(|(x, _)| x == c)
        }
        fn touch(&mut self, c: &ChunkId) {
            if let Some(p) = self.pos(c) {
                let e = self.0.remove(p);
                self.0.push(e);
            }
        }
        fn insert(&mut self, config: &CacheConfig, c: ChunkId, len: u32) -> Vec<ChunkId> {
            if self.pos(&c).is_some() {
                self.touch(&c);
                return Vec::new();
            }
            if u64::from(len) > config.max_bytes || config.max_entries == 0 {
                return vec![c];
            }
            self.0.push((c, len));
            let mut out = Vec::new();
            while self.0.iter().map(|(_, l)| u64::from(*l)).sum::<u64>() > config.max_bytes
                || self.0.len() > config.max_entries
            {
                out.push(self.0.remove(0).0);
            }
            out
        }
        fn remove(&mut self, c: &ChunkId) -> bool {
            self.pos(c).map(|p| self.0.remove(p)).is_some()
        }
    }

    proptest::proptest! {
        /// Random inserts, touches and removes over a few ids (so they collide and recur):
        /// same evictions, same contents, lengths and LRU order as the plain list, with the ids
        /// inline and in a name table shared with another index (so keys are not slot numbers).
        #[test]
        fn agrees_with_a_plain_lru_list(
            ops in proptest::collection::vec((0u8..3, 0u8..24, 1u32..120), 0..300),
            max_bytes in 1u64..1000,
            max_entries in 0usize..12,
            named_after in 0usize..300,
        ) {
            let config = CacheConfig { max_bytes, max_entries };
            let names = ChunkNames::new();
            let mut other = CacheIndex::new(CacheConfig { max_bytes: 1000, max_entries: 100 });
            other.set_names(names.clone());
            for i in (0..24).rev() {
                other.insert(id(i), 1);
            }
            let mut inline = CacheIndex::new(config.clone());
            let mut named = CacheIndex::new(config.clone());
            let mut m = ModelLru::default();
            for (n, (op, i, len)) in ops.into_iter().enumerate() {
                // Switched to shared names part-way: what it holds carries over.
                if n == named_after {
                    named.set_names(names.clone());
                }
                for c in [&mut inline, &mut named] {
                    match op {
                        0 => {
                            let want = ModelLru(m.0.clone()).insert(&config, id(i), len);
                            proptest::prop_assert_eq!(c.insert(id(i), len), want);
                        }
                        1 => c.touch(&id(i)),
                        _ => proptest::prop_assert_eq!(c.remove(&id(i)), m.pos(&id(i)).is_some()),
                    }
                }
                match op {
                    0 => {
                        m.insert(&config, id(i), len);
                    }
                    1 => m.touch(&id(i)),
                    _ => {
                        m.remove(&id(i));
                    }
                }
                for c in [&inline, &named] {
                    let order: Vec<_> = c.oldest_first().collect();
                    proptest::prop_assert_eq!(&order, &m.0);
                    proptest::prop_assert_eq!(c.len(), m.0.len());
                    for j in 0..24 {
                        let want = m.pos(&id(j)).map(|p| m.0[p].1);
                        proptest::prop_assert_eq!(c.len_of(&id(j)), want);
                    }
                    let bytes: u64 = m.0.iter().map(|(_, l)| u64::from(*l)).sum();
                    proptest::prop_assert_eq!(c.bytes(), bytes);
                }
                // By key: the same order, named in the shared table; only where it is shared.
                let by_key: Option<Vec<_>> = named
                    .oldest_first_keys(&names)
                    .map(|keys| keys.map(|k| *names.id(k).expect("named")).collect());
                let ids: Vec<_> = m.0.iter().map(|(c, _)| *c).collect();
                proptest::prop_assert_eq!(by_key, (n >= named_after).then_some(ids));
                proptest::prop_assert!(inline.oldest_first_keys(&names).is_none());
                proptest::prop_assert!(named.oldest_first_keys(&ChunkNames::new()).is_none());
            }
            // Each id is named once, however many indexes hold it.
            proptest::prop_assert_eq!(names.len(), 24);
            proptest::prop_assert_eq!(other.len(), 24);
        }
    }
}
