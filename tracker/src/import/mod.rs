//! Publishing music: a file is decoded ([`source`]), converted to 48 kHz ([`resample`]),
//! encoded to Opus and chunked ([`encode`]), and its chunks, manifest and metadata committed
//! to the store. Streaming throughout, so memory stays bounded whatever the file's length; a
//! file that fails leaves nothing behind.

pub mod encode;
pub mod resample;
pub mod source;

use std::path::{Path, PathBuf};

use crate::store::{CommitOutcome, LocalStore, StoreError, TrackMeta};

/// Why one file could not be imported. Shown after the file name, so each reads as a reason.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Not an audio file symphonia or the Ogg Opus reader recognise.
    #[error("not an audio file: {0}")]
    NotAudio(String),
    /// A container Shoal reads, with a codec it does not.
    #[error("unsupported codec ({0}); Shoal imports WAV, FLAC, MP3, Ogg Vorbis and Ogg Opus")]
    UnsupportedCodec(String),
    /// More than two channels.
    #[error("{0} channels; Shoal imports mono or stereo")]
    Channels(usize),
    /// The file stops before its audio does.
    #[error("truncated: {0}")]
    Truncated(String),
    /// Undecodable data inside the audio.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// The file holds no samples.
    #[error("the track has no audio (zero length)")]
    NoAudio,
    /// More chunks than a manifest may list.
    #[error("the track is too long for one manifest")]
    TooLong,
    /// libopus or the resampler failed.
    #[error("encoder: {0}")]
    Codec(String),
    /// Reading the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Encoding settings. Same file + same settings = same TrackId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Opus bitrate in bits per second (default 128,000).
    pub bitrate: u32,
    /// libopus complexity 0–10 (default 10, like opusenc): lower is faster, slightly worse.
    pub complexity: u8,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            bitrate: 128_000,
            complexity: 10,
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Newly published.
    Imported(TrackMeta),
    /// Already in the store (same TrackId); nothing written.
    AlreadyPresent(TrackMeta),
}

impl ImportOutcome {
    /// The track's metadata.
    pub fn meta(&self) -> &TrackMeta {
        match self {
            ImportOutcome::Imported(m) | ImportOutcome::AlreadyPresent(m) => m,
        }
    }
}

/// Extensions [`collect_files`] picks up inside folders.
pub const AUDIO_EXTENSIONS: &[&str] = &["wav", "wave", "flac", "mp3", "ogg", "oga", "opus"];

/// Expands `paths` (files, or folders searched recursively for audio extensions) into a sorted
/// list of files. Files named explicitly are kept whatever their extension.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(true)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(walkdir::DirEntry::into_path)
                .filter(|f| {
                    f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// A file encoded and chunked, its chunks staged under the local store, not yet published.
#[derive(Debug)]
pub struct Encoded {
    /// The manifest.
    pub manifest: shoal_protocol::Manifest,
    /// The catalog metadata.
    pub meta: TrackMeta,
    /// The staged chunks (removed when dropped unpublished).
    pub staging: crate::store::Staging,
}

/// Imports one file into the local `store`. `progress` receives the fraction done (0–1) when
/// the container says how long the audio is.
pub fn import_file(
    store: &LocalStore,
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<ImportOutcome, ImportError> {
    let Encoded {
        manifest,
        meta,
        staging,
    } = encode_file(store, path, options, progress)?;
    match staging.commit(&manifest, &meta)? {
        CommitOutcome::Imported => Ok(ImportOutcome::Imported(meta)),
        CommitOutcome::AlreadyPresent => {
            Ok(ImportOutcome::AlreadyPresent(store.get_meta(&meta.id)?))
        }
    }
}

/// Decodes, encodes and chunks one file, staging its chunks in `store`'s staging area.
pub fn encode_file(
    store: &LocalStore,
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<Encoded, ImportError> {
    let mut source = source::open(path)?;
    let channels = source.channels();
    let mut resampler = resample::To48k::new(source.sample_rate(), channels)?;
    let mut encoder = encode::TrackEncoder::new(channels, options.bitrate, options.complexity)?;
    let expected = source.expected_frames().filter(|&n| n > 0);

    let mut staging = store.begin_import()?;
    let mut sink = |chunk: &shoal_protocol::Chunk| -> Result<(), ImportError> {
        staging.put_chunk(&chunk.id, &chunk.bytes)?;
        Ok(())
    };
    let mut block = Vec::with_capacity(16 * 1024);
    let mut resampled = Vec::with_capacity(16 * 1024);
    let mut in_frames = 0u64;
    while source.next_block(&mut block)? {
        in_frames += (block.len() / channels) as u64;
        resampler.push(&block, &mut resampled)?;
        encoder.push(&resampled, &mut sink)?;
        block.clear();
        resampled.clear();
        if let Some(total) = expected {
            progress((in_frames as f64 / total as f64).min(1.0));
        }
    }
    // Sources that return their last samples together with the end.
    if !block.is_empty() {
        in_frames += (block.len() / channels) as u64;
        resampler.push(&block, &mut resampled)?;
    }
    // A container that announced its length (WAV, FLAC, Vorbis, MP3 with a Xing header) and
    // ended more than 0.1 s short of it was cut off.
    if let Some(total) = expected
        && in_frames + u64::from(source.sample_rate() / 10) < total
    {
        return Err(ImportError::Truncated(format!(
            "the file ends after {:.1} s of the {:.1} s its header announces",
            in_frames as f64 / f64::from(source.sample_rate()),
            total as f64 / f64::from(source.sample_rate())
        )));
    }
    resampler.finish(&mut resampled)?;
    encoder.push(&resampled, &mut sink)?;
    let manifest = encoder.finish(&mut sink)?;

    let tags = source.tags();
    let title = tags.title.unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "untitled".into(), |s| s.to_string_lossy().into_owned())
    });
    let meta = TrackMeta {
        id: manifest.track_id(),
        title,
        artist: tags.artist,
        album: tags.album,
        duration_ms: manifest.total_samples / 48,
        bitrate: options.bitrate,
        channels: manifest.channels,
        bytes: manifest.total_bytes(),
        source: path.display().to_string(),
        added_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    progress(1.0);
    Ok(Encoded {
        manifest,
        meta,
        staging,
    })
}
