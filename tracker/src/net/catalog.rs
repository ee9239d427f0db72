//! The catalog: track metadata with full-text search ranked by relevance, prefix matching as
//! you type ("aberr" finds "Aberrations"). SQLite with FTS5 in the data directory by default;
//! PostgreSQL (its own full-text search, `tsvector` + GIN) when several tracker replicas share
//! one catalog. Both behind the same [`Catalog`] API and the same tests.

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

/// A catalog handle (cheap to clone: a connection pool).
#[derive(Debug, Clone)]
pub enum Catalog {
    /// Embedded SQLite with FTS5.
    Sqlite(SqlitePool),
    /// Shared PostgreSQL.
    Postgres(PgPool),
}

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
    "CREATE VIRTUAL TABLE IF NOT EXISTS tracks_fts USING fts5(
        title, artist, album, content='tracks', content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 2')",
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
                .busy_timeout(Duration::from_secs(10));
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

    /// Tracks matching every word of `query` (the last words as prefixes), most relevant
    /// first; title matches outrank artist, artist outranks album. An empty query finds nothing.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<TrackMeta>, CatalogError> {
        let terms = terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let limit = i64::from(limit.clamp(1, MAX_SEARCH_RESULTS));
        match self {
            Catalog::Sqlite(pool) => {
                // Each term quoted (no FTS5 syntax from users) and used as a prefix.
                let fts = terms
                    .iter()
                    .map(|t| format!("\"{t}\"*"))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tracks JOIN (
                        SELECT rowid AS r, bm25(tracks_fts, 10.0, 4.0, 2.0) AS rank FROM tracks_fts
                        WHERE tracks_fts MATCH ?1 ORDER BY rank LIMIT ?2) AS hits ON tracks.rowid = hits.r
                     ORDER BY hits.rank, title"
                ))
                .bind(fts)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(db("search"))?;
                rows.iter().map(row_to_meta_sqlite).collect()
            }
            Catalog::Postgres(pool) => {
                let tsq = terms
                    .iter()
                    .map(|t| format!("{t}:*"))
                    .collect::<Vec<_>>()
                    .join(" & ");
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tracks, to_tsquery('simple', $1) AS q
                     WHERE search @@ q ORDER BY ts_rank(search, q) DESC, title LIMIT $2"
                ))
                .bind(tsq)
                .bind(limit)
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
}
