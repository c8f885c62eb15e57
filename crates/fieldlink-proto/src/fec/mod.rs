//! Forward error correction for the datagrams of one peer connection, below DTLS/SRTP
//! (sans-IO: datagrams and time in, datagrams out).
//!
//! Why here and not in str0m: str0m repairs loss with NACK/RTX only. Each attempt costs a
//! round trip, and the loss of a frame's last packet is only seen when the next frame
//! comes, so at 30 % loss over a 60 ms round trip fewer than one frame in five arrived
//! within 150 ms. An erasure code over whole datagrams (SRTP, SRTCP and DTLS records
//! alike) protects video, audio, RTCP and control data without touching str0m, and a
//! recovered datagram is byte for byte the one sent, so SRTP authenticates it as usual.
//! NACK still repairs what a block could not.
//!
//! A block is what one driving round sends (a frame's packets, written at once), at most
//! [`MAX_K`] datagrams. The data go out at once with a 5-byte header; when the block
//! closes, `m` Reed–Solomon parity datagrams follow, `m` chosen from the loss the other
//! side reports so that a block is lost with probability ≤ [`TARGET`]. With no loss
//! reported no parity is sent: the cost is the header.
//!
//! Wire format (big-endian). The first byte, [`MAGIC`], is outside RFC 7983's STUN, DTLS
//! and RTP/RTCP ranges, so a peer without FEC drops such datagrams.
//! - data:   `F7 0P seq:u16 idx:u8` + datagram (`P` = 0x80: parity will follow)
//! - parity: `F7 01 seq:u16 base:u16 k:u8 m:u8 j:u8` + shard (`len:u16` + datagram,
//!   zero-padded to an even size shared by the block)
//! - report: `F7 02 received:u32 expected:u32 stamp:u32 echo:u32 held:u32` (datagrams
//!   received and expected since the first, wrapping; this side's clock in ms; the other
//!   side's last stamp and the ms since it came, for the round trip)
//!
//! `seq` numbers every FEC datagram; a block's data hold `base .. base+k`. STUN is never
//! wrapped: the server finds a peer by its ICE traffic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First byte of every FEC datagram.
pub const MAGIC: u8 = 0xF7;
/// Most data datagrams in one block.
pub const MAX_K: usize = 64;
/// Most parity datagrams for one block.
pub const MAX_M: usize = 64;
/// Largest datagram carried (str0m sends ≤ 1200-byte datagrams).
pub const MAX_DATAGRAM: usize = 2000;
/// Probability of losing a block that the parity count aims at.
pub const TARGET: f64 = 0.0005;
/// Below this reported loss no parity is sent (NACK alone repairs rare losses).
pub const MIN_LOSS: f64 = 0.005;
/// Above this reported loss no parity is sent either: such loss is a link overflowing or
/// failing, not random, and parity (up to 4× the data) would feed it. Seen at a call's
/// start behind a 1 Mbit/s `tc tbf`: the estimator's first probes overflowed the queue,
/// 75–90 % loss was reported and parity kept it there for 3 s.
pub const MAX_LOSS: f64 = 0.45;
/// How often the receiving side reports what it got.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Blocks kept for recovery, at most, and for how long.
const MAX_BLOCKS: usize = 64;
const BLOCK_TTL: Duration = Duration::from_secs(1);
/// Bytes of datagram copies one receiving side keeps, at most.
const MAX_KEPT_BYTES: usize = 1 << 20;

const KIND_DATA: u8 = 0x00;
const KIND_PARITY: u8 = 0x01;
const KIND_REPORT: u8 = 0x02;
const PROTECTED: u8 = 0x80;
const DATA_HEADER: usize = 5;
const PARITY_HEADER: usize = 9;
const REPORT_LEN: usize = 22;

/// What one side's FEC has done, for statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct FecStats {
    /// Loss the other side reports on what this side sends (0–1).
    pub loss_estimate: f64,
    /// Parity datagrams sent.
    pub parity_sent: u64,
    /// Datagrams rebuilt from parity.
    pub recovered: u64,
    /// Protected blocks given up with datagrams missing (NACK's turn).
    pub unrecovered: u64,
    /// Loss seen on what this side receives (0–1, all time).
    pub loss_received: f64,
    /// How far the round trip stands above its minimum of the last two minutes, ms: the
    /// queue at the bottleneck (`None` before the first report). The larger of the
    /// smoothed round trip's and the last report's, so a growing queue shows at once.
    pub queue_ms: Option<f64>,
}

