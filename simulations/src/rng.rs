//! Owns the simulator's randomness: a seedable xoshiro256++ generator and the samplers the
//! models use (exponential, lognormal, Weibull, Pareto, Zipf). Implemented here rather than
//! taken from `rand` so a trace stays byte-identical across dependency upgrades.

/// xoshiro256++ (Blackman & Vigna), seeded through SplitMix64. Small, fast and portable.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stateless 64-bit mix of `x` (SplitMix64's finaliser): deterministic per-key randomness
/// without storing anything (e.g. per-pair hole-punch outcomes, per-track durations).
pub fn mix64(mut x: u64) -> u64 {
    splitmix64(&mut x)
}

/// `mix64` mapped to a uniform in [0, 1).
pub fn unit_of(x: u64) -> f64 {
    (mix64(x) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Rng {
    /// A generator for `seed`; `stream` separates independent streams of one run.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    pub fn open_unit(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform integer in [0, n) (n > 0), by multiply-shift (bias < 2^-32 for n < 2^32).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -self.open_unit().ln() * mean
    }

    /// Standard normal (Box–Muller; one value per call, the partner is dropped for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.open_unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Lognormal: exp(N(mu, sigma)).
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.normal()).exp()
    }

    /// Weibull with shape `k` and scale `lambda` (inverse CDF).
    pub fn weibull(&mut self, k: f64, lambda: f64) -> f64 {
        lambda * (-self.open_unit().ln()).powf(1.0 / k)
    }

    /// Pareto with scale `xm` and shape `alpha`.
    pub fn pareto(&mut self, xm: f64, alpha: f64) -> f64 {
        xm / self.open_unit().powf(1.0 / alpha)
    }
}

/// Zipf over ranks 1..=n with exponent `s` > 0, by rejection-inversion (Hörmann & Derflinger,
/// "Rejection-inversion to generate variates from monotone discrete distributions", 1996):
/// O(1) memory and expected O(1) time, so an 8M-track catalog costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    threshold: f64,
}

impl Zipf {
    /// Ranks 1..=n (n ≥ 1), exponent s > 0.
    pub fn new(n: u64, s: f64) -> Self {
        let n = n.max(1) as f64;
        let mut z = Self {
            n,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            threshold: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(n + 0.5);
        z.threshold = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_n + rng.unit() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }
}

/// ln(1 + x) / x, stable near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (exp(x) - 1) / x, stable near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// The peer core's deterministic id hasher and maps, for the simulator's own tables keyed by
/// content ids and small integers (every key is the simulator's own).
pub use shoal_peer::core::idmap::{IdBuild, IdHasher, IdMap, IdSet};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(7, 1);
        let mut b = Rng::new(7, 1);
        let mut c = Rng::new(7, 2);
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn sampler_means() {
        let mut r = Rng::new(1, 0);
        let n = 200_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        let m = mean(&mut || r.exp(3.0));
        assert!((m - 3.0).abs() < 0.05, "exp mean {m}");
        let m = mean(&mut || r.lognormal(0.0, 0.5));
        assert!((m - (0.125f64).exp()).abs() < 0.02, "lognormal mean {m}");
        // Weibull k=1 is exponential with mean lambda.
        let m = mean(&mut || r.weibull(1.0, 2.0));
        assert!((m - 2.0).abs() < 0.05, "weibull mean {m}");
        let m = mean(&mut || r.below(10) as f64);
        assert!((m - 4.5).abs() < 0.05, "below mean {m}");
    }

    #[test]
    fn zipf_matches_pmf() {
        let n = 50u64;
        let s = 1.0;
        let z = Zipf::new(n, s);
        let mut r = Rng::new(3, 0);
        let draws = 400_000;
        let mut counts = vec![0u32; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut r);
            assert!((1..=n).contains(&k));
            counts[k as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        for k in [1usize, 2, 5, 20, 50] {
            let p = (k as f64).powf(-s) / norm;
            let got = f64::from(counts[k]) / draws as f64;
            assert!((got - p).abs() < 0.004 + p * 0.05, "rank {k}: {got} vs {p}");
        }
    }

    #[test]
    fn unit_of_is_uniform_ish() {
        let m: f64 = (0..10_000u64).map(unit_of).sum::<f64>() / 10_000.0;
        assert!((m - 0.5).abs() < 0.02);
    }
}
