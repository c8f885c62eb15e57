//! How an encoding source follows the bandwidth estimate: down at once, up at a bounded
//! pace, and never into a queue.
//!
//! When a source sends less than the estimate allows (application-limited), the
//! estimator may climb to 1.5 × what it sees acknowledged (GoogCC's cap) without any
//! sign from the network. A source that jumped to such an estimate would overshoot the
//! link by up to 50% and fill its queue faster than the delay detector can react, and
//! the losses then cost frames (seen behind a 1 Mbit/s shaper). So a source raises by at
//! most [`RAISE_PER_S`], watches the path's queue itself ([`QUEUE_HOLD`], [`QUEUE_CUT`]),
//! and slows down near where the last queue formed ([`RAISE_NEAR_PER_S`]); a falling
//! estimate is followed at once.
//!
//! Except at the start: for [`START`] after the first estimate, the estimate comes from
//! the estimator's initial probes (bursts at 3× and 6× its starting point, measured as
//! they arrive), not from growth in application-limited time, so it is followed as it
//! is; at 5 %/s a source starting at 300 kbit/s would need 25 s to fill a 1 Mbit/s link.
use std::time::{Duration, Instant};

/// How long after the first estimate a source follows it up without a limit.
pub const START: Duration = Duration::from_secs(3);

/// The largest relative raise of a source's target per second, away from the last
/// queue's rate (5 %/s took 10–20 s to refill a link after each cut; the queue watch now
/// catches an overshoot).
pub const RAISE_PER_S: f64 = 0.15;

/// A queue on the path this long stops raises, and this long cuts the target by
/// [`QUEUE_CUT_TO`] (at most every [`QUEUE_CUT_EVERY`]). The estimate swings ~20 % above
/// a narrow link's rate for seconds before its own detector reacts (seen behind a
/// 400 kbit/s `tc tbf`), and a source that followed built a backlog that made every
/// frame late for 1–3 s. The queue is measured by the FEC reports' round trip against
/// its two-minute minimum (`fieldlink_proto::fec`), every 100 ms, plus the backlog in
/// our own pacer (`Peer::send_queue_ms`).
pub const QUEUE_HOLD: Duration = Duration::from_millis(15);
pub const QUEUE_CUT: Duration = Duration::from_millis(35);
pub const QUEUE_CUT_TO: f64 = 0.85;
pub const QUEUE_CUT_EVERY: Duration = Duration::from_secs(1);

/// Within [`QUEUE_CUT_EVERY`], a queue that has grown this much since the last cut, at
/// least [`QUEUE_RECUT_AFTER`] later (a report's round trip after the encoder took the
/// cut), cuts again: the last cut was not enough. At 0.85 × a source that had overshot a
/// 400 kbit/s link by 17 % still filled it, and the queue (100+ ms) stood for the second
/// until the next cut, every frame in it late (seen in CI). A cut sized by the queue
/// instead (to drain it within 0.5 s) also cut deep on the queue of every keyframe, which
/// drains by itself in ~200 ms: the test pattern behind 400 kbit/s then averaged 69 % of
/// the link over six runs against 75 % over three with flat cuts.
pub const QUEUE_GROWTH: Duration = Duration::from_millis(20);
pub const QUEUE_RECUT_AFTER: Duration = Duration::from_millis(300);

/// From 5 % below the rate at which a queue last held or cut the target, raises slow to
/// this (the link was there last time, as TCP CUBIC reasons): at [`RAISE_PER_S`] the
/// source crossed it faster than the queue could be seen, every 7–8 s behind 400 kbit/s.
/// The memory goes after [`CEILING_MEMORY`] without a queue (the link may have grown).
pub const RAISE_NEAR_PER_S: f64 = 0.03;
pub const CEILING_MEMORY: Duration = Duration::from_secs(30);

/// The ceiling is the highest target of this long before the queue was seen: the queue
/// comes from what was sent a round trip and a report or two ago, and the estimate often
/// falls on the same queue a moment before the follower sees it. Taken at the fallen
/// target, the ceiling sat far below the link (behind 400 kbit/s: 204 kbit/s where the
/// queue formed at 290), and raises crept at [`RAISE_NEAR_PER_S`] for 15 s.
pub const PEAK_MEMORY: Duration = Duration::from_secs(1);

