//! Content addresses ([`ChunkId`], [`TrackId`]) and node identities ([`NodeId`]).
//!
//! A chunk is named by the BLAKE3 hash of its bytes, a track by the BLAKE3 hash of its canonical
//! manifest. Ids print as 64 lowercase hex digits and parse back from them (either case).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length in bytes of every id in this module.
pub const ID_LEN: usize = 32;

/// Why a hex string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The string does not have exactly 64 characters.
    #[error("a {kind} is 64 hex digits, got {len} characters")]
    WrongLength {
        /// Which id was being parsed.
        kind: &'static str,
        /// Characters found.
        len: usize,
    },
    /// A character is not a hex digit.
    #[error("a {kind} is 64 hex digits, found {found:?} at position {position}")]
    NotHex {
        /// Which id was being parsed.
        kind: &'static str,
        /// The offending character.
        found: char,
        /// Its character position (0-based).
        position: usize,
    },
}

fn parse_hex32(kind: &'static str, s: &str) -> Result<[u8; ID_LEN], IdParseError> {
    let len = s.chars().count();
    if len != 2 * ID_LEN {
        return Err(IdParseError::WrongLength { kind, len });
    }
    if let Some((position, found)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(IdParseError::NotHex {
            kind,
            found,
            position,
        });
    }
    // Length and alphabet are checked, so blake3's parser cannot fail here; map it anyway.
    blake3::Hash::from_hex(s)
        .map(|h| *h.as_bytes())
        .map_err(|_| IdParseError::WrongLength { kind, len })
}

/// Ids are hex strings in human-readable formats (JSON, TOML) and 32 raw bytes in binary ones
/// (bincode on the wire).
fn serialize_id<S: serde::Serializer>(bytes: &[u8; ID_LEN], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(blake3::Hash::from_bytes(*bytes).to_hex().as_str())
    } else {
        bytes.serialize(s)
    }
}

fn deserialize_id<'de, D: serde::Deserializer<'de>>(
    kind: &'static str,
    d: D,
) -> Result<[u8; ID_LEN], D::Error> {
    if d.is_human_readable() {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        parse_hex32(kind, &s).map_err(serde::de::Error::custom)
    } else {
        <[u8; ID_LEN]>::deserialize(d)
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; ID_LEN]);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_id(&self.0, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_id($kind, d).map(Self)
            }
        }

        impl $name {
            /// The id of `bytes`: their BLAKE3 hash.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// Wraps raw hash bytes.
            pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }

            /// The raw hash bytes.
            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// True when `bytes` hash to this id (constant-time comparison).
            pub fn matches(&self, bytes: &[u8]) -> bool {
                blake3::hash(bytes) == blake3::Hash::from_bytes(self.0)
            }

            /// The first 8 hex digits, for logs and status lines.
            pub fn short(&self) -> String {
                let mut s = self.to_string();
                s.truncate(8);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32($kind, s).map(Self)
            }
        }
    };
}

hash_id!(
    /// BLAKE3 hash of a chunk's bytes.
    ChunkId,
    "chunk id"
);
hash_id!(
    /// BLAKE3 hash of a track's canonical manifest bytes (metadata is not part of it).
    TrackId,
    "track id"
);

/// The identity of a node (peer, super-peer, tracker) inside the sans-IO cores.
///
/// Drivers derive it from the node's authenticated libp2p key ([`NodeId::from_key`]); the
/// simulator numbers its nodes ([`NodeId::from_index`]). Cores never see a network address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; ID_LEN]);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_id(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_id("node id", d).map(Self)
    }
}

impl NodeId {
    /// The node id for a public-key / peer-id encoding (BLAKE3 of those bytes).
    pub fn from_key(key_bytes: &[u8]) -> Self {
        Self(*blake3::hash(key_bytes).as_bytes())
    }

    /// A node id numbered `index` (simulator and tests): the index, big-endian, in the first
    /// 8 bytes, so ids order like their indices.
    pub fn from_index(index: u64) -> Self {
        let mut b = [0u8; ID_LEN];
        b[..8].copy_from_slice(&index.to_be_bytes());
        Self(b)
    }

    /// The index this id was made from by [`NodeId::from_index`], if it was.
    pub fn index(&self) -> Option<u64> {
        if self.0[8..].iter().all(|&b| b == 0) {
            let mut i = [0u8; 8];
            i.copy_from_slice(&self.0[..8]);
            Some(u64::from_be_bytes(i))
        } else {
            None
        }
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index() {
            Some(i) => write!(f, "node#{i}"),
            None => {
                let hex = blake3::Hash::from_bytes(self.0).to_hex();
                write!(f, "node:{}", &hex.as_str()[..12])
            }
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for NodeId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32("node id", s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_id_is_blake3_of_bytes() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.as_bytes(), blake3::hash(b"hello").as_bytes());
        assert!(id.matches(b"hello"));
        assert!(!id.matches(b"hellO"));
    }

    #[test]
    fn hex_round_trip_and_case() {
        let id = TrackId::of(b"x");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<TrackId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<TrackId>().unwrap(), id);
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = "abc".parse::<ChunkId>().unwrap_err();
        assert_eq!(
            e,
            IdParseError::WrongLength {
                kind: "chunk id",
                len: 3
            }
        );
        assert_eq!(
            e.to_string(),
            "a chunk id is 64 hex digits, got 3 characters"
        );
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        let e = s.parse::<TrackId>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "a track id is 64 hex digits, found 'g' at position 10"
        );
        // Multi-byte characters count as one character and never panic on slicing.
        let s = "é".repeat(64);
        assert!(matches!(
            s.parse::<TrackId>(),
            Err(IdParseError::NotHex { position: 0, .. })
        ));
    }

    #[test]
    fn node_index_round_trip_and_display() {
        let n = NodeId::from_index(42);
        assert_eq!(n.index(), Some(42));
        assert_eq!(n.to_string(), "node#42");
        let k = NodeId::from_key(b"some peer id");
        assert_eq!(k.index(), None);
        assert!(k.to_string().starts_with("node:"));
        assert!(NodeId::from_index(1) < NodeId::from_index(2));
    }

    proptest! {
        #[test]
        fn any_id_round_trips(bytes in any::<[u8; 32]>()) {
            let id = ChunkId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
            let n = NodeId::from_bytes(bytes);
            let hex = blake3::Hash::from_bytes(bytes).to_hex().to_string();
            prop_assert_eq!(hex.parse::<NodeId>().unwrap(), n);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let _ = s.parse::<ChunkId>();
            let _ = s.parse::<NodeId>();
        }
    }
}