/// The datagram str0m wrote that a wire datagram carries as it is: itself when not FEC,
/// the payload of FEC data, `None` for parity and reports.
pub fn carried(wire: &[u8]) -> Option<&[u8]> {
    match wire {
        [MAGIC, kind, rest @ ..] if kind & !PROTECTED == KIND_DATA => rest.get(3..),
        [MAGIC, ..] => None,
        _ => Some(wire),
    }
}

/// Parity datagrams for a block of `k` at loss `loss`: the fewest that make losing more
/// than them (out of `k + m`) no likelier than [`TARGET`], at most `4k + 4` and [`MAX_M`].
/// Small blocks cost the most: at 30 % loss a lone datagram goes out eight times, a
/// 5-datagram frame with 13 parity, a 40-datagram keyframe with 45; at 10 % loss 3, 5, 16.
pub fn parity_for(k: usize, loss: f64) -> usize {
    if k == 0 || loss.is_nan() || !(MIN_LOSS..=MAX_LOSS).contains(&loss) {
        return 0;
    }
    // The estimate is a sample: aim a little above it.
    let p = loss * 1.2;
    let most = (4 * k + 4).min(MAX_M);
    (1..=most)
        .find(|&m| more_than_lost(k + m, m, p) <= TARGET)
        .unwrap_or(most)
}