/// A burst's own queue: a frame of `b` bits much larger than the target's frame (a
/// keyframe, or [`BURST_FRAMES`] frames' worth) adds at most `b` / the source's target
/// (below the link's rate) to the queue, which drains by itself (the encoder skips frames
/// until it has paid for it). For that long after it, and [`BURST_MARGIN`] more (a
/// report's interval and round trip), the queue counts less by that much: a queue left
/// over is a standing one. Each keyframe behind 400 kbit/s (15 KB: 300 ms of the link)
/// made 50–130 ms of queue, cut the target by 15 % and set a ceiling there, at the start
/// three times in 3 s. A transcoded camera's own keyframes do the same through the
/// encoder: the picture after each is sharper than the one before, and the predicted
/// frame that codes the difference was 8–26 KB (2–7 frames' worth) every 2 s behind
/// 1 Mbit/s, each 40–80 ms of queue that cut the target.
pub const BURST_MARGIN: Duration = Duration::from_millis(250);
/// The most queue one burst is allowed to explain.
pub const BURST_MAX_QUEUE: Duration = Duration::from_secs(1);
/// A predicted frame this many times the target's frame is a burst.
pub const BURST_FRAMES: f64 = 2.0;

/// The share of the estimate a source takes: encoders overshoot (keyframes), and a full
/// link means loss.
pub const HEADROOM: f64 = 0.85;

/// The estimate often falls on a burst's queue: GoogCC reads it as overuse and drops to
/// 0.85 × what it saw acknowledged, then climbs back over 4–6 s (behind 1 Mbit/s, a 21 KB
/// keyframe paced at 1.1 × an estimate 30 % above the link: 1296 → 798 kbit/s, the video
/// at 40–55 % of the link for 3 s). A fall within [`BURST_FALL_WINDOW`] of the burst's
/// own queue, with no queue left standing, is the burst's: for [`BURST_FALL_HOLD`] the
/// target may stay up to the estimate itself (not [`HEADROOM`] of it), never above where
/// it was before the burst. A queue that cuts ends it.
pub const BURST_FALL_WINDOW: Duration = Duration::from_secs(1);
pub const BURST_FALL_HOLD: Duration = Duration::from_secs(5);

/// A burst that went out: when, the queue it explains, and the target before it.
#[derive(Debug, Clone, Copy)]
struct Burst {
    at: Instant,
    own: Duration,
    before: f64,
}

/// One source's target, kbit/s.
#[derive(Debug, Default)]
pub struct Follower {
    kbps: f64,
    at: Option<Instant>,
    /// When the first estimate came.
    first: Option<Instant>,
    /// When the queue last cut the target, and how long the queue was then.
    cut: Option<(Instant, Duration)>,
    /// The target when a queue last held or cut it ([`RAISE_NEAR_PER_S`]), and when.
    ceiling: Option<f64>,
    queued: Option<Instant>,
    /// The queue has been clear once since [`START`]: later queues are this source's.
    settled: bool,
    /// The highest target lately, and when ([`PEAK_MEMORY`]).
    peak: Option<(Instant, f64)>,
    /// The last burst ([`BURST_MARGIN`]).
    burst: Option<Burst>,
    /// Until when a fall on the last burst is held ([`BURST_FALL_HOLD`]), and the target
    /// before the burst.
    fall_held: Option<(Instant, f64)>,
    /// The queue the last call was given.
    last_queue: Duration,
}

impl Follower {
    /// In the [`START`] after the first call (which it marks).
    fn starting(&mut self, now: Instant) -> bool {
        let first = *self.first.get_or_insert(now);
        now.saturating_duration_since(first) < START
    }

