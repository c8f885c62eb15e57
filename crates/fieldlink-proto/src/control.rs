//! Control data: limits, qos, the frame carried on the data channels, and the two small
//! pieces of logic both ends share (the per-sender rate limit and the late-drop filter).
//!
//! Frame (one data channel message):
//! `[1 byte version=1][1 byte L][L bytes peer id, UTF-8][4 bytes seq, big-endian][payload]`.
//! From a field device the peer id is empty (to every remote in session); from a remote
//! it names the target field device. The server rewrites it to the sender's id when
//! forwarding. `seq` counts per sender and lets a qos 0 receiver drop anything older than
//! what it already delivered, so a lossy message is never delivered late.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ErrorCode;

/// Largest control message payload, bytes (SPEC §4).
pub const MAX_CONTROL_BYTES: usize = 700;
/// Most control messages one sender may send in any one second (SPEC §4).
pub const MAX_CONTROL_RATE: usize = 100;
/// Data channel labels, one per qos.
pub const CHANNEL_QOS0: &str = "fieldlink-ctl-qos0";
pub const CHANNEL_QOS1: &str = "fieldlink-ctl-qos1";

const FRAME_VERSION: u8 = 1;
const MAX_PEER_ID: usize = 2 * crate::ids::MAX_ID_PART + 1;

/// Delivery class of a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Qos {
    /// Ultra-low latency: may be lost, never retransmitted, never delivered late.
    Lossy = 0,
    /// Reliable: delivered in order, exactly once.
    Reliable = 1,
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q as u8
    }
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Qos::Lossy),
            1 => Ok(Qos::Reliable),
            _ => Err(format!("qos must be 0 or 1, got {v}")),
        }
    }
}

impl Qos {
    pub fn label(self) -> &'static str {
        match self {
            Qos::Lossy => CHANNEL_QOS0,
            Qos::Reliable => CHANNEL_QOS1,
        }
    }
    pub fn from_label(label: &str) -> Option<Qos> {
        match label {
            CHANNEL_QOS0 => Some(Qos::Lossy),
            CHANNEL_QOS1 => Some(Qos::Reliable),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("control frame too short")]
    Short,
    #[error("unknown control frame version {0}")]
    Version(u8),
    #[error("peer id in control frame is not UTF-8 or too long")]
    PeerId,
    #[error("control message is empty")]
    Empty,
    #[error("control message of {0} bytes exceeds 700")]
    TooLarge(usize),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge(_) => ErrorCode::MessageTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A decoded control frame borrowing its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFrame<'a> {
    pub peer: &'a str,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Checks a payload's size against SPEC §4.
pub fn check_payload(payload: &[u8]) -> Result<(), FrameError> {
    match payload.len() {
        0 => Err(FrameError::Empty),
        n if n > MAX_CONTROL_BYTES => Err(FrameError::TooLarge(n)),
        _ => Ok(()),
    }
}

impl<'a> ControlFrame<'a> {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        check_payload(self.payload)?;
        if self.peer.len() > MAX_PEER_ID {
            return Err(FrameError::PeerId);
        }
        let mut out = Vec::with_capacity(6 + self.peer.len() + self.payload.len());
        out.push(FRAME_VERSION);
        out.push(self.peer.len() as u8);
        out.extend_from_slice(self.peer.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.payload);
        Ok(out)
    }

    pub fn decode(buf: &'a [u8]) -> Result<Self, FrameError> {
        let [version, len, rest @ ..] = buf else {
            return Err(FrameError::Short);
        };
        if *version != FRAME_VERSION {
            return Err(FrameError::Version(*version));
        }
        let len = *len as usize;
        if len > MAX_PEER_ID {
            return Err(FrameError::PeerId);
        }
        if rest.len() < len + 4 {
            return Err(FrameError::Short);
        }
        let peer = std::str::from_utf8(&rest[..len]).map_err(|_| FrameError::PeerId)?;
        let seq = u32::from_be_bytes([rest[len], rest[len + 1], rest[len + 2], rest[len + 3]]);
        let payload = &rest[len + 4..];
        check_payload(payload)?;
        Ok(ControlFrame { peer, seq, payload })
    }
}

