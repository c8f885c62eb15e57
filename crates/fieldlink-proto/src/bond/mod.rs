//! Several network paths under one peer connection (SPEC §9; docs/multipath.md), sans-IO:
//! datagrams, path numbers and time in; datagrams for paths, datagrams handed up and
//! events out. The sockets (one per local address on the device, the shared one on the
//! server) are the caller's.
//!
//! Below DTLS/SRTP (and below FEC): str0m sends on one candidate pair, and the bond
//! carries its datagrams over every path, so WebRTC is untouched. Each datagram gets a
//! sequence number; the receiving side keeps the first copy, drops the others and hands
//! them up in order, waiting for a gap at most a bounded time ([`reorder`]). Every
//! admitted path is probed both ways every 100 ms: round trip, loss, down within 300 ms
//! of silence, back only after proving itself ([`path`]). Which paths a datagram takes
//! depends on the mode ([`schedule`]).
//!
//! A path joins with a challenge: the device sends `join` on it, the server answers with a
//! nonce, the device proves it knows the session key (given over the logged-in
//! signalling connection) with an HMAC over it, and only then is the path's address
//! admitted. A challenge goes to the address the join came from, so a join replayed
//! from elsewhere admits nothing.

pub mod path;
pub mod reorder;
pub mod schedule;
pub mod wire;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use path::{PathState, PathStats};
pub use reorder::ReorderStats;
pub use schedule::{Class, Mode};
use wire::{Packet, MAC, NONCE};

/// Paths one session may have.
pub const MAX_PATHS: usize = 8;
/// Bytes of a session key.
pub const KEY_LEN: usize = 32;
/// The longest a datagram waits for an earlier one.
pub const MAX_REORDER: Duration = Duration::from_millis(50);
/// The shortest: covers two paths of equal delay delivering out of step.
pub const MIN_REORDER: Duration = Duration::from_millis(5);
/// A path's highest delivered sequence number speaks for gaps only this long after it
/// came (see [`Bond::passed_by_all`]).
const PASSED_MEMORY: Duration = Duration::from_secs(1);
/// A gap skipped on this side says "loss on every path now" this long (see
/// [`Bond::send`]); by then the paths' own loss figures have caught up.
const LOSS_NOW_MEMORY: Duration = Duration::from_secs(1);
/// A path not yet admitted asks again this often.
pub const JOIN_INTERVAL: Duration = Duration::from_millis(200);
/// Datagrams queued for the sockets, at most (beyond: dropped and counted).
const MAX_QUEUED: usize = 8192;
/// Challenges outstanding at once (server).
const MAX_CHALLENGES: usize = 16;
const CHALLENGE_TTL: Duration = Duration::from_secs(5);
/// Aggregate weights move this often.
const ADAPT_INTERVAL: Duration = Duration::from_millis(100);
/// Below this much traffic (bytes/s, all paths) the weights do not move.
const MIN_ADAPT_RATE: f64 = 10_000.0;

/// A datagram for path `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub path: u8,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondEvent {
    /// Server: the datagram just received proved path `0`: its source address is the
    /// path's from now on. Device: the server admitted path `0`.
    Admitted(u8),
    /// A path went up, down or started recovering.
    State(u8, PathState),
}

/// Everything the bond has done, for statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BondStats {
    pub paths: Vec<PathStats>,
    pub reorder: ReorderStats,
    /// Datagrams dropped: from an address that is no admitted path, or a bad proof.
    pub refused: u64,
    /// Datagrams that found no path (none admitted yet) or no room in the queue.
    pub unsent: u64,
    /// Bytes of the datagrams given to [`Bond::send`] (each once, whatever paths took it).
    pub carried_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Device,
    Server,
}

