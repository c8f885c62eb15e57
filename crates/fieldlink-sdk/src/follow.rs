//! How an encoding source follows the bandwidth estimate: down at once, up slowly.
//!
//! When a source sends less than the estimate allows (application-limited), the
//! estimator may climb to 1.5 × what it sees acknowledged (GoogCC's cap) without any
//! sign from the network. A source that jumped to such an estimate would overshoot the
//! link by up to 50% and fill its queue faster than the delay detector can react, and
//! the losses then cost frames (seen behind a 1 Mbit/s shaper). Raising by at most
//! [`RAISE_PER_S`] lets the queue delay grow slowly enough to be seen first; a falling
//! estimate is followed at once.
use std::time::Instant;

/// The largest relative raise of a source's target per second (GoogCC's own
/// multiplicative increase is about 8% per second).
pub const RAISE_PER_S: f64 = 0.05;

/// One source's target, kbit/s.
#[derive(Debug, Default)]
pub struct Follower {
    kbps: f64,
    at: Option<Instant>,
}

impl Follower {
    /// The target for a share of `share_kbps` at `now` (0 = no estimate yet: 0).
    pub fn follow(&mut self, share_kbps: u32, now: Instant) -> u32 {
        let share = f64::from(share_kbps);
        let Some(at) = self.at.filter(|_| share > self.kbps && self.kbps > 0.0) else {
            self.kbps = share;
            self.at = Some(now);
            return share_kbps;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        self.kbps = share.min(self.kbps * (1.0 + RAISE_PER_S * dt));
        self.at = Some(now);
        self.kbps as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn falls_at_once_and_rises_slowly() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        assert_eq!(f.follow(0, t0), 0);
        assert_eq!(f.follow(1000, t0), 1000);
        assert_eq!(f.follow(600, t0 + Duration::from_millis(10)), 600);
        // 25 calls a second for two seconds towards 2000: about 600 × 1.05².
        let mut k = 0;
        for i in 1..=50 {
            k = f.follow(2000, t0 + Duration::from_millis(10 + 40 * i));
        }
        assert!((655..=670).contains(&k), "{k}");
        assert_eq!(f.follow(500, t0 + Duration::from_secs(3)), 500);
    }
}
