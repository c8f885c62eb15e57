//! One heard party's adaptive jitter buffer and Opus decoder.
//!
//! Packets go in keyed by their 48 kHz RTP time; the mixer pulls 10 ms of PCM every 10
//! ms. Playout waits `target` after the first packet, where `target` follows the
//! measured arrival jitter (95th percentile of the packets' relative delay over the last
//! 2 s, plus a margin, within 20..200 ms, and at least one packet plus the margin). A packet not there when due is rebuilt from the
//! next packet's in-band FEC when that one is already here, else concealed (Opus PLC);
//! when nothing after it has come either, the packet is late rather than lost, and
//! playout waits for it behind the concealment (the delay grows, nothing is dropped);
//! after [`MAX_CONCEALED`] of concealment the party counts as silent and playout starts
//! over on its next packet. A buffer that holds well over its target for a while drops
//! 10 ms to catch up, so delay does not stay high after a burst.
//!
//! Pure: time comes in as an argument. (The `neteq` crate does more — time stretching —
//! but is an early preview; this keeps to what the intercom needs.)

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::decode::{AudioCodec, LineDecoder};
use super::{FRAME, RATE};

/// The smallest and largest playout delay aimed at.
pub const MIN_TARGET: Duration = Duration::from_millis(20);
pub const MAX_TARGET: Duration = Duration::from_millis(200);
/// Added to the measured jitter (one pull interval, the mixer's own granularity).
const MARGIN: Duration = Duration::from_millis(10);
/// How long arrivals are remembered for the jitter measure.
const WINDOW: Duration = Duration::from_secs(2);
/// Concealment before the party counts as silent.
pub const MAX_CONCEALED: Duration = Duration::from_millis(60);
/// Most packets held (a sender far ahead of playout is cut, never grown without bound).
const MAX_PACKETS: usize = 100;
/// A gap in RTP time longer than this is a new talk spurt (or a new sender on this line):
/// playout jumps to it instead of concealing.
const RESYNC_SAMPLES: u64 = RATE as u64 / 2;
/// Buffered audio above `target + EXCESS` for `EXCESS_PULLS` pulls in a row drops 10 ms.
const EXCESS: Duration = Duration::from_millis(30);
const EXCESS_PULLS: u32 = 20;

/// What the buffer did, for statistics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    /// Arrived after their time was played (concealed instead).
    pub late: u64,
    /// 10 ms frames rebuilt from the next packet's FEC.
    pub fec: u64,
    /// 10 ms frames concealed (PLC).
    pub concealed: u64,
    /// Of those, frames concealed while waiting for a late packet (playout delayed by
    /// them instead of the packet dropped).
    pub stretched: u64,
    /// 10 ms frames dropped to bring the delay down.
    pub dropped: u64,
    /// Packets the decoder refused.
    pub broken: u64,
}

pub struct JitterBuffer {
    channels: u16,
    decoder: LineDecoder,
    packets: BTreeMap<u64, Vec<u8>>,
    /// The RTP time decoded next, while playing.
    next: Option<u64>,
    /// When playout may start (set by the first packet while not playing).
    start_at: Option<Instant>,
    /// Decoded, not yet pulled.
    pcm: VecDeque<i16>,
    /// (arrival, relative delay in ms) over the last `WINDOW`.
    arrivals: VecDeque<(Instant, f64)>,
    /// The arrival of the first packet ever, and its RTP time: relative delays count
    /// from it.
    base: Option<(Instant, u64)>,
    concealed_run: u64,
    excess_pulls: u32,
    target: Duration,
    /// The last packet's duration: a buffer holds at least one packet more than the
    /// pull it serves (20 ms packets, as browsers send, need more than 10 ms ones).
    packet: Duration,
    pub stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer decoding `codec` to `channels` (1 or 2) at 48 kHz.
    pub fn new(codec: AudioCodec, channels: u16) -> Result<Self, String> {
        let channels = if channels == 2 { 2 } else { 1 };
        Ok(JitterBuffer {
            channels,
            decoder: LineDecoder::new(codec, channels)?,
            packets: BTreeMap::new(),
            next: None,
            start_at: None,
            pcm: VecDeque::new(),
            arrivals: VecDeque::new(),
            base: None,
            concealed_run: 0,
            excess_pulls: 0,
            target: MIN_TARGET,
            packet: Duration::from_millis(10),
            stats: JitterStats::default(),
        })
    }

