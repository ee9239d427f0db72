//! Hash maps for the cores' tables keyed by 32-byte ids (`NodeId`, `TrackId`, `ChunkId`), also
//! used by the simulator's driver for its own id-keyed tables.
//!
//! The ids are BLAKE3 outputs or public-key hashes, so a light fold of their words is enough to
//! spread them; a B-tree compared them with `memcmp` on every step of every lookup (≈ 10% of
//! the cores' CPU time in the simulator's profile). None of these maps is iterated where the
//! order could reach a decision: where the cores need an order (an eviction victim), they take
//! the smallest key explicitly, which is what the B-trees' first match was. Every table keyed
//! by a remote party's choice is bounded by the configuration (known nodes, bans, holders per
//! track, not-have answers), so colliding keys could at worst make one bounded table a list.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// Folds 8-byte words with a multiply-rotate step (as FxHash does) and finishes with a
/// 64-bit mixer so that the high bits, which `HashMap` uses for its control bytes, depend on
/// every word.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl IdHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // splitmix64's finaliser.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `BuildHasher` for [`IdHasher`] (deterministic: no per-process seed).
pub type IdBuild = BuildHasherDefault<IdHasher>;
/// `t`'s hash under [`IdBuild`], for the tables that hash ids themselves (`hashbrown`'s
/// `HashTable`s of positions and keys).
pub fn id_hash<T: Hash>(t: &T) -> u64 {
    IdBuild::default().hash_one(t)
}

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuild>;
/// A `HashSet` with [`IdHasher`].
pub type IdSet<K> = std::collections::HashSet<K, IdBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_counts() {
        let a = [0u8; 32];
        let mut seen = IdSet::default();
        assert!(seen.insert(id_hash(&a)));
        for i in 0..32 {
            let mut b = a;
            b[i] = 1;
            assert!(
                seen.insert(id_hash(&b)),
                "byte {i} does not change the hash"
            );
        }
        assert_eq!(id_hash(&(3usize, [7u8; 32])), id_hash(&(3usize, [7u8; 32])));
        assert_ne!(id_hash(&(3usize, [7u8; 32])), id_hash(&(4usize, [7u8; 32])));
    }
}
