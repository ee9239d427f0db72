//! Owns writing a run's results: `summary.json`, `timeseries.csv`, `latency_cdf.csv`,
//! `popularity.csv` and the plots, into a temporary sibling directory that is renamed to the
//! requested one only when everything is written (no partial directory that looks complete).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sim::RunOutput;

/// Why results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("plot {name}: {reason}")]
    Plot {
        /// The plot's file stem.
        name: String,
        /// The drawing backend's error.
        reason: String,
    },
    /// The output directory exists and is not empty.
    #[error("{0}: exists and is not empty (choose another --out or remove it)")]
    NotEmpty(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory being filled: written under `DIR.partial-PID`, renamed to `DIR` by
/// [`Staging::commit`]; removed if dropped uncommitted.
#[derive(Debug)]
pub struct Staging {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staging {
    /// Prepares to write `dest` (which must not exist or be empty).
    pub fn new(dest: &Path) -> Result<Self, OutputError> {
        if dest.exists() {
            let empty = fs::read_dir(dest).map_err(io(dest))?.next().is_none();
            if !empty {
                return Err(OutputError::NotEmpty(dest.to_path_buf()));
            }
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Where to write files now.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place.
    pub fn commit(mut self) -> Result<PathBuf, OutputError> {
        if self.dest.exists() {
            fs::remove_dir(&self.dest).map_err(io(&self.dest))?;
        }
        fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.done = true;
        Ok(self.dest.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let mut f = fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// Writes every file of one run into `dir` (an existing, empty directory).
pub fn write_run(dir: &Path, out: &RunOutput) -> Result<(), OutputError> {
    let json = serde_json::to_string_pretty(&out.summary)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    write(&dir.join("summary.json"), json.as_bytes())?;
    let mut csv = String::from(
        "t_s,online_peers,plays,skips,events,origin_egress_mbps,superpeer_mbps,bytes_cache,bytes_peers,bytes_superpeers,bytes_origin\n",
    );
    for r in &out.series {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.6},{:.6},{},{},{},{}\n",
            r.t_s,
            r.online_peers,
            r.plays,
            r.skips,
            r.events,
            r.origin_egress_mbps,
            r.superpeer_mbps,
            r.bytes.cache,
            r.bytes.peers,
            r.bytes.superpeers,
            r.bytes.origin
        ));
    }
    write(&dir.join("timeseries.csv"), csv.as_bytes())?;
    let mut pop = String::from("first_rank,last_rank,plays\n");
    for (lo, hi, n) in &out.rank_plays {
        pop.push_str(&format!("{lo},{hi},{n}\n"));
    }
    write(&dir.join("popularity.csv"), pop.as_bytes())?;
    if !out.latencies_ms.is_empty() {
        let mut cdf = String::from("time_to_first_audio_ms,cdf\n");
        let n = out.latencies_ms.len();
        let step = (n / 1000).max(1);
        for (i, v) in out.latencies_ms.iter().enumerate().step_by(step) {
            cdf.push_str(&format!("{v},{:.6}\n", (i + 1) as f64 / n as f64));
        }
        write(&dir.join("latency_cdf.csv"), cdf.as_bytes())?;
    }
    crate::plot::plot_run(dir, out)
}

/// Stages, writes and commits one run's directory.
pub fn write_run_dir(dest: &Path, out: &RunOutput) -> Result<PathBuf, OutputError> {
    let st = Staging::new(dest)?;
    write_run(st.path(), out)?;
    st.commit()
}
