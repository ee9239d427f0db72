//! The catalog: track metadata with full-text search ranked by relevance, prefix matching as
//! you type ("aberr" finds "Aberrations"). SQLite with FTS5 in the data directory by default;
//! PostgreSQL (its own full-text search, `tsvector` + GIN) when several tracker replicas share
//! one catalog. Both behind the same [`Catalog`] API and the same tests, and both rank matches
//! the same way (see [`Catalog::search`]).

use std::str::FromStr;
use std::time::Duration;

use shoal_protocol::TrackId;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::store::TrackMeta;

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    BadUrl(String),
    /// The database cannot be reached or refused the operation.
    #[error("database {what}: {err}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// sqlx's error.
        err: sqlx::Error,
    },
    /// A row holds something that is not a valid track.
    #[error("corrupt catalog row {id}: {reason}")]
    Corrupt {
        /// The row's id column.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl CatalogError {
    /// True when the database is unreachable (down, restarting), not when a query is wrong:
    /// the HTTP layer answers 503 for these and recovers when the database is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CatalogError::Database { err, .. } => {
                matches!(
                    err,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                ) || matches!(err, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
            }
            _ => false,
        }
    }
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |err| CatalogError::Database { what, err }
}

/// The most results one search returns.
pub const MAX_SEARCH_RESULTS: u32 = 100;

/// Turns what a user typed into search terms: words of letters and digits, lowercased, at most
/// 8 of at most 64 characters, so no query syntax from the user reaches FTS5 or tsquery.
fn terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
        .take(8)
        .collect()
}

/// Keeps the last of repeated terms ("the love the" → "love", "the": the last is the prefix).
fn dedup_terms(terms: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(terms.len());
    for (i, t) in terms.iter().enumerate() {
        if !terms[i + 1..].contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// How the words of a query must match a track: [`Catalog::search`] returns the tracks of an
/// earlier tier (see [`TIERS`]) before those of a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tier {
    words: Words,
    columns: Columns,
}

/// Which words of a query are matched as prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Words {
    /// None: every word whole ("love" finds "Love Song", not "Lovely").
    Whole,
    /// The last: what someone still typing it means ("new jour" → "A New Journey").
    LastPrefix,
    /// All of them ("jour new" → "A New Journey"): what a search matches.
    Prefixes,
}

/// Where the words of a query must all be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    Title,
    TitleArtist,
    All,
}

/// The tiers, best first. The last one is the set of tracks a search matches; the one before it
/// (every word but the last whole, anywhere) holds all the others. Within a tier, tracks whose
/// matched columns (title; title + artist; title + artist + album) are shortest come first (the
/// words are a larger part of them), then by title: this needs nothing beyond the rows, unlike
/// FTS5's `bm25()`, which counts on every search all the tracks holding each word (10 ms for
/// "the" on 1M tracks) and scores every match before `LIMIT` applies.
const TIERS: [Tier; 7] = {
    use Columns::*;
    use Words::*;
    const fn t(words: Words, columns: Columns) -> Tier {
        Tier { words, columns }
    }
    [
        t(Whole, Title),
        t(Whole, TitleArtist),
        t(Whole, All),
        t(LastPrefix, Title),
        t(LastPrefix, TitleArtist),
        t(LastPrefix, All),
        t(Prefixes, All),
    ]
};

/// The index in [`TIERS`] of every word but the last whole, in any column: a superset of the
/// tiers before it.
const LAST_PREFIX_ANYWHERE: usize = 5;

/// SQL ordering the matches of one tier (in a column `tier`, the index in [`TIERS`]): the
/// summed length of the columns that tier searches. The same in SQLite and PostgreSQL.
macro_rules! tier_order {
    () => {
        "tier, length(title) + CASE WHEN tier IN (0, 3) THEN 0
              WHEN tier IN (1, 4) THEN coalesce(length(artist), 0)
              ELSE coalesce(length(artist), 0) + coalesce(length(album), 0) END, title"
    };
}

