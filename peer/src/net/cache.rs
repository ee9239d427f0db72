//! The listener's disk cache: content-addressed chunks and manifests under a cache directory,
//! with a size limit (least recently used evicted first, the order decided by the core's
//! [`CacheIndex`]; default 10% of the free disk, as Spotify's client did). It survives restarts
//! (recency is kept in file modification times), and a corrupt or truncated file is detected by
//! its hash, dropped and never served. One process at a time: the directory is locked.
//!
//! The most recently used chunks are also kept in memory, already verified
//! ([`DEFAULT_MEMORY_BYTES`], [`DiskCache::set_memory_limit`]): a peer serving a popular track,
//! or a chunk it has just received, answers without a file read and a hash per request.
//!
//! Layout: `chunks/ab/<chunk id>`, `manifests/ab/<track id>`, `lock`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use shoal_protocol::{ChunkId, Manifest, TrackId, verify};

use crate::core::{CacheConfig, CacheIndex};

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem error with the path it concerns.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        err: io::Error,
    },
    /// Another process holds the cache directory.
    #[error(
        "cache directory {0} is in use by another shoal-peer (one process per cache; pass --cache DIR)"
    )]
    Locked(PathBuf),
    /// Bytes offered for caching do not match their id: never stored.
    #[error("refusing to cache bytes that do not match {0}")]
    Unverified(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |err| CacheError::Io {
        path: path.to_owned(),
        err,
    }
}

/// Numbers for `shoal-peer cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Chunks held.
    pub chunks: usize,
    /// Bytes of chunks held.
    pub bytes: u64,
    /// The size limit.
    pub max_bytes: u64,
    /// Manifests held.
    pub manifests: usize,
    /// Corrupt files found and dropped since opening.
    pub dropped_corrupt: u64,
}

/// The default cache directory: `$XDG_CACHE_HOME/shoal`, else `~/.cache/shoal`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("shoal"))
}

/// The default size limit for a cache in `dir`: 10% of the free space there.
pub fn default_max_bytes(dir: &Path) -> Result<u64, CacheError> {
    let free = fs4::available_space(dir).map_err(io_err(dir))?;
    Ok(free / 10)
}

/// Default bytes of verified chunks kept in memory: 128 chunks of 64 KiB, several minutes of
/// audio, a fifth of the client's memory target.
pub const DEFAULT_MEMORY_BYTES: usize = 8 << 20;

/// Verified chunk bytes in memory, least recently used dropped first, bounded in bytes.
#[derive(Debug)]
struct HotChunks {
    lru: LruCache<ChunkId, HotChunk>,
    bytes: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct HotChunk {
    bytes: Vec<u8>,
    /// When its file's modification time was last set.
    stamped: Instant,
    /// Read from memory since then, so the file's modification time is stale.
    touched: bool,
}

/// How stale a hot chunk's file time may get before a read writes it back (bounds what a crash
/// loses of recency, without a syscall per read).
const RESTAMP_AFTER: Duration = Duration::from_secs(60);

impl HotChunks {
    fn new(max_bytes: usize) -> Self {
        Self {
            lru: LruCache::unbounded(),
            bytes: 0,
            max_bytes,
        }
    }

    /// The bytes, and whether the file's modification time should be written now.
    fn get(&mut self, id: &ChunkId) -> Option<(Vec<u8>, bool)> {
        let hot = self.lru.get_mut(id)?;
        let restamp = hot.stamped.elapsed() >= RESTAMP_AFTER;
        if restamp {
            hot.stamped = Instant::now();
            hot.touched = false;
        } else {
            hot.touched = true;
        }
        Some((hot.bytes.clone(), restamp))
    }

    /// The chunks read since their files were last stamped.
    fn touched(&self) -> impl Iterator<Item = &ChunkId> {
        self.lru.iter().filter(|(_, h)| h.touched).map(|(id, _)| id)
    }

