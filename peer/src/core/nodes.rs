//! The scheduler's table of known nodes: dense entries (id key and state in one `Vec`) under a
//! hash index of positions, with the ids inline or in shared [`NodeNames`]. A simulated run
//! keeps tens of known nodes for each of 100,000 listeners; a `HashMap` of 32-byte ids leaves a
//! third of its buckets empty on average, and the id is most of an entry.

use hashbrown::HashTable;
use shoal_protocol::NodeId;

use super::idmap::id_hash;
use super::names::{IdStore, NodeNames, push_sparingly};

/// Node states by node id. Iteration order is unspecified (callers that pick by order take the
/// smallest id explicitly).
#[derive(Debug, Clone)]
pub(crate) struct NodeTable<S> {
    /// Positions in `entries`, hashed by their entry's id.
    index: HashTable<u32>,
    /// (key in `IdStore::Named`, unused inline; state).
    entries: Vec<(u32, S)>,
    ids: IdStore<NodeId>,
}

impl<S> Default for NodeTable<S> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            entries: Vec::new(),
            ids: IdStore::Inline(Vec::new()),
        }
    }
}

impl<S> NodeTable<S> {
    fn id_at(ids: &IdStore<NodeId>, entries: &[(u32, S)], i: u32) -> Option<NodeId> {
        ids.get(i, entries.get(i as usize).map(|e| e.0))
    }

    fn holds(ids: &IdStore<NodeId>, entries: &[(u32, S)], i: u32, id: &NodeId) -> bool {
        Self::id_at(ids, entries, i).as_ref() == Some(id)
    }

    fn position(&self, id: &NodeId) -> Option<u32> {
        let (ids, entries) = (&self.ids, &self.entries);
        self.index
            .find(id_hash(id), |&i| Self::holds(ids, entries, i, id))
            .copied()
    }

    /// Keeps the ids in `names`, shared with other tables, instead of beside each entry.
    pub(crate) fn set_names(&mut self, names: NodeNames) {
        let Self { entries, ids, .. } = std::mem::take(self);
        self.ids = IdStore::Named(names);
        for (i, (key, state)) in entries.into_iter().enumerate() {
            let id = ids.get(i as u32, Some(key));
            if let Some(id) = id {
                self.get_or_insert(id, state);
            }
        }
    }

    /// Where the ids live (for [`IdList`]s of this table's nodes).
    pub(crate) fn ids(&self) -> &IdStore<NodeId> {
        &self.ids
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn contains_key(&self, id: &NodeId) -> bool {
        self.position(id).is_some()
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&S> {
        let i = self.position(id)?;
        self.entries.get(i as usize).map(|e| &e.1)
    }

    pub(crate) fn get_mut(&mut self, id: &NodeId) -> Option<&mut S> {
        let i = self.position(id)?;
        self.entries.get_mut(i as usize).map(|e| &mut e.1)
    }

    /// `id`'s state, inserting `state` if it has none (`None` only when shared names are
    /// full).
    pub(crate) fn get_or_insert(&mut self, id: NodeId, state: S) -> Option<&mut S> {
        let i = match self.position(&id) {
            Some(i) => i,
            None => {
                let key = match &mut self.ids {
                    IdStore::Inline(v) => {
                        v.push(id);
                        0
                    }
                    IdStore::Named(n) => n.key_of(&id)?,
                };
                let i = self.entries.len() as u32;
                push_sparingly(&mut self.entries, (key, state), 4);
                let (ids, entries) = (&self.ids, &self.entries);
                self.index.insert_unique(id_hash(&id), i, |&j| {
                    Self::id_at(ids, entries, j).map_or(0, |x| id_hash(&x))
                });
                i
            }
        };
        self.entries.get_mut(i as usize).map(|e| &mut e.1)
    }

    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<S> {
        let (ids, entries) = (&self.ids, &self.entries);
        let i = self
            .index
            .find_entry(id_hash(id), |&i| Self::holds(ids, entries, i, id))
            .ok()
            .map(|e| e.remove().0)?;
        let last = (self.entries.len() - 1) as u32;
        if i != last {
            // The last entry moves into the hole: point its index entry there.
            if let Some(moved) = Self::id_at(&self.ids, &self.entries, last) {
                if let Some(p) = self.index.find_mut(id_hash(&moved), |&j| j == last) {
                    *p = i;
                }
            }
        }
        if let IdStore::Inline(v) = &mut self.ids {
            v.swap_remove(i as usize);
        }
        Some(self.entries.swap_remove(i as usize).1)
    }

    /// Every (id, state), in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &S)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((Self::id_at(&self.ids, &self.entries, i as u32)?, &e.1)))
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
        /// `HashMap`, with ids inline and in names shared with another table (switched to part-way).
        #[test]
        fn agrees_with_a_hash_map(
            ops in proptest::collection::vec((0u8..4, 0u8..40, 0u32..1000), 0..300),
            named_after in 0usize..300,
        ) {
            let names = NodeNames::new();
            let mut other: NodeTable<u32> = NodeTable::default();
            other.set_names(names.clone());
            for i in (0..40).rev() {
                other.get_or_insert(node(i), 0);
            }
            let mut inline: NodeTable<u32> = NodeTable::default();
            let mut named: NodeTable<u32> = NodeTable::default();
            let mut m: HashMap<NodeId, u32> = HashMap::new();
            for (n, (op, i, v)) in ops.into_iter().enumerate() {
                if n == named_after {
                    named.set_names(names.clone());
                }
                for t in [&mut inline, &mut named] {
                    match op {
                        0 => {
                            let got = t.get_or_insert(node(i), v).copied();
                            proptest::prop_assert_eq!(got, Some(*m.get(&node(i)).unwrap_or(&v)));
                        }
                        1 => {
                            if let Some(x) = t.get_mut(&node(i)) {
                                *x += v;
                            }
                        }
                        _ => proptest::prop_assert_eq!(t.remove(&node(i)), m.get(&node(i)).copied()),
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
                for t in [&inline, &named] {
                    proptest::prop_assert_eq!(t.len(), m.len());
                    for j in 0..40 {
                        proptest::prop_assert_eq!(t.get(&node(j)), m.get(&node(j)));
                        proptest::prop_assert_eq!(t.contains_key(&node(j)), m.contains_key(&node(j)));
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