impl Tier {
    /// `"*"` when the `i`th of `n` terms is matched as a prefix, else `""`.
    fn star(self, i: usize, n: usize) -> &'static str {
        let prefix = match self.words {
            Words::Whole => false,
            Words::LastPrefix => i + 1 == n,
            Words::Prefixes => true,
        };
        if prefix { "*" } else { "" }
    }

    /// This tier as an FTS5 query: each term quoted (no FTS5 syntax from users; [`terms`] keeps
    /// only letters and digits), `*` for a prefix, a column filter.
    fn fts5(self, terms: &[String]) -> String {
        let all = terms
            .iter()
            .enumerate()
            .map(|(i, t)| format!("\"{t}\"{}", self.star(i, terms.len())))
            .collect::<Vec<_>>()
            .join(" AND ");
        match self.columns {
            Columns::Title => format!("{{title}} : ({all})"),
            Columns::TitleArtist => format!("{{title artist}} : ({all})"),
            Columns::All => all,
        }
    }

    /// This tier as a PostgreSQL `tsquery` (`simple` configuration): `:*` for a prefix, the
    /// weights of the columns (`A` title, `B` artist, `C` album: see `PG_SCHEMA`).
    fn tsquery(self, terms: &[String]) -> String {
        let weights = match self.columns {
            Columns::Title => "A",
            Columns::TitleArtist => "AB",
            Columns::All => "",
        };
        terms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let star = self.star(i, terms.len());
                if star.is_empty() && weights.is_empty() {
                    t.clone()
                } else {
                    format!("{t}:{star}{weights}")
                }
            })
            .collect::<Vec<_>>()
            .join(" & ")
    }
}

/// SQLite: up to this many matches, a search is ranked exactly; beyond, each tier ranks only its
/// first this many matches.
///
/// [`Catalog::search`] first asks FTS5 for the tracks matching every word but the last whole
/// and the last as a prefix (the tiers but the last), unranked, and stops at this many + 1. When
/// there are at most this many, their tiers are found by running the tiers' queries against
/// those tracks alone (copied into a small in-memory FTS5 table with the same tokenizer), so
/// every match is ranked; a search with few matches costs one query of the catalog's index
/// however common its words. With more, the tiers are read from the catalog's index one after
/// another, best first, each unranked up to this many matches (in index order: oldest tracks
/// first), which are then ordered; the next tier is only read while fewer than `limit` tracks
/// are found. Tracks matching only with every word as a prefix (the last tier) come after the
/// others in both cases, read from the index like a tier of the second.
///
/// The trade-off, beyond this many matches: tiers are still never mixed up (a title with every
/// word whole comes before any number of prefix or album matches, however old), but within a
/// tier holding more than this many matches, the best-ordered ones (shortest fields) among
/// *all* of them may be missed: the order is that of an arbitrary (but stable) subset. Every
/// word whole in the title already is a strong match, and a common query ("love", "th") has
/// thousands of such equally good ones.
pub const SQLITE_RANK_ALL_UP_TO: u32 = 500;

/// A catalog handle (cheap to clone: a connection pool).
#[derive(Debug, Clone)]
pub enum Catalog {
    /// Embedded SQLite with FTS5.
    Sqlite(SqlitePool),
    /// Shared PostgreSQL.
    Postgres(PgPool),
}

/// The FTS5 table's arguments. `prefix='1 2 3 4'` also indexes the first 1 to 4 characters of
/// every token, so a prefix of up to 4 letters (`a*`, `th*`, `love*`) reads one list of matches
/// instead of merging, on every search, those of every token it starts (120 ms for `th*` on 1M
/// tracks without it, 5 ms for `love*`). On 1M tracks the FTS5 index grows from 29 to 125 MB
/// (the whole file from 286 to ≈ 380 MB). Longer prefixes start few tokens and stay cheap.
macro_rules! fts5_args {
    () => {
        "title, artist, album, content='tracks', content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 2', prefix='1 2 3 4'"
    };
}

const SQLITE_FTS: &str = concat!(
    "CREATE VIRTUAL TABLE IF NOT EXISTS tracks_fts USING fts5(",
    fts5_args!(),
    ")"
);

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tracks (
        id TEXT PRIMARY KEY NOT NULL,
        title TEXT NOT NULL,
        artist TEXT,
        album TEXT,
        duration_ms INTEGER NOT NULL,
        bitrate INTEGER NOT NULL,
        channels INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        source TEXT NOT NULL,
        added_at INTEGER NOT NULL)",
    SQLITE_FTS,
    "CREATE TRIGGER IF NOT EXISTS tracks_ai AFTER INSERT ON tracks BEGIN
        INSERT INTO tracks_fts(rowid, title, artist, album) VALUES (new.rowid, new.title, new.artist, new.album);
     END",
    "CREATE TRIGGER IF NOT EXISTS tracks_ad AFTER DELETE ON tracks BEGIN
        INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album) VALUES ('delete', old.rowid, old.title, old.artist, old.album);
     END",
    "CREATE TRIGGER IF NOT EXISTS tracks_au AFTER UPDATE ON tracks BEGIN
        INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album) VALUES ('delete', old.rowid, old.title, old.artist, old.album);
        INSERT INTO tracks_fts(rowid, title, artist, album) VALUES (new.rowid, new.title, new.artist, new.album);
     END",
];