    /// Keeps `bytes`; returns the chunks dropped to make room whose files need their recency
    /// written back.
    fn put(&mut self, id: ChunkId, bytes: Vec<u8>) -> Vec<ChunkId> {
        if bytes.len() > self.max_bytes {
            return Vec::new();
        }
        self.remove(&id);
        self.bytes += bytes.len();
        self.lru.push(
            id,
            HotChunk {
                bytes,
                stamped: Instant::now(),
                touched: false,
            },
        );
        self.shrink()
    }

    /// Drops least recently used chunks until within the limit; returns the stale ones.
    fn shrink(&mut self) -> Vec<ChunkId> {
        let mut stale = Vec::new();
        while self.bytes > self.max_bytes {
            let Some((old, hot)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= hot.bytes.len();
            if hot.touched {
                stale.push(old);
            }
        }
        stale
    }

    fn remove(&mut self, id: &ChunkId) {
        if let Some(hot) = self.lru.pop(id) {
            self.bytes -= hot.bytes.len();
        }
    }
}

/// An open disk cache.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    index: CacheIndex,
    max_bytes: u64,
    dropped_corrupt: u64,
    hot: HotChunks,
    _lock: File,
}

/// Stamps a file as used now, so recency survives a restart.
fn touch_file(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn fanout(dir: &Path, hex: &str) -> PathBuf {
    dir.join(&hex[..2]).join(hex)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

impl DiskCache {
    /// Opens (creating) the cache in `root` with a limit of `max_bytes` (None: 10% of free disk).
    /// Rebuilds the index from the files, oldest first, evicting what is over the limit.
    pub fn open(root: impl Into<PathBuf>, max_bytes: Option<u64>) -> Result<Self, CacheError> {
        let root = root.into();
        for sub in ["chunks", "manifests"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if fs4::FileExt::try_lock(&lock).is_err() {
            return Err(CacheError::Locked(root));
        }
        let max_bytes = match max_bytes {
            Some(m) => m,
            None => default_max_bytes(&root)?,
        };
        let mut found = Vec::new();
        let chunks = root.join("chunks");
        for fan in fs::read_dir(&chunks).map_err(io_err(&chunks))?.flatten() {
            let Ok(entries) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let id = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<ChunkId>().ok());
                let Ok(meta) = e.metadata() else { continue };
                match id {
                    Some(id) if meta.len() <= shoal_protocol::chunk::MAX_CHUNK_BYTES as u64 => {
                        found.push((
                            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            id,
                            meta.len(),
                        ));
                    }
                    // Leftover temp files, foreign or oversized files: not ours to keep.
                    _ => {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort();
        let mut cache = Self {
            index: CacheIndex::new(CacheConfig {
                max_bytes,
                ..CacheConfig::default()
            }),
            root,
            max_bytes,
            dropped_corrupt: 0,
            hot: HotChunks::new(DEFAULT_MEMORY_BYTES),
            _lock: lock,
        };
        for (_, id, len) in found {
            let evicted = cache
                .index
                .insert(id, u32::try_from(len).unwrap_or(u32::MAX));
            cache.delete(&evicted);
        }
        Ok(cache)
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        fanout(&self.root.join("chunks"), &id.to_string())
    }

    fn manifest_path(&self, id: &TrackId) -> PathBuf {
        fanout(&self.root.join("manifests"), &id.to_string())
    }

    fn delete(&mut self, chunks: &[ChunkId]) {
        for c in chunks {
            self.hot.remove(c);
            let _ = fs::remove_file(self.chunk_path(c));
        }
    }

    /// Sets how many bytes of verified chunks are kept in memory (0: none).
    pub fn set_memory_limit(&mut self, bytes: usize) {
        self.hot.max_bytes = bytes;
        let stale = self.hot.shrink();
        self.touch_files(&stale);
    }

    fn keep_hot(&mut self, id: ChunkId, bytes: Vec<u8>) {
        let stale = self.hot.put(id, bytes);
        self.touch_files(&stale);
    }

    fn touch_files(&self, chunks: &[ChunkId]) {
        for c in chunks {
            if self.index.contains(c) {
                touch_file(&self.chunk_path(c));
            }
        }
    }

    /// True when the chunk is cached (bytes not checked until read).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.contains(id)
    }

    /// The chunk's bytes if cached and intact. A file that fails verification is deleted.
    pub fn get_chunk(&mut self, id: &ChunkId) -> Option<Vec<u8>> {
        if !self.index.contains(id) {
            return None;
        }
        if let Some((bytes, restamp)) = self.hot.get(id) {
            self.index.touch(id);
            if restamp {
                touch_file(&self.chunk_path(id));
            }
            return Some(bytes);
        }
        let path = self.chunk_path(id);
        match fs::read(&path) {
            Ok(bytes) if verify(&bytes, id).is_ok() => {
                self.index.touch(id);
                touch_file(&path);
                self.keep_hot(*id, bytes.clone());
                Some(bytes)
            }
            result => {
                if result.is_ok() {
                    tracing::warn!(chunk = %id, "corrupt chunk in the cache: dropped");
                    self.dropped_corrupt += 1;
                }
                let _ = fs::remove_file(&path);
                self.index.remove(id);
                None
            }
        }
    }

    /// Stores verified chunk bytes; evicts least recently used chunks over the limit and
    /// returns them.
    pub fn put_chunk(&mut self, id: &ChunkId, bytes: &[u8]) -> Result<Vec<ChunkId>, CacheError> {
        if verify(bytes, id).is_err() {
            return Err(CacheError::Unverified(id.to_string()));
        }
        if self.index.contains(id) {
            self.index.touch(id);
            return Ok(Vec::new());
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let evicted = self.index.insert(*id, len);
        if !evicted.contains(id) {
            if let Err(e) = write_atomic(&self.chunk_path(id), bytes) {
                self.index.remove(id);
                self.delete(&evicted);
                return Err(e);
            }
            // Just received: the chunk most likely to be asked for next by a neighbour.
            self.keep_hot(*id, bytes.to_vec());
        }
        self.delete(&evicted);
        Ok(evicted)
    }

    /// Stores a manifest (after checking it hashes to `track` and decodes).
    pub fn put_manifest(&mut self, track: &TrackId, bytes: &[u8]) -> Result<(), CacheError> {
        if !track.matches(bytes) || Manifest::decode(bytes).is_err() {
            return Err(CacheError::Unverified(track.to_string()));
        }
        write_atomic(&self.manifest_path(track), bytes)
    }

    /// A cached manifest, if present and intact (a corrupt one is deleted).
    pub fn get_manifest(&mut self, track: &TrackId) -> Option<Manifest> {
        let path = self.manifest_path(track);
        let bytes = fs::read(&path).ok()?;
        match Manifest::decode(&bytes) {
            Ok(m) if track.matches(&bytes) => Some(m),
            _ => {
                tracing::warn!(%track, "corrupt manifest in the cache: dropped");
                self.dropped_corrupt += 1;
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Hands the eviction policy over to the peer core (whose own [`CacheIndex`] is built from
    /// the returned list, oldest first, and whose `Evict` events the driver applies with
    /// [`DiskCache::remove_chunk`]): from now on this cache keeps what it is given, so the two
    /// indexes never disagree. Returns every cached chunk and its length, least recent first.
    pub fn hand_over_eviction(&mut self) -> Vec<(ChunkId, u32)> {
        let held: Vec<(ChunkId, u32)> = self.index.oldest_first().collect();
        let mut index = CacheIndex::new(CacheConfig {
            max_bytes: u64::MAX,
            max_entries: usize::MAX,
        });
        for (id, len) in &held {
            index.insert(*id, *len);
        }
        self.index = index;
        held
    }

    /// Deletes a chunk (evicted by the core's policy, or found corrupt by a reader).
    pub fn remove_chunk(&mut self, id: &ChunkId) {
        self.hot.remove(id);
        if self.index.remove(id) {
            let _ = fs::remove_file(self.chunk_path(id));
        }
    }

    /// The tracks whose manifests are cached.
    pub fn manifest_ids(&self) -> Vec<TrackId> {
        let mut out = Vec::new();
        let Ok(fans) = fs::read_dir(self.root.join("manifests")) else {
            return out;
        };
        for fan in fans.flatten() {
            let Ok(entries) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(id);
                }
            }
        }
        out.sort();
        out
    }

    /// A cached manifest's canonical bytes, if present and intact (a corrupt one is deleted).
    pub fn manifest_bytes(&mut self, track: &TrackId) -> Option<Vec<u8>> {
        self.get_manifest(track)?;
        fs::read(self.manifest_path(track)).ok()
    }

    /// Sizes and counts.
    pub fn stats(&self) -> CacheStats {
        let manifests = fs::read_dir(self.root.join("manifests"))
            .map(|fans| {
                fans.flatten()
                    .filter_map(|f| fs::read_dir(f.path()).ok())
                    .map(|e| e.count())
                    .sum()
            })
            .unwrap_or(0);
        CacheStats {
            chunks: self.index.len(),
            bytes: self.index.bytes(),
            max_bytes: self.max_bytes,
            manifests,
            dropped_corrupt: self.dropped_corrupt,
        }
    }

    /// Removes every chunk and manifest.
    pub fn clear(&mut self) -> Result<(), CacheError> {
        for sub in ["chunks", "manifests"] {
            let d = self.root.join(sub);
            fs::remove_dir_all(&d).map_err(io_err(&d))?;
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        self.index = CacheIndex::new(CacheConfig {
            max_bytes: self.max_bytes,
            ..CacheConfig::default()
        });
        Ok(())
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for DiskCache {
    /// Writes back the recency of chunks read from memory, so a restart keeps them.
    fn drop(&mut self) {
        for c in self.hot.touched() {
            touch_file(&self.chunk_path(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32, len: usize) -> (ChunkId, Vec<u8>) {
        let mut b = vec![(i % 251) as u8; len];
        b[..4].copy_from_slice(&i.to_le_bytes());
        (ChunkId::of(&b), b)
    }

    #[test]
    fn lru_eviction_within_the_limit_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(dir.path(), Some(3000)).unwrap();
        let chunks: Vec<_> = (0..4).map(|i| chunk(i, 1000)).collect();
        for (id, b) in &chunks[..3] {
            assert!(c.put_chunk(id, b).unwrap().is_empty());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(c.get_chunk(&chunks[0].0).is_some()); // 0 is now the most recent
        assert_eq!(
            c.put_chunk(&chunks[3].0, &chunks[3].1).unwrap(),
            vec![chunks[1].0]
        );
        assert!(
            !dir.path()
                .join("chunks")
                .join(&chunks[1].0.to_string()[..2])
                .join(chunks[1].0.to_string())
                .exists()
        );
        assert_eq!(c.stats().bytes, 3000);
        drop(c);

        // Restart with a smaller limit: the least recently used go first (2, then 3).
        let mut c = DiskCache::open(dir.path(), Some(2000)).unwrap();
        assert_eq!(c.stats().chunks, 2);
        assert!(
            c.get_chunk(&chunks[0].0).is_some(),
            "recently read chunk kept"
        );
        assert!(
            c.get_chunk(&chunks[3].0).is_some(),
            "recently written chunk kept"
        );
        assert!(c.get_chunk(&chunks[2].0).is_none());
    }

    #[test]
    fn corrupt_and_truncated_files_are_dropped_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(dir.path(), Some(1 << 20)).unwrap();
        c.set_memory_limit(0); // every read goes to the file
        let (a, ab) = chunk(1, 5000);
        let (b, bb) = chunk(2, 5000);
        c.put_chunk(&a, &ab).unwrap();
        c.put_chunk(&b, &bb).unwrap();
        let pa = c.chunk_path(&a);
        let mut bytes = fs::read(&pa).unwrap();
        bytes[100] ^= 1;
        fs::write(&pa, bytes).unwrap();
        let pb = c.chunk_path(&b);
        fs::write(&pb, &bb[..2000]).unwrap();
        assert_eq!(c.get_chunk(&a), None);
        assert_eq!(c.get_chunk(&b), None);
        assert!(!pa.exists() && !pb.exists());
        assert_eq!(c.stats().dropped_corrupt, 2);
        assert_eq!(c.stats().chunks, 0);
        // Unverified bytes are refused.
        assert!(matches!(
            c.put_chunk(&a, &bb),
            Err(CacheError::Unverified(_))
        ));
    }

    #[test]
    fn manifests_are_verified_and_one_process_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(dir.path(), Some(1 << 20)).unwrap();
        let info = shoal_protocol::ChunkInfo {
            id: ChunkId::of(b"x"),
            len: 1000,
            start: 0,
            samples: 960,
        };
        let m = Manifest::new(2, 312, 500, vec![info]).unwrap();
        let bytes = m.encode();
        let id = m.track_id();
        c.put_manifest(&id, &bytes).unwrap();
        assert_eq!(c.get_manifest(&id), Some(m));
        assert!(c.put_manifest(&TrackId::of(b"other"), &bytes).is_err());
        fs::write(c.manifest_path(&id), b"junk").unwrap();
        assert_eq!(c.get_manifest(&id), None);
        assert!(matches!(
            DiskCache::open(dir.path(), None),
            Err(CacheError::Locked(_))
        ));
        drop(c);
        let c = DiskCache::open(dir.path(), None).unwrap();
        assert!(c.stats().max_bytes > 0, "10% of free disk");
    }

    #[test]
    fn stray_files_are_cleaned_at_open_and_clear_empties() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("chunks/ab")).unwrap();
        fs::write(dir.path().join("chunks/ab/not-a-chunk.tmp123"), b"x").unwrap();
        let mut c = DiskCache::open(dir.path(), Some(1 << 20)).unwrap();
        assert!(!dir.path().join("chunks/ab/not-a-chunk.tmp123").exists());
        let (a, ab) = chunk(3, 100);
        c.put_chunk(&a, &ab).unwrap();
        c.clear().unwrap();
        assert_eq!(c.stats().chunks, 0);
        assert!(c.get_chunk(&a).is_none());
    }

    #[test]
    fn memory_copies_are_verified_bytes_bounded_and_dropped_with_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(dir.path(), Some(1 << 20)).unwrap();
        c.set_memory_limit(10_000);
        let (a, ab) = chunk(4, 4000);
        let (b, bb) = chunk(5, 4000);
        let (d, db) = chunk(6, 4000);
        c.put_chunk(&a, &ab).unwrap();
        // A file damaged behind our back: the verified copy in memory is what is served.
        let pa = c.chunk_path(&a);
        fs::write(&pa, b"junk").unwrap();
        assert_eq!(c.get_chunk(&a), Some(ab.clone()));
        // Two more chunks push `a` out of the 10,000-byte budget; its file is read again,
        // found corrupt and dropped.
        c.put_chunk(&b, &bb).unwrap();
        c.put_chunk(&d, &db).unwrap();
        assert!(c.hot.bytes <= 10_000);
        assert_eq!(c.get_chunk(&a), None);
        assert_eq!(c.stats().dropped_corrupt, 1);
        // Removing a chunk removes its memory copy too.
        c.remove_chunk(&d);
        assert_eq!(c.get_chunk(&d), None);
        // A chunk larger than the budget is never kept in memory; reads still work.
        c.set_memory_limit(1000);
        assert_eq!(c.hot.bytes, 0);
        assert_eq!(c.get_chunk(&b), Some(bb));
        assert_eq!(c.hot.bytes, 0);
    }
}
