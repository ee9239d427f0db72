//! The catalog's behaviour, run against both backends: embedded SQLite (always) and
//! PostgreSQL (when `SHOAL_TEST_POSTGRES_URL` is set; `scripts/services.sh` starts one, and with
//! `SHOAL_REQUIRE_SERVICES=1`, as in CI, a missing URL fails instead of skipping).
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use shoal_protocol::TrackId;
use shoal_tracker::net::catalog::Catalog;
use shoal_tracker::store::TrackMeta;

fn meta(title: &str, artist: Option<&str>, album: Option<&str>) -> TrackMeta {
    TrackMeta {
        id: TrackId::of(format!("{title}/{artist:?}/{album:?}").as_bytes()),
        title: title.into(),
        artist: artist.map(Into::into),
        album: album.map(Into::into),
        duration_ms: 200_000,
        bitrate: 128_000,
        channels: 2,
        bytes: 3_200_000,
        source: format!("/music/{title}.ogg"),
        added_at: 1_700_000_000,
    }
}

/// A fresh, empty PostgreSQL database on the test server, or None when there is none.
async fn postgres() -> Option<Catalog> {
    let Ok(url) = std::env::var("SHOAL_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("SHOAL_REQUIRE_SERVICES").is_err(),
            "SHOAL_REQUIRE_SERVICES is set but SHOAL_TEST_POSTGRES_URL is not: PostgreSQL tests would be skipped"
        );
        eprintln!(
            "SHOAL_TEST_POSTGRES_URL unset: skipping the PostgreSQL half (scripts/services.sh starts one)"
        );
        return None;
    };
    let name = format!("shoal_test_{}_{}", std::process::id(), rand_suffix());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    // The name is ours (digits and underscores), not user input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    Some(Catalog::open(&format!("{base}/{name}")).await.unwrap())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

async fn sqlite(dir: &tempfile::TempDir) -> Catalog {
    Catalog::open(&Catalog::default_url(dir.path()))
        .await
        .unwrap()
}

async fn both(check: impl AsyncFn(Catalog, &'static str)) {
    let dir = tempfile::tempdir().unwrap();
    check(sqlite(&dir).await, "sqlite").await;
    if let Some(pg) = postgres().await {
        check(pg, "postgres").await;
    }
}

async fn titles(c: &Catalog, q: &str) -> Vec<String> {
    c.search(q, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.title)
        .collect()
}

async fn sample(c: &Catalog) {
    for m in [
        meta("Aberrations", Some("Sean Hayes"), Some("Singularity")),
        meta("A New Journey", Some("Sean Hayes"), Some("Singularity")),
        meta("Awakening", Some("Sean Hayes"), Some("Singularity")),
        meta("Journey to the Sea", Some("Sea Band"), None),
        meta("Blue", Some("Aberration Orchestra"), Some("Colours")),
        meta("Travel", None, Some("Aberrant Album")),
    ] {
        c.upsert(&m).await.unwrap();
    }
}

#[tokio::test]
async fn prefix_search_as_you_type() {
    both(async |c, db| {
        sample(&c).await;
        for q in ["a", "ab", "aber", "aberr", "aberra", "Aberrations"] {
            let t = titles(&c, q).await;
            assert!(
                t.contains(&"Aberrations".to_string()),
                "{db}: {q:?} → {t:?}"
            );
        }
        assert_eq!(titles(&c, "new jour").await, vec!["A New Journey"], "{db}");
        assert_eq!(
            titles(&c, "JOURNEY new").await,
            vec!["A New Journey"],
            "{db}: word order, case"
        );
        assert!(titles(&c, "xyzzy").await.is_empty(), "{db}");
    })
    .await;
}

#[tokio::test]
async fn title_outranks_artist_outranks_album() {
    both(async |c, db| {
        sample(&c).await;
        let t = titles(&c, "aberr").await;
        assert_eq!(t, vec!["Aberrations", "Blue", "Travel"], "{db}");
    })
    .await;
}

#[tokio::test]
async fn hostile_queries_are_plain_text() {
    both(async |c, db| {
        sample(&c).await;
        for q in [
            "",
            "   ",
            "\"",
            "*",
            "a OR b",
            "NEAR(a b)",
            "x:* & !y",
            "'; DROP TABLE tracks; --",
            "(((",
            "title:foo",
            "\0",
        ] {
            let r = c.search(q, 10).await;
            assert!(r.is_ok(), "{db}: {q:?} → {r:?}");
        }
        assert!(c.search("", 10).await.unwrap().is_empty());
        assert_eq!(c.count().await.unwrap(), 6, "{db}: still all there");
        assert_eq!(titles(&c, "\"awak").await, vec!["Awakening"], "{db}");
    })
    .await;
}

#[tokio::test]
async fn upsert_get_count_limit() {
    both(async |c, db| {
        sample(&c).await;
        let mut m = meta("Awakening", Some("Sean Hayes"), Some("Singularity"));
        assert_eq!(c.get(&m.id).await.unwrap().unwrap(), m, "{db}");
        m.title = "Awakening (remaster)".into();
        c.upsert(&m).await.unwrap();
        assert_eq!(c.count().await.unwrap(), 6, "{db}: replaced, not added");
        assert_eq!(
            titles(&c, "remaster").await,
            vec!["Awakening (remaster)"],
            "{db}: index follows updates"
        );
        assert!(c.get(&TrackId::of(b"none")).await.unwrap().is_none());
        assert_eq!(c.search("sean", 2).await.unwrap().len(), 2, "{db}: limit");
        c.remove(&m.id).await.unwrap();
        assert!(
            titles(&c, "remaster").await.is_empty(),
            "{db}: index follows deletes"
        );
        c.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sqlite_folds_diacritics() {
    let dir = tempfile::tempdir().unwrap();
    let c = sqlite(&dir).await;
    c.upsert(&meta("Café Noir", Some("Mötley"), None))
        .await
        .unwrap();
    assert_eq!(titles(&c, "cafe").await, vec!["Café Noir"]);
    assert_eq!(titles(&c, "motl").await, vec!["Café Noir"]);
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error() {
    let start = std::time::Instant::now();
    let err = Catalog::open("postgres://postgres@127.0.0.1:9/none")
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("database connect"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    let err = Catalog::open("mysql://x").await.unwrap_err();
    assert!(
        err.to_string().contains("use sqlite://PATH or postgres://"),
        "{err}"
    );
}
