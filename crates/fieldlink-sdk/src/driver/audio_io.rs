//! The connection task's audio: external PCM encoded as it is pushed, each heard line's
//! packets into its jitter buffer, and every 10 ms the lines pulled and mixed into one
//! frame for the application ([`Event::MixedAudio`]).

use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

use crate::audio::capture::{Capture, Packet};
use crate::audio::jitter::JitterBuffer;
use crate::audio::{mix::mix, AudioConfig, LineStats, MixedAudio, AUDIO_LINES};
use crate::Result;

pub(super) struct AudioIo {
    capture: Option<Capture>,
    /// Per audio line, the buffer of the party it carries (made on its first packet).
    lines: Vec<Option<JitterBuffer>>,
    channels: u16,
    /// The 10 ms playout clock, when the device receives.
    tick: Option<Interval>,
    index: u64,
}

impl AudioIo {
    pub fn new(cfg: &AudioConfig) -> Self {
        let tick = cfg.receives().then(|| {
            let mut t = tokio::time::interval(Duration::from_millis(10));
            // Late ticks catch up: the output keeps 100 frames a second.
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            t
        });
        AudioIo {
            capture: cfg.sends().then(Capture::new),
            lines: (0..AUDIO_LINES).map(|_| None).collect(),
            channels: cfg.play_channels.clamp(1, 2),
            tick,
            index: 0,
        }
    }

    /// Encodes one pushed frame (already checked by the caller's handle).
    pub fn push(&mut self, rate: u32, channels: u16, pcm: &[i16]) -> Option<Result<Packet>> {
        self.capture.as_mut().map(|c| c.push(rate, channels, pcm))
    }

    pub fn on_packet(&mut self, line: usize, rtp_time: u64, data: Vec<u8>) {
        if self.tick.is_none() {
            return;
        }
        let Some(slot) = self.lines.get_mut(line) else {
            return;
        };
        if slot.is_none() {
            match JitterBuffer::new(self.channels) {
                Ok(jb) => *slot = Some(jb),
                Err(e) => {
                    tracing::warn!("audio decoder: {e}");
                    return;
                }
            }
        }
        if let Some(jb) = slot {
            jb.push(rtp_time, data, Instant::now());
        }
    }

    /// Waits for the next 10 ms tick (forever when the device does not receive).
    pub async fn tick(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// The mixed frame of this tick.
    pub fn mixed(&mut self) -> MixedAudio {
        let now = Instant::now();
        let frames: Vec<Vec<i16>> = self
            .lines
            .iter_mut()
            .flatten()
            .filter_map(|jb| jb.pull(now))
            .collect();
        let m = MixedAudio {
            channels: self.channels,
            samples: mix(&frames, self.channels),
            index: self.index,
        };
        self.index += 1;
        m
    }

    /// Once a second (every 100th frame), the figures of every line that has carried a
    /// party.
    pub fn stats(&self) -> Option<Vec<LineStats>> {
        if !self.index.is_multiple_of(100) {
            return None;
        }
        let lines: Vec<LineStats> = self
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.as_ref().map(|jb| LineStats {
                    line: i,
                    playing: jb.playing(),
                    target_ms: jb.target().as_millis() as u32,
                    counts: jb.stats,
                })
            })
            .collect();
        (!lines.is_empty()).then_some(lines)
    }

    /// A new peer connection: the lines may carry other parties now.
    pub fn reset_lines(&mut self) {
        self.lines.iter_mut().for_each(|l| *l = None);
    }
}