const PG_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tracks (
        id TEXT PRIMARY KEY NOT NULL,
        title TEXT NOT NULL,
        artist TEXT,
        album TEXT,
        duration_ms BIGINT NOT NULL,
        bitrate BIGINT NOT NULL,
        channels BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        source TEXT NOT NULL,
        added_at BIGINT NOT NULL,
        search tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('simple', coalesce(title, '')), 'A') ||
            setweight(to_tsvector('simple', coalesce(artist, '')), 'B') ||
            setweight(to_tsvector('simple', coalesce(album, '')), 'C')) STORED)",
    "CREATE INDEX IF NOT EXISTS tracks_search ON tracks USING GIN (search)",
];

macro_rules! columns {
    () => {
        "id, title, artist, album, duration_ms, bitrate, channels, bytes, source, added_at"
    };
}

impl Catalog {
    /// Opens (creating the schema if needed) the catalog at `url`: `sqlite://PATH` or
    /// `postgres://...`. Fails fast (5 s) when the database is unreachable.
    pub async fn open(url: &str) -> Result<Self, CatalogError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| CatalogError::BadUrl(url.to_owned()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                // The search's small ranking table (see `search_sqlite`) stays in memory.
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(db("open"))?;
            for stmt in SQLITE_SCHEMA {
                sqlx::query(*stmt)
                    .execute(&pool)
                    .await
                    .map_err(db("create schema"))?;
            }
            upgrade_sqlite_fts(&pool).await?;
            Ok(Catalog::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(db("connect"))?;
            let mut tx = pool.begin().await.map_err(db("create schema"))?;
            // Replicas starting together must not race on CREATE TABLE.
            sqlx::query("SELECT pg_advisory_xact_lock(7700)")
                .execute(&mut *tx)
                .await
                .map_err(db("create schema"))?;
            for stmt in PG_SCHEMA {
                sqlx::query(*stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("create schema"))?;
            }
            tx.commit().await.map_err(db("create schema"))?;
            Ok(Catalog::Postgres(pool))
        } else {
            Err(CatalogError::BadUrl(url.to_owned()))
        }
    }

    /// The default embedded catalog for a data directory.
    pub fn default_url(data: &std::path::Path) -> String {
        format!("sqlite://{}", data.join("catalog.sqlite").display())
    }

