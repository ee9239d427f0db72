//! The origin store behind one trait: chunks and manifests by hash, verified on every read so a
//! corrupt object is reported and never served. Two backends: the local directory
//! ([`LocalStore`], the default) and any S3-compatible store through `object_store`
//! (`--store s3://bucket/prefix`, endpoint and credentials from the usual AWS_* variables).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shoal_protocol::{ChunkId, Manifest, TrackId, verify};

use crate::store::{CommitOutcome, LocalStore, Staging, StoreError, TrackMeta};

/// Why the origin could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The object does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// "chunk" or "manifest".
        kind: &'static str,
        /// Hex id.
        id: String,
    },
    /// Stored bytes do not match their hash: never served.
    #[error("{kind} {id} is corrupt in the store")]
    Corrupt {
        /// "chunk" or "manifest".
        kind: &'static str,
        /// Hex id.
        id: String,
    },
    /// The backing store is unreachable or failing (HTTP 503).
    #[error("origin store unavailable: {0}")]
    Unavailable(String),
    /// A bad `--store` URL.
    #[error(
        "unsupported store URL {0:?}: use s3://BUCKET[/PREFIX] (or leave it out for the data directory)"
    )]
    BadUrl(String),
}

impl From<StoreError> for OriginError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => OriginError::NotFound { kind, id },
            StoreError::Corrupt { kind, id, .. } => OriginError::Corrupt { kind, id },
            StoreError::Io { .. } => OriginError::Unavailable(e.to_string()),
        }
    }
}

/// Chunks and manifests by hash.
pub trait OriginStore: Send + Sync {
    /// The chunk's bytes, verified against its id.
    fn get_chunk(&self, id: &ChunkId) -> impl Future<Output = Result<Bytes, OriginError>> + Send;
    /// The canonical manifest bytes, verified against the track id.
    fn get_manifest(&self, id: &TrackId)
    -> impl Future<Output = Result<Bytes, OriginError>> + Send;
    /// Publishes an import: staged chunks, then the manifest (only then is the track complete).
    fn publish(
        &self,
        staging: Staging,
        manifest: &Manifest,
        meta: &TrackMeta,
    ) -> impl Future<Output = Result<CommitOutcome, OriginError>> + Send;
    /// Checks the store answers (health checks).
    fn ping(&self) -> impl Future<Output = Result<(), OriginError>> + Send;
}

impl OriginStore for LocalStore {
    async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes, OriginError> {
        #[cfg(target_os = "linux")]
        if let Some(read) = self.get_chunk_if_cached(id) {
            return Ok(Bytes::from(read?));
        }
        let store = self.clone();
        let id = *id;
        let bytes = tokio::task::spawn_blocking(move || store.get_chunk(&id))
            .await
            .map_err(|e| OriginError::Unavailable(e.to_string()))??;
        Ok(Bytes::from(bytes))
    }

    async fn get_manifest(&self, id: &TrackId) -> Result<Bytes, OriginError> {
        let store = self.clone();
        let id = *id;
        let manifest = tokio::task::spawn_blocking(move || store.get_manifest(&id))
            .await
            .map_err(|e| OriginError::Unavailable(e.to_string()))??;
        Ok(Bytes::from(manifest.encode()))
    }

    async fn publish(
        &self,
        staging: Staging,
        manifest: &Manifest,
        meta: &TrackMeta,
    ) -> Result<CommitOutcome, OriginError> {
        let (manifest, meta) = (manifest.clone(), meta.clone());
        tokio::task::spawn_blocking(move || staging.commit(&manifest, &meta))
            .await
            .map_err(|e| OriginError::Unavailable(e.to_string()))?
            .map_err(OriginError::from)
    }

    async fn ping(&self) -> Result<(), OriginError> {
        if self.root().join("manifests").is_dir() {
            Ok(())
        } else {
            Err(OriginError::Unavailable(format!(
                "{} is not a Shoal data directory",
                self.root().display()
            )))
        }
    }
}

/// An S3-compatible bucket (or any `object_store` backend) under a key prefix:
/// `PREFIX/chunks/ab/<id>`, `PREFIX/manifests/ab/<id>`.
#[derive(Debug, Clone)]
pub struct ObjectOrigin {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn object_error(kind: &'static str, id: String) -> impl FnOnce(object_store::Error) -> OriginError {
    move |e| match e {
        object_store::Error::NotFound { .. } => OriginError::NotFound { kind, id },
        other => OriginError::Unavailable(other.to_string()),
    }
}

impl ObjectOrigin {
    /// Wraps an object store (tests use the in-memory one).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// `s3://bucket[/prefix]`, configured from AWS_* environment variables (AWS_ENDPOINT_URL for
    /// S3-compatible servers, AWS_ALLOW_HTTP=true for plain-HTTP ones).
    pub fn from_url(url: &str) -> Result<Self, OriginError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| OriginError::BadUrl(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(OriginError::BadUrl(url.to_owned()));
        }
        // Fail within seconds when the store is down (the API answers 503 and the caller
        // retries) rather than object_store's default of retrying for minutes.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: std::time::Duration::from_secs(5),
        };
        let client = object_store::ClientOptions::new()
            .with_timeout(std::time::Duration::from_secs(5))
            .with_connect_timeout(std::time::Duration::from_secs(2));
        let allow_http = std::env::var("AWS_ALLOW_HTTP")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(client)
            .with_allow_http(allow_http)
            .build()
            .map_err(|e| OriginError::Unavailable(format!("S3 configuration: {e}")))?;
        Ok(Self::new(Arc::new(s3), prefix))
    }

    fn key(&self, dir: &str, hex: &str) -> ObjectPath {
        let key = format!("{dir}/{}/{hex}", &hex[..2]);
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    async fn exists(&self, path: &ObjectPath) -> Result<bool, OriginError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(OriginError::Unavailable(e.to_string())),
        }
    }

    /// The bytes under `dir/ab/<hex>` (unverified: callers verify).
    async fn fetch(&self, kind: &'static str, dir: &str, hex: &str) -> Result<Bytes, OriginError> {
        let get = self
            .store
            .get(&self.key(dir, hex))
            .await
            .map_err(object_error(kind, hex.to_owned()))?;
        get.bytes()
            .await
            .map_err(object_error(kind, hex.to_owned()))
    }

    async fn put(&self, path: &ObjectPath, bytes: Bytes) -> Result<(), OriginError> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| OriginError::Unavailable(e.to_string()))
    }
}

