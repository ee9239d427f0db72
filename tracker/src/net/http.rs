//! The tracker's HTTP API (axum): catalog search and track details, and the origin's chunks
//! and manifests with ETag = hash, `Cache-Control: immutable` and Range support, so any CDN or
//! nginx can sit in front of it. JSON errors with proper status codes, a per-client rate limit,
//! bounded request sizes, Prometheus metrics and a health check.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_protocol::{ChunkId, Manifest, TrackId};

use super::catalog::{Catalog, CatalogError, MAX_SEARCH_RESULTS};
use super::origin::{Origin, OriginError, OriginStore};
use crate::store::TrackMeta;

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Requests per second one client IP may make on average (default 500).
    pub requests_per_sec: f64,
    /// Requests one client IP may make in a burst (default 1000).
    pub burst: f64,
    /// Longest accepted search query, in bytes (default 256).
    pub max_query_bytes: usize,
    /// Largest accepted request body, in bytes (default 4096; the API has no uploads).
    pub max_body_bytes: usize,
    /// Client IPs tracked by the rate limiter before the idlest are forgotten (default 100,000).
    pub max_clients: usize,
    /// Memory for recently served, already verified chunks (default 64 MiB; 0 disables): a hit
    /// skips the disk read and the re-verification.
    pub hot_cache_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            requests_per_sec: 500.0,
            burst: 1000.0,
            max_query_bytes: 256,
            max_body_bytes: 4096,
            max_clients: 100_000,
            hot_cache_bytes: 64 << 20,
        }
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    chunks_served: AtomicU64,
    chunk_bytes_served: AtomicU64,
    manifests_served: AtomicU64,
    searches: AtomicU64,
    search_micros: AtomicU64,
    corrupt_objects: AtomicU64,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The catalog.
    pub catalog: Catalog,
    /// The origin store.
    pub origin: Origin,
    /// Counters.
    pub metrics: Metrics,
    limits: HttpLimits,
    buckets: std::sync::Mutex<HashMap<IpAddr, (f64, Instant)>>,
    hot: std::sync::Mutex<HotChunks>,
    /// The libp2p endpoint (`GET /p2p`), set once it is up.
    p2p: std::sync::OnceLock<P2pInfo>,
    /// The peer registry the libp2p side updates (its sizes go to `/metrics`).
    registry: std::sync::OnceLock<Arc<std::sync::Mutex<crate::core::PeerRegistry>>>,
}

/// How peers reach the tracker's libp2p side: what `GET /p2p` answers, so a peer given only
/// the HTTP URL finds the announce/lookup endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct P2pInfo {
    /// The tracker's PeerId.
    pub peer_id: String,
    /// Dialable multiaddrs, each ending in `/p2p/PEER_ID`.
    pub addrs: Vec<String>,
}

/// Recently served chunks, verified when they were loaded, least recently used evicted first.
#[derive(Debug)]
struct HotChunks {
    lru: lru::LruCache<ChunkId, Bytes>,
    bytes: usize,
    max_bytes: usize,
}

impl HotChunks {
    fn get(&mut self, id: &ChunkId) -> Option<Bytes> {
        self.lru.get(id).cloned()
    }