/// P[X > m] for X ~ Binomial(n, p).
fn more_than_lost(n: usize, m: usize, p: f64) -> f64 {
    let mut term = (1.0 - p).powi(n as i32);
    let mut at_most = 0.0;
    for i in 0..=m.min(n) {
        at_most += term;
        term *= (n - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
    }
    (1.0 - at_most).max(0.0)
}

/// One peer connection's FEC: the sending half (blocks, parity) and the receiving half
/// (duplicates, recovery, reports).
#[derive(Debug)]
pub struct Fec {
    seq: u16,
    base: u16,
    /// Data in the open block.
    count: usize,
    protect: bool,
    /// Copies of the open block's datagrams, when protected.
    block: Vec<Vec<u8>>,
    buf: Vec<u8>,
    estimate: Estimate,
    rtt: Rtt,
    /// Time base of the reports' timestamps (the first instant seen).
    epoch: Option<Instant>,
    /// The other side's last report timestamp, and when it came.
    echo: Option<(u32, Instant)>,
    rx: Receiving,
    parity_sent: u64,
}

impl Default for Fec {
    fn default() -> Self {
        Fec::new()
    }
}

impl Fec {
    pub fn new() -> Fec {
        Fec {
            seq: 0,
            base: 0,
            count: 0,
            protect: false,
            block: Vec::new(),
            buf: Vec::with_capacity(MAX_DATAGRAM + PARITY_HEADER + 2),
            estimate: Estimate::default(),
            rtt: Rtt::default(),
            epoch: None,
            echo: None,
            rx: Receiving::default(),
            parity_sent: 0,
        }
    }

    /// Sends one datagram str0m wrote: `out` gets what goes on the wire (STUN as it is).
    pub fn send(&mut self, now: Instant, datagram: &[u8], out: &mut dyn FnMut(&[u8])) {
        let stun = datagram.first().is_some_and(|b| *b < 4);
        if stun {
            self.rtt.stun_sent(now, datagram);
        }
        if stun || datagram.is_empty() || datagram.len() > MAX_DATAGRAM {
            out(datagram);
            return;
        }
        if self.count == 0 {
            self.base = self.seq;
            self.protect = (MIN_LOSS..=MAX_LOSS).contains(&self.estimate.loss);
        }
        let flags = if self.protect { PROTECTED } else { 0 };
        self.buf.clear();
        self.buf.extend_from_slice(&[MAGIC, KIND_DATA | flags]);
        self.buf.extend_from_slice(&self.seq.to_be_bytes());
        self.buf.push(self.count as u8);
        self.buf.extend_from_slice(datagram);
        out(&self.buf);
        self.seq = self.seq.wrapping_add(1);
        self.count += 1;
        if self.protect {
            self.block.push(datagram.to_vec());
        }
        if self.count == MAX_K {
            self.flush(now, out);
        }
    }

    /// Closes the open block: its parity goes out. Call after each driving round.
    pub fn flush(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) {
        let k = self.count;
        self.count = 0;
        if !self.protect || k == 0 || self.rtt.congested(now) {
            self.block.clear();
            return;
        }
        let longest = self.block.iter().map(Vec::len).max().unwrap_or(0);
        let shard_bytes = (2 + longest).next_multiple_of(2);
        let m = parity_for(k, self.estimate.loss).max(1);
        let shards = self.block.drain(..).map(|d| shard(&d, shard_bytes));
        let Ok(parity) = reed_solomon_simd::encode(k, m, shards) else {
            return;
        };
        for (j, shard) in parity.iter().enumerate() {
            self.buf.clear();
            self.buf.extend_from_slice(&[MAGIC, KIND_PARITY]);
            self.buf.extend_from_slice(&self.seq.to_be_bytes());
            self.buf.extend_from_slice(&self.base.to_be_bytes());
            self.buf.extend_from_slice(&[k as u8, m as u8, j as u8]);
            self.buf.extend_from_slice(shard);
            out(&self.buf);
            self.seq = self.seq.wrapping_add(1);
            self.parity_sent += 1;
        }
    }

    /// The transport below saw a queue building (the bond's per-path round trips, which
    /// its probes measure every 100 ms on each path, where FEC's reports see only the
    /// end-to-end round trip of whichever path carried them): parity is held back as for
    /// a queue FEC saw itself.
    pub fn queue_seen(&mut self, now: Instant) {
        self.rtt.queued = Some(now);
    }

    /// Takes one datagram from the wire. Returns `false` when it is not an FEC datagram
    /// (the caller hands it to str0m as it is); otherwise every datagram it carries or
    /// completes goes to `deliver`, once.
    pub fn receive(&mut self, now: Instant, wire: &[u8], deliver: &mut dyn FnMut(&[u8])) -> bool {
        if wire.first() != Some(&MAGIC) {
            self.rtt.stun_received(now, wire);
            return false;
        }
        let Some(&kind) = wire.get(1) else {
            return true;
        };
        match kind & !PROTECTED {
            KIND_DATA if wire.len() > DATA_HEADER => {
                let seq = u16::from_be_bytes([wire[2], wire[3]]);
                let idx = usize::from(wire[4]);
                self.rx.count(now, seq);
                let datagram = &wire[DATA_HEADER..];
                if kind & PROTECTED == 0 {
                    deliver(datagram);
                } else if idx < MAX_K && datagram.len() <= MAX_DATAGRAM {
                    self.rx
                        .data(now, seq.wrapping_sub(idx as u16), idx, datagram, deliver);
                }
            }
            KIND_PARITY if wire.len() > PARITY_HEADER && kind == KIND_PARITY => {
                let seq = u16::from_be_bytes([wire[2], wire[3]]);
                let base = u16::from_be_bytes([wire[4], wire[5]]);
                let (k, m, j) = (
                    usize::from(wire[6]),
                    usize::from(wire[7]),
                    usize::from(wire[8]),
                );
                self.rx.count(now, seq);
                let shard = &wire[PARITY_HEADER..];
                let fits = (1..=MAX_K).contains(&k)
                    && (1..=MAX_M).contains(&m)
                    && j < m
                    && shard.len().is_multiple_of(2)
                    && (2..=MAX_DATAGRAM + 2).contains(&shard.len());
                if fits {
                    self.rx.parity(now, base, k, m, j, shard, deliver);
                }
            }
            KIND_REPORT if wire.len() >= REPORT_LEN && kind == KIND_REPORT => {
                let word =
                    |i: usize| u32::from_be_bytes([wire[i], wire[i + 1], wire[i + 2], wire[i + 3]]);
                let (received, expected) = (word(2), word(6));
                let (stamp, echo, held) = (word(10), word(14), word(18));
                let at = self.millis(now);
                self.echo = Some((stamp, now));
                // 0: nothing echoed yet (a stamp of 0 is sent as 1).
                if echo != 0 {
                    let rtt = at.wrapping_sub(echo).wrapping_sub(held);
                    if rtt < 60_000 {
                        self.rtt.sample(now, rtt);
                    }
                }
                // After the round trip this report measured: its loss counts only when
                // no queue stood lately.
                let queue = self.rtt.queue_lately(now);
                self.estimate.report(now, received, expected, queue);
            }
            _ => {}
        }
        true
    }

    /// When [`Fec::handle_timeout`] has something to do (a report is due).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rx.report_due()
    }

    /// Sends the report of what arrived, when due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) {
        if self.rx.report_due().is_some_and(|at| at <= now) {
            let (received, expected) = self.rx.reported(now);
            let (echo, held) = match self.echo {
                Some((stamp, at)) => (stamp, now.saturating_duration_since(at).as_millis() as u32),
                None => (0, 0),
            };
            let stamp = self.millis(now).max(1);
            let mut r = [0u8; REPORT_LEN];
            r[0] = MAGIC;
            r[1] = KIND_REPORT;
            for (i, v) in [received, expected, stamp, echo, held].iter().enumerate() {
                r[2 + 4 * i..6 + 4 * i].copy_from_slice(&v.to_be_bytes());
            }
            out(&r);
        }
    }

    /// Milliseconds since this side's first instant (wrapping), the reports' clock.
    fn millis(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u32
    }

    pub fn stats(&self) -> FecStats {
        FecStats {
            loss_estimate: self.estimate.loss,
            parity_sent: self.parity_sent,
            recovered: self.rx.recovered,
            unrecovered: self.rx.unrecovered,
            loss_received: self.rx.loss(),
            queue_ms: self.rtt.queue_now_ms(),
        }
    }
}

