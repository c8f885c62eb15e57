//! Connection quality: every [`EVERY`], each receiver connected to a stream is scored
//! ([`fieldlink_proto::quality::score`]) from the frames written to it against those its
//! stream's source delivered, and the RTCP figures its device reported, and its remote is
//! told (`quality`). Reads the tables; changes nothing but the receivers' marks.

use std::time::{Duration, Instant};

use fieldlink_proto::quality::{score, Inputs, Scored, QUALITY_EVERY_MS};
use fieldlink_proto::{DeviceId, ServerMsg};

use super::Hub;

pub(super) const EVERY: Duration = Duration::from_millis(QUALITY_EVERY_MS);
/// Streams per field device whose arriving frames are counted.
pub(super) const MAX_COUNTED_STREAMS: usize = 256;

/// What a receiver's device last reported of it (RTCP receiver reports), and the send
/// counters of its stream so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rtcp {
    pub(super) loss_pct: Option<f64>,
    pub(super) rtt_ms: Option<f64>,
    pub(super) jitter_ms: Option<f64>,
    pub(super) packets: u64,
    pub(super) nacks: u64,
}

/// Where a receiver's current interval started: its stream, its frames written, its
/// source's frames, and when.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    want: (DeviceId, u32),
    sent: u64,
    source: u64,
    at: Instant,
}

impl Hub {
    pub(super) fn score_receivers(&mut self, now: Instant) {
        if now < self.quality_due {
            return;
        }
        self.quality_due = now + EVERY;
        self.count_fec();
        let source_frames = |hub: &Hub, field: &DeviceId, stream: u32| -> u64 {
            hub.by_device
                .get(field)
                .and_then(|c| hub.clients.get(c))
                .and_then(|c| c.frames_in.get(stream as usize).map(|a| a.frames))
                .unwrap_or(0)
        };
        let mut out = Vec::new();
        let conns: Vec<_> = self.peers.iter().copied().collect();
        for conn in conns {
            let wants: Vec<Option<(DeviceId, u32)>> = match self.clients.get(&conn) {
                Some(c) if c.peer.is_some() => c.receivers.iter().map(|r| r.want.clone()).collect(),
                _ => continue,
            };
            let sources: Vec<u64> = wants
                .iter()
                .map(|w| w.as_ref().map_or(0, |(f, s)| source_frames(self, f, *s)))
                .collect();
            let Some(c) = self.clients.get_mut(&conn) else {
                continue;
            };
            let Some(peer) = c.peer.as_ref() else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                // A receiver that wants a stream is scored, playing or not: one still
                // waiting after a whole interval (its source failed) has lost it.
                let Some(want) = r.want.clone() else {
                    r.quality_mark = None;
                    continue;
                };
                let mark = Mark {
                    want: want.clone(),
                    sent: r.sent,
                    source: sources[fd],
                    at: now,
                };
                let Some(prev) = r.quality_mark.replace(mark).filter(|m| m.want == want) else {
                    continue; // a new stream: its first interval starts now
                };
                let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
                let rtcp = peer.egress.get(fd).copied().flatten().unwrap_or_default();
                let inputs = Inputs {
                    fps: r.sent.saturating_sub(prev.sent) as f64 / secs,
                    source_fps: sources[fd].saturating_sub(prev.source) as f64 / secs,
                    loss_pct: rtcp.loss_pct,
                    rtt_ms: rtcp.rtt_ms,
                    jitter_ms: rtcp.jitter_ms,
                };
                let (level, cause) = score(&inputs);
                let round = |v: f64| (v * 10.0).round() / 10.0;
                out.push((
                    conn,
                    ServerMsg::Quality(Box::new(Scored {
                        conn_fd: fd as u32,
                        gwid: want.0,
                        stream_id: want.1,
                        level,
                        fps: round(inputs.fps),
                        source_fps: round(inputs.source_fps),
                        loss_pct: inputs.loss_pct.map(round),
                        rtt_ms: inputs.rtt_ms.map(round),
                        jitter_ms: inputs.jitter_ms.map(round),
                        cause,
                    })),
                ));
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }
}