    /// Adds or replaces a track's metadata.
    pub async fn upsert(&self, m: &TrackMeta) -> Result<(), CatalogError> {
        // `$N` placeholders are understood by both SQLite and PostgreSQL.
        const UPSERT: &str = "INSERT INTO tracks
              (id, title, artist, album, duration_ms, bitrate, channels, bytes, source, added_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT(id) DO UPDATE SET title = excluded.title, artist = excluded.artist,
              album = excluded.album, duration_ms = excluded.duration_ms, bitrate = excluded.bitrate,
              channels = excluded.channels, bytes = excluded.bytes, source = excluded.source";
        let id = m.id.to_string();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        macro_rules! bound {
            () => {
                sqlx::query(UPSERT)
                    .bind(&id)
                    .bind(&m.title)
                    .bind(&m.artist)
                    .bind(&m.album)
                    .bind(as_i64(m.duration_ms))
                    .bind(i64::from(m.bitrate))
                    .bind(i64::from(m.channels))
                    .bind(as_i64(m.bytes))
                    .bind(&m.source)
                    .bind(as_i64(m.added_at))
            };
        }
        match self {
            Catalog::Sqlite(pool) => bound!().execute(pool).await.map(|_| ()),
            Catalog::Postgres(pool) => bound!().execute(pool).await.map(|_| ()),
        }
        .map_err(db("insert"))
    }

    /// Tracks matching every word of `query` as a prefix ("aberr" finds "Aberrations"), most
    /// relevant first, at most `limit` (≤ [`MAX_SEARCH_RESULTS`]). An empty query finds nothing.
    ///
    /// Relevance is by tier first (see `TIERS`): every word whole (in the title, then in the
    /// title and artist, then anywhere), then the same with the last word as a prefix, then
    /// every word as a prefix; within a tier, the shortest matched columns first, then by title.
    /// So title matches outrank artist ones, artist outranks album, whole words outrank partial
    /// ones. SQLite ranks at most [`SQLITE_RANK_ALL_UP_TO`] matches of a tier (see there for
    /// what this trades away): this keeps a search fast on a large catalog whatever it matches.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<TrackMeta>, CatalogError> {
        let terms = dedup_terms(terms(query));
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, MAX_SEARCH_RESULTS) as usize;
        match self {
            Catalog::Sqlite(pool) => search_sqlite(pool, &terms, limit).await,
            Catalog::Postgres(pool) => {
                let [t0, t1, t2, t3, t4, t5, all] = TIERS.map(|t| t.tsquery(&terms));
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM (SELECT ",
                    columns!(),
                    ", CASE WHEN search @@ to_tsquery('simple', $3) THEN 0
                            WHEN search @@ to_tsquery('simple', $4) THEN 1
                            WHEN search @@ to_tsquery('simple', $5) THEN 2
                            WHEN search @@ to_tsquery('simple', $6) THEN 3
                            WHEN search @@ to_tsquery('simple', $7) THEN 4
                            WHEN search @@ to_tsquery('simple', $8) THEN 5
                            ELSE 6 END AS tier
                       FROM tracks WHERE search @@ to_tsquery('simple', $1)) AS matches
                     ORDER BY ",
                    tier_order!(),
                    " LIMIT $2"
                ))
                .bind(all)
                .bind(limit as i64)
                .bind(t0)
                .bind(t1)
                .bind(t2)
                .bind(t3)
                .bind(t4)
                .bind(t5)
                .fetch_all(pool)
                .await
                .map_err(db("search"))?;
                rows.iter().map(row_to_meta_pg).collect()
            }
        }
    }

    /// One track's metadata.
    pub async fn get(&self, id: &TrackId) -> Result<Option<TrackMeta>, CatalogError> {
        match self {
            Catalog::Sqlite(pool) => {
                sqlx::query(concat!("SELECT ", columns!(), " FROM tracks WHERE id = ?1"))
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await
                    .map_err(db("get"))?
                    .as_ref()
                    .map(row_to_meta_sqlite)
                    .transpose()
            }
            Catalog::Postgres(pool) => {
                sqlx::query(concat!("SELECT ", columns!(), " FROM tracks WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await
                    .map_err(db("get"))?
                    .as_ref()
                    .map(row_to_meta_pg)
                    .transpose()
            }
        }
    }

    /// Number of tracks.
    pub async fn count(&self) -> Result<u64, CatalogError> {
        let n: i64 = match self {
            Catalog::Sqlite(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM tracks")
                    .fetch_one(pool)
                    .await
            }
            Catalog::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM tracks")
                    .fetch_one(pool)
                    .await
            }
        }
        .map_err(db("count"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Checks the database answers (health checks).
    pub async fn ping(&self) -> Result<(), CatalogError> {
        match self {
            Catalog::Sqlite(pool) => {
                sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map_err(db("ping"))?;
            }
            Catalog::Postgres(pool) => {
                sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map_err(db("ping"))?;
            }
        }
        Ok(())
    }

    /// Removes a track (tests and maintenance).
    pub async fn remove(&self, id: &TrackId) -> Result<(), CatalogError> {
        match self {
            Catalog::Sqlite(pool) => {
                sqlx::query("DELETE FROM tracks WHERE id = ?1")
                    .bind(id.to_string())
                    .execute(pool)
                    .await
                    .map_err(db("delete"))?;
            }
            Catalog::Postgres(pool) => {
                sqlx::query("DELETE FROM tracks WHERE id = $1")
                    .bind(id.to_string())
                    .execute(pool)
                    .await
                    .map_err(db("delete"))?;
            }
        }
        Ok(())
    }
}

/// [`Catalog::search`] on SQLite (see [`SQLITE_RANK_ALL_UP_TO`]).
async fn search_sqlite(
    pool: &SqlitePool,
    terms: &[String],
    limit: usize,
) -> Result<Vec<TrackMeta>, CatalogError> {
    let fts = TIERS.map(|t| t.fts5(terms));
    let cap = SQLITE_RANK_ALL_UP_TO as usize;
    let mut conn = pool.acquire().await.map_err(db("search"))?;
    let candidates: Vec<i64> =
        sqlx::query_scalar("SELECT rowid FROM tracks_fts WHERE tracks_fts MATCH ?1 LIMIT ?2")
            .bind(&fts[LAST_PREFIX_ANYWHERE])
            .bind((cap + 1) as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("search"))?;
    let mut found: Vec<TrackMeta> = Vec::with_capacity(limit);
    if candidates.len() <= cap {
        // All of them ranked: their tiers from the tiers' queries on a copy of just them.
        if !candidates.is_empty() {
            let ids = candidates
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // One round trip: the table is this connection's own (created on its first use).
            sqlx::raw_sql(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_ranking USING fts5(
                    title, artist, album, tokenize='unicode61 remove_diacritics 2');
                 DELETE FROM temp.search_ranking",
            )
            .execute(&mut *conn)
            .await
            .map_err(db("search"))?;
            sqlx::query(
                "INSERT INTO temp.search_ranking (rowid, title, artist, album)
                 SELECT rowid, title, artist, album FROM tracks
                 WHERE rowid IN (SELECT value FROM json_each(?1))",
            )
            .bind(format!("[{ids}]"))
            .execute(&mut *conn)
            .await
            .map_err(db("search"))?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM (SELECT tracks.*, c.tier FROM (
                      SELECT rowid AS r, CASE
                        WHEN rowid IN (SELECT rowid FROM temp.search_ranking WHERE search_ranking MATCH ?2) THEN 0
                        WHEN rowid IN (SELECT rowid FROM temp.search_ranking WHERE search_ranking MATCH ?3) THEN 1
                        WHEN rowid IN (SELECT rowid FROM temp.search_ranking WHERE search_ranking MATCH ?4) THEN 2
                        WHEN rowid IN (SELECT rowid FROM temp.search_ranking WHERE search_ranking MATCH ?5) THEN 3
                        WHEN rowid IN (SELECT rowid FROM temp.search_ranking WHERE search_ranking MATCH ?6) THEN 4
                        ELSE 5 END AS tier
                      FROM temp.search_ranking) AS c
                    JOIN tracks ON tracks.rowid = c.r)
                 ORDER BY ",
                tier_order!(),
                " LIMIT ?1"
            ))
            .bind(limit as i64)
            .bind(&fts[0])
            .bind(&fts[1])
            .bind(&fts[2])
            .bind(&fts[3])
            .bind(&fts[4])
            .fetch_all(&mut *conn)
            .await
            .map_err(db("search"))?;
            add_new(&mut found, &rows, limit)?;
        }
        // Then those matching only with every word as a prefix.
        let last = TIERS.len() - 1;
        if found.len() < limit && fts[last] != fts[LAST_PREFIX_ANYWHERE] {
            let rows = sqlite_tier(&mut conn, &fts[last], last, limit + found.len()).await?;
            add_new(&mut found, &rows, limit)?;
        }
    } else {
        for (tier, q) in fts.iter().enumerate().take(LAST_PREFIX_ANYWHERE + 1) {
            let rows = sqlite_tier(&mut conn, q, tier, limit + found.len()).await?;
            if add_new(&mut found, &rows, limit)? {
                break;
            }
        }
    }
    Ok(found)
}

/// Appends the tracks of `rows` not in `found` yet, up to `limit`; true when `found` is full.
fn add_new(
    found: &mut Vec<TrackMeta>,
    rows: &[sqlx::sqlite::SqliteRow],
    limit: usize,
) -> Result<bool, CatalogError> {
    for row in rows {
        let m = row_to_meta_sqlite(row)?;
        if found.len() < limit && !found.iter().any(|f| f.id == m.id) {
            found.push(m);
        }
    }
    Ok(found.len() == limit)
}

/// The first [`SQLITE_RANK_ALL_UP_TO`] matches of the FTS5 query `fts` (tier `tier`) in index
/// order, ordered as in that tier; the first `n` of them.
async fn sqlite_tier(
    conn: &mut sqlx::SqliteConnection,
    fts: &str,
    tier: usize,
    n: usize,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, CatalogError> {
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM (SELECT tracks.*, ?4 AS tier FROM (
              SELECT rowid AS r FROM tracks_fts WHERE tracks_fts MATCH ?1 LIMIT ?2) AS hits
            JOIN tracks ON tracks.rowid = hits.r)
         ORDER BY ",
        tier_order!(),
        " LIMIT ?3"
    ))
    .bind(fts)
    .bind(i64::from(SQLITE_RANK_ALL_UP_TO))
    .bind(n as i64)
    .bind(tier as i64)
    .fetch_all(conn)
    .await
    .map_err(db("search"))
}

