//! Curves too long to draw point by point: each of `buckets` equal runs of points keeps its minimum and its
//! maximum (in step order), so spikes survive and a 100,000-point curve is sent as at most 2 x buckets points.

/// `(step, value)` points downsampled to at most `2 * buckets` (the points themselves when there are fewer).
pub fn min_max_buckets(points: &[(u64, f64)], buckets: usize) -> Vec<(u64, f64)> {
    let buckets = buckets.max(1);
    if points.len() <= 2 * buckets {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * buckets);
    for b in 0..buckets {
        let lo = b * points.len() / buckets;
        let hi = ((b + 1) * points.len() / buckets).max(lo + 1);
        let run = &points[lo..hi];
        let min = run
            .iter()
            .copied()
            .reduce(|a, c| if c.1 < a.1 { c } else { a })
            .expect("a bucket is never empty");
        let max = run
            .iter()
            .copied()
            .reduce(|a, c| if c.1 > a.1 { c } else { a })
            .expect("a bucket is never empty");
        if min.0 == max.0 {
            out.push(min);
        } else if min.0 < max.0 {
            out.extend([min, max]);
        } else {
            out.extend([max, min]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_survive_and_the_size_is_bounded() {
        let mut points: Vec<(u64, f64)> = (0..100_000).map(|i| (i, (i % 7) as f64)).collect();
        points[54_321].1 = 1e6;
        let out = min_max_buckets(&points, 500);
        assert!(out.len() <= 1000, "{}", out.len());
        assert!(out.contains(&(54_321, 1e6)));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "in step order");
        let few = vec![(1, 1.0), (2, 2.0)];
        assert_eq!(min_max_buckets(&few, 500), few);
    }
}