    /// A queue now tells where the link is: past [`START`] and after the start's own
    /// queue has drained once. The start's keyframes and probes can fill a narrow link's
    /// queue for seconds past [`START`]; the cuts it forced then (each lower) set ceilings
    /// far below the link, and the source crept back at [`RAISE_NEAR_PER_S`] for half a
    /// minute (behind 400 kbit/s: cut to 119 kbit/s, 250 kbit/s only 30 s later).
    fn sets_ceiling(&mut self, now: Instant) -> bool {
        !self.starting(now) && self.settled
    }

    /// A frame of `bits` (`keyframe` or not) went out at `now`, at `fps`: a burst
    /// ([`BURST_MARGIN`]) when it is a keyframe or [`BURST_FRAMES`] frames' worth. Not
    /// when a queue already stood: the burst adds to it, and the link was full before it
    /// (behind 1 Mbit/s, a periodic keyframe into a link held in the hold band overflowed
    /// its queue and made 15 frames late while the discount kept the target up).
    pub fn sent(&mut self, bits: usize, keyframe: bool, fps: f64, now: Instant) {
        let target_bits = self.kbps * 1000.0;
        let burst = keyframe || bits as f64 * fps.max(1.0) >= BURST_FRAMES * target_bits;
        if !burst {
            return;
        }
        if self.kbps <= 0.0 || self.last_queue >= QUEUE_HOLD {
            self.burst = None;
            return;
        }
        let own = Duration::from_secs_f64(bits as f64 / target_bits).min(BURST_MAX_QUEUE);
        self.burst = Some(Burst {
            at: now,
            own,
            before: self.kbps,
        });
    }

    /// The target for a share of `share_kbps` at `now` (0 = no estimate yet: 0), with
    /// `queue` on the path (`None`: not measured).
    pub fn follow(&mut self, share_kbps: u32, queue: Option<Duration>, now: Instant) -> u32 {
        let kbps = self.follow_queue(share_kbps, queue, now);
        match self.peak {
            Some((t, p)) if p > self.kbps && now.saturating_duration_since(t) < PEAK_MEMORY => {}
            _ => self.peak = Some((now, self.kbps)),
        }
        kbps
    }

    /// The highest target of the last [`PEAK_MEMORY`].
    fn peak(&self) -> f64 {
        self.peak.map_or(self.kbps, |(_, p)| p.max(self.kbps))
    }

    /// The share to follow: `share`, or up to the estimate while a fall on the last
    /// burst is held ([`BURST_FALL_HOLD`]).
    fn burst_fall(&mut self, share: f64, queue: Duration, now: Instant) -> f64 {
        if let Some(b) = self.burst {
            let in_window = now < b.at + b.own + BURST_FALL_WINDOW;
            if in_window && share < self.kbps && queue < QUEUE_HOLD && self.fall_held.is_none() {
                self.fall_held = Some((now + BURST_FALL_HOLD, b.before));
            }
        }
        match self.fall_held {
            Some((until, before)) if now < until => share.max((share / HEADROOM).min(before)),
            _ => {
                self.fall_held = None;
                share
            }
        }
    }

