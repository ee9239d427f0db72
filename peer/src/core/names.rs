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

/// A list of ids kept in each of many entries (a scheduler's holders of each track): the ids
/// themselves beside an [`IdStore::Inline`] table, or their 4-byte keys in the names of an
/// [`IdStore::Named`] one. Every call takes the store of the table the list belongs to.
#[derive(Debug, Clone)]
pub(crate) enum IdList<I> {
    Inline(Vec<I>),
    Named(Vec<u32>),
}

impl<I: Copy + Eq + Hash> IdList<I> {
    /// An empty list in `store`'s mode, with room for `capacity` ids.
    pub(crate) fn with_capacity(store: &IdStore<I>, capacity: usize) -> Self {
        match store {
            IdStore::Inline(_) => Self::Inline(Vec::with_capacity(capacity)),
            IdStore::Named(_) => Self::Named(Vec::with_capacity(capacity)),
        }
    }

    /// The ids in order.
    pub(crate) fn iter<'a>(&'a self, store: &'a IdStore<I>) -> impl Iterator<Item = I> + 'a {
        let (inline, named) = match (self, store) {
            (Self::Inline(v), _) => (Some(v.iter().copied()), None),
            (Self::Named(keys), IdStore::Named(n)) => {
                (None, Some(keys.iter().filter_map(|&k| n.id(k).copied())))
            }
            // Keys without names to read them in: never built (`with_capacity`, `rebuilt`).
            (Self::Named(_), IdStore::Inline(_)) => (None, None),
        };
        inline
            .into_iter()
            .flatten()
            .chain(named.into_iter().flatten())
    }

    /// Appends `id`; false when shared names are full.
    pub(crate) fn push(&mut self, store: &IdStore<I>, id: I) -> bool {
        match (self, store) {
            (Self::Inline(v), _) => v.push(id),
            (Self::Named(keys), IdStore::Named(n)) => match n.key_of(&id) {
                Some(k) => keys.push(k),
                None => return false,
            },
            (Self::Named(_), IdStore::Inline(_)) => return false,
        }
        true
    }

    /// Drops every occurrence of `id`.
    pub(crate) fn remove(&mut self, store: &IdStore<I>, id: &I) {
        match (self, store) {
            (Self::Inline(v), _) => v.retain(|x| x != id),
            (Self::Named(keys), IdStore::Named(n)) => keys.retain(|&k| n.id(k) != Some(id)),
            (Self::Named(_), IdStore::Inline(_)) => {}
        }
    }

    /// The same ids in `to`'s mode (`from` is the store the list was built for).
    pub(crate) fn rebuilt(&self, from: &IdStore<I>, to: &IdStore<I>) -> Self {
        let mut list = Self::with_capacity(to, self.len());
        for id in self.iter(from) {
            list.push(to, id);
        }
        list
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Inline(v) => v.len(),
            Self::Named(keys) => keys.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        match self {
            Self::Inline(v) => v.shrink_to_fit(),
            Self::Named(keys) => keys.shrink_to_fit(),
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

    proptest::proptest! {
        /// Pushes and removes over a few ids: a list of inline ids and one of keys give the
        /// ids a plain `Vec` has, in its order, and so do both rebuilt in the other mode.
        #[test]
        fn agrees_with_a_vec(ops in proptest::collection::vec((0u8..3, 0u8..12), 0..200)) {
            let inline_store = IdStore::Inline(Vec::new());
            let names = NodeNames::new();
            // Keys that are not the ids' order: names shared with another table first.
            for i in (0..12).rev().step_by(2) {
                names.key_of(&node(i));
            }
            let named_store = IdStore::Named(names);
            let mut inline = IdList::with_capacity(&inline_store, 0);
            let mut named = IdList::with_capacity(&named_store, 0);
            let mut model: Vec<NodeId> = Vec::new();
            for (op, i) in ops {
                if op < 2 {
                    proptest::prop_assert!(inline.push(&inline_store, node(i)));
                    proptest::prop_assert!(named.push(&named_store, node(i)));
                    model.push(node(i));
                } else {
                    inline.remove(&inline_store, &node(i));
                    named.remove(&named_store, &node(i));
                    model.retain(|n| *n != node(i));
                }
                proptest::prop_assert_eq!(inline.iter(&inline_store).collect::<Vec<_>>(), model.clone());
                proptest::prop_assert_eq!(named.iter(&named_store).collect::<Vec<_>>(), model.clone());
                proptest::prop_assert_eq!((inline.len(), named.len()), (model.len(), model.len()));
            }
            let to_named = inline.rebuilt(&inline_store, &named_store);
            let to_inline = named.rebuilt(&named_store, &inline_store);
            proptest::prop_assert!(matches!(to_named, IdList::Named(_)));
            proptest::prop_assert_eq!(to_named.iter(&named_store).collect::<Vec<_>>(), model.clone());
            proptest::prop_assert_eq!(to_inline.iter(&inline_store).collect::<Vec<_>>(), model);
        }
    }
}