    pub fn codec(&self) -> AudioCodec {
        self.decoder.codec()
    }

    /// The playout delay aimed at now.
    pub fn target(&self) -> Duration {
        self.target
    }

    pub fn push(&mut self, rtp_time: u64, data: Vec<u8>, now: Instant) {
        self.stats.received += 1;
        let (t0, r0) = *self.base.get_or_insert((now, rtp_time));
        let rel = now.saturating_duration_since(t0).as_secs_f64() * 1000.0
            - (rtp_time as f64 - r0 as f64) / f64::from(RATE / 1000);
        self.arrivals.push_back((now, rel));
        if let Some(n) = self.decoder.duration(&data) {
            self.packet = Duration::from_micros(n as u64 * 1_000_000 / u64::from(RATE));
        }
        while self
            .arrivals
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            self.arrivals.pop_front();
        }
        self.target = self.measure_target();
        match self.next {
            Some(next) if rtp_time < next => {
                if next - rtp_time < RESYNC_SAMPLES {
                    self.stats.late += 1;
                    return;
                }
                // Far behind: the sender started over (a new stream on this line).
                self.restart();
            }
            _ => {}
        }
        if self.next.is_none() && self.start_at.is_none() {
            self.start_at = Some(now + self.target);
        }
        self.packets.insert(rtp_time, data);
        while self.packets.len() > MAX_PACKETS {
            self.packets.pop_first();
            self.stats.dropped += 1;
        }
    }

    fn measure_target(&self) -> Duration {
        let floor = MIN_TARGET.max(self.packet + MARGIN);
        let mut rel: Vec<f64> = self.arrivals.iter().map(|(_, r)| *r).collect();
        if rel.len() < 2 {
            return floor;
        }
        rel.sort_by(f64::total_cmp);
        let min = rel[0];
        let p95 = rel[(rel.len() - 1) * 95 / 100];
        let jitter = Duration::from_secs_f64(((p95 - min).max(0.0)) / 1000.0);
        (jitter + MARGIN).clamp(floor, MAX_TARGET)
    }

    fn restart(&mut self) {
        self.next = None;
        self.start_at = None;
        self.packets.clear();
        self.pcm.clear();
        self.concealed_run = 0;
        self.base = None;
        self.arrivals.clear();
    }

    /// Whether the party is being played (not waiting, not silent).
    pub fn playing(&self) -> bool {
        self.next.is_some()
    }

    /// The next 10 ms (`FRAME * channels` samples), or `None` while this party is silent.
    pub fn pull(&mut self, now: Instant) -> Option<Vec<i16>> {
        if self.next.is_none() {
            let due = self.start_at.is_some_and(|t| now >= t);
            let first = self.packets.keys().next().copied();
            match (due, first) {
                (true, Some(first)) => {
                    self.next = Some(first);
                    self.start_at = None;
                    self.concealed_run = 0;
                }
                _ => return None,
            }
        }
        let want = FRAME * usize::from(self.channels);
        while self.pcm.len() < want {
            if !self.decode_next() {
                // Silent for too long: start over on its next packet.
                self.next = None;
                self.pcm.clear();
                return None;
            }
        }
        let out: Vec<i16> = self.pcm.drain(..want).collect();
        self.catch_up();
        Some(out)
    }

    /// Buffered audio ahead of playout, in samples per channel.
    fn level(&self) -> u64 {
        let queued = (self.pcm.len() / usize::from(self.channels)) as u64;
        match (self.next, self.packets.last_key_value()) {
            (Some(next), Some((&last, _))) => {
                queued + last.saturating_add(FRAME as u64).saturating_sub(next)
            }
            _ => queued,
        }
    }

    fn catch_up(&mut self) {
        let over = (self.target + EXCESS).as_secs_f64() * f64::from(RATE);
        if self.level() as f64 > over {
            self.excess_pulls += 1;
        } else {
            self.excess_pulls = 0;
        }
        if self.excess_pulls >= EXCESS_PULLS {
            self.excess_pulls = 0;
            if let (Some(next), true) = (self.next, self.pcm.is_empty()) {
                if let Some(data) = self.packets.remove(&next) {
                    let n = self.decoder.duration(&data).unwrap_or(FRAME);
                    self.next = Some(next.saturating_add(n as u64));
                    self.stats.dropped += 1;
                    return;
                }
            }
            let drop = (FRAME * usize::from(self.channels)).min(self.pcm.len());
            self.pcm.drain(..drop);
            self.stats.dropped += 1;
        }
    }

    /// Decodes (or conceals) the audio at `next`; false when the party has been silent
    /// longer than [`MAX_CONCEALED`].
    fn decode_next(&mut self) -> bool {
        let Some(next) = self.next else {
            return false;
        };
        // Anything older than playout is of no use now.
        while let Some((&t, _)) = self.packets.first_key_value() {
            if t >= next {
                break;
            }
            self.packets.pop_first();
            self.stats.late += 1;
        }
        if let Some(data) = self.packets.remove(&next) {
            self.concealed_run = 0;
            let dur = self.decoder.duration(&data);
            let mut out = Vec::new();
            match (self.decoder.decode(&data, self.channels, &mut out), dur) {
                (Some(n), Some(d)) if n > 0 => {
                    self.pcm.extend(out);
                    self.next = Some(next.saturating_add(d as u64));
                    return true;
                }
                // Conceal its 10 ms below.
                _ => self.stats.broken += 1,
            }
        }
        let following = self.packets.first_key_value().map(|(&t, _)| t);
        if let Some(t) = following {
            if t.saturating_sub(next) >= RESYNC_SAMPLES {
                // A new talk spurt: no concealment across the pause.
                self.next = Some(t);
                return true;
            }
        }
        self.concealed_run += FRAME as u64;
        if self.concealed_run > MAX_CONCEALED.as_millis() as u64 * u64::from(RATE / 1000) {
            return false;
        }
        // The packet right after the missing 10 ms carries it as FEC.
        let next_packet = following
            .filter(|&t| t == next.saturating_add(FRAME as u64))
            .and_then(|t| self.packets.get(&t))
            .map(Vec::as_slice);
        let mut out = Vec::new();
        if self.decoder.conceal(next_packet, self.channels, &mut out) {
            self.stats.fec += 1;
        } else {
            self.stats.concealed += 1;
        }
        self.pcm.extend(out);
        if following.is_some() {
            // A hole with audio after it: that 10 ms is lost, playout goes past it.
            self.next = Some(next.saturating_add(FRAME as u64));
        } else {
            // Nothing after it yet: the packet is late, not known lost (a stalled sender
            // or network). Playout waits for it behind the concealment, so the delay
            // grows by 10 ms instead of the packet being dropped when it comes;
            // `catch_up` takes the delay back later.
            self.stats.stretched += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::capture::{tests::tone, Capture};
    use super::*;

    fn packets(n: usize) -> Vec<(u64, Vec<u8>)> {
        let mut c = Capture::new();
        (0..n)
            .map(|k| {
                let p = c
                    .push(48000, 1, &tone(1000.0, 48000, k * FRAME, FRAME, 10000.0))
                    .unwrap();
                (p.rtp_time, p.data)
            })
            .collect()
    }

    /// Feeds `packets` (those `lost` left out) at 10 ms spacing, pulling every 10 ms;
    /// returns what was played.
    fn run(jb: &mut JitterBuffer, pk: &[(u64, Vec<u8>)], lost: &[usize]) -> Vec<i16> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (k, (t, d)) in pk.iter().enumerate() {
            let now = t0 + Duration::from_millis(10 * k as u64);
            if !lost.contains(&k) {
                jb.push(*t, d.clone(), now);
            }
            if let Some(f) = jb.pull(now) {
                out.extend(f);
            }
        }
        out
    }

    #[test]
    fn steady_packets_play_after_the_minimum_delay() {
        let pk = packets(50);
        let mut jb = JitterBuffer::new(AudioCodec::Opus, 1).unwrap();
        let out = run(&mut jb, &pk, &[]);
        // Starts 20 ms (2 pulls) after the first packet, then plays every pull.
        assert_eq!(out.len(), (50 - 2) * FRAME);
        assert_eq!(jb.stats.concealed + jb.stats.fec + jb.stats.late, 0);
        assert_eq!(jb.target(), MIN_TARGET);
    }

    #[test]
    fn a_lost_packet_comes_back_from_fec_and_two_are_concealed() {
        let pk = packets(60);
        let mut jb = JitterBuffer::new(AudioCodec::Opus, 1).unwrap();
        let out = run(&mut jb, &pk, &[20, 40, 41]);
        assert_eq!(out.len(), (60 - 2) * FRAME, "no gap in playout");
        assert!(jb.stats.fec >= 1, "{:?}", jb.stats);
        assert!(jb.stats.fec + jb.stats.concealed >= 3, "{:?}", jb.stats);
    }

    #[test]
    fn jittery_arrivals_raise_the_target_and_late_ones_are_counted() {
        let pk = packets(200);
        let mut jb = JitterBuffer::new(AudioCodec::Opus, 1).unwrap();
        let t0 = Instant::now();
        for (k, (t, d)) in pk.iter().enumerate() {
            // Every 5th packet 60 ms late.
            let extra = if k % 5 == 0 { 60 } else { 0 };
            jb.push(
                *t,
                d.clone(),
                t0 + Duration::from_millis(10 * k as u64 + extra),
            );
        }
        assert!(
            jb.target() >= Duration::from_millis(60),
            "{:?}",
            jb.target()
        );
        assert!(jb.target() <= MAX_TARGET);
    }

    proptest::proptest! {
        /// Whatever arrives (any times, any bytes, in any order), pulling never panics,
        /// always gives whole frames, and the buffer stays bounded.
        #[test]
        fn any_packets_are_survived(
            packets in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 0u64..30),
                0..200,
            ),
            stereo in proptest::prelude::any::<bool>(),
        ) {
            let ch = if stereo { 2 } else { 1 };
            let mut jb = JitterBuffer::new(AudioCodec::Opus, ch).unwrap();
            let t0 = Instant::now();
            let mut ms = 0;
            for (t, data, gap) in packets {
                ms += gap;
                let now = t0 + Duration::from_millis(ms);
                jb.push(t % (1 << 48), data, now);
                if let Some(f) = jb.pull(now) {
                    proptest::prop_assert_eq!(f.len(), FRAME * usize::from(ch));
                }
                proptest::prop_assert!(jb.packets.len() <= MAX_PACKETS);
                proptest::prop_assert!(jb.pcm.len() <= 8 * FRAME * usize::from(ch));
            }
        }
    }

    #[test]
    fn a_pause_longer_than_the_concealment_starts_over() {
        let pk = packets(30);
        let mut jb = JitterBuffer::new(AudioCodec::Opus, 1).unwrap();
        let t0 = Instant::now();
        let mut played = 0;
        for k in 0..100u64 {
            let now = t0 + Duration::from_millis(10 * k);
            if let Some((t, d)) = pk.get(k as usize) {
                jb.push(*t, d.clone(), now);
            }
            if jb.pull(now).is_some() {
                played += 1;
            }
        }
        // The 30 frames of audio, then 60 ms of concealment, then silence.
        assert_eq!(played, 30 + 6);
        assert!(!jb.playing());
    }
}
