//! `shoal-tracker serve` as operators and peers use it: the HTTP API over the local data
//! directory and over PostgreSQL + S3 (moto), bad requests, corrupt objects, rate limits, and
//! faults: databases down at start-up and while serving, `kill -9` in the middle of an import.
//! PostgreSQL/S3 cases need `SHOAL_TEST_POSTGRES_URL` / `SHOAL_TEST_S3_ENDPOINT`
//! (`scripts/services.sh`); with `SHOAL_REQUIRE_SERVICES=1` (CI) their absence fails.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_protocol::{ChunkId, Manifest, TrackId};

const MUSIC: &str = "/usr/share/games/singularity/music";
const BIN: &str = env!("CARGO_BIN_EXE_shoal-tracker");

fn music(name: &str) -> PathBuf {
    let p = Path::new(MUSIC).join(name);
    assert!(
        p.is_file(),
        "{} missing: bash scripts/install-deps.sh",
        p.display()
    );
    p
}

/// A 12-second excerpt of a real track (fast to import), tags kept.
fn excerpt(dir: &Path, name: &str, out: &str) -> PathBuf {
    let f = dir.join(out);
    let st = Command::new("sox")
        .arg(music(name))
        .arg(&f)
        .args(["trim", "30", "12"])
        .status()
        .unwrap();
    assert!(st.success());
    f
}

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var("SHOAL_REQUIRE_SERVICES").is_err(),
                "SHOAL_REQUIRE_SERVICES set but {var} is not"
            );
            eprintln!("{var} unset: skipping (scripts/services.sh starts the servers)");
            None
        }
    }
}

/// Where the catalog and origin live for one test.
#[derive(Clone, Debug)]
struct Storage {
    data: PathBuf,
    db: Option<String>,
    store: Option<String>,
}

impl Storage {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["--data".to_string(), self.data.display().to_string()];
        if let Some(db) = &self.db {
            a.extend(["--db".into(), db.clone()]);
        }
        if let Some(s) = &self.store {
            a.extend(["--store".into(), s.clone()]);
        }
        a
    }
}

fn s3_env(cmd: &mut Command) -> &mut Command {
    if let Ok(endpoint) = std::env::var("SHOAL_TEST_S3_ENDPOINT") {
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
    }
    cmd.env("RUST_LOG", "warn")
}