pub struct Bond {
    side: Side,
    session: u32,
    key: [u8; KEY_LEN],
    mode: Mode,
    epoch: Instant,
    paths: Vec<path::Path>,
    /// Device: paths not admitted yet, with when to ask next.
    joining: Vec<(u8, Instant)>,
    /// Server: nonces handed out (path, nonce, when).
    challenges: VecDeque<(u8, [u8; NONCE], Instant)>,
    /// Server: where nonces come from (HMAC of a random seed over a counter).
    nonce_seed: [u8; 32],
    nonce_count: u64,
    seq: u32,
    reorder: reorder::Reorder,
    /// When this side last skipped a gap (a datagram lost on every path).
    gap_skipped_at: Option<Instant>,
    out: VecDeque<Transmit>,
    delivered: VecDeque<Vec<u8>>,
    events: VecDeque<BondEvent>,
    dup: f64,
    next_adapt: Instant,
    refused: u64,
    unsent: u64,
    carried_bytes: u64,
    buf: Vec<u8>,
    picks: Vec<usize>,
}

impl Bond {
    /// The device's side: paths `ids` (one per local address) start joining now.
    pub fn device(session: u32, key: [u8; KEY_LEN], mode: Mode, ids: &[u8], now: Instant) -> Bond {
        let mut b = Bond::new(Side::Device, session, key, mode, [0; 32], now);
        b.joining = ids.iter().take(MAX_PATHS).map(|&id| (id, now)).collect();
        b
    }

    /// The server's side; `seed` (random) makes the challenges' nonces.
    pub fn server(
        session: u32,
        key: [u8; KEY_LEN],
        mode: Mode,
        seed: [u8; 32],
        now: Instant,
    ) -> Bond {
        Bond::new(Side::Server, session, key, mode, seed, now)
    }

    fn new(
        side: Side,
        session: u32,
        key: [u8; KEY_LEN],
        mode: Mode,
        seed: [u8; 32],
        now: Instant,
    ) -> Bond {
        Bond {
            side,
            session,
            key,
            mode,
            epoch: now,
            paths: Vec::new(),
            joining: Vec::new(),
            challenges: VecDeque::new(),
            nonce_seed: seed,
            nonce_count: 0,
            seq: 0,
            reorder: reorder::Reorder::default(),
            gap_skipped_at: None,
            out: VecDeque::new(),
            delivered: VecDeque::new(),
            events: VecDeque::new(),
            dup: 0.0,
            next_adapt: now,
            refused: 0,
            unsent: 0,
            carried_bytes: 0,
            buf: Vec::new(),
            picks: Vec::new(),
        }
    }

