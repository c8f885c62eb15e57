//! One network path's health as its probes and acks show it: round trip, loss, state, and
//! the hysteresis that keeps a flapping path out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Probes on every admitted path, each way.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Nothing heard for this long: the path is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(300);
/// A path that came back is used again after answering this long without a break...
pub const READMIT_FIRST: Duration = Duration::from_secs(2);
/// ...doubled each time it fails again within [`FLAP_MEMORY`] of coming back, up to this.
pub const READMIT_MAX: Duration = Duration::from_secs(60);
pub const FLAP_MEMORY: Duration = Duration::from_secs(30);
/// Probes waited for at most (beyond: lost).
const PROBE_TTL: Duration = Duration::from_secs(1);
const MAX_OUTSTANDING: usize = 16;
/// Weight of one new sample in the loss averages.
const LOSS_ALPHA: f64 = 0.1;
/// Weight of one new sample in the send rate average (one sample per adaptation).
const RATE_ALPHA: f64 = 0.3;
/// A path whose round trip stands this far above its minimum is queueing: congested.
const QUEUE_LIMIT: Duration = Duration::from_millis(20);
/// How much more an uncongested path is given each adaptation (every 100 ms).
const PROBE_GROWTH: f64 = 1.01;
/// ...and near the rate it was last congested at, within [`CEILING_MEMORY`] of it.
const SLOW_GROWTH: f64 = 1.002;
const CEILING_MEMORY: Duration = Duration::from_secs(10);
/// The least a path is given in modes 2 and 3, as a share of an equal share: enough
/// data to measure its loss and notice when it has room again.
const MIN_SHARE: f64 = 0.04;
/// A round trip peak is remembered this long.
const PEAK_MEMORY: Duration = Duration::from_secs(1);
/// A round trip minimum is remembered this long.
const MIN_RTT_MEMORY: Duration = Duration::from_secs(30);
/// A path counts as queueing for this long after a round trip above [`QUEUE_LIMIT`]
/// (three probes: one that slips between the queue's peaks does not end it).
pub const QUEUE_MEMORY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Carries traffic.
    Up,
    /// Heard again after being down; not used until it has been healthy long enough.
    Recovering,
    /// Silent for [`DOWN_AFTER`].
    Down,
}

impl PathState {
    pub fn name(self) -> &'static str {
        match self {
            PathState::Up => "up",
            PathState::Recovering => "recovering",
            PathState::Down => "down",
        }
    }
}

/// What a path's figures are, for statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathStats {
    pub id: u8,
    pub state: PathState,
    pub rtt: Option<Duration>,
    /// Probes lost (0–1, smoothed).
    pub probe_loss: f64,
    /// Data datagrams this side sent on it that the other side did not get (0–1).
    pub data_loss: f64,
    /// Data datagrams and bytes sent on it.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Data datagrams received on it (duplicates included).
    pub received: u64,
    /// Times it went down.
    pub downs: u32,
}

#[derive(Debug)]
pub struct Path {
    pub id: u8,
    pub state: PathState,
    last_heard: Instant,
    /// Heard without a break since (while recovering).
    healthy_since: Instant,
    readmit_after: Duration,
    /// When it last came back up (for the flap backoff).
    up_at: Option<Instant>,
    next_probe: Instant,
    probe_seq: u32,
    /// Probes not answered yet: seq, sent, data datagrams sent on it by then.
    outstanding: VecDeque<(u32, Instant, u32)>,
    /// The last answered probe's data count and the other side's received count.
    last_ack: Option<(u32, u32)>,
    pub srtt: Option<Duration>,
    rtt_min: Option<(Duration, Instant)>,
    pub probe_loss: f64,
    pub data_loss: f64,
    /// Data datagrams sent / received on this path (wrapping counters on the wire).
    sent: u32,
    received: u32,
    /// The highest data sequence number received on this path, and when.
    last_data: Option<(u32, Instant)>,
    sent_bytes: u64,
    downs: u32,
    /// Modes 2 and 3: the rate (bytes/s) this path is given; the paths' shares of what
    /// is spread are their weights' ratio. And its byte credit in the round robin.
    pub weight: f64,
    pub credit: f64,
    /// When its weight was last cut (at most once per round trip), and to what it
    /// delivered then: growth slows near that ceiling.
    cut_at: Option<Instant>,
    ceiling: f64,
    /// What it sent, smoothed (bytes/s), and the byte count and time it was last taken.
    send_rate: f64,
    rate_from: Option<(Instant, u64)>,
    /// The latest round trip, and the latest data loss sample with whether it is new
    /// since the last adaptation (the averages remember too long to steer the shares:
    /// a path cut for a loss that is over would be cut again and again).
    last_rtt: Option<Duration>,
    last_loss: Option<(f64, bool)>,
    /// The longest round trip of the last second or so (its queue's peaks), and since when.
    rtt_peak: Option<(Duration, Instant)>,
    /// When a round trip last stood [`QUEUE_LIMIT`] above the minimum.
    queued_at: Option<Instant>,
}