    fn put(&mut self, id: ChunkId, bytes: Bytes) {
        if bytes.len() > self.max_bytes || self.lru.contains(&id) {
            return;
        }
        self.bytes += bytes.len();
        self.lru.put(id, bytes);
        while self.bytes > self.max_bytes {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

impl AppState {
    /// State for a server over `catalog` and `origin`.
    pub fn new(catalog: Catalog, origin: Origin, limits: HttpLimits) -> Arc<Self> {
        let hot = HotChunks {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            max_bytes: limits.hot_cache_bytes,
        };
        Arc::new(Self {
            catalog,
            origin,
            metrics: Metrics::default(),
            limits,
            buckets: Default::default(),
            hot: std::sync::Mutex::new(hot),
            p2p: std::sync::OnceLock::new(),
            registry: std::sync::OnceLock::new(),
        })
    }

    /// Exports the peer registry's sizes and counters at `/metrics` (the first call wins).
    pub fn set_registry(&self, registry: Arc<std::sync::Mutex<crate::core::PeerRegistry>>) {
        let _ = self.registry.set(registry);
    }

    /// Publishes the libp2p endpoint under `GET /p2p` (the first call wins).
    pub fn set_p2p(&self, info: P2pInfo) {
        let _ = self.p2p.set(info);
    }

    /// Takes one token from `ip`'s bucket; false when it is empty.
    fn admit(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= self.limits.max_clients && !buckets.contains_key(&ip) {
            // Forget clients whose buckets are full again: they lose nothing.
            let (rate, burst) = (self.limits.requests_per_sec, self.limits.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.limits.max_clients {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.limits.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limits.requests_per_sec)
            .min(self.limits.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An API error: a status code and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1, "status": self.0.as_u16() });
        (
            self.0,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(body),
        )
            .into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        if e.is_unavailable() {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog database unavailable, try again shortly".into(),
            )
        } else {
            tracing::error!("catalog: {e}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "catalog error".into())
        }
    }
}

impl From<OriginError> for ApiError {
    fn from(e: OriginError) -> Self {
        match e {
            OriginError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            OriginError::Corrupt { .. } => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}; not served"),
            ),
            OriginError::Unavailable(_) => {
                tracing::warn!("{e}");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "origin store unavailable, try again shortly".into(),
                )
            }
            OriginError::BadUrl(_) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The router with every route and the limits applied.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/search", get(search))
        .route("/tracks/{id}", get(track))
        .route("/manifests/{id}", get(manifest))
        .route("/chunks/{id}", get(chunk))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/p2p", get(p2p_info))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), admission))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .with_state(state)
}

/// Rate limit per client IP, request counting, status-class counting.
async fn admission(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip
        && !state.admit(ip)
    {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut r = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded, slow down".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let response = next.run(req).await;
    let s = response.status();
    if s.is_client_error() {
        state.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if s.is_server_error() {
        state.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    response
}

fn parse_id<T: std::str::FromStr<Err = shoal_protocol::IdParseError>>(
    raw: &str,
) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|e: shoal_protocol::IdParseError| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    q: Option<String>,
    limit: Option<String>,
}

/// A search hit / track summary as JSON.
#[derive(Debug, Serialize)]
struct TrackJson {
    id: TrackId,
    title: String,
    artist: Option<String>,
    album: Option<String>,
    duration_ms: u64,
    bitrate: u32,
    channels: u8,
    bytes: u64,
    added_at: u64,
}

impl From<TrackMeta> for TrackJson {
    fn from(m: TrackMeta) -> Self {
        Self {
            id: m.id,
            title: m.title,
            artist: m.artist,
            album: m.album,
            duration_ms: m.duration_ms,
            bitrate: m.bitrate,
            channels: m.channels,
            bytes: m.bytes,
            added_at: m.added_at,
        }
    }
}

async fn search(
    State(state): State<Arc<AppState>>,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad query string: {e}")))?;
    let q = params
        .q
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing q: /search?q=WORDS".into()))?;
    if q.len() > state.limits.max_query_bytes {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("query longer than {} bytes", state.limits.max_query_bytes),
        ));
    }
    let limit = match params.limit {
        None => 20,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_SEARCH_RESULTS).contains(l))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be 1..={MAX_SEARCH_RESULTS}"),
                )
            })?,
    };
    let started = Instant::now();
    let hits = state.catalog.search(&q, limit).await?;
    state.metrics.searches.fetch_add(1, Ordering::Relaxed);
    state.metrics.search_micros.fetch_add(
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let hits: Vec<TrackJson> = hits.into_iter().map(Into::into).collect();
    Ok(axum::Json(hits).into_response())
}

