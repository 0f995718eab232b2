//! Smooth weighted round-robin, as nginx does it.
//!
//! Every pick adds each eligible backend's weight to its running score,
//! takes the highest score and subtracts the total weight from it. Over any
//! window of `sum(weights)` picks each backend is chosen exactly `weight`
//! times, and picks are spread out (5/1/1 gives `a a b a c a a`, not
//! `a a a a a b c`), so a burst never lands on one MTA.

/// Smooth weighted round-robin over a fixed set of weights.
///
/// A weight of 0 means "not eligible" (unhealthy, draining, zero-weight).
/// Build a new one (or call [`SmoothWrr::set_weights`]) when the pool
/// changes; scores start from zero again.
#[derive(Debug, Default, Clone)]
pub struct SmoothWrr {
    weights: Vec<u32>,
    current: Vec<i64>,
    total: i64,
    /// Eligible indices, heaviest first (ties by index): the retry order.
    by_weight: Vec<u32>,
}

impl SmoothWrr {
    /// A round-robin over `weights`, indexed like the pool.
    pub fn new(weights: &[u32]) -> Self {
        let mut wrr = Self::default();
        wrr.set_weights(weights);
        wrr
    }

    /// Replace the weights and forget all scores.
    pub fn set_weights(&mut self, weights: &[u32]) {
        self.weights.clear();
        self.weights.extend_from_slice(weights);
        self.current.clear();
        self.current.resize(weights.len(), 0);
        self.total = weights.iter().map(|&w| i64::from(w)).sum();
        self.by_weight.clear();
        self.by_weight
            .extend((0..weights.len() as u32).filter(|&i| weights[i as usize] > 0));
        self.by_weight
            .sort_by_key(|&i| std::cmp::Reverse(weights[i as usize]));
    }

    /// The weights in force.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// How many backends are eligible (weight > 0): the longest order.
    pub fn eligible(&self) -> usize {
        self.by_weight.len()
    }

    /// Pick one backend, or `None` when nothing is eligible.
    pub fn pick(&mut self) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut best_score = i64::MIN;
        for (i, (&w, score)) in self.weights.iter().zip(self.current.iter_mut()).enumerate() {
            if w == 0 {
                continue;
            }
            *score += i64::from(w);
            if *score > best_score {
                best_score = *score;
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= self.total;
        Some(best)
    }

    /// Pick one backend and write the full try order into `order`: the pick
    /// first, then every other eligible backend, heaviest first, so a retry
    /// goes where most capacity is.
    pub fn order(&mut self, order: &mut Vec<u32>) {
        order.clear();
        self.append_order(order);
    }

    /// [`SmoothWrr::order`], appended to what `order` holds.
    fn append_order(&mut self, order: &mut Vec<u32>) {
        let Some(first) = self.pick() else {
            return;
        };
        order.reserve(self.by_weight.len());
        order.push(first as u32);
        for &i in &self.by_weight {
            if i as usize != first {
                order.push(i);
            }
        }
    }
}

/// Weighted round-robin in tiers, as HAProxy's `backup` servers: the best
/// tier (lowest `priority` number; primaries are 0, standbys 1) that has an
/// eligible backend takes every session, and a later tier takes sessions
/// only while every backend of the tiers before it is out. Later tiers
/// follow in the try order, so a retry can still reach a standby when the
/// primaries it tried failed.
#[derive(Debug, Default, Clone)]
pub struct TieredWrr {
    /// One round-robin per tier with an eligible backend, best tier first.
    tiers: Vec<SmoothWrr>,
}

impl TieredWrr {
    /// Tiers over `backends`, indexed like the pool: each one's
    /// `(priority, weight)`, weight 0 when it may not take sessions
    /// (unhealthy, draining, zero-weight). Scores start from zero again.
    pub fn new(backends: &[(u32, u32)]) -> Self {
        let mut priorities: Vec<u32> = backends
            .iter()
            .filter(|&&(_, w)| w > 0)
            .map(|&(p, _)| p)
            .collect();
        priorities.sort_unstable();
        priorities.dedup();
        let tiers = priorities
            .into_iter()
            .map(|tier| {
                let weights: Vec<u32> = backends
                    .iter()
                    .map(|&(p, w)| if p == tier { w } else { 0 })
                    .collect();
                SmoothWrr::new(&weights)
            })
            .collect();
        Self { tiers }
    }

    /// How many backends are eligible, in every tier: the longest order.
    pub fn eligible(&self) -> usize {
        self.tiers.iter().map(SmoothWrr::eligible).sum()
    }

    /// Pick from the best tier and write the try order into `order`: the
    /// pick, the rest of its tier heaviest first, then (with
    /// `later_tiers`) each later tier the same way, its own pick first.
    pub fn order(&mut self, order: &mut Vec<u32>, later_tiers: bool) {
        order.clear();
        let take = if later_tiers { self.tiers.len() } else { 1 };
        for tier in self.tiers.iter_mut().take(take) {
            tier.append_order(order);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_picks_like_nginx() {
        let mut wrr = SmoothWrr::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| wrr.pick().unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_split_over_a_window() {
        let mut wrr = SmoothWrr::new(&[5, 3, 1, 1]);
        let mut counts = [0u32; 4];
        for _ in 0..10 * 100 {
            counts[wrr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [500, 300, 100, 100]);
    }

    #[test]
    fn order_is_pick_then_heaviest_first() {
        let mut wrr = SmoothWrr::new(&[1, 0, 3, 2]);
        let mut order = Vec::new();
        wrr.order(&mut order);
        assert_eq!(order, vec![2, 3, 0]);
        wrr.order(&mut order);
        assert_eq!(order, vec![3, 2, 0]);
    }

    #[test]
    fn nothing_eligible_gives_an_empty_order() {
        let mut wrr = SmoothWrr::new(&[0, 0]);
        let mut order = vec![7];
        wrr.order(&mut order);
        assert!(order.is_empty());
        assert_eq!(SmoothWrr::new(&[]).pick(), None);
    }

    #[test]
    fn standbys_only_while_every_primary_is_out() {
        // Two primaries (priority 0) and a standby (1).
        let mut tiers = TieredWrr::new(&[(0, 1), (0, 1), (1, 5)]);
        let mut order = Vec::new();
        let mut firsts = [0u32; 3];
        for _ in 0..10 {
            tiers.order(&mut order, true);
            firsts[order[0] as usize] += 1;
            assert_eq!(order[2], 2, "the standby follows for retries");
        }
        assert_eq!(firsts, [5, 5, 0]);
        tiers.order(&mut order, false);
        assert_eq!(order.len(), 2, "without later tiers: primaries only");
        assert_eq!(tiers.eligible(), 3);

        let mut tiers = TieredWrr::new(&[(0, 0), (0, 0), (1, 5)]);
        tiers.order(&mut order, false);
        assert_eq!(
            order,
            vec![2],
            "every primary out: the standby tier is first"
        );
        let mut none = TieredWrr::new(&[(0, 0), (1, 0)]);
        none.order(&mut order, true);
        assert!(order.is_empty());
    }
}
