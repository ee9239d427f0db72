//! The tracker's HTTP API as the peer uses it: catalog search and the origin fallback for
//! manifests and chunks (`GET /chunks/{id}` over one keep-alive connection pool). Every byte is
//! verified against its id before it is returned.

use std::time::Duration;

use serde::Deserialize;
use shoal_protocol::{ChunkId, Manifest, TrackId, verify};

/// Why the tracker could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The URL is not an http(s) URL.
    #[error("bad tracker URL {0:?}: use http://HOST:PORT")]
    BadUrl(String),
    /// Connection refused, timed out, or the server answered with an error status.
    #[error("tracker {url}: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The object does not exist on the origin.
    #[error("{0} not found on the tracker")]
    NotFound(String),
    /// The bytes do not match their id: the origin (or the path to it) is corrupt.
    #[error("the tracker sent bytes that do not match {0}")]
    Corrupt(String),
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrackHit {
    /// The track id.
    pub id: TrackId,
    /// Title.
    pub title: String,
    /// Artist.
    pub artist: Option<String>,
    /// Album.
    pub album: Option<String>,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// A client of one tracker's HTTP API.
#[derive(Debug, Clone)]
pub struct OriginClient {
    base: String,
    http: reqwest::Client,
}

impl OriginClient {
    /// A client for `base` (e.g. `http://127.0.0.1:7700`).
    pub fn new(base: &str) -> Result<Self, OriginError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OriginError::BadUrl(base));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| OriginError::Http {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { base, http })
    }

    async fn get(&self, path: &str, what: &str) -> Result<reqwest::Response, OriginError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| OriginError::Http {
                url: url.clone(),
                reason: if e.is_connect() {
                    "cannot connect (is `shoal-tracker serve` running?)".into()
                } else {
                    e.to_string()
                },
            })?;
        match r.status().as_u16() {
            200 => Ok(r),
            404 => Err(OriginError::NotFound(what.to_owned())),
            status => {
                let body = r.text().await.unwrap_or_default();
                let reason = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                Err(OriginError::Http {
                    url,
                    reason: format!("HTTP {status}: {reason}"),
                })
            }
        }
    }

    /// Catalog search, most relevant first.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<TrackHit>, OriginError> {
        let mut url = reqwest::Url::parse(&format!("{}/search", self.base))
            .map_err(|_| OriginError::BadUrl(self.base.clone()))?;
        url.query_pairs_mut()
            .append_pair("q", query)
            .append_pair("limit", &limit.to_string());
        let path = &url.as_str()[self.base.len()..];
        let r = self.get(path, "search").await?;
        r.json().await.map_err(|e| OriginError::Http {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// The tracker's libp2p endpoint (`GET /p2p`): its PeerId and dialable addresses.
    pub async fn p2p_info(&self) -> Result<shoal_tracker::net::http::P2pInfo, OriginError> {
        let r = self.get("/p2p", "the libp2p endpoint").await?;
        r.json().await.map_err(|e| OriginError::Http {
            url: format!("{}/p2p", self.base),
            reason: e.to_string(),
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The body of `GET path` (unverified: callers verify).
    async fn get_bytes(&self, path: &str, what: &str) -> Result<Vec<u8>, OriginError> {
        let r = self.get(path, what).await?;
        let bytes = r.bytes().await.map_err(|e| OriginError::Http {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })?;
        Ok(bytes.to_vec())
    }

    /// A track's manifest, verified against its id.
    pub async fn manifest(&self, track: &TrackId) -> Result<(Manifest, Vec<u8>), OriginError> {
        let what = format!("track {track}");
        let bytes = self
            .get_bytes(&format!("/manifests/{track}"), &what)
            .await?;
        if !track.matches(&bytes) {
            return Err(OriginError::Corrupt(what));
        }
        let m = Manifest::decode(&bytes).map_err(|_| OriginError::Corrupt(what))?;
        Ok((m, bytes))
    }

    /// A chunk's bytes, verified against its id.
    pub async fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>, OriginError> {
        let what = format!("chunk {id}");
        let bytes = self.get_bytes(&format!("/chunks/{id}"), &what).await?;
        verify(&bytes, id).map_err(|_| OriginError::Corrupt(what))?;
        Ok(bytes)
    }
}