impl Path {
    pub fn new(id: u8, now: Instant) -> Path {
        Path {
            id,
            state: PathState::Up,
            last_heard: now,
            healthy_since: now,
            readmit_after: READMIT_FIRST,
            // Admitted, not come back: its first fall is no flap.
            up_at: None,
            next_probe: now,
            probe_seq: 0,
            outstanding: VecDeque::new(),
            last_ack: None,
            srtt: None,
            rtt_min: None,
            probe_loss: 0.0,
            data_loss: 0.0,
            sent: 0,
            received: 0,
            last_data: None,
            sent_bytes: 0,
            downs: 0,
            weight: 1.0,
            credit: 0.0,
            cut_at: None,
            ceiling: 0.0,
            send_rate: 0.0,
            rate_from: None,
            last_rtt: None,
            last_loss: None,
            rtt_peak: None,
            queued_at: None,
        }
    }

    pub fn stats(&self) -> PathStats {
        PathStats {
            id: self.id,
            state: self.state,
            rtt: self.srtt,
            probe_loss: self.probe_loss,
            data_loss: self.data_loss,
            sent: u64::from(self.sent),
            sent_bytes: self.sent_bytes,
            received: u64::from(self.received),
            downs: self.downs,
        }
    }

    pub fn rtt_min(&self) -> Option<Duration> {
        self.rtt_min.map(|(d, _)| d)
    }

    /// The longest round trip seen lately (what a datagram sent now may take, at worst).
    pub fn rtt_peak(&self) -> Option<Duration> {
        self.rtt_peak.map(|(d, _)| d)
    }

    /// How far round trip `rtt` stands above the minimum: the queue it waited in.
    fn queue_in(&self, rtt: Duration) -> Duration {
        self.rtt_min()
            .map_or(Duration::ZERO, |m| rtt.saturating_sub(m))
    }

    /// A queue is building on this path: a round trip within [`QUEUE_MEMORY`] stood
    /// more than [`QUEUE_LIMIT`] above its minimum. Random loss leaves the round trip
    /// alone; a link carrying more than it can does not.
    pub fn queueing(&self, now: Instant) -> bool {
        self.queued_at
            .is_some_and(|t| now.saturating_duration_since(t) < QUEUE_MEMORY)
    }

    /// Anything arrived on this path.
    pub fn heard(&mut self, now: Instant) {
        if now.duration_since(self.last_heard) > PROBE_INTERVAL * 2 {
            // A break: recovering starts over.
            self.healthy_since = now;
        }
        self.last_heard = now;
        if self.state == PathState::Down {
            self.state = PathState::Recovering;
            self.healthy_since = now;
        }
    }

    pub fn data_received(&mut self, now: Instant, seq: u32) {
        self.received = self.received.wrapping_add(1);
        match self.last_data {
            // Older than the highest (reordered on the path, or a repeated copy).
            Some((high, _)) if super::reorder::seq_before(seq, high) => {}
            _ => self.last_data = Some((seq, now)),
        }
        self.heard(now);
    }

    /// The highest data sequence number this path delivered, if it carried data within
    /// `within` (a path the sender stopped using tells nothing about later gaps).
    pub fn data_passed(&self, now: Instant, within: Duration) -> Option<u32> {
        self.last_data
            .filter(|(_, at)| now.saturating_duration_since(*at) < within)
            .map(|(seq, _)| seq)
    }

    pub fn data_sent(&mut self, bytes: usize) {
        self.sent = self.sent.wrapping_add(1);
        self.sent_bytes += bytes as u64;
    }

