//! Order statistics of a set of samples.

use std::time::Duration;

/// Minimum, median, 99th percentile and maximum of a set of samples, all in one unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    /// Nearest-rank 99th percentile: the smallest sample that at least 99 % of the samples do
    /// not exceed.
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples`, or returns `None` when there are none or one is NaN.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|sample| sample.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let middle = count / 2;
        let median = if count % 2 == 1 {
            sorted.get(middle).copied()?
        } else {
            (sorted.get(middle - 1).copied()? + sorted.get(middle).copied()?) / 2.0
        };
        Some(Summary {
            count,
            min: sorted.first().copied()?,
            median,
            p99: nearest_rank(&sorted, 0.99)?,
            max: sorted.last().copied()?,
        })
    }

    /// Summarizes durations in milliseconds.
    pub fn of_millis(samples: &[Duration]) -> Option<Summary> {
        let millis: Vec<f64> = samples
            .iter()
            .map(|sample| sample.as_secs_f64() * 1e3)
            .collect();
        Summary::of(&millis)
    }

    /// Returns the summary of one value, for figures computed once, such as ratios.
    pub fn single(value: f64) -> Summary {
        Summary {
            count: 1,
            min: value,
            median: value,
            p99: value,
            max: value,
        }
    }
}

/// Returns the sample at the nearest rank of `quantile` in `sorted`.
fn nearest_rank(sorted: &[f64], quantile: f64) -> Option<f64> {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_median_is_middle() {
        let summary = Summary::of(&[3.0, 1.0, 2.0]).expect("three samples");
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.median, 2.0);
        assert_eq!(summary.max, 3.0);
        assert_eq!(summary.count, 3);
    }

    #[test]
    fn even_count_median_is_mean_of_middle() {
        let summary = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("four samples");
        assert_eq!(summary.median, 2.5);
    }

    #[test]
    fn p99_of_hundred_is_99th() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let summary = Summary::of(&samples).expect("a hundred samples");
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
    }

    #[test]
    fn p99_of_few_is_max() {
        let summary = Summary::of(&[5.0, 7.0, 6.0]).expect("three samples");
        assert_eq!(summary.p99, 7.0);
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn durations_in_millis() {
        let summary = Summary::of_millis(&[Duration::from_micros(1500)]).expect("one sample");
        assert_eq!(summary.median, 1.5);
    }
}
