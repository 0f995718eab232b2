//! HAProxy-style rise/fall thresholds.
//!
//! A healthy backend turns unhealthy after `fall` consecutive failed
//! results; an unhealthy one turns healthy after `rise` consecutive good
//! ones. Isolated blips never flip the state.

/// Rise/fall thresholds (HAProxy defaults: rise 2, fall 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    /// Consecutive good results that bring an unhealthy backend back.
    pub rise: u32,
    /// Consecutive failed results that take a healthy backend out.
    pub fall: u32,
}

impl Default for RiseFall {
    fn default() -> Self {
        Self { rise: 2, fall: 3 }
    }
}

impl RiseFall {
    /// The new state given the one in force and the recent results
    /// (`true` = ok), oldest first. Needs no memory of its own: the streak
    /// is read from the end of `recent`.
    pub fn next_state<I>(&self, currently_healthy: bool, recent: I) -> bool
    where
        I: IntoIterator<Item = bool>,
        I::IntoIter: DoubleEndedIterator,
    {
        // A streak against the current state is what may flip it.
        let needed = if currently_healthy {
            self.fall
        } else {
            self.rise
        };
        let streak = recent
            .into_iter()
            .rev()
            .take_while(|&ok| ok != currently_healthy)
            .take(needed as usize)
            .count();
        if needed > 0 && streak as u32 >= needed {
            !currently_healthy
        } else {
            currently_healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_exactly_at_the_threshold() {
        let rf = RiseFall::default();
        assert!(rf.next_state(true, [false, false]));
        assert!(!rf.next_state(true, [false, false, false]));
        assert!(!rf.next_state(false, [false, false, true]));
        assert!(rf.next_state(false, [false, true, true]));
        // A good result in between resets the failure streak.
        assert!(rf.next_state(true, [false, false, true, false, false]));
    }
}
