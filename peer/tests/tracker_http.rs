//! The peer against a real `shoal-tracker serve` on loopback: `shoal-peer search` and the
//! verified HTTP origin client (manifests, chunks) on real imported music.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use shoal_peer::net::origin::{OriginClient, OriginError};
use shoal_protocol::{ChunkId, TrackId};

/// `shoal-tracker`, built beside this test by `cargo test --workspace` / nextest.
fn tracker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("shoal-tracker");
    assert!(
        bin.is_file(),
        "{} missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

struct Tracker {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracker_with_music() -> Tracker {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("excerpt.ogg");
    let music = "/usr/share/games/singularity/music/Aberrations.ogg";
    assert!(
        Path::new(music).is_file(),
        "install Debian's singularity-music (bash scripts/install-deps.sh)"
    );
    assert!(
        Command::new("sox")
            .arg(music)
            .arg(&src)
            .args(["trim", "0", "10"])
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new(tracker_bin())
        .args([
            "import",
            "--data",
            data.to_str().unwrap(),
            src.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(tracker_bin())
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Tracker {
        child,
        url,
        _dir: dir,
    }
}

#[test]
fn search_command() {
    let t = tracker_with_music();
    let peer = env!("CARGO_BIN_EXE_shoal-peer");
    let out = Command::new(peer)
        .args(["search", "--tracker", &t.url, "aberr"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Aberrations  0:10  Maxstack"), "{text}");
    let json = Command::new(peer)
        .args(["search", "--tracker", &t.url, "--json", "aberr"])
        .output()
        .unwrap();
    let hits: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(hits[0]["title"], "Aberrations");
    let none = Command::new(peer)
        .args(["search", "--tracker", &t.url, "zzzz"])
        .output()
        .unwrap();
    assert!(none.status.success() && none.stdout.is_empty());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no tracks match"));
    drop(t);
    let down = Command::new(peer)
        .args(["search", "--tracker", "http://127.0.0.1:9", "x"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("is `shoal-tracker serve` running?"));
}

#[tokio::test]
async fn origin_client_fetches_verified_manifests_and_chunks() {
    let t = tracker_with_music();
    let client = OriginClient::new(&t.url).unwrap();
    let hits = client.search("aberrations", 5).await.unwrap();
    assert_eq!(hits.len(), 1);
    let (manifest, bytes) = client.manifest(&hits[0].id).await.unwrap();
    assert_eq!(manifest.track_id(), hits[0].id);
    assert!(hits[0].id.matches(&bytes));
    let mut total = 0;
    for c in &manifest.chunks {
        let chunk = client.chunk(&c.id).await.unwrap();
        assert_eq!(chunk.len() as u32, c.len);
        total += chunk.len();
    }
    assert_eq!(total as u64, manifest.total_bytes());
    assert!(matches!(
        client.chunk(&ChunkId::of(b"none")).await,
        Err(OriginError::NotFound(_))
    ));
    assert!(matches!(
        client.manifest(&TrackId::of(b"none")).await,
        Err(OriginError::NotFound(_))
    ));
    assert!(matches!(
        OriginClient::new("ftp://x"),
        Err(OriginError::BadUrl(_))
    ));
}
