//! Search latency on a catalog of 1,000,000 tracks (issue 4, "Benchmarks": p99 ≤ 20 ms with
//! SQLite).
//!
//! `cargo bench -p shoal-tracker --bench search`
//!
//! The catalog is synthetic but shaped like a real one, from a fixed seed: 50,000 artists,
//! 100,000 albums of 10 tracks, titles of 1–5 words drawn from a Zipf(1.0) vocabulary of common
//! English title words followed by ~20,000 generated words (so "love" and "the" match hundreds
//! of thousands of tracks while most words match a handful). It is built once through
//! [`Catalog::open`] (which creates the schema and the FTS5 triggers) and inserted in
//! transactions of 10,000 rows with the same statement as [`Catalog::upsert`] (1M autocommit
//! upserts would take far longer), then cached at `$CARGO_TARGET_DIR/bench-catalog-1m.sqlite`
//! (default `target/`); a cached file whose schema or generator version differs is rebuilt (one
//! from before the FTS5 prefix index is first upgraded in place by [`Catalog::open`], ≈ 10 s).
//!
//! Only [`Catalog::search`] (limit 20) is timed: 2,000 queries of mixed kinds, one at a time,
//! after a warm-up pass; it prints p50/p90/p99/max per kind and overall, and the CPU time per
//! query (which other load on the machine changes less than latency). The same queries then run
//! through the previous search (one FTS5 query, every word a prefix, `bm25()` over every match
//! before `LIMIT`) as a baseline under the same load, on a copy of the catalog with the previous
//! FTS5 table (no prefix index; see `baseline_pool`), made once and cached next to it; the
//! ratios new ÷ baseline are printed last. `SHOAL_BENCH_NO_BASELINE=1` skips it (≈ 1–2 min).
//! The hit counts per kind are the same for both: the tiers only order the same matches.
//!
//! With `SHOAL_BENCH_POSTGRES_URL` set (a throw-away database: 1M rows are written into its
//! `tracks` table, kept between runs) the same queries also run against PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use shoal_protocol::TrackId;
use shoal_tracker::net::catalog::{Catalog, MAX_SEARCH_RESULTS};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Bump when the generator changes so a cached catalog is rebuilt.
const GENERATOR_VERSION: i64 = 1;
const TRACKS: u64 = 1_000_000;
const TRACKS_PER_ALBUM: u64 = 10;
const ARTISTS: u64 = 50_000;
const QUERIES: usize = 2_000;
const WARMUP: usize = 300;
const LIMIT: u32 = 20;
const SEED: u64 = 0x5409_a1c4_7e11_2026;