    pub fn session(&self) -> u32 {
        self.session
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn stats(&self) -> BondStats {
        BondStats {
            paths: self.paths.iter().map(path::Path::stats).collect(),
            reorder: self.reorder.stats(),
            refused: self.refused,
            unsent: self.unsent,
            carried_bytes: self.carried_bytes,
        }
    }

    /// A path that carries data is queueing (see [`path::Path::queueing`]): what is
    /// lost now is congestion, and redundancy added on top (FEC's parity) feeds it.
    pub fn queueing(&self, now: Instant) -> bool {
        self.paths
            .iter()
            .any(|p| p.state == PathState::Up && p.queueing(now))
    }

    /// Any path admitted (before that, nothing can be sent).
    pub fn ready(&self) -> bool {
        !self.paths.is_empty()
    }

    fn stamp(&self, now: Instant) -> u32 {
        now.duration_since(self.epoch).as_millis() as u32
    }

    fn queue(&mut self, path: u8, p: Packet<'_>) {
        if self.out.len() >= MAX_QUEUED {
            self.unsent += 1;
            return;
        }
        let mut data = Vec::new();
        p.encode(&mut data);
        self.out.push_back(Transmit { path, data });
    }

    /// One datagram to carry (str0m's or FEC's), of `class`.
    pub fn send(&mut self, now: Instant, class: Class, datagram: &[u8]) {
        if self.paths.is_empty() {
            self.unsent += 1;
            return;
        }
        self.carried_bytes += datagram.len() as u64;
        // Loss on every path is happening now, before the paths' figures show it (a loss
        // sample needs 10 datagrams and two acks: 100-300 ms at a loss's onset): a
        // retransmission exists because its original was lost on every path, and so was
        // a gap this side skipped (whose NACK this RTCP may carry).
        let loss_now = class == Class::Repair
            || self
                .gap_skipped_at
                .is_some_and(|t| now.saturating_duration_since(t) < LOSS_NOW_MEMORY);
        let mut picks = std::mem::take(&mut self.picks);
        schedule::choose(
            self.mode,
            class,
            loss_now,
            datagram.len(),
            &mut self.paths,
            &mut self.dup,
            &mut picks,
        );
        self.seq = self.seq.wrapping_add(1);
        let mut buf = std::mem::take(&mut self.buf);
        Packet::Data {
            session: self.session,
            seq: self.seq,
            payload: datagram,
        }
        .encode(&mut buf);
        for &i in &picks {
            if self.out.len() >= MAX_QUEUED {
                self.unsent += 1;
                continue;
            }
            self.paths[i].data_sent(datagram.len());
            self.out.push_back(Transmit {
                path: self.paths[i].id,
                data: buf.clone(),
            });
        }
        self.buf = buf;
        self.picks = picks;
    }

    fn path_mut(&mut self, id: u8) -> Option<&mut path::Path> {
        self.paths.iter_mut().find(|p| p.id == id)
    }

    fn mac(&self, path: u8, nonce: &[u8; NONCE]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(b"fieldlink-bond");
        m.update(&self.session.to_be_bytes());
        m.update(&[path]);
        m.update(nonce);
        m
    }

    fn next_nonce(&mut self) -> [u8; NONCE] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_seed).expect("any key");
        m.update(&self.nonce_count.to_be_bytes());
        self.nonce_count += 1;
        let full = m.finalize().into_bytes();
        let mut n = [0; NONCE];
        n.copy_from_slice(&full[..NONCE]);
        n
    }

    /// One bond datagram from the network. `path`: the path it came on — the device knows
    /// it (the socket); the server knows it for admitted addresses only (`None`: a new
    /// address, which may only join or prove). Returns the answer to send straight back
    /// to where it came from (challenge, welcome, ack), if any.
    pub fn receive(&mut self, now: Instant, path: Option<u8>, bytes: &[u8]) -> Option<Vec<u8>> {
        let Some(p) = Packet::parse(bytes).filter(|p| p.session() == self.session) else {
            self.refused += 1;
            return None;
        };
        let reply = |p: Packet<'_>| {
            let mut v = Vec::new();
            p.encode(&mut v);
            Some(v)
        };
        match (self.side, p) {
            (_, Packet::Data { seq, payload, .. }) => {
                let Some(pa) = path.and_then(|id| self.path_mut(id)) else {
                    self.refused += 1;
                    return None;
                };
                pa.data_received(now, seq);
                let mut out = Vec::new();
                let skipped = self.reorder.stats().skipped;
                self.reorder.push(now, seq, payload, &mut out);
                if let Some(floor) = self.passed_by_all(now) {
                    self.reorder.passed(floor, &mut out);
                }
                self.hand_up(now, skipped, out);
                None
            }
            (
                _,
                Packet::Probe {
                    path: id,
                    seq,
                    stamp,
                    ..
                },
            ) => {
                let session = self.session;
                let pa = path.filter(|p| *p == id).and_then(|id| self.path_mut(id));
                let Some(pa) = pa else {
                    self.refused += 1;
                    return None;
                };
                pa.heard(now);
                let received = pa.received_count();
                reply(Packet::Ack {
                    session,
                    path: id,
                    seq,
                    echo: stamp,
                    held_ms: 0,
                    received,
                })
            }
            (
                _,
                Packet::Ack {
                    path: id,
                    seq,
                    held_ms,
                    received,
                    ..
                },
            ) => {
                let pa = path.filter(|p| *p == id).and_then(|id| self.path_mut(id));
                let Some(pa) = pa else {
                    self.refused += 1;
                    return None;
                };
                pa.on_ack(now, seq, Duration::from_millis(held_ms.into()), received);
                None
            }
            (Side::Server, Packet::Join { path: id, .. }) => {
                if usize::from(id) >= MAX_PATHS {
                    self.refused += 1;
                    return None;
                }
                while self.challenges.len() >= MAX_CHALLENGES
                    || self
                        .challenges
                        .front()
                        .is_some_and(|c| now.duration_since(c.2) > CHALLENGE_TTL)
                {
                    self.challenges.pop_front();
                }
                let nonce = self.next_nonce();
                self.challenges.push_back((id, nonce, now));
                reply(Packet::Challenge {
                    session: self.session,
                    path: id,
                    nonce,
                })
            }
            (
                Side::Server,
                Packet::Proof {
                    path: id,
                    nonce,
                    mac,
                    ..
                },
            ) => {
                let known = self.challenges.iter().position(|(p, n, at)| {
                    *p == id && *n == nonce && now.duration_since(*at) <= CHALLENGE_TTL
                });
                let valid = self.mac(id, &nonce).verify_truncated_left(&mac).is_ok();
                let Some(i) = known.filter(|_| valid) else {
                    self.refused += 1;
                    return None;
                };
                self.challenges.remove(i);
                match self.path_mut(id) {
                    // The same path from a new address (NAT rebinding): the caller moves it.
                    Some(pa) => pa.heard(now),
                    None => self.paths.push(path::Path::new(id, now)),
                }
                self.events.push_back(BondEvent::Admitted(id));
                reply(Packet::Welcome {
                    session: self.session,
                    path: id,
                })
            }
            (
                Side::Device,
                Packet::Challenge {
                    path: id, nonce, ..
                },
            ) => {
                if path != Some(id) || !self.joining.iter().any(|(j, _)| *j == id) {
                    self.refused += 1;
                    return None;
                }
                let tag = self.mac(id, &nonce).finalize().into_bytes();
                let mut mac = [0; MAC];
                mac.copy_from_slice(&tag[..MAC]);
                reply(Packet::Proof {
                    session: self.session,
                    path: id,
                    nonce,
                    mac,
                })
            }
            (Side::Device, Packet::Welcome { path: id, .. }) => {
                let Some(i) = self
                    .joining
                    .iter()
                    .position(|(j, _)| Some(*j) == path && *j == id)
                else {
                    self.refused += 1;
                    return None;
                };
                self.joining.remove(i);
                self.paths.push(path::Path::new(id, now));
                self.events.push_back(BondEvent::Admitted(id));
                None
            }
            _ => {
                self.refused += 1;
                None
            }
        }
    }

    /// The sequence number every path that may carry data has delivered (or gone past):
    /// gaps before it are lost, not on their way. `None` while a live path has carried
    /// nothing lately — it may be the slow one still bringing the gap.
    fn passed_by_all(&self, now: Instant) -> Option<u32> {
        let mut floor: Option<u32> = None;
        for p in self.paths.iter().filter(|p| p.state != PathState::Down) {
            let seq = p.data_passed(now, PASSED_MEMORY)?;
            floor = Some(match floor {
                Some(f) if reorder::seq_before(f, seq) => f,
                _ => seq,
            });
        }
        floor
    }

    /// The longest a gap is waited for now: the spread of the one-way delays of the paths
    /// that may carry data (a recovering one carries copies).
    fn budget(&self) -> Duration {
        let live = || self.paths.iter().filter(|p| p.state != PathState::Down);
        // From the fastest path's usual round trip to the slowest one's recent peak, whole
        // (not half: a path's extra delay may all be one way, a modem's upload queue):
        // a datagram later than the budget is lost.
        let lo = live().filter_map(|p| p.srtt).min();
        let hi = live().filter_map(|p| p.rtt_peak().max(p.srtt)).max();
        let spread = match (lo, hi) {
            (Some(lo), Some(hi)) => hi.saturating_sub(lo),
            _ => Duration::ZERO,
        };
        (spread + MIN_REORDER).min(MAX_REORDER)
    }

    /// Probes, joins, path state changes and waits that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stamp = self.stamp(now);
        let session = self.session;
        let mut probes = Vec::new();
        for pa in &mut self.paths {
            let before = pa.state;
            if let Some(seq) = pa.tick(now) {
                probes.push((pa.id, seq));
            }
            if pa.state != before {
                self.events.push_back(BondEvent::State(pa.id, pa.state));
            }
        }
        for (id, seq) in probes {
            self.queue(
                id,
                Packet::Probe {
                    session,
                    path: id,
                    seq,
                    stamp,
                },
            );
        }
        let mut joins = Vec::new();
        for (id, next) in &mut self.joining {
            if now >= *next {
                *next = now + JOIN_INTERVAL;
                joins.push(*id);
            }
        }
        for id in joins {
            self.queue(id, Packet::Join { session, path: id });
        }
        if now >= self.next_adapt {
            self.next_adapt = now + ADAPT_INTERVAL;
            let total: f64 = self
                .paths
                .iter_mut()
                .map(|pa| pa.measure_send_rate(now))
                .sum();
            // Nothing worth measuring yet: the shares stay as they are (equal at first).
            if self.mode != Mode::Redundant && total >= MIN_ADAPT_RATE {
                let equal = total / self.paths.len().max(1) as f64;
                for pa in &mut self.paths {
                    pa.adapt_weight(now, equal);
                }
            }
        }
        let mut out = Vec::new();
        let budget = self.budget();
        let skipped = self.reorder.stats().skipped;
        self.reorder.handle_timeout(now, budget, &mut out);
        self.hand_up(now, skipped, out);
    }

    /// Datagrams the reorder released; `skipped`: its count of skipped gaps before.
    fn hand_up(&mut self, now: Instant, skipped: u64, out: Vec<Vec<u8>>) {
        if self.reorder.stats().skipped > skipped {
            self.gap_skipped_at = Some(now);
        }
        self.delivered.extend(out);
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_adapt;
        for pa in &self.paths {
            t = t.min(pa.next_timeout());
        }
        for (_, next) in &self.joining {
            t = t.min(*next);
        }
        if let Some(r) = self.reorder.poll_timeout(self.budget()) {
            t = t.min(r);
        }
        t
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next datagram handed up, in order.
    pub fn poll_delivered(&mut self) -> Option<Vec<u8>> {
        self.delivered.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<BondEvent> {
        self.events.pop_front()
    }
}

/// What a datagram str0m or FEC writes carries, from its clear headers (RFC 7983: STUN
/// 0–3, DTLS 20–63, RTP/RTCP 128–191; RTCP's packet types 192–223). `audio` and
/// `repair` say which RTP payload types are audio and retransmissions (from the SDP);
/// FEC's parity is repair.
pub fn classify(datagram: &[u8], audio: &[u8], repair: &[u8]) -> Class {
    match datagram {
        [0..=3, ..] | [20..=63, ..] => Class::Control,
        // RFC 5761: RTCP's packet types are 192–223 in the second byte.
        [128..=191, 192..=223, ..] => Class::Rtcp,
        [128..=191, b1, ..] => {
            let pt = b1 & 0x7f;
            if audio.contains(&pt) {
                Class::Audio
            } else if repair.contains(&pt) {
                Class::Repair
            } else {
                Class::Video
            }
        }
        // FEC: parity; a data datagram carries one of the above after 5 bytes.
        [crate::fec::MAGIC, 0x01, ..] => Class::Parity,
        [crate::fec::MAGIC, 0x00 | 0x80, _, _, _, inner @ ..] => classify(inner, audio, repair),
        _ => Class::Video,
    }
}

#[cfg(test)]
mod tests;