/// The round trip, measured by the reports (each carries a timestamp and echoes the
/// other side's last): while it stands [`QUEUE_LIMIT`] above its minimum of the last two
/// minutes, a queue is building on the path, so the loss is congestion and parity would
/// add to it: none is sent. Nor while no report has come for [`REPORTS_STALE`] (a full
/// queue drops them too). Random loss leaves the round trip alone. The minimum must
/// outlive a standing queue: over a 10 s window a persistently overloaded 400 kbit/s link
/// became the new normal and FEC multiplied its drops by ten. And a queue seen means
/// congestion for [`CONGESTION_MEMORY`] after: the loss of a queue that overflowed (a
/// keyframe into a full 1 Mbit/s `tc tbf`) is reported after the queue has drained, and
/// parity for it overflowed the queue again — the estimate collapsed to a quarter of the
/// link for seconds.
#[derive(Debug, Default)]
struct Rtt {
    /// Smoothed round trip, ms.
    srtt: Option<f64>,
    last: Option<Instant>,
    /// The last round trip, ms.
    latest: Option<u32>,
    /// When a queue was last seen.
    queued: Option<Instant>,
    /// When one round trip last stood [`QUEUE_LIMIT`] over the minimum (the smoothed
    /// one, which `queued` follows, lags a short overflow).
    spiked: Option<Instant>,
    /// Per 10 s bucket: its start and the least round trip in it.
    buckets: VecDeque<(Instant, u32)>,
    /// STUN binding requests sent and not answered yet: transaction id, when first sent.
    stun: VecDeque<([u8; 12], Instant)>,
}

/// STUN transactions timed at once, at most (ICE checks a few candidate pairs).
const MAX_STUN: usize = 8;

/// Queueing delay beyond which the path counts as congested.
pub const QUEUE_LIMIT: Duration = Duration::from_millis(25);
/// No report for this long counts as congested.
pub const REPORTS_STALE: Duration = Duration::from_secs(1);
/// How long after a queue was seen the path still counts as congested. 3 s kept the
/// parity for a keyframe's overflow off, but also kept parity off towards a remote whose
/// round trip rose for a moment with each keyframe (60 ms, 10 % loss: every keyframe
/// then waited for NACK and came 150–175 ms late): a few reports' worth, no more.
pub const CONGESTION_MEMORY: Duration = Duration::from_millis(300);
const RTT_BUCKET: Duration = Duration::from_secs(10);
const RTT_BUCKETS: usize = 12;