/// Sliding one-second window: at most [`MAX_CONTROL_RATE`] messages in any second.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    sent: VecDeque<Instant>,
    limit: usize,
    window: Duration,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(MAX_CONTROL_RATE, Duration::from_secs(1))
    }
}

impl RateLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            sent: VecDeque::with_capacity(limit),
            limit,
            window,
        }
    }

    /// When the next slot frees up (`now` if one is free).
    pub fn next_free(&self, now: Instant) -> Instant {
        if self.sent.len() < self.limit {
            return now;
        }
        self.sent
            .front()
            .map_or(now, |t| (*t + self.window).max(now))
    }

    /// Takes one slot at `now`; false if the window is full (nothing is recorded then).
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.sent.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        if self.sent.len() >= self.limit {
            return false;
        }
        self.sent.push_back(now);
        true
    }
}

/// Drops qos 0 messages older than the newest delivered one from the same sender.
#[derive(Debug, Clone, Default)]
pub struct LateFilter {
    last: Option<u32>,
}

impl LateFilter {
    /// True if `seq` is newer than everything delivered so far (serial-number arithmetic).
    pub fn accept(&mut self, seq: u32) -> bool {
        match self.last {
            Some(last) if seq.wrapping_sub(last) == 0 || seq.wrapping_sub(last) > u32::MAX / 2 => {
                false
            }
            _ => {
                self.last = Some(seq);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_limits() {
        let f = ControlFrame {
            peer: "p/d",
            seq: 7,
            payload: &[1, 2, 3],
        };
        let b = f.encode().unwrap();
        assert_eq!(ControlFrame::decode(&b).unwrap(), f);
        let big = vec![0u8; 700];
        assert!(ControlFrame {
            peer: "",
            seq: 0,
            payload: &big
        }
        .encode()
        .is_ok());
        let too_big = vec![0u8; 701];
        assert_eq!(
            ControlFrame {
                peer: "",
                seq: 0,
                payload: &too_big
            }
            .encode(),
            Err(FrameError::TooLarge(701))
        );
        assert_eq!(
            ControlFrame {
                peer: "",
                seq: 0,
                payload: &[]
            }
            .encode(),
            Err(FrameError::Empty)
        );
        assert_eq!(ControlFrame::decode(&[1]), Err(FrameError::Short));
        assert_eq!(
            ControlFrame::decode(&[2, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::Version(2))
        );
        assert_eq!(
            ControlFrame::decode(&[1, 5, b'a', 0, 0, 0, 0]),
            Err(FrameError::Short)
        );
    }

    #[test]
    fn decode_never_panics_on_any_short_input() {
        for len in 0..12 {
            for fill in [0u8, 1, 4, 255] {
                let mut v = vec![fill; len];
                if !v.is_empty() {
                    v[0] = 1;
                }
                let _ = ControlFrame::decode(&v);
            }
        }
    }

    #[test]
    fn rate_limiter_allows_100_per_second() {
        let t0 = Instant::now();
        let mut r = RateLimiter::default();
        for i in 0..100 {
            assert!(r.try_acquire(t0 + Duration::from_millis(i)), "{i}");
        }
        assert!(!r.try_acquire(t0 + Duration::from_millis(500)));
        assert_eq!(
            r.next_free(t0 + Duration::from_millis(500)),
            t0 + Duration::from_millis(1000)
        );
        assert!(!r.try_acquire(t0 + Duration::from_millis(999)));
        assert!(r.try_acquire(t0 + Duration::from_millis(1000)));
        assert!(!r.try_acquire(t0 + Duration::from_millis(1000)));
        assert!(r.try_acquire(t0 + Duration::from_millis(1001)));
    }

    #[test]
    fn late_filter_drops_old_and_duplicate() {
        let mut f = LateFilter::default();
        assert!(f.accept(5));
        assert!(!f.accept(5));
        assert!(!f.accept(3));
        assert!(f.accept(9));
        let mut w = LateFilter::default();
        assert!(w.accept(u32::MAX));
        assert!(w.accept(0));
        assert!(!w.accept(u32::MAX - 1));
    }
}
