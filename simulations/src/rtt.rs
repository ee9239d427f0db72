//! Owns the region latency model: the shipped RIPE Atlas country-pair RTT table (see
//! `data/README.md` for its source) and the dense region×region RTT matrix a run uses.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use crate::scenario::Scenario;

static RIPE_GZ: &[u8] = include_bytes!("../data/ripe-atlas-country-rtt.csv.gz");

/// The parsed RIPE table: mean RTT (ms) per unordered country pair.
#[derive(Debug)]
pub struct RipeTable {
    pairs: HashMap<(String, String), f64>,
    /// Mean of each country's between-country averages (fallback for missing pairs).
    country_mean: HashMap<String, f64>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl RipeTable {
    /// The table compiled into the binary, parsed once.
    pub fn shipped() -> &'static RipeTable {
        static TABLE: OnceLock<RipeTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(RIPE_GZ)
                .read_to_string(&mut text)
                .expect("the shipped RTT table is valid gzip (checked by a test)");
            Self::parse(&text)
        })
    }

    /// Parses CSV text with the RIPE columns (rows that do not parse are skipped).
    pub fn parse(text: &str) -> Self {
        let mut pairs = HashMap::new();
        let mut sums: HashMap<String, (f64, u32)> = HashMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(avg) = f[3].parse::<f64>() else {
                continue;
            };
            if !avg.is_finite() || avg < 0.0 || f[0].len() != 2 || f[1].len() != 2 {
                continue;
            }
            if f[0] != f[1] {
                for c in [f[0], f[1]] {
                    let e = sums.entry(c.to_string()).or_insert((0.0, 0));
                    e.0 += avg.ln();
                    e.1 += 1;
                }
            }
            pairs.insert(key(f[0], f[1]), avg);
        }
        let country_mean = sums
            .into_iter()
            .map(|(c, (s, n))| (c, (s / f64::from(n)).exp()))
            .collect();
        Self {
            pairs,
            country_mean,
        }
    }

    /// True when `country` appears in the table.
    pub fn knows(&self, country: &str) -> bool {
        self.country_mean.contains_key(country)
    }

    /// Mean RTT between two different countries (ms): measured, or the geometric mean of both
    /// countries' typical RTTs when the pair was not measured.
    pub fn between(&self, a: &str, b: &str) -> Option<f64> {
        if let Some(v) = self.pairs.get(&key(a, b)) {
            return Some(*v);
        }
        let (ma, mb) = (self.country_mean.get(a)?, self.country_mean.get(b)?);
        Some((ma * mb).sqrt())
    }

    /// Number of country pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The countries a run uses and the RTT (µs) between each pair, dense.
#[derive(Debug, Clone)]
pub struct RegionMatrix {
    /// Country codes; a node's region is an index into this.
    pub names: Vec<String>,
    rtt_us: Vec<u32>,
}

impl RegionMatrix {
    /// Builds the matrix for every country the scenario mentions (validated beforehand).
    pub fn for_scenario(s: &Scenario) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut add = |c: &str| {
            if !names.iter().any(|n| n == c) {
                names.push(c.to_string());
            }
        };
        for r in &s.population.regions {
            add(&r.country);
        }
        add(&s.population.server_region);
        for c in &s.population.superpeer_regions {
            add(c);
        }
        let t = RipeTable::shipped();
        let n = names.len();
        let mut rtt_us = vec![0u32; n * n];
        for i in 0..n {
            for j in 0..n {
                let ms = if i == j {
                    s.latency.same_region_rtt_ms
                } else {
                    let o = s.latency.overrides.iter().find(|o| {
                        (o.a == names[i] && o.b == names[j]) || (o.a == names[j] && o.b == names[i])
                    });
                    match o {
                        Some(o) => o.rtt_ms,
                        None => {
                            t.between(&names[i], &names[j]).unwrap_or(100.0) * s.latency.rtt_scale
                        }
                    }
                };
                rtt_us[i * n + j] = (ms * 1000.0).round() as u32;
            }
        }
        Self { names, rtt_us }
    }

    /// Index of a country in this matrix.
    pub fn index(&self, country: &str) -> Option<u16> {
        self.names
            .iter()
            .position(|n| n == country)
            .map(|i| i as u16)
    }

    /// Backbone RTT between two regions, µs.
    pub fn rtt_us(&self, a: u16, b: u16) -> u32 {
        self.rtt_us[usize::from(a) * self.names.len() + usize::from(b)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_has_published_examples() {
        let t = RipeTable::shipped();
        assert!(t.len() > 6000, "{} pairs", t.len());
        let de_gb = t.between("DE", "GB").expect("measured");
        assert!((de_gb - 57.7).abs() < 1.0, "DE-GB {de_gb}");
        let us_jp = t.between("JP", "US").expect("measured");
        assert!((us_jp - 130.0).abs() < 1.0);
        assert_eq!(t.between("GB", "DE"), t.between("DE", "GB"));
        assert!(!t.knows("XX"));
    }

    #[test]
    fn matrix_uses_same_region_and_overrides() {
        let mut s = Scenario::default();
        s.latency.overrides.push(crate::scenario::RttOverride {
            a: "US".into(),
            b: "SE".into(),
            rtt_ms: 77.0,
        });
        let m = RegionMatrix::for_scenario(&s);
        let se = m.index("SE").expect("SE");
        let us = m.index("US").expect("US");
        let gb = m.index("GB").expect("GB");
        assert_eq!(m.rtt_us(se, se), 10_000);
        assert_eq!(m.rtt_us(se, us), 77_000);
        assert_eq!(m.rtt_us(us, se), 77_000);
        assert!(m.rtt_us(se, gb) > 20_000);
    }
}