impl Rtt {
    /// A STUN binding request going out. ICE checks the path before any media fills
    /// it, so their round trips are the floor the queue is measured from; the reports'
    /// first round trips come with the first keyframe and the estimator's probes, and
    /// a floor taken from them (70 ms behind a 400 kbit/s `tc tbf`) hid the queue that
    /// overflowed there. A retransmission keeps the first send's time (a floor too
    /// high, never too low).
    fn stun_sent(&mut self, now: Instant, datagram: &[u8]) {
        let Some(id) = stun_transaction(datagram, 0x0001) else {
            return;
        };
        if self.stun.iter().any(|(t, _)| *t == id) {
            return;
        }
        if self.stun.len() >= MAX_STUN {
            self.stun.pop_front();
        }
        self.stun.push_back((id, now));
    }

    /// A STUN binding success response: its request's round trip lowers the floor.
    fn stun_received(&mut self, now: Instant, datagram: &[u8]) {
        let Some(id) = stun_transaction(datagram, 0x0101) else {
            return;
        };
        let Some(i) = self.stun.iter().position(|(t, _)| *t == id) else {
            return;
        };
        let Some((_, sent)) = self.stun.remove(i) else {
            return;
        };
        let ms = now.saturating_duration_since(sent).as_millis();
        self.floor(now, u32::try_from(ms).unwrap_or(u32::MAX));
    }

    /// Lowers the least round trip of the current bucket to `ms`.
    fn floor(&mut self, now: Instant, ms: u32) {
        match self.buckets.back_mut() {
            Some((start, min)) if now.saturating_duration_since(*start) < RTT_BUCKET => {
                *min = (*min).min(ms);
            }
            _ => self.buckets.push_back((now, ms)),
        }
        while self.buckets.len() > RTT_BUCKETS {
            self.buckets.pop_front();
        }
    }

    fn sample(&mut self, now: Instant, ms: u32) {
        let s = self
            .srtt
            .map_or(f64::from(ms), |s| s * 0.75 + f64::from(ms) * 0.25);
        self.srtt = Some(s);
        self.last = Some(now);
        self.latest = Some(ms);
        self.floor(now, ms);
        let limit = QUEUE_LIMIT.as_millis() as f64;
        if self.queue_ms().is_some_and(|q| q > limit) {
            self.queued = Some(now);
        }
        if self.queue_now_ms().is_some_and(|q| q > limit) {
            self.spiked = Some(now);
        }
    }

    fn queue_ms(&self) -> Option<f64> {
        let min = self.buckets.iter().map(|(_, m)| *m).min().unwrap_or(0);
        self.srtt.map(|s| (s - f64::from(min)).max(0.0))
    }

    fn queue_now_ms(&self) -> Option<f64> {
        let min = self.buckets.iter().map(|(_, m)| *m).min().unwrap_or(0);
        let latest = f64::from(self.latest.unwrap_or(0));
        self.srtt.map(|s| (s.max(latest) - f64::from(min)).max(0.0))
    }

    /// Whether a queue stood within [`CONGESTION_MEMORY`], even for one round trip.
    fn queue_lately(&self, now: Instant) -> bool {
        self.congested(now)
            || self
                .spiked
                .is_some_and(|t| now.saturating_duration_since(t) < CONGESTION_MEMORY)
    }

    fn congested(&self, now: Instant) -> bool {
        let Some(last) = self.last else {
            return false;
        };
        now.saturating_duration_since(last) > REPORTS_STALE
            || self
                .queued
                .is_some_and(|t| now.saturating_duration_since(t) < CONGESTION_MEMORY)
    }
}

/// The transaction id of a STUN message of type `kind` (RFC 8489: type, length, magic
/// cookie, 12-byte id).
fn stun_transaction(datagram: &[u8], kind: u16) -> Option<[u8; 12]> {
    let header = datagram.get(..20)?;
    let cookie = [0x21, 0x12, 0xA4, 0x42];
    (header[..2] == kind.to_be_bytes() && header[4..8] == cookie)
        .then(|| header[8..20].try_into().ok())
        .flatten()
}

/// The loss the other side reports: the worse of the last second's and the last
/// report's (when that one counted enough datagrams), so it rises at once and falls
/// within a second.
///
/// Loss reported while a queue stands is left out: it is the queue overflowing, which
/// parity only feeds. Counting it, parity resumed once the queue had drained (the
/// memory of congestion is short) at the loss of the overflow, still in the last
/// second's figure, and overflowed the queue again: behind a 400 kbit/s `tc tbf` the
/// call's first probes and keyframe dropped a few datagrams, and parity then kept the
/// link overflowing for 1–3 s (10–56 drops a second; none with FEC off).
#[derive(Debug, Default)]
struct Estimate {
    /// Per report in the last second: when, and the datagrams received and expected
    /// counted so far (those reported while no queue stood).
    history: VecDeque<(Instant, u32, u32)>,
    /// The last report's figures as sent (wrapping counters).
    last: Option<(u32, u32)>,
    counted: (u32, u32),
    loss: f64,
}