    fn follow_queue(&mut self, share_kbps: u32, queue: Option<Duration>, now: Instant) -> u32 {
        let share = f64::from(share_kbps);
        let queue = queue.unwrap_or_default();
        if queue < QUEUE_HOLD && !self.starting(now) {
            self.settled = true;
        }
        let raw = queue;
        self.last_queue = raw;
        let queue = match self.burst {
            Some(b) if now < b.at + b.own + BURST_MARGIN => queue.saturating_sub(b.own),
            _ => queue,
        };
        let share = self.burst_fall(share, queue, now);
        if raw >= QUEUE_HOLD && queue < QUEUE_HOLD && self.kbps > 0.0 {
            // The burst's own queue: no raise into it (a falling estimate is still
            // followed), but it says nothing of where the link is.
            self.kbps = self.kbps.min(share);
            self.at = Some(now);
            return self.kbps as u32;
        }
        // `Some(true)`: a new queue; `Some(false)`: the last cut's queue, still growing.
        let cut = match self.cut {
            _ if queue < QUEUE_CUT || self.kbps <= 0.0 => None,
            None => Some(true),
            Some((t, _)) if now.saturating_duration_since(t) >= QUEUE_CUT_EVERY => Some(true),
            Some((t, q)) => (now.saturating_duration_since(t) >= QUEUE_RECUT_AFTER
                && queue >= q + QUEUE_GROWTH)
                .then_some(false),
        };
        if let Some(new_queue) = cut {
            self.cut = Some((now, queue));
            self.fall_held = None;
            // The rate where the queue formed is the ceiling, not a recut's lower one.
            if new_queue && self.sets_ceiling(now) {
                self.ceiling = Some(self.peak());
                self.queued = Some(now);
            }
            let to = share.min(self.kbps * QUEUE_CUT_TO);
            tracing::debug!(
                queue_ms = queue.as_millis() as u64,
                from = self.kbps as u32,
                to = to as u32,
                recut = !new_queue,
                "queue cut"
            );
            self.kbps = to;
            self.at = Some(now);
            return self.kbps as u32;
        }
        if queue >= QUEUE_HOLD && share > self.kbps && self.kbps > 0.0 {
            // The link is about here: approach it slowly from now on (not from the
            // start's queues: the first keyframes at a rate not yet adapted).
            if self.sets_ceiling(now) {
                self.ceiling = Some(self.peak().max(self.ceiling.unwrap_or(0.0)));
                self.queued = Some(now);
            }
            self.at = Some(now);
            return self.kbps as u32;
        }
        let starting = self.starting(now);
        let Some(at) = self
            .at
            .filter(|_| share > self.kbps && self.kbps > 0.0 && !starting)
        else {
            self.kbps = share;
            self.at = Some(now);
            return share as u32;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        if self
            .queued
            .is_some_and(|t| now.saturating_duration_since(t) > CEILING_MEMORY)
        {
            self.ceiling = None;
        }
        let rate = match self.ceiling {
            Some(c) if self.kbps >= c * 0.95 => RAISE_NEAR_PER_S,
            _ => RAISE_PER_S,
        };
        self.kbps = share.min(self.kbps * (1.0 + rate * dt));
        self.at = Some(now);
        self.kbps as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Follower {
        fn follow_free(&mut self, share: u32, now: Instant) -> u32 {
            self.follow(share, None, now)
        }
    }

    /// A follower that took `kbps` as its first estimate, and the moment [`START`] ends.
    fn past_start(kbps: u32) -> (Follower, Instant) {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.follow(kbps, None, t0);
        (f, t0 + START)
    }

    fn ms(m: u64) -> Option<Duration> {
        Some(Duration::from_millis(m))
    }

    #[test]
    fn the_start_leaves_no_ceiling() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.follow(300, None, t0);
        // The first keyframes' queue cuts, but the link was not found there.
        let q = Some(Duration::from_millis(80));
        assert_eq!(f.follow(900, q, t0 + Duration::from_secs(1)), 255);
        // Past START, up at the full rate (15 %/s), not the slow one.
        let t = t0 + START;
        let k1 = f.follow(900, None, t);
        let k2 = f.follow(900, None, t + Duration::from_secs(1));
        assert!(k2 * 100 >= k1 * 114, "{k1} -> {k2}");
    }

    #[test]
    fn a_queue_left_over_from_the_start_sets_no_ceiling() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.follow(300, None, t0);
        let q = Some(Duration::from_millis(80));
        // The start's queue lasts past START: cut, cut, but no ceiling.
        let mut t = t0 + START;
        for _ in 0..3 {
            f.follow(900, q, t);
            t += QUEUE_CUT_EVERY;
        }
        assert_eq!(f.ceiling, None);
        // Clear: raised at the full rate; the next queue is the source's own.
        let k1 = f.follow(900, Some(Duration::ZERO), t);
        let k2 = f.follow(900, Some(Duration::ZERO), t + Duration::from_secs(1));
        assert!(k2 * 100 >= k1 * 114, "{k1} -> {k2}");
        f.follow(900, q, t + Duration::from_secs(2));
        assert!(f.ceiling.is_some());
    }