impl OriginStore for ObjectOrigin {
    async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes, OriginError> {
        let hex = id.to_string();
        let bytes = self.fetch("chunk", "chunks", &hex).await?;
        if verify(&bytes, id).is_err() {
            tracing::error!(chunk = %hex, "corrupt chunk in the object store: not served");
            return Err(OriginError::Corrupt {
                kind: "chunk",
                id: hex,
            });
        }
        Ok(bytes)
    }

    async fn get_manifest(&self, id: &TrackId) -> Result<Bytes, OriginError> {
        let hex = id.to_string();
        let bytes = self.fetch("manifest", "manifests", &hex).await?;
        if !id.matches(&bytes) || Manifest::decode(&bytes).is_err() {
            tracing::error!(track = %hex, "corrupt manifest in the object store: not served");
            return Err(OriginError::Corrupt {
                kind: "manifest",
                id: hex,
            });
        }
        Ok(bytes)
    }

    async fn publish(
        &self,
        staging: Staging,
        manifest: &Manifest,
        _meta: &TrackMeta,
    ) -> Result<CommitOutcome, OriginError> {
        let id = manifest.track_id();
        let manifest_key = self.key("manifests", &id.to_string());
        if self.exists(&manifest_key).await? {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        for chunk in staging.chunks() {
            let key = self.key("chunks", &chunk.to_string());
            if self.exists(&key).await? {
                continue;
            }
            let bytes = tokio::fs::read(staging.chunk_path(chunk))
                .await
                .map_err(|e| OriginError::Unavailable(format!("reading staged chunk: {e}")))?;
            self.put(&key, Bytes::from(bytes)).await?;
        }
        // The manifest goes last: a track's manifest exists only when all its chunks do.
        self.put(&manifest_key, Bytes::from(manifest.encode()))
            .await?;
        Ok(CommitOutcome::Imported)
    }

    async fn ping(&self) -> Result<(), OriginError> {
        // Listing one key proves the bucket exists and the credentials work.
        use futures::StreamExt;
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        match self.store.list(prefix.as_ref()).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(OriginError::Unavailable(e.to_string())),
        }
    }
}

/// The configured origin: the data directory, or an object store.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `DATA/chunks`, `DATA/manifests`.
    Local(LocalStore),
    /// `--store s3://...`.
    Object(ObjectOrigin),
}

impl Origin {
    /// The local store under `data`, or the object store `url`.
    pub fn open(url: Option<&str>, local: LocalStore) -> Result<Self, OriginError> {
        match url {
            None => Ok(Origin::Local(local)),
            Some(u) if u.starts_with("s3://") => Ok(Origin::Object(ObjectOrigin::from_url(u)?)),
            Some(u) if u.starts_with("file://") || u.starts_with('/') => {
                let path = u.strip_prefix("file://").unwrap_or(u);
                Ok(Origin::Local(LocalStore::create(path)?))
            }
            Some(u) => Err(OriginError::BadUrl(u.to_owned())),
        }
    }
}

impl OriginStore for Origin {
    async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes, OriginError> {
        match self {
            Origin::Local(s) => OriginStore::get_chunk(s, id).await,
            Origin::Object(s) => s.get_chunk(id).await,
        }
    }
    async fn get_manifest(&self, id: &TrackId) -> Result<Bytes, OriginError> {
        match self {
            Origin::Local(s) => OriginStore::get_manifest(s, id).await,
            Origin::Object(s) => s.get_manifest(id).await,
        }
    }
    async fn publish(
        &self,
        staging: Staging,
        manifest: &Manifest,
        meta: &TrackMeta,
    ) -> Result<CommitOutcome, OriginError> {
        match self {
            Origin::Local(s) => s.publish(staging, manifest, meta).await,
            Origin::Object(s) => s.publish(staging, manifest, meta).await,
        }
    }
    async fn ping(&self) -> Result<(), OriginError> {
        match self {
            Origin::Local(s) => s.ping().await,
            Origin::Object(s) => s.ping().await,
        }
    }
}