async fn track(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id: TrackId = parse_id(&raw)?;
    let meta = state
        .catalog
        .get(&id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("track {id} not found")))?;
    let bytes = state.origin.get_manifest(&id).await?;
    let manifest = Manifest::decode(&bytes)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let chunks: Vec<_> = manifest
        .chunks
        .iter()
        .map(|c| serde_json::json!({ "id": c.id, "len": c.len, "start": c.start, "samples": c.samples }))
        .collect();
    let body = serde_json::json!({
        "track": TrackJson::from(meta),
        "manifest": {
            "codec": "opus",
            "channels": manifest.channels,
            "pre_skip": manifest.pre_skip,
            "sample_rate": manifest.sample_rate,
            "total_samples": manifest.total_samples,
            "chunks": chunks,
        },
    });
    Ok(axum::Json(body).into_response())
}

/// Headers of an immutable, content-addressed object.
fn immutable(id: &str) -> [(header::HeaderName, String); 4] {
    [
        (header::ETAG, format!("\"{id}\"")),
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000, immutable".into(),
        ),
        (header::ACCEPT_RANGES, "bytes".into()),
        (header::CONTENT_TYPE, "application/octet-stream".into()),
    ]
}

fn not_modified(headers: &HeaderMap, id: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                t.trim() == "*" || t.trim().trim_start_matches("W/").trim_matches('"') == id
            })
        })
}