    pub fn received_count(&self) -> u32 {
        self.received
    }

    /// State changes that time alone makes; the probe to send now, if one is due.
    pub fn tick(&mut self, now: Instant) -> Option<u32> {
        if self.state != PathState::Down && now.duration_since(self.last_heard) >= DOWN_AFTER {
            self.go_down(now);
        }
        if self.state == PathState::Recovering
            && now.duration_since(self.healthy_since) >= self.readmit_after
        {
            self.state = PathState::Up;
            self.up_at = Some(now);
        }
        while let Some(&(_, at, _)) = self.outstanding.front() {
            if now.duration_since(at) < PROBE_TTL && self.outstanding.len() <= MAX_OUTSTANDING {
                break;
            }
            self.outstanding.pop_front();
            self.probe_loss += LOSS_ALPHA * (1.0 - self.probe_loss);
        }
        if now < self.next_probe {
            return None;
        }
        self.next_probe = now + PROBE_INTERVAL;
        self.probe_seq = self.probe_seq.wrapping_add(1);
        self.outstanding.push_back((self.probe_seq, now, self.sent));
        Some(self.probe_seq)
    }

    fn go_down(&mut self, now: Instant) {
        self.state = PathState::Down;
        self.downs += 1;
        // Failing again soon after coming back: it must prove itself longer next time;
        // after holding for a while, it starts over; failing while still recovering
        // changes nothing.
        self.readmit_after = match self.up_at {
            Some(up) if now.duration_since(up) < FLAP_MEMORY => {
                (self.readmit_after * 2).min(READMIT_MAX)
            }
            Some(_) => READMIT_FIRST,
            None => self.readmit_after,
        };
        self.up_at = None;
        self.outstanding.clear();
        self.last_ack = None;
    }

    /// The loss to size copies by: the averages, or the latest data loss sample if it is
    /// higher. The average moves a tenth of the way per sample: a loss of 20 % that
    /// starts reads above 5.6 % (three copies on two paths) only at its fourth sample,
    /// 400+ ms in, while the repairs it causes need the copies now; one sample is noisy,
    /// but a copy too many costs little.
    pub fn loss_for_copies(&self) -> f64 {
        let latest = self.last_loss.map_or(0.0, |(l, _)| l);
        self.data_loss.max(self.probe_loss).max(latest)
    }

    pub fn next_timeout(&self) -> Instant {
        let mut t = self.next_probe;
        if self.state != PathState::Down {
            t = t.min(self.last_heard + DOWN_AFTER);
        }
        if self.state == PathState::Recovering {
            t = t.min(self.healthy_since + self.readmit_after);
        }
        t
    }

    /// The other side answered probe `seq` (held `held` before answering), having
    /// received `received` data datagrams on this path.
    pub fn on_ack(&mut self, now: Instant, seq: u32, held: Duration, received: u32) {
        self.heard(now);
        let Some(i) = self.outstanding.iter().position(|(s, _, _)| *s == seq) else {
            return;
        };
        // Probes before it that are still outstanding were lost (one path is FIFO).
        for _ in 0..i {
            self.outstanding.pop_front();
            self.probe_loss += LOSS_ALPHA * (1.0 - self.probe_loss);
        }
        let Some((_, sent_at, sent_then)) = self.outstanding.pop_front() else {
            return;
        };
        self.probe_loss -= LOSS_ALPHA * self.probe_loss;
        let rtt = now.duration_since(sent_at).saturating_sub(held);
        self.last_rtt = Some(rtt);
        match self.rtt_peak {
            Some((p, at)) if p >= rtt && now.duration_since(at) < PEAK_MEMORY => {}
            _ => self.rtt_peak = Some((rtt, now)),
        }
        self.srtt = Some(match self.srtt {
            Some(s) => (s * 7 + rtt) / 8,
            None => rtt,
        });
        match self.rtt_min {
            Some((m, at)) if m <= rtt && now.duration_since(at) < MIN_RTT_MEMORY => {}
            _ => self.rtt_min = Some((rtt, now)),
        }
        if self.queue_in(rtt) > QUEUE_LIMIT {
            self.queued_at = Some(now);
        }
        match self.last_ack {
            Some((s0, r0)) => {
                let ds = sent_then.wrapping_sub(s0);
                let dr = received.wrapping_sub(r0);
                // Too few datagrams for a sample: they count towards the next one.
                if ds >= 10 {
                    let sample = 1.0 - (f64::from(dr) / f64::from(ds)).min(1.0);
                    self.data_loss += LOSS_ALPHA * (sample - self.data_loss);
                    self.last_loss = Some((sample, true));
                    self.last_ack = Some((sent_then, received));
                }
            }
            None => self.last_ack = Some((sent_then, received)),
        }
    }

