//! Ids shared by the tables of many cores in one process: a table stores a 4-byte key per
//! entry instead of a 32-byte id. The simulator runs one core per simulated listener, and a
//! popular chunk sits in thousands of caches, a popular peer in thousands of node tables. The
//! real client runs one core and keeps its ids inline.

use std::hash::Hash;
use std::sync::{Arc, Mutex};

use hashbrown::HashTable;
use shoal_protocol::{ChunkId, NodeId};

use super::idmap::id_hash;

/// The key no id gets: a full table.
const FULL: u32 = u32::MAX;

/// Ids of type `I` named by 4-byte keys, shared by clones. Append-only: an id keeps its key
/// until the last clone is dropped, so it suits a run over a finite population and catalog,
/// not a long-lived client.
#[derive(Debug)]
pub struct Names<I> {
    inner: Arc<NamesInner<I>>,
}

/// Chunk ids shared by cache indexes ([`super::CacheIndex`]).
pub type ChunkNames = Names<ChunkId>;
/// Node ids shared by schedulers' tables of known nodes.
pub type NodeNames = Names<NodeId>;

#[derive(Debug)]
struct NamesInner<I> {
    /// Ids by key; read without a lock (tables compare against them on every lookup).
    ids: boxcar::Vec<I>,
    /// Keys hashed by their id, to find an id's key.
    keys: Mutex<HashTable<u32>>,
}

impl<I> Clone for Names<I> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<I> Default for Names<I> {
    fn default() -> Self {
        Self {
            inner: Arc::new(NamesInner {
                ids: boxcar::Vec::new(),
                keys: Mutex::new(HashTable::new()),
            }),
        }
    }
}

impl<I: Copy + Eq + Hash> Names<I> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ids named so far.
    pub fn len(&self) -> usize {
        self.inner.ids.count()
    }

    /// No id named yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `other` is a clone of this table (the same keys name the same ids).
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// `id`'s key, naming it now if it has none; `None` once 2^32 − 1 ids are named.
    pub fn key_of(&self, id: &I) -> Option<u32> {
        let ids = &self.inner.ids;
        let mut keys = self.inner.keys.lock().ok()?;
        let hash = id_hash(id);
        if let Some(&k) = keys.find(hash, |&k| ids.get(k as usize) == Some(id)) {
            return Some(k);
        }
        let k = u32::try_from(ids.count()).ok().filter(|&k| k != FULL)?;
        let pushed = ids.push(*id);
        debug_assert_eq!(pushed, k as usize, "one writer at a time (under the lock)");
        keys.insert_unique(hash, k, |&j| ids.get(j as usize).map_or(0, id_hash));
        Some(k)
    }

    /// The id named `key`.
    pub fn id(&self, key: u32) -> Option<&I> {
        self.inner.ids.get(key as usize)
    }
}

/// Where a table of many cores' kind keeps the ids of its entries.
#[derive(Debug, Clone)]
pub(crate) enum IdStore<I> {
    /// Beside the entries: entry `i`'s id is `ids[i]` (the client: one core in the process).
    Inline(Vec<I>),
    /// In names shared by many tables; each entry holds its 4-byte key.
    Named(Names<I>),
}

impl<I: Copy + Eq + Hash> IdStore<I> {
    /// The id of entry `i`; `key` is that entry's key (`None`: no such entry).
    pub(crate) fn get(&self, i: u32, key: Option<u32>) -> Option<I> {
        match self {
            Self::Inline(v) => v.get(i as usize).copied(),
            Self::Named(n) => key.and_then(|k| n.id(k)).copied(),
        }
    }
}

/// Pushes `x`, growing `v` by a quarter (at least `min`) when full, not doubling: a simulated
/// run holds one such table per listener, and doubling leaves a third of it unused on average.
/// Still amortised O(1) per push.
pub(crate) fn push_sparingly<T>(v: &mut Vec<T>, x: T, min: usize) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(min));
    }
    v.push(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_index(u64::from(i))
    }

    #[test]
    fn clones_share_one_key_per_id() {
        let names = NodeNames::new();
        let other = names.clone();
        let a = names.key_of(&node(1));
        let b = other.key_of(&node(2));
        assert_ne!(a, b);
        assert_eq!(
            other.key_of(&node(1)),
            a,
            "a clone finds the key given first"
        );
        assert_eq!(names.id(b.unwrap()), Some(&node(2)));
        assert_eq!(names.len(), 2);
        assert!(names.same_as(&other));
        assert!(!names.same_as(&NodeNames::new()));
    }
}
