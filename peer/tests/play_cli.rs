//! `shoal-peer play --data DIR` as a user runs it: real music imported by `shoal-tracker`
//! played to a WAV, to stdout and to nowhere, with seeking, JSON statistics and clear errors.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use shoal_tracker::import::{ImportOptions, import_file};
use shoal_tracker::store::LocalStore;

const TRACK: &str = "/usr/share/games/singularity/music/Awakening.ogg";

fn peer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-peer"))
        .args(args)
        .output()
        .unwrap()
}

fn imported(dir: &Path) -> String {
    assert!(
        Path::new(TRACK).is_file(),
        "install Debian's singularity-music (bash scripts/install-deps.sh)"
    );
    let store = LocalStore::create(dir).unwrap();
    import_file(
        &store,
        Path::new(TRACK),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap()
    .meta()
    .id
    .to_string()
}

#[test]
fn play_to_wav_with_seek_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = imported(&data);
    let wav = dir.path().join("out.wav");
    let out = peer(&[
        "play",
        "--data",
        data.to_str().unwrap(),
        &id,
        "--output",
        wav.to_str().unwrap(),
        "--start",
        "60",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(reader.spec().sample_rate, 48_000);
    assert_eq!(reader.spec().channels, 2);
    assert_eq!(reader.duration(), (208 - 60) * 48_000);
    assert!(!dir.path().join("out.wav.partial").exists());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["track"], id);
    assert!(json["time_to_first_audio_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["stutters"], 0);
    assert!(json["bytes_by_source"]["origin"].as_u64().unwrap() > 2_000_000);
    assert_eq!(json["share_by_source"]["origin"], 1.0);
}

#[test]
fn play_to_stdout_and_null() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = imported(&data);
    let out = peer(&[
        "play",
        "--data",
        data.to_str().unwrap(),
        &id,
        "--output",
        "-",
        "--start",
        "200",
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 8 * 48_000 * 2 * 2, "8 s of s16le stereo");
    let null = peer(&[
        "play",
        "--data",
        data.to_str().unwrap(),
        &id,
        "--output",
        "null",
    ]);
    assert!(null.status.success());
    assert!(String::from_utf8_lossy(&null.stderr).contains("208.0 s of audio"));
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = imported(&data);
    let d = data.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["play", "--data", d, "abc", "--output", "null"],
            2,
            "64 hex digits",
        ),
        (
            &["play", "--data", d, &id, "--output", "x.mp3"],
            2,
            "use FILE.wav",
        ),
        (
            &[
                "play", "--data", d, &id, "--output", "null", "--start", "999",
            ],
            1,
            "past the end",
        ),
        (
            &["play", "--data", "/nonexistent", &id, "--output", "null"],
            1,
            "not a Shoal data directory",
        ),
        (
            &["play", "--data", d, &"0".repeat(64), "--output", "null"],
            1,
            "not in the store",
        ),
        (
            &["play", "--data", d, &id, "--output", "-", "--json"],
            1,
            "both want stdout",
        ),
        (&["plya"], 2, "play"),
        (
            &[
                "play",
                "--tracker",
                "http://127.0.0.1:9",
                "--cache",
                "/tmp/shoal-test-unreachable-cache",
                "--output",
                "null",
                "awakening",
            ],
            1,
            "cannot reach the tracker at http://127.0.0.1:9",
        ),
        (
            &["serve", "--superpeer", "/ip4/127.0.0.1/udp/9/quic-v1"],
            1,
            "must end in /p2p/PEER_ID",
        ),
        (&["play", "--tracker", "ftp://x", "awakening"], 1, "http://"),
    ];
    for (args, code, message) in cases {
        let out = peer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // A corrupted chunk on disk is reported, never played.
    let chunks = data.join("chunks");
    let fan = std::fs::read_dir(&chunks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&fan)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let out = peer(&["play", "--data", d, &id, "--output", "null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sound_card_missing_is_a_clear_error() {
    if Path::new("/dev/snd").exists() {
        eprintln!("this machine has a sound card; not playing music in a test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = imported(&data);
    let out = peer(&[
        "play",
        "--data",
        data.to_str().unwrap(),
        &id,
        "--output",
        "device",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--output out.wav"), "{stderr}");
}
