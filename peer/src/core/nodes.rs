//! The scheduler's table of known nodes: entries (id key and state) in stable slots under a
//! hash index of slots, with the ids inline or in shared [`NodeNames`]. A simulated run keeps
//! tens of known nodes for each of 100,000 listeners; a `HashMap` of 32-byte ids leaves a third
//! of its buckets empty on average, and the id is most of an entry. A slot stays its node's
//! until the node is removed, so lists of a table's nodes (a track's holders) keep slots and
//! reach a node's state without hashing its id.

use hashbrown::HashTable;
use shoal_protocol::NodeId;

use super::idmap::id_hash;
use super::names::{IdStore, NodeNames, push_sparingly};

/// Node states by node id, each in a slot that stays its own while it is in the table.
/// Iteration order is unspecified (callers that pick by order take the smallest id explicitly).
#[derive(Debug, Clone)]
pub(crate) struct NodeTable<S> {
    /// Slots in `entries`, hashed by their entry's id.
    index: HashTable<u32>,
    /// By slot: (key in `IdStore::Named`, unused inline; state), `None` for a free slot.
    entries: Vec<Option<(u32, S)>>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
    ids: IdStore<NodeId>,
}

impl<S> Default for NodeTable<S> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            entries: Vec::new(),
            free: Vec::new(),
            ids: IdStore::Inline(Vec::new()),
        }
    }
}

impl<S> NodeTable<S> {
    fn id_in(ids: &IdStore<NodeId>, entries: &[Option<(u32, S)>], slot: u32) -> Option<NodeId> {
        let (key, _) = entries.get(slot as usize)?.as_ref()?;
        ids.get(slot, Some(*key))
    }

    fn holds(ids: &IdStore<NodeId>, entries: &[Option<(u32, S)>], slot: u32, id: &NodeId) -> bool {
        Self::id_in(ids, entries, slot).as_ref() == Some(id)
    }

    /// `id`'s slot.
    pub(crate) fn slot_of(&self, id: &NodeId) -> Option<u32> {
        let (ids, entries) = (&self.ids, &self.entries);
        self.index
            .find(id_hash(id), |&i| Self::holds(ids, entries, i, id))
            .copied()
    }

    /// The id in `slot`.
    pub(crate) fn id_at(&self, slot: u32) -> Option<NodeId> {
        Self::id_in(&self.ids, &self.entries, slot)
    }

    /// The state in `slot`.
    pub(crate) fn at(&self, slot: u32) -> Option<&S> {
        self.entries.get(slot as usize)?.as_ref().map(|e| &e.1)
    }

    /// The state in `slot`, to change.
    pub(crate) fn at_mut(&mut self, slot: u32) -> Option<&mut S> {
        self.entries
            .get_mut(slot as usize)?
            .as_mut()
            .map(|e| &mut e.1)
    }

