//! The origin store's on-disk form: chunks, manifests and track metadata by hash, in a local
//! directory. Writes are atomic (temp file, fsync, rename), reads are verified against the hash,
//! and an import stages its chunks so a failed import leaves nothing behind.
//!
//! Layout under the data directory:
//!
//! ```text
//! chunks/ab/<chunk id>       chunk bytes          (fan-out by the first two hex digits)
//! manifests/ab/<track id>    canonical manifest bytes
//! tracks/ab/<track id>.json  metadata (title, artist, album, ...), written last: the commit point
//! staging/<import>/          chunks of imports in progress
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_protocol::{ChunkId, Manifest, TrackId, verify};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem error, with the path it concerns.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        err: io::Error,
    },
    /// The object is not in the store.
    #[error("{kind} {id} is not in the store")]
    NotFound {
        /// "chunk", "manifest" or "track".
        kind: &'static str,
        /// Its id (hex).
        id: String,
    },
    /// Stored bytes do not match their name: disk corruption or tampering. Never served.
    #[error("{kind} {id} is corrupt on disk ({path}): {reason}")]
    Corrupt {
        /// "chunk", "manifest" or "track".
        kind: &'static str,
        /// Its id (hex).
        id: String,
        /// Where it lies.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.to_owned(),
        err,
    }
}

/// Catalog metadata of an imported track (not part of its [`TrackId`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackMeta {
    /// The track id.
    pub id: TrackId,
    /// Title from the tags, else the file name.
    pub title: String,
    /// Artist tag.
    pub artist: Option<String>,
    /// Album tag.
    pub album: Option<String>,
    /// Playable duration in milliseconds.
    pub duration_ms: u64,
    /// Target Opus bitrate in bits per second.
    pub bitrate: u32,
    /// Channels (1 or 2).
    pub channels: u8,
    /// Total chunk bytes.
    pub bytes: u64,
    /// The file it was imported from.
    pub source: String,
    /// Seconds since the Unix epoch when it was imported.
    pub added_at: u64,
}

/// A local-directory origin store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn fanout(dir: &Path, hex: &str, suffix: &str) -> PathBuf {
    dir.join(&hex[..2]).join(format!("{hex}{suffix}"))
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["chunks", "manifests", "tracks", "staging"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Self { root })
    }

    /// Opens an existing store; an error if `root` holds none.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let manifests = root.join("manifests");
        if !manifests.is_dir() {
            return Err(StoreError::Io {
                path: root,
                err: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a Shoal data directory (no manifests/ inside); import music into it first",
                ),
            });
        }
        Ok(Self { root })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        fanout(&self.root.join("chunks"), &id.to_string(), "")
    }

    fn manifest_path(&self, id: &TrackId) -> PathBuf {
        fanout(&self.root.join("manifests"), &id.to_string(), "")
    }

    fn meta_path(&self, id: &TrackId) -> PathBuf {
        fanout(&self.root.join("tracks"), &id.to_string(), ".json")
    }

    /// True when the chunk is stored (its bytes are not checked).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// True when the track is fully imported (its metadata, the commit point, exists).
    pub fn has_track(&self, id: &TrackId) -> bool {
        self.meta_path(id).is_file()
    }

    /// Reads a chunk and verifies it against its id.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let path = self.chunk_path(id);
        let bytes = read_or_not_found(&path, "chunk", id.to_string())?;
        verify(&bytes, id).map_err(|e| StoreError::Corrupt {
            kind: "chunk",
            id: id.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(bytes)
    }

    /// Reads and verifies a chunk only if that needs no wait for the disk: its bytes are in the
    /// page cache (Linux `preadv2` with `RWF_NOWAIT`). `None` means it would wait (or the fast
    /// path could not tell): read it with [`LocalStore::get_chunk`] on a blocking thread. An
    /// async server calls this first because, for a cached 64 KiB chunk, the hand-off to a
    /// blocking thread costs several times the read and the hash. Opening the file still
    /// touches metadata, which is as close to free as the page cache makes it.
    #[cfg(target_os = "linux")]
    pub fn get_chunk_if_cached(&self, id: &ChunkId) -> Option<Result<Vec<u8>, StoreError>> {
        use rustix::io::{Errno, ReadWriteFlags, preadv2};
        let path = self.chunk_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Some(Err(StoreError::NotFound {
                    kind: "chunk",
                    id: id.to_string(),
                }));
            }
            Err(_) => return None,
        };
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len > shoal_protocol::chunk::MAX_CHUNK_BYTES {
            return None; // the slow path reports it as corrupt
        }
        let mut bytes = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let buf = &mut [io::IoSliceMut::new(&mut bytes[done..])];
            match preadv2(&file, buf, done as u64, ReadWriteFlags::NOWAIT) {
                Ok(0) => return None, // shrank under us: let the slow path see what is there
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                // EAGAIN: not (all) cached; EOPNOTSUPP and the rest: the slow path decides.
                Err(_) => return None,
            }
        }
        Some(
            verify(&bytes, id)
                .map(|()| bytes)
                .map_err(|e| StoreError::Corrupt {
                    kind: "chunk",
                    id: id.to_string(),
                    path,
                    reason: e.to_string(),
                }),
        )
    }

    /// Reads a manifest, checks it hashes to `id` and decodes it.
    pub fn get_manifest(&self, id: &TrackId) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(id);
        let bytes = read_or_not_found(&path, "manifest", id.to_string())?;
        let corrupt = |reason: String| StoreError::Corrupt {
            kind: "manifest",
            id: id.to_string(),
            path: path.clone(),
            reason,
        };
        if !id.matches(&bytes) {
            return Err(corrupt("bytes do not hash to the track id".into()));
        }
        Manifest::decode(&bytes).map_err(|e| corrupt(e.to_string()))
    }

    /// Reads a track's metadata.
    pub fn get_meta(&self, id: &TrackId) -> Result<TrackMeta, StoreError> {
        let path = self.meta_path(id);
        let bytes = read_or_not_found(&path, "track", id.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            kind: "track",
            id: id.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// Metadata of every fully imported track, sorted by title.
    pub fn list_tracks(&self) -> Result<Vec<TrackMeta>, StoreError> {
        let mut out = Vec::new();
        let tracks = self.root.join("tracks");
        for fan in fs::read_dir(&tracks).map_err(io_err(&tracks))? {
            let fan = fan.map_err(io_err(&tracks))?.path();
            if !fan.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan).map_err(io_err(&fan))? {
                let path = entry.map_err(io_err(&fan))?.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<TrackId>().ok())
                else {
                    continue;
                };
                out.push(self.get_meta(&id)?);
            }
        }
        out.sort_by(|a, b| a.title.cmp(&b.title).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Starts an import: chunks go to a private staging directory until [`Staging::commit`].
    /// Staging directories left by crashed imports are removed first.
    pub fn begin_import(&self) -> Result<Staging, StoreError> {
        self.remove_stale_staging();
        let base = self.root.join("staging");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Staging {
            store: self.clone(),
            dir,
            chunks: Vec::new(),
        })
    }

    /// Removes staging directories whose importing process is gone.
    fn remove_stale_staging(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("staging")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| {
                p == std::process::id() || Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn read_or_not_found(path: &Path, kind: &'static str, id: String) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { kind, id }
        } else {
            StoreError::Io {
                path: path.to_owned(),
                err,
            }
        }
    })
}