    #[test]
    fn a_queue_holds_raises_and_cuts() {
        let (mut f, t) = past_start(1000);
        assert_eq!(f.follow(800, None, t), 800);
        // A short queue: no raise.
        assert_eq!(
            f.follow(
                2000,
                Some(Duration::from_millis(30)),
                t + Duration::from_secs(1)
            ),
            800
        );
        // A long one: cut, not again within a second, then again.
        let q = Some(Duration::from_millis(80));
        assert_eq!(f.follow(2000, q, t + Duration::from_secs(2)), 680);
        assert_eq!(f.follow(2000, q, t + Duration::from_millis(2700)), 680);
        assert_eq!(f.follow(2000, q, t + Duration::from_millis(3000)), 578);
        // Gone: raises again, fast up to 95 % of where the queue formed (800 at the
        // first cut, 680 at the second), slowly from there.
        let mut k = 0;
        for i in 1..=75 {
            k = f.follow(2000, None, t + Duration::from_millis(3000 + 40 * i));
        }
        assert!((680..=700).contains(&k), "{k}");
    }

    #[test]
    fn a_queue_still_growing_after_a_cut_cuts_again() {
        let (mut f, t) = past_start(500);
        assert_eq!(f.follow(500, Some(Duration::ZERO), t), 500);
        assert_eq!(f.follow(500, ms(150), t + Duration::from_secs(1)), 425);
        // Too soon, or not grown by 20 ms: no second cut.
        assert_eq!(f.follow(500, ms(200), t + Duration::from_millis(1200)), 425);
        assert_eq!(f.follow(500, ms(165), t + Duration::from_millis(1400)), 425);
        // Grown: cut again within the second.
        assert_eq!(f.follow(500, ms(200), t + Duration::from_millis(1400)), 361);
        // The ceiling is where the first queue formed, not the recut's rate.
        assert_eq!(f.ceiling, Some(500.0));
    }

    #[test]
    fn a_keyframes_own_queue_neither_cuts_nor_sets_a_ceiling() {
        let (mut f, t) = past_start(300);
        assert_eq!(f.follow(300, ms(0), t), 300);
        // 15 KB at 300 kbit/s: 400 ms of its own queue, for 650 ms.
        f.sent(120_000, true, 25.0, t);
        assert_eq!(f.follow(400, ms(130), t + Duration::from_millis(100)), 300);
        assert_eq!(f.ceiling, None);
        // A falling estimate is followed (held at the estimate, not its share: a fall
        // on the burst).
        assert_eq!(f.follow(200, ms(130), t + Duration::from_millis(150)), 235);
        assert_eq!(f.cut, None);
        // More than it explains is a standing queue: cut, and the ceiling is set.
        assert_eq!(f.follow(400, ms(460), t + Duration::from_millis(200)), 200);
        assert_eq!(f.ceiling, Some(300.0));
        // Once it has drained, a queue counts whole again.
        let (mut g, t) = past_start(300);
        g.follow(300, ms(0), t);
        g.sent(120_000, true, 25.0, t);
        assert_eq!(g.follow(300, ms(40), t + Duration::from_millis(700)), 255);
        // A keyframe into a queue that already stood explains nothing.
        let (mut h, t) = past_start(300);
        h.follow(300, ms(0), t);
        h.follow(300, ms(20), t + Duration::from_millis(100));
        h.sent(120_000, true, 25.0, t + Duration::from_millis(100));
        assert_eq!(h.follow(300, ms(60), t + Duration::from_millis(200)), 255);
    }