    /// Measures what this path sent since the last call (bytes/s, smoothed).
    pub fn measure_send_rate(&mut self, now: Instant) -> f64 {
        if let Some((at, bytes)) = self.rate_from {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let r = self.sent_bytes.saturating_sub(bytes) as f64 / dt;
                self.send_rate += RATE_ALPHA * (r - self.send_rate);
            }
        }
        self.rate_from = Some((now, self.sent_bytes));
        self.send_rate
    }

    /// Modes 2 and 3: sets the rate this path is given (its capacity as far as known)
    /// from what it carries. A queue or loss on it means it is at its capacity: it is
    /// given a little less than it delivered (at most once a round trip), so its queue
    /// drains and the other paths take the rest. Otherwise it is given what it carries,
    /// growing by [`PROBE_GROWTH`] every call (up to twice what it carries or an `equal`
    /// share), so it finds room it has. Cutting to what it delivered, not by a factor,
    /// and growing by a factor, not a step, is what makes the shares follow the paths'
    /// capacities: two paths cut by a factor together keep their ratio, and equal steps
    /// pull shares towards equal.
    pub fn adapt_weight(&mut self, now: Instant, equal: f64) {
        let queue = self.last_rtt.map_or(Duration::ZERO, |r| self.queue_in(r));
        let loss = match &mut self.last_loss {
            Some((l, fresh @ true)) => {
                *fresh = false;
                Some(*l)
            }
            _ => None,
        };
        let congested = loss.is_some_and(|l| l > 0.02) || queue > QUEUE_LIMIT;
        let rtt = self.srtt.unwrap_or(PROBE_INTERVAL);
        let floor = MIN_SHARE * equal;
        if congested {
            if self.cut_at.is_none_or(|c| now.duration_since(c) >= rtt) {
                let delivered = self.send_rate * (1.0 - loss.unwrap_or(0.0));
                self.weight = (0.9 * delivered).max(floor);
                self.cut_at = Some(now);
                self.ceiling = delivered;
            }
        } else {
            let cap = 2.0 * self.send_rate.max(equal);
            // Near where it was last congested, and not long ago: grow slowly there,
            // or it is back at the cliff within a second, again and again.
            let near = self
                .cut_at
                .is_some_and(|c| now.duration_since(c) < CEILING_MEMORY)
                && self.weight >= 0.95 * self.ceiling;
            let growth = if near { SLOW_GROWTH } else { PROBE_GROWTH };
            self.weight = (self.weight.max(self.send_rate) * growth)
                .min(cap)
                .max(floor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_round_trip_above_the_minimum_means_queueing_for_a_while() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        // Probe n sent at 100 n ms, answered after `rtt` ms.
        let mut probe = |n: u64, rtt: u64| {
            let sent = t + ms(100 * n);
            p.outstanding.push_back((n as u32, sent, 0));
            p.on_ack(sent + ms(rtt), n as u32, Duration::ZERO, 0);
            p.queueing(sent + ms(rtt))
        };
        assert!(!probe(0, 10));
        assert!(!probe(1, 30), "20 ms above the minimum is not a queue");
        assert!(probe(2, 31));
        assert!(
            probe(3, 10),
            "one probe between the queue's peaks does not end it"
        );
        assert!(p.queueing(t + ms(331)));
        assert!(!p.queueing(t + ms(232) + QUEUE_MEMORY));
    }

    #[test]
    fn silence_takes_a_path_down_within_300_ms() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        p.tick(t + ms(299));
        assert_eq!(p.state, PathState::Up);
        p.tick(t + ms(300));
        assert_eq!(p.state, PathState::Down);
        assert_eq!(p.stats().downs, 1);
    }

    #[test]
    fn a_path_comes_back_only_after_being_healthy_for_a_while() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        p.tick(t + ms(300));
        // Heard again: recovering, not used.
        let mut now = t + ms(400);
        p.heard(now);
        assert_eq!(p.state, PathState::Recovering);
        while now < t + ms(400) + READMIT_FIRST {
            assert_eq!(p.state, PathState::Recovering);
            p.heard(now);
            p.tick(now);
            now += ms(100);
        }
        p.heard(now);
        p.tick(now);
        assert_eq!(p.state, PathState::Up);
    }

    #[test]
    fn a_flapping_path_stays_out() {
        // Up 1 s, silent 1 s, for a minute: after its first fall it is never used again.
        let t = Instant::now();
        let mut p = Path::new(0, t);
        let mut used_after_first_down = 0;
        let mut down_seen = false;
        for step in 0..600u64 {
            let now = t + ms(step * 100);
            if (step / 10) % 2 == 0 {
                p.heard(now);
            }
            p.tick(now);
            down_seen |= p.state == PathState::Down;
            if down_seen && p.state == PathState::Up {
                used_after_first_down += 1;
            }
        }
        assert_eq!(used_after_first_down, 0);
    }

    #[test]
    fn the_backoff_doubles_while_it_keeps_failing_and_resets_when_it_holds() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        p.tick(t + ms(300));
        assert_eq!(p.readmit_after, READMIT_FIRST);
        // Back after 2 s of health, down again 1 s later: it must wait twice as long.
        let mut now = t + ms(400);
        while p.state != PathState::Up {
            p.heard(now);
            p.tick(now);
            now += ms(100);
        }
        p.tick(now + ms(1000));
        assert_eq!(p.state, PathState::Down);
        assert_eq!(p.readmit_after, READMIT_FIRST * 2);
        // Back for good: recovering 4 s, up, then holds 40 s, then fails: back to the first.
        now += ms(1100);
        let end = now + Duration::from_secs(50);
        while now < end {
            p.heard(now);
            p.tick(now);
            now += ms(100);
        }
        assert_eq!(p.state, PathState::Up);
        p.tick(now + ms(300));
        assert_eq!(p.state, PathState::Down);
        assert_eq!(p.readmit_after, READMIT_FIRST);
    }

    #[test]
    fn acks_give_the_round_trip_and_the_data_loss() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        let mut received = 0u32;
        for i in 0..50u64 {
            let now = t + ms(i * 100);
            let seq = p.tick(now).expect("a probe every 100 ms");
            // 20 datagrams between probes, the other side gets 18 of them (10 % loss).
            for _ in 0..20 {
                p.data_sent(1000);
            }
            received += 18;
            p.on_ack(now + ms(40), seq, ms(2), received - 18);
        }
        assert_eq!(p.srtt, Some(ms(38)));
        assert!((p.data_loss - 0.1).abs() < 0.02, "{}", p.data_loss);
        assert!(p.probe_loss < 0.01);
    }

    #[test]
    fn copies_are_sized_by_a_loss_that_just_started() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        let mut received = 0u32;
        for i in 0..20u64 {
            let now = t + ms(i * 100);
            let seq = p.tick(now).expect("a probe every 100 ms");
            for _ in 0..20 {
                p.data_sent(1000);
            }
            // Clean for a second, then 20 % lost.
            let got = if i < 10 { 20 } else { 16 };
            p.on_ack(now + ms(40), seq, ms(2), received);
            received += got;
            if i == 11 {
                // The first sample with the loss: the average has moved a tenth.
                assert!(p.data_loss < 0.03, "{}", p.data_loss);
                assert!((p.loss_for_copies() - 0.2).abs() < 1e-9);
            }
        }
        // Over: the average still remembers it.
        let before = p.loss_for_copies();
        let now = t + ms(2000);
        let seq = p.tick(now).expect("probe");
        p.on_ack(now + ms(40), seq, ms(2), received + 20);
        assert!(p.loss_for_copies() > 0.05 && p.loss_for_copies() < before);
    }

    #[test]
    fn unanswered_probes_count_as_lost() {
        let t = Instant::now();
        let mut p = Path::new(0, t);
        for i in 0..30u64 {
            let now = t + ms(i * 100);
            p.heard(now); // data keeps it up; probes go unanswered
            p.tick(now);
        }
        assert!(p.probe_loss > 0.5, "{}", p.probe_loss);
    }
}
