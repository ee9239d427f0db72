//! Real music through the whole audio path: import (tracker) → chunks → decode (peer), checked
//! against the source sample for sample and against Debian's opusenc/opusdec as the quality
//! reference. Needs the Debian packages `singularity-music`, `opus-tools` and `sox`
//! (`scripts/install-deps.sh` installs them).

#![cfg(feature = "audio")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_peer::audio::TrackDecoder;
use shoal_protocol::Manifest;
use shoal_tracker::import::{ImportOptions, ImportOutcome, import_file};
use shoal_tracker::store::LocalStore;

const MUSIC: &str = "/usr/share/games/singularity/music";
/// 20 ms at 48 kHz: the largest duration difference allowed.
const TOLERANCE: i64 = 960;

fn music(name: &str) -> PathBuf {
    let p = Path::new(MUSIC).join(name);
    assert!(
        p.is_file(),
        "{} missing: install Debian's singularity-music (bash scripts/install-deps.sh)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (bash scripts/install-deps.sh installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Interleaved f32 samples of a 16-bit WAV file.
fn read_wav(path: &Path) -> (usize, Vec<f32>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let ch = usize::from(r.spec().channels);
    assert_eq!(r.spec().sample_rate, 48_000);
    let s = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    (ch, s)
}

/// SNR in dB of `decoded` against `source` over the same samples.
fn snr_db(source: &[f32], decoded: &[f32]) -> f64 {
    let n = source.len().min(decoded.len());
    let (mut sig, mut noise) = (0f64, 0f64);
    for i in 0..n {
        let s = f64::from(source[i]);
        sig += s * s;
        noise += (s - f64::from(decoded[i])).powi(2);
    }
    10.0 * (sig / noise.max(1e-20)).log10()
}

struct Fixture {
    _dir: tempfile::TempDir,
    source_wav: PathBuf,
    reference_wav: PathBuf,
    store: LocalStore,
    manifest: Manifest,
}

/// Imports `name` with Shoal and encodes it with opusenc --bitrate 128 for reference.
fn fixture(name: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let source_wav = dir.path().join("source.wav");
    let reference_opus = dir.path().join("reference.opus");
    let reference_wav = dir.path().join("reference.wav");
    // opusenc cannot read Vorbis: sox (libvorbis) decodes the source to WAV for it, and that
    // WAV is also the signal both decodes are compared with.
    run(Command::new("sox").arg(music(name)).arg(&source_wav));
    run(Command::new("opusenc")
        .args(["--quiet", "--bitrate", "128"])
        .arg(&source_wav)
        .arg(&reference_opus));
    run(Command::new("opusdec")
        .arg("--quiet")
        .arg(&reference_opus)
        .arg(&reference_wav));
    let store = LocalStore::create(dir.path().join("data")).unwrap();
    let outcome =
        import_file(&store, &music(name), &ImportOptions::default(), &mut |_| {}).unwrap();
    let ImportOutcome::Imported(meta) = outcome else {
        panic!("fresh store")
    };
    let manifest = store.get_manifest(&meta.id).unwrap();
    Fixture {
        _dir: dir,
        source_wav,
        reference_wav,
        store,
        manifest,
    }
}

fn decode(f: &Fixture, start_sample: u64) -> Vec<f32> {
    let mut decoder = TrackDecoder::new(&f.manifest, start_sample).unwrap();
    let mut out = Vec::new();
    while let Some(i) = decoder.next_chunk() {
        let bytes = f.store.get_chunk(&f.manifest.chunks[i].id).unwrap();
        decoder.decode_chunk(i, &bytes, &mut out).unwrap();
    }
    out
}

/// Duration within 20 ms, SNR within 1 dB of opusenc+opusdec, from `start_s` on.
fn check_track(name: &str, start: u64) -> Fixture {
    let f = fixture(name);
    let start_s = start as f64 / 48_000.0;
    let (ch, source) = read_wav(&f.source_wav);
    let (_, reference) = read_wav(&f.reference_wav);
    assert_eq!(usize::from(f.manifest.channels), ch);
    let skip = start as usize * ch;
    let decoded = decode(&f, start);
    let source = &source[skip..];
    let reference = &reference[skip.min(reference.len())..];
    let diff = (decoded.len() as i64 - source.len() as i64) / ch as i64;
    assert!(
        diff.abs() <= TOLERANCE,
        "{name} from {start_s}s: decoded {} frames, source {}",
        decoded.len() / ch,
        source.len() / ch
    );
    let ours = snr_db(source, &decoded);
    let theirs = snr_db(source, reference);
    eprintln!("{name} from {start_s}s: SNR shoal {ours:.2} dB, opusenc/opusdec {theirs:.2} dB");
    assert!(
        ours >= theirs - 1.0,
        "{name}: SNR {ours:.2} dB is more than 1 dB below the reference {theirs:.2} dB"
    );
    // No time offset: the best-matching shift is the one opusdec's correctly aligned output has
    // (0, or ±1 on tracks whose codec noise blurs the minimum).
    let (lag, reference_lag) = (
        best_lag(source, &decoded, ch),
        best_lag(source, reference, ch),
    );
    eprintln!("{name} from {start_s}s: best lag shoal {lag}, opusdec {reference_lag}");
    assert!(
        lag == reference_lag || lag == 0,
        "{name} from {start_s}s: decoded audio is offset by {lag} samples"
    );
    f
}

/// The shift (in frames, ±48) of `decoded` that best matches `source` over 5 s mid-track.
fn best_lag(source: &[f32], decoded: &[f32], ch: usize) -> i64 {
    let from = source.len().min(decoded.len()) / ch / 2;
    let len = 5 * 48_000;
    let err = |lag: i64| -> f64 {
        (0..len * ch)
            .map(|i| {
                let s = f64::from(source[from * ch + i]);
                let j = (from as i64 + lag) as usize * ch + i;
                (s - f64::from(decoded[j])).powi(2)
            })
            .sum()
    };
    (-48..=48)
        .min_by(|&a, &b| err(a).total_cmp(&err(b)))
        .unwrap()
}

#[test]
fn loud_track_matches_source_and_reference() {
    check_track("Awakening.ogg", 0);
}

#[test]
fn quiet_orchestral_track_matches_source_and_reference() {
    check_track("Through Space.ogg", 0);
}

#[test]
fn seek_to_second_60_matches_source_from_there() {
    check_track("Awakening.ogg", 60 * 48_000);
}

#[test]
fn seek_lands_in_the_middle_of_a_chunk() {
    // 60.37 s is not a chunk boundary: output must still start exactly there, match the source
    // like opusdec does, and equal what playing through from the start gives.
    let start = 60 * 48_000 + 17_760;
    let f = check_track("Coherence.ogg", start);
    assert!(
        f.manifest
            .chunks
            .iter()
            .all(|c| c.start != start + u64::from(f.manifest.pre_skip))
    );
    let ch = usize::from(f.manifest.channels);
    let decoded = decode(&f, start);
    let from_start = decode(&f, 0);
    let skip = start as usize * ch;
    assert_eq!(decoded.len(), from_start.len() - skip);
    let near = snr_db(
        &from_start[skip..skip + 48_000 * ch],
        &decoded[..48_000 * ch],
    );
    assert!(
        near > 30.0,
        "seeked audio differs from played-through audio: {near:.1} dB"
    );
}

#[test]
fn reimport_gives_the_same_track_id_and_writes_nothing() {
    let f = fixture("Awakening.ogg");
    let snapshot = |root: &Path| {
        let mut files: Vec<_> = walk(root)
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                (p, m.len(), m.modified().unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(f.store.root());
    let again = import_file(
        &f.store,
        &music("Awakening.ogg"),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        matches!(&again, ImportOutcome::AlreadyPresent(m) if m.id == f.manifest.track_id()),
        "{again:?}"
    );
    assert_eq!(snapshot(f.store.root()), before);
    // A fresh store gets the same id too: the TrackId depends on the audio and settings only.
    let other = tempfile::tempdir().unwrap();
    let store2 = LocalStore::create(other.path()).unwrap();
    let third = import_file(
        &store2,
        &music("Awakening.ogg"),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(third.meta().id, f.manifest.track_id());
    assert_eq!(third.meta().title, "Awakening");
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every input format Shoal reads, at 44.1 kHz where the format allows (so the resampler runs),
/// made from a real track by sox / opusenc.
#[test]
fn every_input_format_imports_with_the_right_duration() {
    let dir = tempfile::tempdir().unwrap();
    let excerpt = dir.path().join("excerpt.wav");
    run(Command::new("sox")
        .arg(music("Nebula.ogg"))
        .arg(&excerpt)
        .args(["trim", "30", "12"]));
    let mono44 = dir.path().join("mono44.flac");
    run(Command::new("sox")
        .arg(&excerpt)
        .args(["-r", "44100", "-c", "1"])
        .arg(&mono44));
    let flac44 = dir.path().join("stereo44.flac");
    run(Command::new("sox")
        .arg(&excerpt)
        .args(["-r", "44100"])
        .arg(&flac44));
    let mp3 = dir.path().join("stereo44.mp3");
    run(Command::new("sox")
        .arg(&excerpt)
        .args(["-r", "44100", "-C", "192"])
        .arg(&mp3));
    let vorbis = dir.path().join("stereo.ogg");
    run(Command::new("sox").arg(&excerpt).arg(&vorbis));
    let opus = dir.path().join("stereo.opus");
    run(Command::new("opusenc")
        .args([
            "--quiet",
            "--bitrate",
            "160",
            "--title",
            "Tagged Title",
            "--artist",
            "Someone",
        ])
        .arg(&excerpt)
        .arg(&opus));

    let store = LocalStore::create(dir.path().join("data")).unwrap();
    let expected = 12 * 48_000i64;
    // MP3 frames are padded and not every encoder writes gapless info: allow one MP3 frame.
    for (file, channels, tolerance) in [
        (&excerpt, 2, TOLERANCE),
        (&mono44, 1, TOLERANCE),
        (&flac44, 2, TOLERANCE),
        (&mp3, 2, 1152 * 48 / 44 + TOLERANCE),
        (&vorbis, 2, TOLERANCE),
        (&opus, 2, TOLERANCE),
    ] {
        let outcome = import_file(&store, file, &ImportOptions::default(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let m = store.get_manifest(&outcome.meta().id).unwrap();
        assert_eq!(m.channels, channels, "{}", file.display());
        let diff = m.total_samples as i64 - expected;
        assert!(
            diff.abs() <= tolerance,
            "{}: {} samples, expected {expected}",
            file.display(),
            m.total_samples
        );
        // And it decodes to that many samples.
        let mut d = TrackDecoder::new(&m, 0).unwrap();
        let mut out = Vec::new();
        while let Some(i) = d.next_chunk() {
            d.decode_chunk(i, &store.get_chunk(&m.chunks[i].id).unwrap(), &mut out)
                .unwrap();
        }
        assert_eq!(out.len() as u64, m.total_samples * u64::from(channels));
    }
    let tagged = store
        .list_tracks()
        .unwrap()
        .into_iter()
        .find(|t| t.title == "Tagged Title")
        .expect("Opus tags read");
    assert_eq!(tagged.artist.as_deref(), Some("Someone"));
    // Untagged files are named after the file.
    assert!(
        store
            .list_tracks()
            .unwrap()
            .iter()
            .any(|t| t.title == "mono44")
    );
}