    #[test]
    fn a_large_predicted_frame_is_a_burst_and_a_usual_one_is_not() {
        // 300 kbit/s at 25 fps: 12 kbit a frame.
        let (mut f, t) = past_start(300);
        assert_eq!(f.follow(300, ms(0), t), 300);
        // 18 kbit (1.5 frames' worth) explains nothing: 40 ms of queue cuts.
        f.sent(18_000, false, 25.0, t);
        assert_eq!(f.follow(300, ms(40), t + Duration::from_millis(100)), 255);
        // 30 kbit (2.5 frames' worth, 100 ms at the target) is a burst: 80 ms does not.
        let (mut g, t) = past_start(300);
        g.follow(300, ms(0), t);
        g.sent(30_000, false, 25.0, t);
        assert_eq!(g.follow(300, ms(80), t + Duration::from_millis(100)), 300);
        assert_eq!(g.ceiling, None);
        // A usual frame after it leaves its window as it was.
        g.sent(12_000, false, 25.0, t + Duration::from_millis(40));
        assert_eq!(g.follow(300, ms(80), t + Duration::from_millis(140)), 300);
    }

    #[test]
    fn a_fall_of_the_estimate_on_a_burst_is_followed_to_the_estimate_for_a_while() {
        let (mut f, t) = past_start(850);
        assert_eq!(f.follow(850, ms(0), t), 850);
        let ms_after = |m: u64| t + Duration::from_millis(m);
        // A 21 KB keyframe, then the estimate falls from 1000 to 800 kbit/s (share 680)
        // with no queue left: held at the estimate, not its share.
        f.sent(168_000, true, 25.0, t);
        assert_eq!(f.follow(680, ms(5), ms_after(400)), 800);
        // Not above where it was before the burst.
        assert_eq!(f.follow(850, ms(0), ms_after(1000)), 850);
        assert_eq!(f.follow(680, ms(0), ms_after(2000)), 800);
        // Once the hold is over, the share again.
        assert_eq!(f.follow(680, ms(0), ms_after(400 + 5001)), 680);
        // A fall long after a burst is followed at once.
        let (mut g, t) = past_start(850);
        g.follow(850, ms(0), t);
        g.sent(168_000, true, 25.0, t);
        assert_eq!(g.follow(680, ms(0), t + Duration::from_secs(2)), 680);
        // A queue that cuts ends the hold.
        let (mut h, t) = past_start(850);
        h.follow(850, ms(0), t);
        h.sent(168_000, true, 25.0, t);
        assert_eq!(h.follow(680, ms(5), t + Duration::from_millis(300)), 800);
        assert_eq!(h.follow(680, ms(80), t + Duration::from_millis(900)), 680);
        assert_eq!(h.follow(680, ms(0), t + Duration::from_millis(1200)), 680);
    }

    #[test]
    fn the_ceiling_is_where_the_queue_formed_not_where_the_estimate_fell() {
        let (mut f, t) = past_start(300);
        assert_eq!(f.follow(290, ms(0), t), 290);
        // The estimate falls on the queue a moment before the queue is seen.
        assert_eq!(f.follow(204, ms(5), t + Duration::from_millis(300)), 204);
        assert_eq!(f.follow(204, ms(60), t + Duration::from_millis(400)), 173);
        assert_eq!(f.ceiling, Some(290.0));
        // Fast (15 %/s) up past the fallen estimate's rate: the ceiling is at 290.
        let mut k = 0;
        for i in 1..=50 {
            k = f.follow(1000, ms(0), t + Duration::from_millis(400 + 40 * i));
        }
        // 173 × 1.006⁵⁰ ≈ 233 (the slow pace would have made it 183).
        assert!(k >= 225, "{k}");
    }

    #[test]
    fn falls_at_once_and_rises_slowly() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        assert_eq!(f.follow_free(0, t0), 0);
        // At the start (the initial probes' results) the estimate is followed at once.
        assert_eq!(f.follow_free(300, t0), 300);
        assert_eq!(f.follow_free(1000, t0 + Duration::from_secs(1)), 1000);
        let t0 = t0 + START;
        assert_eq!(f.follow_free(600, t0 + Duration::from_millis(10)), 600);
        // 25 calls a second for two seconds towards 2000: about 600 × 1.006⁵⁰.
        let mut k = 0;
        for i in 1..=50 {
            k = f.follow_free(2000, t0 + Duration::from_millis(10 + 40 * i));
        }
        assert!((795..=820).contains(&k), "{k}");
        assert_eq!(f.follow_free(500, t0 + Duration::from_secs(7)), 500);
    }
}