impl Estimate {
    fn report(&mut self, now: Instant, received: u32, expected: u32, queue: bool) {
        if let Some((r0, e0)) = self.last {
            let (r, e) = (received.wrapping_sub(r0), expected.wrapping_sub(e0));
            // A report from before a reordering or a reset: nothing to add.
            if !queue && e < 1 << 30 {
                self.counted.0 = self.counted.0.wrapping_add(r.min(e));
                self.counted.1 = self.counted.1.wrapping_add(e);
            }
        }
        self.last = Some((received, expected));
        let (received, expected) = self.counted;
        let share = |(_, r0, e0): (Instant, u32, u32), min: u32| {
            let (r, e) = (received.wrapping_sub(r0), expected.wrapping_sub(e0));
            (e >= min && e < 1 << 30).then(|| 1.0 - f64::from(r.min(e)) / f64::from(e))
        };
        let last = self.history.back().and_then(|h| share(*h, 20));
        while self
            .history
            .front()
            .is_some_and(|(t, ..)| now.saturating_duration_since(*t) > Duration::from_secs(1))
            || self.history.len() >= 32
        {
            self.history.pop_front();
        }
        let second = self.history.front().and_then(|h| share(*h, 1));
        self.history.push_back((now, received, expected));
        if second.is_some() || last.is_some() {
            self.loss = second.unwrap_or(0.0).max(last.unwrap_or(0.0));
        }
    }
}

/// One block being received.
#[derive(Debug)]
struct Block {
    base: u16,
    at: Instant,
    /// From the first parity: (k, m, shard size).
    shape: Option<(usize, usize, usize)>,
    data: Vec<Option<Vec<u8>>>,
    /// Delivered datagrams (bit per index): a late original after its recovery is a
    /// duplicate.
    delivered: u64,
    parity: Vec<(usize, Vec<u8>)>,
    done: bool,
}

impl Block {
    fn bytes(&self) -> usize {
        self.data.iter().flatten().map(Vec::len).sum::<usize>()
            + self.parity.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    fn forget(&mut self) {
        self.done = true;
        self.data = Vec::new();
        self.parity = Vec::new();
    }
}

#[derive(Debug, Default)]
struct Receiving {
    blocks: VecDeque<Block>,
    kept: usize,
    recovered: u64,
    /// Protected blocks given up with datagrams missing.
    unrecovered: u64,
    /// Sequence numbers: the highest (extended), the first, how many arrived.
    highest: Option<u64>,
    first: u64,
    received: u64,
    last_report: Option<Instant>,
    since_report: bool,
}

impl Receiving {
    fn count(&mut self, now: Instant, seq: u16) {
        self.received += 1;
        match self.highest {
            None => {
                let ext = 1 << 32 | u64::from(seq);
                self.highest = Some(ext);
                self.first = ext;
            }
            Some(h) => {
                let ahead = seq.wrapping_sub(h as u16) as i16;
                if ahead > 0 {
                    self.highest = Some(h + ahead as u64);
                }
            }
        }
        if !self.since_report {
            self.since_report = true;
            self.last_report.get_or_insert(now);
        }
    }

    fn expected(&self) -> u64 {
        self.highest.map_or(0, |h| h - self.first + 1)
    }

    fn loss(&self) -> f64 {
        let e = self.expected();
        if e == 0 {
            return 0.0;
        }
        1.0 - self.received.min(e) as f64 / e as f64
    }

    fn report_due(&self) -> Option<Instant> {
        let last = self.last_report?;
        self.since_report.then_some(last + REPORT_INTERVAL)
    }

    fn reported(&mut self, now: Instant) -> (u32, u32) {
        self.last_report = Some(now);
        self.since_report = false;
        (self.received as u32, self.expected() as u32)
    }