/// Chunks of one import in progress. Dropped without [`Staging::commit`], it removes itself:
/// a failed import leaves no chunk behind.
#[derive(Debug)]
pub struct Staging {
    store: LocalStore,
    dir: PathBuf,
    chunks: Vec<ChunkId>,
}

/// What [`Staging::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The track is new; its chunks, manifest and metadata were written.
    Imported,
    /// The track was already in the store; nothing was written.
    AlreadyPresent,
}

impl Staging {
    /// The chunks staged so far, in order.
    pub fn chunks(&self) -> &[ChunkId] {
        &self.chunks
    }

    /// Where a staged chunk's bytes are.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Stages one chunk (written and fsynced now, published at commit).
    pub fn put_chunk(&mut self, id: &ChunkId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(id.to_string());
        let mut f = File::create(&path).map_err(io_err(&path))?;
        f.write_all(bytes).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        self.chunks.push(*id);
        Ok(())
    }

    /// Publishes the staged chunks, then the manifest, then the metadata (the commit point):
    /// a crash at any moment leaves either no track or a complete one.
    pub fn commit(
        self,
        manifest: &Manifest,
        meta: &TrackMeta,
    ) -> Result<CommitOutcome, StoreError> {
        let id = manifest.track_id();
        if self.store.has_track(&id) && self.store.get_manifest(&id).is_ok() {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        for chunk in &self.chunks {
            let dst = self.store.chunk_path(chunk);
            if dst.is_file() {
                continue;
            }
            let dir = dst.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let src = self.dir.join(chunk.to_string());
            fs::rename(&src, &dst).map_err(io_err(&dst))?;
        }
        for fan in fs::read_dir(self.store.root.join("chunks"))
            .map_err(io_err(&self.store.root))?
            .flatten()
        {
            let _ = File::open(fan.path()).and_then(|d| d.sync_all());
        }
        write_atomic(&self.store.manifest_path(&id), &manifest.encode())?;
        let json = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Io {
            path: self.store.meta_path(&id),
            err: io::Error::other(e),
        })?;
        write_atomic(&self.store.meta_path(&id), &json)?;
        Ok(CommitOutcome::Imported)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Committed or not, staged files are either published or unwanted.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{Chunker, ChunkerConfig};

    fn tiny_track(fill: u8) -> (Manifest, Vec<shoal_protocol::Chunk>) {
        let mut chunker = Chunker::new(ChunkerConfig::default());
        let mut chunks = Vec::new();
        for i in 0..100u8 {
            let mut p = vec![i ^ fill; 200];
            p[0] = 31 << 3;
            chunks.extend(chunker.push(&p, 960).unwrap());
        }
        chunks.extend(chunker.finish());
        let m = Manifest::new(
            1,
            312,
            96_000 - 312,
            chunks.iter().map(|c| c.info()).collect(),
        )
        .unwrap();
        (m, chunks)
    }

    fn meta(m: &Manifest) -> TrackMeta {
        TrackMeta {
            id: m.track_id(),
            title: "t".into(),
            artist: None,
            album: None,
            duration_ms: 2000,
            bitrate: 128_000,
            channels: 1,
            bytes: m.total_bytes(),
            source: "x".into(),
            added_at: 0,
        }
    }

    #[test]
    fn commit_publishes_and_reads_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let (m, chunks) = tiny_track(0);
        let mut staging = store.begin_import().unwrap();
        for c in &chunks {
            staging.put_chunk(&c.id, &c.bytes).unwrap();
        }
        assert!(
            !store.has_chunk(&chunks[0].id),
            "staged chunks are not visible"
        );
        assert_eq!(
            staging.commit(&m, &meta(&m)).unwrap(),
            CommitOutcome::Imported
        );
        let id = m.track_id();
        assert_eq!(store.get_manifest(&id).unwrap(), m);
        assert_eq!(store.get_chunk(&chunks[1].id).unwrap(), chunks[1].bytes);
        assert_eq!(store.list_tracks().unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);

        // Again: nothing new.
        let mut again = store.begin_import().unwrap();
        for c in &chunks {
            again.put_chunk(&c.id, &c.bytes).unwrap();
        }
        assert_eq!(
            again.commit(&m, &meta(&m)).unwrap(),
            CommitOutcome::AlreadyPresent
        );
    }