/// A single `bytes=` range against a body of `len` bytes: Ok(None) = whole body,
/// Err = unsatisfiable (416).
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Multiple ranges: serve the whole object, which RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn serve_object(id: &str, bytes: Bytes, headers: &HeaderMap) -> Response {
    if not_modified(headers, id) {
        return (StatusCode::NOT_MODIFIED, immutable(id)).into_response();
    }
    let len = bytes.len() as u64;
    match headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len))
    {
        None | Some(Ok(None)) => (StatusCode::OK, immutable(id), Body::from(bytes)).into_response(),
        Some(Ok(Some((start, end)))) => {
            let part = bytes.slice(start as usize..=end as usize);
            let mut r =
                (StatusCode::PARTIAL_CONTENT, immutable(id), Body::from(part)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Some(Err(())) => {
            let mut r = ApiError(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range outside the {len}-byte object"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    }
}

async fn chunk(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = parse_id(&raw)?;
    let hex = id.to_string();
    if not_modified(&headers, &hex) {
        return Ok((StatusCode::NOT_MODIFIED, immutable(&hex)).into_response());
    }
    let hot = state.hot.lock().ok().and_then(|mut h| h.get(&id));
    let bytes = match hot {
        Some(bytes) => bytes,
        None => {
            let bytes = state.origin.get_chunk(&id).await.inspect_err(|e| {
                if matches!(e, OriginError::Corrupt { .. }) {
                    state
                        .metrics
                        .corrupt_objects
                        .fetch_add(1, Ordering::Relaxed);
                }
            })?;
            if let Ok(mut h) = state.hot.lock() {
                h.put(id, bytes.clone());
            }
            bytes
        }
    };
    state.metrics.chunks_served.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .chunk_bytes_served
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(serve_object(&hex, bytes, &headers))
}

async fn manifest(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: TrackId = parse_id(&raw)?;
    let bytes = state.origin.get_manifest(&id).await.inspect_err(|e| {
        if matches!(e, OriginError::Corrupt { .. }) {
            state
                .metrics
                .corrupt_objects
                .fetch_add(1, Ordering::Relaxed);
        }
    })?;
    state
        .metrics
        .manifests_served
        .fetch_add(1, Ordering::Relaxed);
    Ok(serve_object(&id.to_string(), bytes, &headers))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let tracks = state.catalog.count().await.ok();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "shoal_http_requests_total",
        "counter",
        "HTTP requests received.",
        get(&m.requests),
    );
    metric(
        "shoal_http_rate_limited_total",
        "counter",
        "Requests refused by the per-client rate limit.",
        get(&m.rate_limited),
    );
    metric(
        "shoal_http_client_errors_total",
        "counter",
        "Responses with a 4xx status.",
        get(&m.errors_4xx),
    );
    metric(
        "shoal_http_server_errors_total",
        "counter",
        "Responses with a 5xx status.",
        get(&m.errors_5xx),
    );
    metric(
        "shoal_origin_chunks_served_total",
        "counter",
        "Chunks served.",
        get(&m.chunks_served),
    );
    metric(
        "shoal_origin_chunk_bytes_served_total",
        "counter",
        "Chunk bytes served.",
        get(&m.chunk_bytes_served),
    );
    metric(
        "shoal_origin_manifests_served_total",
        "counter",
        "Manifests served.",
        get(&m.manifests_served),
    );
    metric(
        "shoal_origin_corrupt_objects_total",
        "counter",
        "Stored objects that failed verification (never served).",
        get(&m.corrupt_objects),
    );
    metric(
        "shoal_catalog_searches_total",
        "counter",
        "Searches answered.",
        get(&m.searches),
    );
    metric(
        "shoal_catalog_search_microseconds_total",
        "counter",
        "Time spent in searches, microseconds.",
        get(&m.search_micros),
    );
    if let Some(n) = tracks {
        metric("shoal_catalog_tracks", "gauge", "Tracks in the catalog.", n);
    }
    if let Some(registry) = state.registry.get() {
        // Held only to copy the counters.
        let r = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stats();
        for (name, kind, help, value) in [
            (
                "shoal_registry_peers",
                "gauge",
                "Peers registered by their own announces.",
                r.peers as u64,
            ),
            (
                "shoal_registry_holdings",
                "gauge",
                "(peer, track) listings from peers' own announces.",
                r.holdings as u64,
            ),
            (
                "shoal_registry_announces_accepted_total",
                "counter",
                "Peer announces accepted.",
                r.accepted,
            ),
            (
                "shoal_registry_clusters",
                "gauge",
                "Super-peer clusters registered by aggregated announces.",
                r.clusters as u64,
            ),
            (
                "shoal_registry_cluster_listings",
                "gauge",
                "(cluster, track, leaf) listings from aggregated announces.",
                r.cluster_listings as u64,
            ),
            (
                "shoal_registry_cluster_announces_accepted_total",
                "counter",
                "Aggregated cluster announces accepted.",
                r.cluster_accepted,
            ),
            (
                "shoal_registry_cluster_announces_rejected_total",
                "counter",
                "Aggregated cluster announces rejected.",
                r.cluster_rejected,
            ),
        ] {
            metric(name, kind, help, value);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn p2p_info(State(state): State<Arc<AppState>>) -> Response {
    match state.p2p.get() {
        Some(info) => axum::Json(info.clone()).into_response(),
        None => ApiError(
            StatusCode::NOT_FOUND,
            "this tracker runs no libp2p endpoint".into(),
        )
        .into_response(),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let catalog = state.catalog.ping().await;
    let origin = state.origin.ping().await;
    let ok = catalog.is_ok() && origin.is_ok();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "catalog": catalog.err().map_or_else(|| "ok".to_string(), |e| e.to_string()),
        "origin": origin.err().map_or_else(|| "ok".to_string(), |e| e.to_string()),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok(Some((0, 999))));
        assert_eq!(parse_range("bytes=990-5000", 1000), Ok(Some((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(()));
        assert_eq!(parse_range("bytes=-0", 1000), Err(()));
        assert_eq!(parse_range("bytes=x-y", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
    }

    #[test]
    fn hot_chunks_stay_within_their_budget() {
        let mut h = HotChunks {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            max_bytes: 250,
        };
        let id = |i: u8| ChunkId::of(&[i]);
        for i in 0..3 {
            h.put(id(i), Bytes::from(vec![i; 100]));
        }
        assert_eq!(h.bytes, 200);
        assert!(h.get(&id(0)).is_none(), "oldest evicted");
        assert_eq!(h.get(&id(2)).unwrap()[0], 2);
        h.put(id(9), Bytes::from(vec![0; 1000]));
        assert!(
            h.get(&id(9)).is_none(),
            "larger than the whole budget: not kept"
        );
    }

    #[test]
    fn etags_match() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"abc\", W/\"def\""),
        );
        assert!(not_modified(&h, "abc"));
        assert!(not_modified(&h, "def"));
        assert!(!not_modified(&h, "xyz"));
    }
}
