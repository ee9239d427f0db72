//! `shoal-tracker import` as a user runs it, on real music and on every kind of bad input:
//! one clear error line per bad file, good files imported, nothing half-written, exit status 1
//! when anything failed. Needs Debian's `singularity-music` and `sox`.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal_protocol::{ChunkId, TrackId};
use shoal_tracker::store::LocalStore;

const MUSIC: &str = "/usr/share/games/singularity/music";

fn music(name: &str) -> PathBuf {
    let p = Path::new(MUSIC).join(name);
    assert!(
        p.is_file(),
        "{} missing: install Debian's singularity-music (bash scripts/install-deps.sh)",
        p.display()
    );
    p
}

fn sox(args: &[&str]) {
    let out = Command::new("sox")
        .args(args)
        .output()
        .expect("sox (bash scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tracker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn import(data: &Path, paths: &[&Path]) -> (Option<i32>, String, String) {
    let mut args = vec!["import", "--data", data.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let out = tracker(&args);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// No chunk without its manifest, no manifest without its chunks, no leftovers in staging.
/// Returns the number of complete tracks.
fn assert_store_consistent(data: &Path) -> usize {
    let store = LocalStore::open(data).unwrap();
    assert!(
        files_under(&data.join("staging")).is_empty(),
        "staging not cleaned"
    );
    let mut referenced = HashSet::new();
    let manifests = files_under(&data.join("manifests"));
    for m in &manifests {
        let id: TrackId = m.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let manifest = store.get_manifest(&id).unwrap();
        assert!(store.has_track(&id), "manifest {id} without metadata");
        for c in &manifest.chunks {
            store
                .get_chunk(&c.id)
                .unwrap_or_else(|e| panic!("track {id}: {e}"));
            referenced.insert(c.id);
        }
    }
    for chunk in files_under(&data.join("chunks")) {
        let id: ChunkId = chunk
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("stray file {}", chunk.display()));
        assert!(
            referenced.contains(&id),
            "chunk {id} belongs to no manifest"
        );
    }
    assert_eq!(files_under(&data.join("tracks")).len(), manifests.len());
    manifests.len()
}

/// Imports one bad file: exit 1, exactly one error line naming it with `reason`, nothing stored.
fn assert_rejected(file: &Path, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stdout, stderr) = import(&data, &[file]);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errors.len(), 1, "one line per bad file, got: {stderr}");
    assert!(
        errors[0].starts_with(&format!("error: {}: ", file.display())),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains(reason),
        "expected {reason:?} in {:?}",
        errors[0]
    );
    assert!(
        stdout.contains("imported 0, skipped 0, failed 1"),
        "{stdout}"
    );
    assert_eq!(assert_store_consistent(&data), 0);
    assert!(files_under(&data.join("chunks")).is_empty());
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.mp3");
    std::fs::write(&f, b"").unwrap();
    assert_rejected(&f, "the file is empty");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cut.ogg");
    let whole = std::fs::read(music("Awakening.ogg")).unwrap();
    std::fs::write(&f, &whole[..whole.len() / 2]).unwrap();
    assert_rejected(&f, "truncated");
}

#[test]
fn truncated_wav_is_caught_by_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("whole.wav");
    sox(&[
        music("Nebula.ogg").to_str().unwrap(),
        wav.to_str().unwrap(),
        "trim",
        "0",
        "5",
    ]);
    let f = dir.path().join("cut.wav");
    let whole = std::fs::read(&wav).unwrap();
    std::fs::write(&f, &whole[..whole.len() / 3]).unwrap();
    assert_rejected(&f, "truncated");
}

#[test]
fn text_file_named_mp3() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("song.mp3");
    std::fs::write(&f, "these are the lyrics, not the song\n".repeat(20)).unwrap();
    assert_rejected(&f, "not an audio file");
}

#[test]
fn unsupported_codec() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("adpcm.wav");
    sox(&[
        music("Nebula.ogg").to_str().unwrap(),
        "-e",
        "ima-adpcm",
        f.to_str().unwrap(),
        "trim",
        "0",
        "3",
    ]);
    assert_rejected(&f, "unsupported codec");
}

#[test]
fn zero_length_track() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("silence.wav");
    sox(&[
        "-n",
        "-r",
        "48000",
        "-c",
        "2",
        f.to_str().unwrap(),
        "trim",
        "0",
        "0",
    ]);
    assert_rejected(&f, "zero length");
}

