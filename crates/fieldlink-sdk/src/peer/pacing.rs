//! Field: when video is paced, and the queue the sources follow (the path's and our own
//! pacer's).

use std::time::{Duration, Instant};

use super::{sent, Peer};

/// Field: video is not paced while the path loses more than [`PACE_LOSS`] with no queue
/// seen within [`PACE_AFTER_QUEUE`] (the FEC reports' round trip 15 ms over its minimum):
/// random loss lowers the estimate too, with no bottleneck to protect, and pacing then
/// only held keyframes back (a 60 ms round trip at 10 % loss: 10 frames of 1236 over
/// 150 ms paced, none unpaced).
const PACE_AFTER_QUEUE: Duration = Duration::from_secs(30);
const PACE_QUEUE_MS: f64 = 15.0;
const PACE_LOSS: f64 = 0.02;
/// Field: what str0m's pacer holds as a matter of course. Paced at 1.1 × the estimate,
/// a frame of a source at 0.85 × it leaves within its frame interval (40 ms at 25 fps);
/// a packet that has waited longer waits behind earlier frames (a backlog).
const PACER_BURST: Duration = Duration::from_millis(40);

impl Peer {
    /// The queue on the path to the server as the FEC reports' round trip shows it
    /// (`None` without FEC or before its first report).
    fn queue_ms(&self) -> Option<f64> {
        self.wire.fec_stats().and_then(|s| s.queue_ms)
    }

    /// The FEC reports say the path loses at least [`PACE_LOSS`].
    fn lossy(&self) -> bool {
        self.wire
            .fec_stats()
            .is_some_and(|s| s.loss_estimate >= PACE_LOSS)
    }

    /// Field: the queue the sources follow ([`crate::follow`]): the path's
    /// ([`Peer::queue_ms`]) and the backlog in our own pacer beyond [`PACER_BURST`].
    /// The pacer drains at 1.1 × the estimate, so a source above what that lets through
    /// queues there first: behind 400 kbit/s the path's queue read 3–12 ms while the
    /// pacer's oldest packet was 79–120 ms old, frames reached the remote 150–190 ms
    /// after capture, and the follower, seeing no queue, raised the source further.
    ///
    /// Only while video is paced (unpaced, nothing waits there; and reaching the stream
    /// through str0m's `direct_api` marks the whole connection for a fresh poll) and the
    /// path reports under [`PACE_LOSS`]: under random loss the estimate falls with the
    /// loss, the pacer's backlog is that fall, and cutting for it too held the source
    /// down and paced (10 % loss at a 60 ms round trip: 3 of 11 runs under 99.9 % on
    /// time with the pacer counted, 0 of 12 without).
    pub fn send_queue_ms(&mut self) -> Option<f64> {
        let path = self.queue_ms();
        let mut pacer: Option<Duration> = None;
        let counted = self.paced == Some(true) && !self.lossy();
        for mid in sent(self.sends_video && counted, &self.video_mids) {
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(*mid, None) else {
                continue;
            };
            if let Some(info) = tx.queue_info() {
                let age = info.first_unsent().map_or(Duration::ZERO, |t| {
                    info.created_at().saturating_duration_since(t)
                });
                let excess = age.saturating_sub(PACER_BURST);
                pacer = Some(pacer.map_or(excess, |p| p.max(excess)));
            }
        }
        match (path, pacer) {
            (None, None) => None,
            (p, b) => Some(p.unwrap_or(0.0) + b.map_or(0.0, |b| b.as_secs_f64() * 1000.0)),
        }
    }

    /// Field: paces video while the network holds a source under its configured bitrate
    /// (`held_down`) and the loss is not random ([`PACE_LOSS`]); otherwise it leaves at
    /// once.
    ///
    /// Paced, a keyframe crosses a narrow link spread at 1.1 × the estimate instead of
    /// landing in the bottleneck's queue at once: unpaced keyframes behind a 1 Mbit/s
    /// `tc tbf` read as overuse to the delay detector every time, and the estimate sank
    /// to a third of the link (docs/architecture.md, "Bitrate adaptation"). Where the
    /// sources get what they want, pacing only delays: a 60 KB keyframe paced at a few
    /// Mbit/s waits ~100 ms, a stream switch waits for it, and two 1 Mbit/s streams'
    /// keyframes paced at 1.1 × a 2.5 Mbit/s estimate reached a remote 150–175 ms late.
    pub fn pace_for(&mut self, held_down: bool) {
        let now = Instant::now();
        if self.queue_ms().is_some_and(|q| q >= PACE_QUEUE_MS) {
            self.queued = Some(now);
        }
        let queue_seen = self
            .queued
            .is_some_and(|t| now.saturating_duration_since(t) < PACE_AFTER_QUEUE);
        let random_loss = !queue_seen && self.lossy();
        let paced = held_down && !random_loss;
        if self.paced == Some(paced) || !self.sends_video {
            return;
        }
        self.paced = Some(paced);
        for mid in &self.video_mids {
            if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                tx.set_unpaced(!paced);
            }
        }
    }
}