fn import(storage: &Storage, files: &[&Path]) -> (bool, String, String) {
    let out = s3_env(
        Command::new(BIN)
            .arg("import")
            .args(storage.args())
            .args(files),
    )
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(storage: &Storage, extra: &[&str]) -> Server {
    let mut child = s3_env(
        Command::new(BIN)
            .arg("serve")
            .args(storage.args())
            .args([
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .args(extra),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, base }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Creates a bucket on the S3 test server (moto accepts unsigned requests).
async fn bucket(name: &str) -> Option<String> {
    let endpoint = required("SHOAL_TEST_S3_ENDPOINT")?;
    let r = client()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    Some(format!("s3://{name}/shoal"))
}

/// A fresh database on the PostgreSQL test server.
async fn database() -> Option<String> {
    let url = required("SHOAL_TEST_POSTGRES_URL")?;
    let name = format!(
        "shoal_http_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    Some(format!("{}/{name}", url.rsplit_once('/').unwrap().0))
}

/// The API contract, run against a given storage setup.
async fn check_api(storage: Storage) {
    let dir = tempfile::tempdir().unwrap();
    let a = excerpt(dir.path(), "Aberrations.ogg", "a.ogg");
    let b = excerpt(dir.path(), "Awakening.ogg", "b.ogg");
    let (ok, stdout, stderr) = import(&storage, &[&a, &b]);
    assert!(ok, "{stdout}\n{stderr}");
    let server = serve(&storage, &[]);
    let http = client();
    let base = &server.base;

    // Search: prefix as you type, JSON list.
    let hits: serde_json::Value = http
        .get(format!("{base}/search?q=aberr"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits[0]["title"], "Aberrations");
    let id: TrackId = hits[0]["id"].as_str().unwrap().parse().unwrap();

    // Track details with the manifest's chunk list.
    let track: serde_json::Value = http
        .get(format!("{base}/tracks/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(track["track"]["title"], "Aberrations");
    let chunks = track["manifest"]["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 3, "{track}");

    // Canonical manifest bytes hash to the id.
    let r = http
        .get(format!("{base}/manifests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mbytes = r.bytes().await.unwrap();
    assert!(id.matches(&mbytes));
    let manifest = Manifest::decode(&mbytes).unwrap();
    assert_eq!(manifest.chunks.len(), chunks.len());

    // A chunk: verified bytes, ETag = id, immutable, ranges.
    let c: ChunkId = chunks[1]["id"].as_str().unwrap().parse().unwrap();
    let r = http.get(format!("{base}/chunks/{c}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], format!("\"{c}\""));
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let body = r.bytes().await.unwrap();
    assert!(c.matches(&body));
    let len = body.len();
    let r = http
        .get(format!("{base}/chunks/{c}"))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 100-199/{len}"));
    assert_eq!(r.bytes().await.unwrap(), body.slice(100..200));
    let r = http
        .get(format!("{base}/chunks/{c}"))
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), body.slice(len - 10..));
    let r = http
        .get(format!("{base}/chunks/{c}"))
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "a Range beyond the end");
    assert_eq!(r.headers()["content-range"], format!("bytes */{len}"));
    let r = http
        .get(format!("{base}/chunks/{c}"))
        .header("If-None-Match", format!("\"{c}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Bad requests: JSON errors with the right status.
    let unknown = ChunkId::of(b"no such chunk");
    for (path, status, says) in [
        (format!("/chunks/{unknown}"), 404, "not found"),
        (
            format!("/manifests/{}", TrackId::of(b"none")),
            404,
            "not found",
        ),
        (
            format!("/tracks/{}", TrackId::of(b"none")),
            404,
            "not found",
        ),
        ("/chunks/xyz".to_string(), 400, "64 hex digits"),
        (format!("/tracks/{}", "g".repeat(64)), 400, "hex"),
        ("/search".to_string(), 400, "missing q"),
        ("/search?q=a&limit=zero".to_string(), 400, "limit"),
        ("/search?q=a&limit=100000".to_string(), 400, "limit"),
        (format!("/search?q={}", "a".repeat(300)), 400, "longer than"),
        ("/search?q=a&q=b".to_string(), 400, "bad query string"),
        ("/nope".to_string(), 404, "no such endpoint"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains(says), "{path}: {e}");
    }
    // Its own connection: the server answers before reading the body and closes it.
    let r = client()
        .post(format!("{base}/search?q=a"))
        .body(vec![b'x'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 413 || r.status() == 405,
        "oversized body: {}",
        r.status()
    );
    let hostile = http
        .get(format!(
            "{base}/search?q=%22%29%3B%20DROP%20TABLE%20tracks%3B%20--"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(hostile.status(), 200);
    let still: serde_json::Value = http
        .get(format!("{base}/search?q=awak"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still[0]["title"], "Awakening");

    // Operators: health and metrics.
    let h: serde_json::Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    // Peers given only the HTTP URL find the libp2p endpoint here.
    let p2p: serde_json::Value = http
        .get(format!("{base}/p2p"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let peer_id = p2p["peer_id"].as_str().unwrap();
    let addrs = p2p["addrs"].as_array().unwrap();
    assert!(!addrs.is_empty());
    for a in addrs {
        assert!(
            a.as_str().unwrap().ends_with(&format!("/p2p/{peer_id}")),
            "{a}"
        );
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("shoal_catalog_tracks 2"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shoal_origin_chunks_served_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shoal_http_client_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_over_local_directory_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    check_api(Storage {
        data: dir.path().join("data"),
        db: None,
        store: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_over_postgres_and_s3() {
    let (Some(db), Some(store)) = (
        database().await,
        bucket(&format!("shoal-api-{}", std::process::id())).await,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    check_api(Storage {
        data: dir.path().join("data"),
        db: Some(db),
        store: Some(store),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_chunk_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        data: dir.path().join("data"),
        db: None,
        store: None,
    };
    let a = excerpt(dir.path(), "Nebula.ogg", "n.ogg");
    assert!(import(&storage, &[&a]).0);
    let chunk_file = walk(&storage.data.join("chunks"))
        .into_iter()
        .next()
        .unwrap();
    let id: ChunkId = chunk_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut bytes = std::fs::read(&chunk_file).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&chunk_file, &bytes).unwrap();
    let server = serve(&storage, &[]);
    let r = client()
        .get(format!("{}/chunks/{id}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("corrupt") && body.contains("not served"),
        "{body}"
    );
    let metrics = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shoal_origin_corrupt_objects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_over_the_rate_limit_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        data: dir.path().join("data"),
        db: None,
        store: None,
    };
    std::fs::create_dir_all(&storage.data).unwrap();
    let config = dir.path().join("tracker.toml");
    std::fs::write(&config, "[http]\nrequests_per_sec = 0.5\nburst = 5\n").unwrap();
    let server = serve(&storage, &["--config", config.to_str().unwrap()]);
    let http = client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            http.get(format!("{}/healthz", server.base))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..5], &[200; 5]);
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    let r = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
}

#[test]
fn unreachable_database_or_store_at_startup_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--db",
            "postgres://postgres@127.0.0.1:9/x",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the catalog at postgres://postgres@127.0.0.1:9/x"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--store",
            "s3://nobucket",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the origin store s3://nobucket"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--store",
            "ftp://x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use s3://BUCKET"));
}

/// A private PostgreSQL cluster that the test can stop and start.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start() -> Option<Self> {
        required("SHOAL_TEST_POSTGRES_URL")?;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .max()?;
        let dir = tempfile::Builder::new()
            .prefix("shoal-pg")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        Command::new("chmod")
            .args(["755", pg.dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        Command::new("chown")
            .args(["postgres:postgres", pg.dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        let st = pg
            .as_pg(pg.bin.join("initdb"))
            .args(["-D", &pg.data(), "-U", "postgres", "-A", "trust"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        pg.ctl("start");
        Some(pg)
    }
    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }
    fn as_pg(&self, program: PathBuf) -> Command {
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
    fn ctl(&self, action: &str) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let st = self
            .as_pg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-m",
                "immediate",
                "-w",
                action,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "pg_ctl {action}");
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .as_pg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_while_serving_gives_503_then_recovers() {
    let Some(pg) = PrivatePg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        data: dir.path().join("data"),
        db: Some(pg.url()),
        store: None,
    };
    let a = excerpt(dir.path(), "Inevitable.ogg", "i.ogg");
    let (ok, _, stderr) = import(&storage, &[&a]);
    assert!(ok, "{stderr}");
    let server = serve(&storage, &[]);
    let http = client();
    let search = || http.get(format!("{}/search?q=inev", server.base)).send();
    assert_eq!(search().await.unwrap().status(), 200);
    pg.ctl("stop");
    let r = search().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("unavailable"));
    assert_eq!(
        http.get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    pg.ctl("start");
    let mut last = 0;
    for _ in 0..50 {
        last = search().await.unwrap().status().as_u16();
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, 200, "recovers once PostgreSQL is back");
    let hits: serde_json::Value = search().await.unwrap().json().await.unwrap();
    assert_eq!(hits[0]["title"], "Inevitable");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        data: dir.path().join("data"),
        db: None,
        store: None,
    };
    let folder = dir.path().join("music");
    std::fs::create_dir_all(&folder).unwrap();
    for name in [
        "Awakening.ogg",
        "Nebula.ogg",
        "Coherence.ogg",
        "Deprecation.ogg",
    ] {
        std::fs::copy(music(name), folder.join(name)).unwrap();
    }
    let mut child = Command::new(BIN)
        .arg("import")
        .args(storage.args())
        .arg(&folder)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it right after the first track is reported: the second is half-encoded.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !walk(&storage.data.join("staging")).is_empty(),
        "the kill left a half-staged import (else the test tests nothing)"
    );

    // After the crash: search shows only whole tracks, each fully playable.
    let server = serve(&storage, &[]);
    let http = client();
    let mut complete = 0;
    for q in ["awakening", "nebula", "coherence", "deprecation"] {
        let hits: serde_json::Value = http
            .get(format!("{}/search?q={q}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for hit in hits.as_array().unwrap() {
            complete += 1;
            let track: serde_json::Value = http
                .get(format!(
                    "{}/tracks/{}",
                    server.base,
                    hit["id"].as_str().unwrap()
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for c in track["manifest"]["chunks"].as_array().unwrap() {
                let r = http
                    .get(format!(
                        "{}/chunks/{}",
                        server.base,
                        c["id"].as_str().unwrap()
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "a searchable track is complete");
            }
        }
    }
    assert!(
        (1..4).contains(&complete),
        "{complete} tracks complete after the kill"
    );
    drop(server);

    // Re-running the import completes the rest and cleans the stale staging area.
    let (ok, stdout, stderr) = import(&storage, &[&folder]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "imported {}, skipped {complete}, failed 0",
            4 - complete
        )),
        "{stdout}"
    );
    assert!(walk(&storage.data.join("staging")).is_empty());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A private moto_server (from the venv `scripts/services.sh` creates) that the test can pause.
struct PrivateS3 {
    child: Child,
    endpoint: String,
}

impl PrivateS3 {
    fn start() -> Option<Self> {
        required("SHOAL_TEST_S3_ENDPOINT")?;
        let moto =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server");
        assert!(
            moto.is_file(),
            "{} missing: scripts/services.sh start creates it",
            moto.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned by the guard from here on: dropped (killed and reaped) on every path.
        let s3 = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(s3);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not start");
    }
    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_down_while_serving_gives_503_then_recovers() {
    let Some(s3) = PrivateS3::start() else { return };
    let r = client()
        .put(format!("{}/paused", s3.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        data: dir.path().join("data"),
        db: None,
        store: Some("s3://paused/x".into()),
    };
    let a = excerpt(dir.path(), "Orbital Elevator.ogg", "o.ogg");
    let env = |cmd: &mut Command| {
        cmd.env("AWS_ENDPOINT_URL", &s3.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .env("RUST_LOG", "off");
    };
    let mut cmd = Command::new(BIN);
    cmd.arg("import").args(storage.args()).arg(&a);
    env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(storage.args())
        .args([
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped());
    env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server {
        child,
        base: line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string(),
    };
    let http = client();
    let hits: serde_json::Value = http
        .get(format!("{}/search?q=orbital", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = hits[0]["id"].as_str().unwrap().to_string();
    let manifest = || http.get(format!("{}/manifests/{id}", server.base)).send();
    assert_eq!(manifest().await.unwrap().status(), 200);

    s3.signal("-STOP");
    let started = std::time::Instant::now();
    let r = manifest().await.unwrap();
    assert_eq!(r.status(), 503, "S3 unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered within the store timeout"
    );
    s3.signal("-CONT");
    let mut last = 0;
    for _ in 0..50 {
        last = manifest().await.unwrap().status().as_u16();
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, 200, "recovers once S3 is back");
}