/// Catalogs created before the FTS5 table had its prefix index (see `fts5_args!`) get it on
/// open: the table is dropped, created again and rebuilt from `tracks` (≈ 10 s per million
/// tracks), once, in one write transaction.
async fn upgrade_sqlite_fts(pool: &SqlitePool) -> Result<(), CatalogError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("upgrade search index"))?;
    let sql: Option<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tracks_fts'",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("upgrade search index"))?;
    if sql.is_some_and(|sql| !sql.contains(fts5_args!())) {
        tracing::info!("rebuilding the catalog's search index (older format)");
        let started = std::time::Instant::now();
        for stmt in [
            "DROP TABLE tracks_fts",
            SQLITE_FTS,
            "INSERT INTO tracks_fts(tracks_fts) VALUES ('rebuild')",
        ] {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(db("upgrade search index"))?;
        }
        tracing::info!(
            "search index rebuilt in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    tx.commit().await.map_err(db("upgrade search index"))
}

macro_rules! row_to_meta {
    ($name:ident, $row:ty) => {
        fn $name(row: &$row) -> Result<TrackMeta, CatalogError> {
            let id: String = row.try_get("id").map_err(db("read row"))?;
            let corrupt = |reason: String| CatalogError::Corrupt {
                id: id.clone(),
                reason,
            };
            let num = |col: &str| -> Result<u64, CatalogError> {
                let v: i64 = row.try_get(col).map_err(db("read row"))?;
                u64::try_from(v).map_err(|_| corrupt(format!("{col} = {v}")))
            };
            Ok(TrackMeta {
                id: id
                    .parse()
                    .map_err(|e: shoal_protocol::IdParseError| corrupt(e.to_string()))?,
                title: row.try_get("title").map_err(db("read row"))?,
                artist: row.try_get("artist").map_err(db("read row"))?,
                album: row.try_get("album").map_err(db("read row"))?,
                duration_ms: num("duration_ms")?,
                bitrate: u32::try_from(num("bitrate")?).map_err(|_| corrupt("bitrate".into()))?,
                channels: u8::try_from(num("channels")?).map_err(|_| corrupt("channels".into()))?,
                bytes: num("bytes")?,
                source: row.try_get("source").map_err(db("read row"))?,
                added_at: num("added_at")?,
            })
        }
    };
}
row_to_meta!(row_to_meta_sqlite, sqlx::sqlite::SqliteRow);
row_to_meta!(row_to_meta_pg, sqlx::postgres::PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_becomes_plain_terms() {
        assert_eq!(terms("Aberr"), vec!["aberr"]);
        assert_eq!(
            terms("  the \"NEW\" journey* OR x:y  "),
            vec!["the", "new", "journey", "or", "x", "y"]
        );
        assert!(terms("*&|!():'\"").is_empty());
        assert_eq!(terms(&"a ".repeat(50)).len(), 8);
    }

    #[test]
    fn tiers_as_fts5_and_tsquery() {
        let t = terms("new jour");
        let fts = TIERS.map(|tier| tier.fts5(&t));
        assert_eq!(
            fts,
            [
                "{title} : (\"new\" AND \"jour\")",
                "{title artist} : (\"new\" AND \"jour\")",
                "\"new\" AND \"jour\"",
                "{title} : (\"new\" AND \"jour\"*)",
                "{title artist} : (\"new\" AND \"jour\"*)",
                "\"new\" AND \"jour\"*",
                "\"new\"* AND \"jour\"*",
            ]
        );
        let tsq = TIERS.map(|tier| tier.tsquery(&t));
        assert_eq!(
            tsq,
            [
                "new:A & jour:A",
                "new:AB & jour:AB",
                "new & jour",
                "new:A & jour:*A",
                "new:AB & jour:*AB",
                "new & jour:*",
                "new:* & jour:*",
            ]
        );
        assert_eq!(
            TIERS[LAST_PREFIX_ANYWHERE].fts5(&terms("aberr")),
            "\"aberr\"*"
        );
        assert_eq!(
            dedup_terms(terms("the love THE you love")),
            ["the", "you", "love"]
        );
    }
}
