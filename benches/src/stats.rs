//! Summaries over iterations. Medians, not means: on a shared, noisy machine one disturbed
//! iteration should not move the headline number; min and max show how noisy it was.

use serde::{Deserialize, Serialize};

/// Median and range of one metric over the iterations of a (case, backend) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no samples; NaNs are ignored.
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut sorted: Vec<f64> = samples.into_iter().filter(|x| !x.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        Some(Spread {
            median: median_of_sorted(&sorted),
            min,
            max,
        })
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `value / baseline`, or `None` when there is no usable baseline.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0 && value.is_finite()).then(|| value / baseline)
}

/// Pointwise median of several latency distributions given as (percentile, latency) points at
/// the same percentiles. A pointwise median of non-decreasing curves is non-decreasing, so the
/// result is still a CDF. Points missing from some curve use the curves that have them.
pub fn median_curve(curves: &[&[(f64, f64)]]) -> Vec<(f64, f64)> {
    let mut percentiles: Vec<f64> = curves
        .iter()
        .flat_map(|curve| curve.iter().map(|&(p, _)| p))
        .collect();
    percentiles.sort_by(f64::total_cmp);
    percentiles.dedup();
    percentiles
        .into_iter()
        .filter_map(|p| {
            let values = curves
                .iter()
                .filter_map(|curve| curve.iter().find(|&&(q, _)| q == p).map(|&(_, v)| v));
            Spread::of(values).map(|spread| (p, spread.median))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(
            Spread::of([3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(
            Spread::of([4.0, 1.0, 2.0, 3.0]),
            Some(Spread {
                median: 2.5,
                min: 1.0,
                max: 4.0
            })
        );
        assert_eq!(
            Spread::of([7.0]),
            Some(Spread {
                median: 7.0,
                min: 7.0,
                max: 7.0
            })
        );
    }

    #[test]
    fn spread_ignores_nan_and_is_none_when_empty() {
        assert_eq!(Spread::of([f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN]), None);
    }

    #[test]
    fn ratio_needs_a_positive_baseline() {
        assert_eq!(ratio(93.0, 100.0), Some(0.93));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn median_curve_is_pointwise_and_stays_monotone() {
        let a = [(50.0, 10.0), (99.0, 100.0)];
        let b = [(50.0, 30.0), (99.0, 50.0)];
        let c = [(50.0, 20.0), (99.0, 70.0), (99.9, 500.0)];
        let curve = median_curve(&[&a, &b, &c]);
        assert_eq!(curve, vec![(50.0, 20.0), (99.0, 70.0), (99.9, 500.0)]);
    }
}