/// Common title words, most frequent first (they head the Zipf vocabulary).
const COMMON: &[&str] = &[
    "the",
    "love",
    "you",
    "of",
    "me",
    "my",
    "in",
    "i",
    "a",
    "night",
    "heart",
    "time",
    "life",
    "to",
    "all",
    "baby",
    "day",
    "world",
    "your",
    "on",
    "dream",
    "home",
    "light",
    "fire",
    "blue",
    "never",
    "away",
    "song",
    "girl",
    "down",
    "dance",
    "rain",
    "sun",
    "back",
    "soul",
    "man",
    "little",
    "one",
    "go",
    "just",
    "like",
    "way",
    "good",
    "feel",
    "tonight",
    "forever",
    "gone",
    "road",
    "summer",
    "mind",
    "river",
    "stars",
    "heaven",
    "wild",
    "wind",
    "moon",
    "shadow",
    "under",
    "city",
    "dark",
    "blood",
    "sky",
    "highway",
    "rock",
    "street",
    "morning",
    "golden",
    "lonely",
    "memory",
    "storm",
    "ocean",
    "angel",
    "ghost",
    "midnight",
    "winter",
    "silver",
    "paradise",
    "freedom",
    "broken",
    "falling",
    "running",
    "burning",
    "dancing",
    "waiting",
    "dreaming",
    "crazy",
    "sweet",
    "black",
    "white",
    "red",
    "young",
    "old",
    "new",
    "last",
    "first",
    "lost",
    "free",
    "alive",
    "electric",
    "eternal",
    "journey",
    "echoes",
    "horizon",
    "thunder",
    "whisper",
    "diamond",
    "mirror",
    "secret",
    "promise",
    "kingdom",
    "garden",
    "island",
    "desert",
    "mountain",
    "valley",
    "fever",
    "velvet",
    "neon",
    "satellite",
    "gravity",
    "machine",
    "paper",
    "glass",
    "stone",
    "sugar",
    "honey",
    "cherry",
    "rose",
    "wolf",
    "tiger",
    "butterfly",
    "sparrow",
    "raven",
    "dragon",
    "queen",
    "king",
    "prince",
    "rebel",
    "hero",
    "stranger",
    "lover",
    "friend",
    "brother",
    "sister",
    "mother",
    "father",
    "children",
    "together",
    "alone",
    "goodbye",
    "hello",
    "yesterday",
    "tomorrow",
    "again",
    "everything",
    "nothing",
    "something",
    "somewhere",
    "nowhere",
    "inside",
    "outside",
    "beyond",
    "above",
    "below",
    "between",
    "through",
    "across",
    "without",
    "within",
    "remember",
    "believe",
    "breathe",
    "surrender",
    "rise",
    "fall",
    "shine",
    "fade",
    "burn",
    "run",
    "hold",
    "touch",
    "kiss",
    "cry",
    "smile",
    "tears",
    "wings",
    "bridge",
    "train",
    "station",
    "window",
    "door",
    "letter",
    "radio",
    "television",
    "telephone",
    "symphony",
    "overture",
    "prelude",
    "nocturne",
    "sonata",
    "concerto",
    "requiem",
    "lullaby",
    "serenade",
    "ballad",
    "blues",
    "groove",
    "boogie",
    "funk",
    "disco",
    "anthem",
    "hymn",
    "aberrations",
    "simulacra",
    "coherence",
];