    #[test]
    fn abandoned_import_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let (_, chunks) = tiny_track(1);
        {
            let mut staging = store.begin_import().unwrap();
            staging.put_chunk(&chunks[0].id, &chunks[0].bytes).unwrap();
        }
        assert!(!store.has_chunk(&chunks[0].id));
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        // A stale staging dir from a dead process is cleaned at the next import.
        fs::create_dir_all(dir.path().join("staging/999999999-1")).unwrap();
        let _s = store.begin_import().unwrap();
        assert!(!dir.path().join("staging/999999999-1").exists());
    }

    /// A store holding a committed two-chunk track (the tempdir must outlive the store).
    fn committed_track() -> (
        tempfile::TempDir,
        LocalStore,
        Manifest,
        Vec<shoal_protocol::Chunk>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let (m, chunks) = tiny_track(2);
        let mut staging = store.begin_import().unwrap();
        for c in &chunks {
            staging.put_chunk(&c.id, &c.bytes).unwrap();
        }
        staging.commit(&m, &meta(&m)).unwrap();
        (dir, store, m, chunks)
    }

    /// Flips a bit of `chunk`'s file in place; returns the file.
    fn corrupt_chunk(store: &LocalStore, chunk: &ChunkId) -> PathBuf {
        let path = store.chunk_path(chunk);
        let mut bytes = fs::read(&path).unwrap();
        bytes[5] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        path
    }

    #[test]
    fn corruption_is_reported_never_served() {
        let (_dir, store, m, chunks) = committed_track();
        corrupt_chunk(&store, &chunks[0].id);
        assert!(matches!(
            store.get_chunk(&chunks[0].id),
            Err(StoreError::Corrupt { .. })
        ));
        let mpath = store.manifest_path(&m.track_id());
        fs::write(&mpath, b"garbage").unwrap();
        let err = store.get_manifest(&m.track_id()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(matches!(
            store.get_chunk(&ChunkId::of(b"nope")),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_from_the_page_cache_verify_like_the_slow_path() {
        let (_dir, store, _m, chunks) = committed_track();
        // Just written, so cached; a filesystem without RWF_NOWAIT gives None, never wrong bytes.
        let fast = store.get_chunk_if_cached(&chunks[1].id);
        if let Some(read) = fast {
            assert_eq!(read.unwrap(), chunks[1].bytes);
        }
        let path = corrupt_chunk(&store, &chunks[0].id);
        assert!(matches!(
            store.get_chunk_if_cached(&chunks[0].id),
            Some(Err(StoreError::Corrupt { .. })) | None
        ));
        // Larger than any chunk can be: left to the slow path, which calls it corrupt.
        fs::write(&path, vec![0u8; shoal_protocol::chunk::MAX_CHUNK_BYTES + 1]).unwrap();
        assert!(store.get_chunk_if_cached(&chunks[0].id).is_none());
        assert!(matches!(
            store.get_chunk_if_cached(&ChunkId::of(b"nope")),
            Some(Err(StoreError::NotFound { .. }))
        ));
    }

    #[test]
    fn open_requires_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalStore::open(dir.path().join("nothing")).unwrap_err();
        assert!(
            err.to_string().contains("not a Shoal data directory"),
            "{err}"
        );
    }
}