    fn block(&mut self, now: Instant, base: u16) -> &mut Block {
        while self
            .blocks
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.at) > BLOCK_TTL)
            || self.blocks.len() >= MAX_BLOCKS
            || self.kept > MAX_KEPT_BYTES
        {
            if let Some(b) = self.blocks.pop_front() {
                self.kept = self.kept.saturating_sub(b.bytes());
                if !b.done && b.shape.is_some() {
                    self.unrecovered += 1;
                }
            }
        }
        let at = match self.blocks.iter().position(|b| b.base == base) {
            Some(i) => i,
            None => {
                self.blocks.push_back(Block {
                    base,
                    at: now,
                    shape: None,
                    data: Vec::new(),
                    delivered: 0,
                    parity: Vec::new(),
                    done: false,
                });
                self.blocks.len() - 1
            }
        };
        &mut self.blocks[at]
    }

    fn data(
        &mut self,
        now: Instant,
        base: u16,
        idx: usize,
        datagram: &[u8],
        deliver: &mut dyn FnMut(&[u8]),
    ) {
        let b = self.block(now, base);
        if b.delivered & 1 << idx != 0 || b.shape.is_some_and(|(k, _, _)| idx >= k) {
            return;
        }
        b.delivered |= 1 << idx;
        deliver(datagram);
        if b.done {
            return;
        }
        if b.data.len() <= idx {
            b.data.resize(idx + 1, None);
        }
        b.data[idx] = Some(datagram.to_vec());
        self.kept += datagram.len();
        self.try_recover(base, deliver);
    }

    #[allow(clippy::too_many_arguments)]
    fn parity(
        &mut self,
        now: Instant,
        base: u16,
        k: usize,
        m: usize,
        j: usize,
        shard: &[u8],
        deliver: &mut dyn FnMut(&[u8]),
    ) {
        let b = self.block(now, base);
        if b.done || b.shape.is_some_and(|s| s != (k, m, shard.len())) {
            return;
        }
        // Data already seen beyond k, or longer than the shards: not this block's parity.
        let misfit = b.data.iter().enumerate().any(|(i, d)| {
            d.as_ref()
                .is_some_and(|d| i >= k || d.len() + 2 > shard.len())
        });
        if misfit || b.parity.iter().any(|(i, _)| *i == j) {
            return;
        }
        b.shape = Some((k, m, shard.len()));
        b.parity.push((j, shard.to_vec()));
        self.kept += shard.len();
        self.try_recover(base, deliver);
    }

    fn try_recover(&mut self, base: u16, deliver: &mut dyn FnMut(&[u8])) {
        let Some(b) = self.blocks.iter_mut().find(|b| b.base == base) else {
            return;
        };
        let Some((k, m, shard_bytes)) = b.shape else {
            return;
        };
        let have = (b.delivered & mask(k)).count_ones() as usize;
        if have == k {
            self.kept = self.kept.saturating_sub(b.bytes());
            b.forget();
            return;
        }
        let originals: Vec<(usize, Vec<u8>)> = b
            .data
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i, shard(d, shard_bytes))))
            .collect();
        if originals.len() + b.parity.len() < k {
            return;
        }
        let restored = reed_solomon_simd::decode(
            k,
            m,
            originals.iter().map(|(i, s)| (*i, s)),
            b.parity.iter().map(|(j, s)| (*j, s)),
        );
        self.kept = self.kept.saturating_sub(b.bytes());
        let Ok(restored) = restored else {
            b.forget();
            return;
        };
        let mut got: Vec<(usize, Vec<u8>)> = restored.into_iter().collect();
        got.sort_unstable_by_key(|(i, _)| *i);
        for (i, s) in got {
            let len = usize::from(u16::from_be_bytes([s[0], s[1]]));
            if i < k && b.delivered & 1 << i == 0 && len > 0 && len + 2 <= s.len() {
                b.delivered |= 1 << i;
                self.recovered += 1;
                deliver(&s[2..2 + len]);
            }
        }
        b.forget();
    }
}

fn mask(k: usize) -> u64 {
    if k >= 64 {
        u64::MAX
    } else {
        (1 << k) - 1
    }
}

fn shard(datagram: &[u8], bytes: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(bytes);
    s.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    s.extend_from_slice(datagram);
    s.resize(bytes, 0);
    s
}

#[cfg(test)]
mod tests;