#[test]
fn folder_mixing_good_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let music_dir = dir.path().join("music");
    let nested = music_dir.join("album");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(music_dir.join("empty.flac"), b"").unwrap();
    std::fs::write(music_dir.join("notes.mp3"), "not audio").unwrap();
    std::fs::write(
        music_dir.join("cover.jpg"),
        "ignored: not an audio extension",
    )
    .unwrap();
    let whole = std::fs::read(music("Coherence.ogg")).unwrap();
    std::fs::write(nested.join("cut.ogg"), &whole[..whole.len() / 4]).unwrap();
    sox(&[
        "-n",
        "-r",
        "44100",
        "-c",
        "1",
        nested.join("zero.wav").to_str().unwrap(),
        "trim",
        "0",
        "0",
    ]);
    sox(&[
        music("Nebula.ogg").to_str().unwrap(),
        "-e",
        "ima-adpcm",
        nested.join("adpcm.wav").to_str().unwrap(),
        "trim",
        "0",
        "2",
    ]);
    std::fs::copy(music("Awakening.ogg"), nested.join("Awakening.ogg")).unwrap();
    sox(&[
        music("Nebula.ogg").to_str().unwrap(),
        "-r",
        "44100",
        music_dir.join("nebula-excerpt.flac").to_str().unwrap(),
        "trim",
        "20",
        "10",
    ]);

    let data = dir.path().join("data");
    let (code, stdout, stderr) = import(&data, &[&music_dir]);
    assert_eq!(code, Some(1), "some files failed: {stderr}");
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 5, "{stderr}");
    for (name, reason) in [
        ("empty.flac", "empty"),
        ("notes.mp3", "not an audio file"),
        ("cut.ogg", "truncated"),
        ("zero.wav", "zero length"),
        ("adpcm.wav", "unsupported codec"),
    ] {
        assert_eq!(
            errors.iter().filter(|l| l.contains(name)).count(),
            1,
            "{name}: {stderr}"
        );
        assert!(
            errors
                .iter()
                .any(|l| l.contains(name) && l.contains(reason)),
            "{name}: {stderr}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.ends_with("Awakening  3:28")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.ends_with("Nebula  0:10")),
        "tags carried over by sox: {stdout}"
    );
    assert!(
        stdout.contains("imported 2, skipped 0, failed 5"),
        "{stdout}"
    );
    assert_eq!(assert_store_consistent(&data), 2);

    // Again: same ids, nothing new, same failures.
    let (code, stdout2, _) = import(&data, &[&music_dir]);
    assert_eq!(code, Some(1));
    assert!(
        stdout2.contains("imported 0, skipped 2, failed 5"),
        "{stdout2}"
    );
    let ids = |s: &str| {
        s.lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .next()
                    .filter(|w| w.len() == 64)
                    .map(str::to_owned)
            })
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&stdout), ids(&stdout2));
}

/// A 10-hour file imports in bounded memory (peak RSS ≤ 64 MiB, polled from /proc).
#[test]
fn ten_hour_file_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ten-hours.flac");
    // Digital silence keeps the FLAC small and fast to make; the importer still decodes,
    // encodes and chunks all 36,000 seconds.
    sox(&[
        "-n",
        "-r",
        "48000",
        "-c",
        "1",
        f.to_str().unwrap(),
        "trim",
        "0",
        "10:00:00",
    ]);
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
        .args([
            "import",
            "--complexity",
            "0",
            "--bitrate",
            "16",
            "--data",
            data.to_str().unwrap(),
            f.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("600:00"), "a 10-hour track: {stdout}");
    eprintln!("10-hour import: peak RSS {peak_kib} KiB");
    assert!(peak_kib > 0, "memory was sampled");
    assert!(peak_kib <= 64 * 1024, "peak RSS {peak_kib} KiB over 64 MiB");
    assert_eq!(assert_store_consistent(&data), 1);
}

#[test]
fn help_wrong_flag_and_missing_data() {
    let help = tracker(&["import", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(
        text.contains("--bitrate") && text.contains("--data"),
        "{text}"
    );
    let wrong = tracker(&["import", "--bitrat", "64", "x.wav"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("--bitrate"),
        "clap suggests the right flag"
    );
    let missing = tracker(&["import", "x.wav"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--data"));
    let dir = tempfile::tempdir().unwrap();
    let nothing = tracker(&[
        "import",
        "--data",
        dir.path().join("d").to_str().unwrap(),
        dir.path().join("nope.wav").to_str().unwrap(),
    ]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nope.wav"));
}