const ONSETS: &[&str] = &[
    "b", "br", "c", "ch", "cl", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "kr", "l", "m",
    "n", "p", "pr", "qu", "r", "s", "sh", "sk", "st", "t", "th", "tr", "v", "w", "z",
];
const VOWELS: &[&str] = &[
    "a", "e", "i", "o", "u", "y", "ai", "ea", "ee", "ia", "io", "oa", "ou",
];
const CODAS: &[&str] = &[
    "", "", "", "n", "r", "l", "s", "m", "nd", "rt", "st", "x", "ck", "th", "ng",
];

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Zipf(1.0) over `n` ranks, sampled by binary search on the cumulative weights.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|k| {
                acc += 1.0 / k as f64;
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Self(cdf.into_iter().map(|c| c / total).collect())
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.f64();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

/// The synthetic world: vocabularies and the rules that make track `i`'s metadata.
struct World {
    /// Title vocabulary, most frequent first.
    words: Vec<String>,
    zipf: Zipf,
    /// Name-word vocabulary (artists, albums), uniform.
    names: Vec<String>,
    artists: Vec<String>,
}

fn made_up_word(rng: &mut Rng) -> String {
    let syllables = 1 + rng.below(3);
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(rng.pick::<&str>(ONSETS));
        w.push_str(rng.pick::<&str>(VOWELS));
    }
    w.push_str(rng.pick::<&str>(CODAS));
    w
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

impl World {
    fn new() -> Self {
        let mut rng = Rng(SEED);
        let mut seen: HashSet<String> = COMMON.iter().map(|w| (*w).to_owned()).collect();
        let mut fresh = |rng: &mut Rng, n: usize| {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let w = made_up_word(rng);
                if w.len() >= 3 && seen.insert(w.clone()) {
                    out.push(w);
                }
            }
            out
        };
        let mut words: Vec<String> = COMMON.iter().map(|w| (*w).to_owned()).collect();
        words.extend(fresh(&mut rng, 20_000));
        let names = fresh(&mut rng, 30_000);
        let artists = (0..ARTISTS)
            .map(|_| {
                let first = capitalise(rng.pick::<String>(&names));
                match rng.below(10) {
                    0..=3 => first,
                    4..=5 => format!("The {}s", capitalise(rng.pick::<String>(&names))),
                    _ => format!("{first} {}", capitalise(rng.pick::<String>(&names))),
                }
            })
            .collect();
        let zipf = Zipf::new(words.len());
        Self {
            words,
            zipf,
            names,
            artists,
        }
    }

    fn title_word(&self, rng: &mut Rng) -> &str {
        &self.words[self.zipf.sample(rng)]
    }

    fn title(&self, rng: &mut Rng, max_words: u64) -> String {
        let n = 1 + rng.below(max_words);
        (0..n)
            .map(|_| capitalise(self.title_word(rng)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Album `a`: (artist, album title), from its own seed.
    fn album(&self, a: u64) -> (String, String) {
        let mut rng = Rng(SEED ^ 0xa1b0_0000_0000_0000 ^ a);
        let artist = self.artists[rng.below(ARTISTS) as usize].clone();
        let title = if rng.below(3) == 0 {
            capitalise(rng.pick::<String>(&self.names))
        } else {
            self.title(&mut rng, 3)
        };
        (artist, title)
    }

    /// Track `i`'s metadata, from its own seed (so queries can be made from real tracks).
    fn track(&self, i: u64) -> (TrackId, String, String, String) {
        let (artist, album) = self.album(i / TRACKS_PER_ALBUM);
        let mut rng = Rng(SEED ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut id = [0u8; 32];
        for c in id.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        let title = self.title(&mut rng, 5);
        (TrackId::from_bytes(id), title, artist, album)
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

const INSERT: &str = "INSERT INTO tracks (id, title, artist, album, duration_ms, bitrate, channels, bytes, source, added_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT(id) DO UPDATE SET title = excluded.title, artist = excluded.artist,
       album = excluded.album, duration_ms = excluded.duration_ms, bitrate = excluded.bitrate,
       channels = excluded.channels, bytes = excluded.bytes, source = excluded.source";

/// The schema `Catalog::open` creates, as SQLite records it.
async fn schema_of(pool: &sqlx::SqlitePool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn reference_schema() -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let Catalog::Sqlite(pool) = Catalog::open(&Catalog::default_url(dir.path()))
        .await
        .unwrap()
    else {
        unreachable!()
    };
    let schema = schema_of(&pool).await;
    pool.close().await;
    schema
}

/// The cached catalog if it is complete and current, else a freshly built one.
async fn sqlite_catalog(world: &World) -> Catalog {
    let path = target_dir().join("bench-catalog-1m.sqlite");
    let url = format!("sqlite://{}", path.display());
    let expected = reference_schema().await;
    if path.exists() {
        let catalog = Catalog::open(&url).await.unwrap();
        let Catalog::Sqlite(pool) = &catalog else {
            unreachable!()
        };
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(pool)
            .await
            .unwrap();
        if version == GENERATOR_VERSION
            && schema_of(pool).await == expected
            && catalog.count().await.unwrap() == TRACKS
        {
            eprintln!("using the cached catalog {}", path.display());
            return catalog;
        }
        eprintln!("cached catalog {} is stale: rebuilding", path.display());
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let catalog = Catalog::open(&url).await.unwrap();
    let Catalog::Sqlite(pool) = &catalog else {
        unreachable!()
    };
    let started = Instant::now();
    eprintln!(
        "building a catalog of {TRACKS} tracks at {} ...",
        path.display()
    );
    let batch = 10_000;
    for start in (0..TRACKS).step_by(batch) {
        let mut tx = pool.begin().await.unwrap();
        for i in start..(start + batch as u64).min(TRACKS) {
            let (id, title, artist, album) = world.track(i);
            sqlx::query(INSERT)
                .bind(id.to_string())
                .bind(title)
                .bind(artist)
                .bind(album)
                .bind(120_000 + (i % 240_000) as i64)
                .bind(128_000_i64)
                .bind(2_i64)
                .bind(2_000_000 + (i % 3_000_000) as i64)
                .bind(format!("/music/{i}.flac"))
                .bind(1_700_000_000 + i as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        if (start + batch as u64) % 100_000 == 0 {
            eprintln!(
                "  {} tracks, {:.0} s",
                start + batch as u64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA user_version = {GENERATOR_VERSION}"
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(catalog.count().await.unwrap(), TRACKS);
    eprintln!(
        "built in {:.0} s ({:.0} MB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&path).unwrap().len() as f64 / 1e6
    );
    catalog
}

/// The same catalog in PostgreSQL (kept between runs when it already holds the 1M tracks).
async fn postgres_catalog(world: &World, url: &str) -> Catalog {
    let catalog = Catalog::open(url).await.unwrap();
    let Catalog::Postgres(pool) = &catalog else {
        panic!("SHOAL_BENCH_POSTGRES_URL must be a postgres:// URL")
    };
    let (id0, ..) = world.track(0);
    let have_first: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tracks WHERE id = $1)")
        .bind(id0.to_string())
        .fetch_one(pool)
        .await
        .unwrap();
    if have_first && catalog.count().await.unwrap() == TRACKS {
        eprintln!("using the PostgreSQL catalog already loaded");
        return catalog;
    }
    sqlx::query("TRUNCATE tracks").execute(pool).await.unwrap();
    let started = Instant::now();
    eprintln!("loading {TRACKS} tracks into PostgreSQL ...");
    let batch = 1_000_u64;
    for start in (0..TRACKS).step_by(batch as usize) {
        let rows = (start..(start + batch).min(TRACKS)).map(|i| world.track(i));
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO tracks (id, title, artist, album, duration_ms, bitrate, channels, bytes, source, added_at) ",
        );
        q.push_values(
            rows.enumerate(),
            |mut b, (k, (id, title, artist, album))| {
                let i = start + k as u64;
                b.push_bind(id.to_string())
                    .push_bind(title)
                    .push_bind(artist)
                    .push_bind(album)
                    .push_bind(120_000 + (i % 240_000) as i64)
                    .push_bind(128_000_i64)
                    .push_bind(2_i64)
                    .push_bind(2_000_000 + (i % 3_000_000) as i64)
                    .push_bind(format!("/music/{i}.flac"))
                    .push_bind(1_700_000_000 + i as i64);
            },
        );
        q.build().execute(pool).await.unwrap();
    }
    sqlx::query("ANALYZE tracks").execute(pool).await.unwrap();
    eprintln!("loaded in {:.0} s", started.elapsed().as_secs_f64());
    catalog
}

/// What a user types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// 2–6 letters of one title word, chosen as often as titles use it.
    Prefix1,
    /// A full word of a real track's title and 2–6 letters of the next.
    Prefix2,
    /// One of the 30 most common words, complete.
    CommonWord,
    /// A rare word (the least frequent half of the vocabulary), complete.
    RareWord,
    /// A real track's artist name, complete.
    Artist,
    /// A real track's full title and its artist's first name.
    TitleArtist,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Prefix1,
        Kind::Prefix2,
        Kind::CommonWord,
        Kind::RareWord,
        Kind::Artist,
        Kind::TitleArtist,
    ];
    fn describe(self) -> &'static str {
        match self {
            Kind::Prefix1 => "1-word prefix, 2–6 letters (Zipf word)",
            Kind::Prefix2 => "word + prefix of the next (real title)",
            Kind::CommonWord => "common word (top 30)",
            Kind::RareWord => "rare word",
            Kind::Artist => "artist name",
            Kind::TitleArtist => "full title + artist",
        }
    }
}

fn prefix(rng: &mut Rng, word: &str) -> String {
    let n = 2 + rng.below(5) as usize;
    word.chars().take(n).collect()
}

fn queries(world: &World, n: usize) -> Vec<(Kind, String)> {
    let mut rng = Rng(SEED ^ 0x0e7e_5ea7_c400_0000);
    (0..n)
        .map(|k| {
            let kind = Kind::ALL[k % Kind::ALL.len()];
            let (_, title, artist, _) = world.track(rng.below(TRACKS));
            let words: Vec<&str> = title.split(' ').collect();
            let q = match kind {
                Kind::Prefix1 => {
                    let w = world.title_word(&mut rng);
                    prefix(&mut rng, w)
                }
                Kind::Prefix2 => {
                    let (_, t, _, _) = loop {
                        let t = world.track(rng.below(TRACKS));
                        if t.1.contains(' ') {
                            break t;
                        }
                    };
                    let w: Vec<&str> = t.split(' ').collect();
                    let at = rng.below(w.len() as u64 - 1) as usize;
                    format!("{} {}", w[at], prefix(&mut rng, w[at + 1]))
                }
                Kind::CommonWord => world.words[rng.below(30) as usize].clone(),
                Kind::RareWord => {
                    let half = world.words.len() as u64 / 2;
                    world.words[(half + rng.below(half)) as usize].clone()
                }
                Kind::Artist => artist,
                Kind::TitleArtist => format!(
                    "{} {}",
                    words.join(" "),
                    artist.split(' ').next().unwrap_or_default()
                ),
            };
            (kind, q)
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The search before tiers and candidate caps (the baseline): every word a prefix, one FTS5
/// query ranking every match by `bm25()` before `LIMIT` applies.
async fn baseline_search(pool: &sqlx::SqlitePool, query: &str, limit: u32) -> usize {
    let fts = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            format!(
                "\"{}\"*",
                w.chars().take(64).collect::<String>().to_lowercase()
            )
        })
        .take(8)
        .collect::<Vec<_>>()
        .join(" AND ");
    if fts.is_empty() {
        return 0;
    }
    sqlx::query(
        "SELECT id, title, artist, album, duration_ms, bitrate, channels, bytes, source, added_at
         FROM tracks JOIN (
            SELECT rowid AS r, bm25(tracks_fts, 10.0, 4.0, 2.0) AS rank FROM tracks_fts
            WHERE tracks_fts MATCH ?1 ORDER BY rank LIMIT ?2) AS hits ON tracks.rowid = hits.r
         ORDER BY hits.rank, title",
    )
    .bind(fts)
    .bind(i64::from(limit.clamp(1, MAX_SEARCH_RESULTS)))
    .fetch_all(pool)
    .await
    .unwrap()
    .len()
}

/// A copy of the catalog whose FTS5 table is as the previous search had it (no prefix index),
/// for the baseline: `$CARGO_TARGET_DIR/bench-catalog-1m-baseline.sqlite`, made from the catalog
/// (`VACUUM INTO`, then the FTS5 table created again and rebuilt, ≈ 30 s) and kept while it
/// holds the same tracks.
async fn baseline_pool(world: &World, catalog: &sqlx::SqlitePool) -> sqlx::SqlitePool {
    let path = target_dir().join("bench-catalog-1m-baseline.sqlite");
    let open = async || {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap()
    };
    if path.exists() {
        let pool = open().await;
        let fts: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'tracks_fts'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        let first: Option<String> = sqlx::query_scalar("SELECT id FROM tracks WHERE rowid = 1")
            .fetch_optional(&pool)
            .await
            .unwrap();
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tracks")
            .fetch_one(&pool)
            .await
            .unwrap();
        if fts.is_some_and(|sql| !sql.contains("prefix="))
            && first == Some(world.track(0).0.to_string())
            && count == TRACKS as i64
        {
            eprintln!("using the cached baseline catalog {}", path.display());
            return pool;
        }
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    eprintln!(
        "copying the catalog for the baseline to {} ...",
        path.display()
    );
    sqlx::query("VACUUM INTO ?1")
        .bind(path.display().to_string())
        .execute(catalog)
        .await
        .unwrap();
    let pool = open().await;
    for stmt in [
        "DROP TABLE tracks_fts",
        "CREATE VIRTUAL TABLE tracks_fts USING fts5(
            title, artist, album, content='tracks', content_rowid='rowid',
            tokenize='unicode61 remove_diacritics 2')",
        "INSERT INTO tracks_fts(tracks_fts) VALUES ('rebuild')",
    ] {
        sqlx::query(stmt).execute(&pool).await.unwrap();
    }
    pool
}

/// What is timed: the catalog's search, or the baseline on its copy of the catalog.
#[derive(Clone, Copy)]
enum Engine<'a> {
    Catalog(&'a Catalog),
    Baseline(&'a sqlx::SqlitePool),
}

impl Engine<'_> {
    async fn search(self, q: &str) -> usize {
        match self {
            Engine::Catalog(c) => c.search(q, LIMIT).await.unwrap().len(),
            Engine::Baseline(pool) => baseline_search(pool, q, LIMIT).await,
        }
    }
}

/// CPU time used so far by all of this process's threads (Linux: `/proc/self/task/*/schedstat`,
/// in ns), or None elsewhere. Unlike latency, it hardly depends on what else the machine runs:
/// SQLite searches run in this process (sqlx's connection threads), so it is their cost.
fn cpu_time() -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// Runs the queries; returns every query's latency, sorted.
async fn run(name: &str, engine: Engine<'_>, tracks: u64, qs: &[(Kind, String)]) -> Vec<Duration> {
    for (_, q) in qs.iter().take(WARMUP) {
        engine.search(q).await;
    }
    let mut by_kind: BTreeMap<Kind, (Vec<Duration>, usize, usize)> = BTreeMap::new();
    let mut all = Vec::with_capacity(qs.len());
    let mut slowest = (Duration::ZERO, String::new());
    let mut cpu = Vec::with_capacity(qs.len());
    for (kind, q) in qs {
        let c = cpu_time();
        let t = Instant::now();
        let hits = engine.search(q).await;
        let dt = t.elapsed();
        if let (Some(c0), Some(c1)) = (c, cpu_time()) {
            cpu.push(c1.saturating_sub(c0));
        }
        let e = by_kind.entry(*kind).or_default();
        e.0.push(dt);
        e.1 += hits;
        e.2 += usize::from(hits == 0);
        all.push(dt);
        if dt > slowest.0 {
            slowest = (dt, q.clone());
        }
    }
    println!();
    println!(
        "{name}: {tracks} tracks, {} queries, limit {LIMIT}, one at a time",
        qs.len()
    );
    println!();
    println!("| query kind | example | queries | mean hits | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, (mut t, hits, _)) in by_kind {
        t.sort();
        let example = qs.iter().find(|(k, _)| *k == kind).unwrap().1.clone();
        println!(
            "| {} | `{example}` | {} | {:.1} | {} | {} | {} | {} |",
            kind.describe(),
            t.len(),
            hits as f64 / t.len() as f64,
            ms(pct(&t, 0.5)),
            ms(pct(&t, 0.9)),
            ms(pct(&t, 0.99)),
            ms(*t.last().unwrap()),
        );
    }
    all.sort();
    println!(
        "| **all** | | {} | | **{}** | {} | **{}** | {} |",
        all.len(),
        ms(pct(&all, 0.5)),
        ms(pct(&all, 0.9)),
        ms(pct(&all, 0.99)),
        ms(*all.last().unwrap()),
    );
    println!();
    println!("slowest query: {:?} ({})", slowest.1, ms(slowest.0));
    if cpu.len() == qs.len() && !matches!(engine, Engine::Catalog(Catalog::Postgres(_))) {
        cpu.sort();
        println!(
            "CPU time per query (all threads of this process, whatever else runs): p50 {}, p90 {}, p99 {}, max {}",
            ms(pct(&cpu, 0.5)),
            ms(pct(&cpu, 0.9)),
            ms(pct(&cpu, 0.99)),
            ms(*cpu.last().unwrap()),
        );
    }
    all
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: skip the 1M-track
    // build there (`cargo bench` passes `--bench`).
    if !std::env::args().any(|a| a == "--bench") {
        println!("search benchmark: run it with `cargo bench -p shoal-tracker --bench search`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let world = World::new();
        let qs = queries(&world, QUERIES);
        let sqlite = sqlite_catalog(&world).await;
        let tracks = sqlite.count().await.unwrap();
        let new = run("SQLite (FTS5, WAL)", Engine::Catalog(&sqlite), tracks, &qs).await;
        if std::env::var_os("SHOAL_BENCH_NO_BASELINE").is_none() {
            let Catalog::Sqlite(pool) = &sqlite else {
                unreachable!()
            };
            let baseline = baseline_pool(&world, pool).await;
            let name = "SQLite baseline (previous search and FTS5 index: bm25 over every match)";
            let old = run(name, Engine::Baseline(&baseline), tracks, &qs).await;
            println!();
            println!("SQLite search ÷ baseline, same queries, same run:");
            for (p, label) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                let (n, o) = (pct(&new, p), pct(&old, p));
                println!(
                    "  {label}: {} vs {} = {:.3}",
                    ms(n),
                    ms(o),
                    n.as_secs_f64() / o.as_secs_f64()
                );
            }
        }
        if let Ok(url) = std::env::var("SHOAL_BENCH_POSTGRES_URL") {
            let pg = postgres_catalog(&world, &url).await;
            let tracks = pg.count().await.unwrap();
            run(
                "PostgreSQL (tsvector + GIN)",
                Engine::Catalog(&pg),
                tracks,
                &qs,
            )
            .await;
        }
    });
}
