//! Owns parameter sweeps: the grid of `--vary key=v1,v2,...` combinations, running them in
//! parallel (rayon, one single-threaded deterministic run per task), `sweep.csv` and one
//! comparison plot per metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cores::Cores;
use crate::output::{OutputError, Staging, write_run};
use crate::plot::{Series, line_plot};
use crate::scenario::{self, ScenarioError};
use crate::sim::{RunOutput, World};
use crate::stats::Summary;

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A `--vary` argument is not `key=v1,v2,...`.
    #[error("--vary {0:?}: expected key=v1,v2,... (e.g. catalog.zipf_alpha=0.8,1.0,1.2)")]
    BadVary(String),
    /// A combination makes an invalid scenario.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Writing results failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// One axis of the grid.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Dotted key.
    pub key: String,
    /// Values, as written.
    pub values: Vec<String>,
}

/// Parses `key=v1,v2,...`.
pub fn parse_vary(s: &str) -> Result<Axis, SweepError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| SweepError::BadVary(s.into()))?;
    let values: Vec<String> = v
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if k.trim().is_empty() || values.is_empty() {
        return Err(SweepError::BadVary(s.into()));
    }
    Ok(Axis {
        key: k.trim().to_string(),
        values,
    })
}

/// Every combination, as lists of `key=value`, first axis varying slowest.
pub fn grid(axes: &[Axis]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for a in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                a.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(format!("{}={v}", a.key));
                    p
                })
            })
            .collect();
    }
    out
}

fn dir_name(i: usize, sets: &[String]) -> String {
    let mut s = format!("run-{i:03}");
    for set in sets {
        s.push('_');
        s.extend(set.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '=' || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    s
}

/// The numbers compared across runs: (name, value) for those present in a summary.
pub fn metrics(s: &Summary) -> Vec<(&'static str, Option<f64>)> {
    vec![
        (
            "time_to_first_audio_ms_p50",
            s.time_to_first_audio_ms.map(|p| p.p50),
        ),
        (
            "time_to_first_audio_ms_p90",
            s.time_to_first_audio_ms.map(|p| p.p90),
        ),
        (
            "time_to_first_audio_ms_p99",
            s.time_to_first_audio_ms.map(|p| p.p99),
        ),
        ("stutter_rate", s.stutter_rate),
        ("share_cache", s.share_by_source.map(|b| b.cache)),
        ("share_peers", s.share_by_source.map(|b| b.peers)),
        ("share_superpeers", s.share_by_source.map(|b| b.superpeers)),
        ("share_origin", s.share_by_source.map(|b| b.origin)),
        ("origin_egress_peak_mbps", s.origin_egress_peak_mbps),
        ("superpeer_peak_mbps", s.superpeer_load.map(|l| l.peak_mbps)),
        ("plays", Some(s.workload.plays as f64)),
        ("mean_online", Some(s.workload.mean_online)),
        ("events", Some(s.events as f64)),
        ("wall_s", Some(s.wall_s)),
    ]
}

/// Runs the grid over `file` with `base_sets`, writes `out` (staged), returns its path.
pub fn sweep<C: Cores>(
    file: &Path,
    base_sets: &[String],
    axes: &[Axis],
    seed: Option<u64>,
    out: &Path,
    make_cores: impl Fn(&crate::scenario::Scenario, u64) -> C + Sync,
    on_done: impl Fn(usize, usize) + Sync,
) -> Result<PathBuf, SweepError> {
    let combos = grid(axes);
    // Validate every combination before running any.
    let loaded: Vec<_> = combos
        .iter()
        .map(|sets| {
            let mut all = base_sets.to_vec();
            all.extend(sets.iter().cloned());
            scenario::load(file, &all)
        })
        .collect::<Result<_, _>>()?;
    let staging = Staging::new(out)?;
    let total = loaded.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<RunOutput, OutputError>> = loaded
        .par_iter()
        .enumerate()
        .map(|(i, l)| {
            let seed = seed.unwrap_or(l.scenario.run.seed);
            let mut r =
                World::new(&l.scenario, seed, make_cores(&l.scenario, seed)).run(&mut |_, _| {});
            r.summary.sets = combos[i].clone();
            let dir = staging.path().join(dir_name(i, &combos[i]));
            std::fs::create_dir_all(&dir).map_err(|source| OutputError::Io {
                path: dir.clone(),
                source,
            })?;
            write_run(&dir, &r)?;
            on_done(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                total,
            );
            Ok(r)
        })
        .collect();
    let results: Vec<RunOutput> = results.into_iter().collect::<Result<_, _>>()?;
    // sweep.csv
    let names: Vec<&str> = metrics(&results[0].summary).iter().map(|m| m.0).collect();
    let mut csv = String::new();
    for a in axes {
        csv.push_str(&a.key);
        csv.push(',');
    }
    csv.push_str(&names.join(","));
    csv.push('\n');
    for (combo, r) in combos.iter().zip(&results) {
        for set in combo {
            csv.push_str(set.split_once('=').map_or("", |x| x.1));
            csv.push(',');
        }
        let vals: Vec<String> = metrics(&r.summary)
            .iter()
            .map(|(_, v)| v.map_or(String::new(), |v| format!("{v}")))
            .collect();
        csv.push_str(&vals.join(","));
        csv.push('\n');
    }
    std::fs::write(staging.path().join("sweep.csv"), csv).map_err(|source| OutputError::Io {
        path: staging.path().join("sweep.csv"),
        source,
    })?;
    // One comparison plot per metric present in every run: x = first axis, a series per
    // combination of the other axes.
    let first = &axes[0];
    let xs: Vec<f64> = first
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| v.parse::<f64>().unwrap_or(i as f64))
        .collect();
    for (mi, name) in names.iter().enumerate() {
        if name == &"wall_s" {
            continue;
        }
        let vals: Vec<Option<f64>> = results.iter().map(|r| metrics(&r.summary)[mi].1).collect();
        if vals.iter().any(Option::is_none) {
            continue;
        }
        let mut by_rest: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (combo, v) in combos.iter().zip(&vals) {
            let xi = first
                .values
                .iter()
                .position(|x| Some(x.as_str()) == combo[0].split_once('=').map(|p| p.1))
                .unwrap_or(0);
            let rest = combo[1..].join(" ");
            by_rest
                .entry(rest)
                .or_default()
                .push((xs[xi], v.unwrap_or(0.0)));
        }
        let series: Vec<Series> = by_rest.into_iter().collect();
        line_plot(
            staging.path(),
            &format!("compare_{name}"),
            &format!("{name} vs {}", first.key),
            &first.key,
            name,
            &series,
        )?;
    }
    Ok(staging.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_cartesian() {
        let axes = vec![
            parse_vary("a=1,2").expect("ok"),
            parse_vary("b=x,y,z").expect("ok"),
        ];
        let g = grid(&axes);
        assert_eq!(g.len(), 6);
        assert_eq!(g[0], vec!["a=1", "b=x"]);
        assert_eq!(g[5], vec!["a=2", "b=z"]);
        assert!(parse_vary("a").is_err());
        assert!(parse_vary("a=").is_err());
    }
}
