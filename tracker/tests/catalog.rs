//! The catalog's behaviour, run against both backends: embedded SQLite (always) and
//! PostgreSQL (when `SHOAL_TEST_POSTGRES_URL` is set; `scripts/services.sh` starts one, and with
//! `SHOAL_REQUIRE_SERVICES=1`, as in CI, a missing URL fails instead of skipping).
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use shoal_protocol::TrackId;
use shoal_tracker::net::catalog::{Catalog, SQLITE_RANK_ALL_UP_TO};
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
async fn whole_words_and_titles_rank_first() {
    both(async |c, db| {
        sample(&c).await;
        for m in [
            meta("Lovely Day", Some("Sun Trio"), None),
            meta(
                "Songs of Love and Heartbreak and Other Long Stories",
                None,
                None,
            ),
            meta("Harbour", Some("Love Inc"), None),
            meta("Travel Light", None, Some("Lovers Rock")),
            meta("Love", Some("Sun Trio"), None),
        ] {
            c.upsert(&m).await.unwrap();
        }
        assert_eq!(
            titles(&c, "love").await,
            vec![
                // the word in the title, the shorter title first
                "Love",
                "Songs of Love and Heartbreak and Other Long Stories",
                // the word in the artist
                "Harbour",
                // a longer word in the title, then in the album
                "Lovely Day",
                "Travel Light",
            ],
            "{db}"
        );
        assert_eq!(
            titles(&c, "love sun").await,
            vec!["Love", "Lovely Day"],
            "{db}: whole words before a word that is only a prefix"
        );
        assert_eq!(
            titles(&c, "jour new").await,
            vec!["A New Journey"],
            "{db}: earlier words still match as prefixes"
        );
    })
    .await;
}

/// Up to `SQLITE_RANK_ALL_UP_TO` matches, SQLite ranks them all: the best comes first even when
/// it is the newest of many.
#[tokio::test]
async fn few_matches_are_all_ranked() {
    both(async |c, db| {
        for i in 0..SQLITE_RANK_ALL_UP_TO - 100 {
            c.upsert(&meta(&format!("Love Song Number {i}"), None, None))
                .await
                .unwrap();
        }
        c.upsert(&meta("Lovers", Some("Love"), None)).await.unwrap();
        c.upsert(&meta("Love", None, None)).await.unwrap();
        let t = titles(&c, "love").await;
        assert_eq!(
            t[..3],
            ["Love", "Love Song Number 0", "Love Song Number 1"],
            "{db}"
        );
        assert_eq!(t[19], "Love Song Number 18", "{db}: shortest first: {t:?}");
        let t = titles(&c, "lovers").await;
        assert_eq!(t, ["Lovers"], "{db}");
    })
    .await;
}

/// Beyond `SQLITE_RANK_ALL_UP_TO` matches, SQLite ranks at most that many of each tier; the
/// tiers themselves are never cut, so the one title with the whole word comes first however
/// many partial or artist/album matches there are, and however old they are.
#[tokio::test]
async fn best_tier_wins_over_more_matches_than_are_ranked() {
    both(async |c, db| {
        let n = SQLITE_RANK_ALL_UP_TO + 200;
        for i in 0..n {
            c.upsert(&meta(&format!("Track {i}"), None, Some("Love Collection")))
                .await
                .unwrap();
            c.upsert(&meta(&format!("Lovely {i}"), None, None))
                .await
                .unwrap();
        }
        c.upsert(&meta("Endless Love", Some("Late Band"), None))
            .await
            .unwrap();
        let t = titles(&c, "love").await;
        assert_eq!(t.len(), 20, "{db}");
        assert_eq!(t[0], "Endless Love", "{db}: {t:?}");
        assert!(
            t[1..].iter().all(|t| t.starts_with("Track ")),
            "{db}: {t:?}"
        );
        let t = titles(&c, "lovel").await;
        assert!(t.iter().all(|t| t.starts_with("Lovely ")), "{db}: {t:?}");
        assert_eq!(titles(&c, "late lov").await, vec!["Endless Love"], "{db}");
    })
    .await;
}

/// A catalog written by an older version (FTS5 table without its prefix index) opens, gets the
/// new index, and searches as a new one does.
#[tokio::test]
async fn sqlite_upgrades_an_older_search_index() {
    let dir = tempfile::tempdir().unwrap();
    let url = Catalog::default_url(dir.path());
    {
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        for stmt in [
            "CREATE TABLE tracks (
                id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, artist TEXT, album TEXT,
                duration_ms INTEGER NOT NULL, bitrate INTEGER NOT NULL, channels INTEGER NOT NULL,
                bytes INTEGER NOT NULL, source TEXT NOT NULL, added_at INTEGER NOT NULL)",
            "CREATE VIRTUAL TABLE tracks_fts USING fts5(
                title, artist, album, content='tracks', content_rowid='rowid',
                tokenize='unicode61 remove_diacritics 2')",
            "CREATE TRIGGER tracks_ai AFTER INSERT ON tracks BEGIN
                INSERT INTO tracks_fts(rowid, title, artist, album) VALUES (new.rowid, new.title, new.artist, new.album);
             END",
            "CREATE TRIGGER tracks_ad AFTER DELETE ON tracks BEGIN
                INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album) VALUES ('delete', old.rowid, old.title, old.artist, old.album);
             END",
            "CREATE TRIGGER tracks_au AFTER UPDATE ON tracks BEGIN
                INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album) VALUES ('delete', old.rowid, old.title, old.artist, old.album);
                INSERT INTO tracks_fts(rowid, title, artist, album) VALUES (new.rowid, new.title, new.artist, new.album);
             END",
            "INSERT INTO tracks VALUES ('x', 'Aberrations', 'Sean Hayes', 'Singularity', 1, 1, 2, 1, 's', 1)",
        ] {
            sqlx::query(stmt).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let fts_sql = async |c: &Catalog| -> String {
        let Catalog::Sqlite(pool) = c else {
            unreachable!()
        };
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'tracks_fts'")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    // The old row is rebuilt into the new index (read with raw SQL: its id is no TrackId).
    let c = Catalog::open(&url).await.unwrap();
    assert!(fts_sql(&c).await.contains("prefix='1 2 3 4'"));
    let Catalog::Sqlite(pool) = &c else {
        unreachable!()
    };
    let hits: Vec<i64> =
        sqlx::query_scalar("SELECT rowid FROM tracks_fts WHERE tracks_fts MATCH '\"ab\"*'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(hits, vec![1]);
    sqlx::query("DELETE FROM tracks WHERE id = 'x'")
        .execute(pool)
        .await
        .unwrap();
    sample(&c).await;
    assert_eq!(
        titles(&c, "aberr").await,
        vec!["Aberrations", "Blue", "Travel"]
    );
    drop(c);
    let c = Catalog::open(&url).await.unwrap();
    assert!(fts_sql(&c).await.contains("prefix='1 2 3 4'"));
    assert_eq!(c.count().await.unwrap(), 6);
    assert_eq!(titles(&c, "awak").await, vec!["Awakening"]);
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
