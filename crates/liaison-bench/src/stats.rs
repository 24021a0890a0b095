//! Small statistics helpers: nearest-rank percentiles and medians.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `samples` by the nearest-rank method; 0 if empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied().unwrap_or(0.0)
}

/// The median of `samples` (mean of the middle two for an even count); 0 if empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match (v.get(n / 2), n % 2) {
        (None, _) => 0.0,
        (Some(m), 1) => *m,
        (Some(hi), _) => (hi + v.get(n / 2 - 1).copied().unwrap_or(*hi)) / 2.0,
    }
}

/// MiB per second for `bytes` in `elapsed`.
pub fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Rounds to `digits` decimal places (for readable JSON).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&s, 50.0) - 50.0).abs() < 1e-9);
        assert!((percentile(&s, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile(&s, 100.0) - 100.0).abs() < 1e-9);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(percentile(&[], 50.0).abs() < 1e-9);
    }
}
