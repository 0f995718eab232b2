//! Smooth weighted round-robin, as nginx does it.
//!
//! Every pick adds each eligible backend's weight to its running score,
//! takes the highest score and subtracts the total weight from it. Over any
//! window of `sum(weights)` picks each backend is chosen exactly `weight`
//! times, and picks are spread out (5/1/1 gives `a a b a c a a`, not
//! `a a a a a b c`), so a burst never lands on one MTA.

/// Running state of a smooth weighted round-robin over a pool.
///
/// Scores are kept per backend index; call [`SmoothWrr::reset`] when the
/// pool changes so that stale scores do not skew the next picks.
#[derive(Debug, Default, Clone)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// A balancer with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all scores (the pool changed).
    pub fn reset(&mut self) {
        self.current.clear();
    }

    /// Pick one backend. `weights[i]` is backend `i`'s effective weight; a
    /// weight of 0 means "not eligible" (unhealthy, draining, zero-weight).
    /// Returns `None` when nothing is eligible.
    pub fn pick(&mut self, weights: &[u32]) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current.clear();
            self.current.resize(weights.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let w = i64::from(w);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }

    /// Pick one backend and write the full try order into `order`: the pick
    /// first, then every other eligible backend, highest score first (the
    /// ones that would be picked next), so a retry goes where the next
    /// session would have gone anyway.
    pub fn order(&mut self, weights: &[u32], order: &mut Vec<u32>) {
        order.clear();
        let Some(first) = self.pick(weights) else {
            return;
        };
        order.push(first as u32);
        let start = order.len();
        order.extend(
            (0..weights.len())
                .filter(|&i| i != first && weights[i] > 0)
                .map(|i| i as u32),
        );
        let current = &self.current;
        order[start..].sort_by(|&a, &b| current[b as usize].cmp(&current[a as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_picks_like_nginx() {
        let mut wrr = SmoothWrr::new();
        let picks: Vec<usize> = (0..7).map(|_| wrr.pick(&[5, 1, 1]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_split_over_a_window() {
        let mut wrr = SmoothWrr::new();
        let mut counts = [0u32; 4];
        for _ in 0..10 * 100 {
            counts[wrr.pick(&[5, 3, 1, 1]).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 300, 100, 100]);
    }

    #[test]
    fn zero_weight_is_never_picked_and_follows_nowhere() {
        let mut wrr = SmoothWrr::new();
        let mut order = Vec::new();
        for _ in 0..20 {
            wrr.order(&[2, 0, 1], &mut order);
            assert_eq!(order.len(), 2);
            assert!(!order.contains(&1));
        }
        wrr.order(&[0, 0, 0], &mut order);
        assert!(order.is_empty());
    }
}
