//! `shoal-tracker`'s configuration file (TOML). Command-line flags override every field;
//! fields left out take the defaults documented here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerConfig {
    /// Data directory of the origin store and catalog (`--data`). No default: required.
    pub data: Option<PathBuf>,
    /// Catalog database URL (`--db`): `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    /// Default: `sqlite://DATA/catalog.sqlite`.
    pub db: Option<String>,
    /// Origin store URL (`--store`): `s3://BUCKET[/PREFIX]` (AWS_* variables configure the
    /// endpoint and credentials). Default: the data directory.
    pub store: Option<String>,
    /// libp2p addresses for announce and lookup (`--listen`, repeatable); default QUIC and
    /// TCP on port 7701.
    #[serde(default)]
    pub listen: Vec<libp2p::Multiaddr>,
    /// `[http]`: the HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[import]`: encoding settings.
    #[serde(default)]
    pub import: ImportConfig,
}

/// `[http]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on (`--http`); default `0.0.0.0:7700`.
    pub listen: Option<std::net::SocketAddr>,
    /// Requests per second one client IP may make on average; default 500.
    pub requests_per_sec: Option<f64>,
    /// Requests one client IP may make in a burst; default 1000.
    pub burst: Option<f64>,
    /// Memory for recently served, already verified chunks, in bytes; default 64 MiB
    /// (67108864), 0 disables it. A hit skips the disk read and the hash check.
    pub hot_cache_bytes: Option<usize>,
}

/// `[import]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Opus bitrate in kbit/s (`--bitrate`), 6–510; default 128.
    pub bitrate_kbps: Option<u32>,
    /// libopus complexity 0–10 (`--complexity`); default 10.
    pub complexity: Option<u8>,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key and line).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's explanation, with line and column.
        message: String,
    },
}

impl TrackerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_owned(),
            err,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(b) = config.import.bitrate_kbps
            && !(6..=510).contains(&b)
        {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("import.bitrate_kbps = {b}: must be 6..=510"),
            });
        }
        if let Some(c) = config.import.complexity
            && c > 10
        {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("import.complexity = {c}: must be 0..=10"),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "data = \"/x\"\n[import]\nbitrat_kbps = 3\n").unwrap();
        let e = TrackerConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("bitrat_kbps") && e.contains("line 3"), "{e}");
        std::fs::write(&p, "[import]\nbitrate_kbps = 900\n").unwrap();
        let e = TrackerConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("must be 6..=510"), "{e}");
        std::fs::write(&p, "data = \"/music\"\n[import]\ncomplexity = 5\n").unwrap();
        let c = TrackerConfig::load(&p).unwrap();
        assert_eq!(c.data, Some(PathBuf::from("/music")));
        assert_eq!(c.import.complexity, Some(5));
        std::fs::write(&p, "[http]\nhot_cache_bytes = 0\n").unwrap();
        assert_eq!(
            TrackerConfig::load(&p).unwrap().http.hot_cache_bytes,
            Some(0)
        );
    }
}