    /// Keeps the ids in `names`, shared with other tables, instead of beside each entry. Every
    /// node keeps its slot.
    pub(crate) fn set_names(&mut self, names: NodeNames) {
        for (slot, entry) in self.entries.iter_mut().enumerate() {
            let Some(e) = entry.as_mut() else {
                continue;
            };
            let id = self.ids.get(slot as u32, Some(e.0));
            match id.and_then(|id| names.key_of(&id)) {
                Some(key) => e.0 = key,
                // Shared names full: the node is forgotten (as `slot_or_insert` would).
                None => {
                    *entry = None;
                    self.free.push(slot as u32);
                }
            }
        }
        self.ids = IdStore::Named(names);
        self.index.clear();
        let (ids, entries) = (&self.ids, &self.entries);
        for slot in 0..entries.len() as u32 {
            if let Some(id) = Self::id_in(ids, entries, slot) {
                self.index.insert_unique(id_hash(&id), slot, |&j| {
                    Self::id_in(ids, entries, j).map_or(0, |x| id_hash(&x))
                });
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&S> {
        self.at(self.slot_of(id)?)
    }

    pub(crate) fn get_mut(&mut self, id: &NodeId) -> Option<&mut S> {
        let slot = self.slot_of(id)?;
        self.at_mut(slot)
    }

    /// `id`'s slot, inserting `state` for it if it has none (`None` only when shared names are
    /// full).
    pub(crate) fn slot_or_insert(&mut self, id: NodeId, state: S) -> Option<u32> {
        if let Some(slot) = self.slot_of(&id) {
            return Some(slot);
        }
        let key = match &self.ids {
            IdStore::Inline(_) => 0,
            IdStore::Named(n) => n.key_of(&id)?,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = Some((key, state));
                if let IdStore::Inline(v) = &mut self.ids {
                    v[slot as usize] = id;
                }
                slot
            }
            None => {
                let slot = self.entries.len() as u32;
                push_sparingly(&mut self.entries, Some((key, state)), 4);
                if let IdStore::Inline(v) = &mut self.ids {
                    push_sparingly(v, id, 4);
                }
                slot
            }
        };
        let (ids, entries) = (&self.ids, &self.entries);
        self.index.insert_unique(id_hash(&id), slot, |&j| {
            Self::id_in(ids, entries, j).map_or(0, |x| id_hash(&x))
        });
        Some(slot)
    }

    /// Removes `id`; its slot becomes free (lists holding it must drop it first).
    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<S> {
        let (ids, entries) = (&self.ids, &self.entries);
        let slot = self
            .index
            .find_entry(id_hash(id), |&i| Self::holds(ids, entries, i, id))
            .ok()
            .map(|e| e.remove().0)?;
        let state = self.entries.get_mut(slot as usize)?.take().map(|e| e.1);
        self.free.push(slot);
        state
    }

    /// Every (id, state), in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &S)> + '_ {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            let state = &e.as_ref()?.1;
            Some((self.id_at(i as u32)?, state))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn node(i: u8) -> NodeId {
        NodeId::from_index(u64::from(i))
    }

    proptest::proptest! {
        /// Random inserts, updates and removes over a few ids: the same contents as a
        /// `HashMap`, with ids inline and in names shared with another table (switched to
        /// part-way), and each node in the slot it was given until it is removed.
        #[test]
        fn agrees_with_a_hash_map(
            ops in proptest::collection::vec((0u8..4, 0u8..40, 0u32..1000), 0..300),
            named_after in 0usize..300,
        ) {
            let names = NodeNames::new();
            let mut other: NodeTable<u32> = NodeTable::default();
            other.set_names(names.clone());
            for i in (0..40).rev() {
                other.slot_or_insert(node(i), 0);
            }
            let mut inline: NodeTable<u32> = NodeTable::default();
            let mut named: NodeTable<u32> = NodeTable::default();
            let mut m: HashMap<NodeId, u32> = HashMap::new();
            // Per table, each present node's slot.
            let mut slots: [HashMap<NodeId, u32>; 2] = Default::default();
            for (n, (op, i, v)) in ops.into_iter().enumerate() {
                if n == named_after {
                    named.set_names(names.clone());
                }
                for (t, slots) in [&mut inline, &mut named].into_iter().zip(&mut slots) {
                    match op {
                        0 => {
                            let slot = t.slot_or_insert(node(i), v);
                            let got = slot.and_then(|s| t.at(s)).copied();
                            proptest::prop_assert_eq!(got, Some(*m.get(&node(i)).unwrap_or(&v)));
                            if let Some(slot) = slot {
                                proptest::prop_assert_eq!(*slots.entry(node(i)).or_insert(slot), slot);
                                proptest::prop_assert_eq!(t.id_at(slot), Some(node(i)));
                            }
                        }
                        1 => {
                            if let Some(x) = t.get_mut(&node(i)) {
                                *x += v;
                            }
                        }
                        _ => {
                            proptest::prop_assert_eq!(t.remove(&node(i)), m.get(&node(i)).copied());
                            slots.remove(&node(i));
                        }
                    }
                }
                match op {
                    0 => {
                        m.entry(node(i)).or_insert(v);
                    }
                    1 => {
                        if let Some(x) = m.get_mut(&node(i)) {
                            *x += v;
                        }
                    }
                    _ => {
                        m.remove(&node(i));
                    }
                }
                for (t, slots) in [&inline, &named].into_iter().zip(&slots) {
                    proptest::prop_assert_eq!(t.len(), m.len());
                    for j in 0..40 {
                        proptest::prop_assert_eq!(t.get(&node(j)), m.get(&node(j)));
                        proptest::prop_assert_eq!(t.slot_of(&node(j)), slots.get(&node(j)).copied());
                    }
                    let mut all: Vec<(NodeId, u32)> = t.iter().map(|(k, v)| (k, *v)).collect();
                    all.sort();
                    let mut want: Vec<(NodeId, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                    want.sort();
                    proptest::prop_assert_eq!(all, want);
                }
            }
            proptest::prop_assert_eq!(names.len(), 40);
        }
    }
}
