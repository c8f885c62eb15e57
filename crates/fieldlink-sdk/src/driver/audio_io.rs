//! The connection task's audio: external PCM (or an ALSA capture device's) encoded as it
//! comes, each heard line's packets into its jitter buffer, and every 10 ms the lines
//! pulled and mixed into one frame, for the application ([`Event::MixedAudio`]) or an
//! ALSA playback device.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::audio::capture::{Capture, Packet};
use crate::audio::jitter::JitterBuffer;
use crate::audio::{
    mix::mix, AudioCodec, AudioConfig, AudioDirection, Captured, LineStats, MixedAudio, AUDIO_LINES,
};
use crate::peer::Peer;
use crate::{Event, Result, SdkError};
use fieldlink_proto::DeviceId;

/// What woke the audio up.
pub(super) enum Wake {
    Captured(Option<Captured>),
    Tick,
}

pub(super) struct AudioIo {
    cfg: AudioConfig,
    capture: Option<Capture>,
    /// Per audio line, the buffer of the party it carries (made on its first packet).
    lines: Vec<Option<JitterBuffer>>,
    /// Per audio line, who the server said it carries.
    parties: Vec<Option<(DeviceId, Option<u32>)>>,
    channels: u16,
    /// The 10 ms playout clock, when the device receives.
    tick: Option<Interval>,
    index: u64,
    /// Frames from the capture device, and the device threads.
    captured: Option<mpsc::Receiver<Captured>>,
    #[cfg(feature = "alsa")]
    mic: Option<crate::audio::alsa_dev::DeviceThread>,
    #[cfg(feature = "alsa")]
    speaker: Option<crate::audio::alsa_dev::DeviceThread>,
}

impl AudioIo {
    /// Opens the configured devices; what cannot be opened is returned as warnings (the
    /// device goes on without that side of audio).
    pub fn new(cfg: &AudioConfig) -> (Self, Vec<SdkError>) {
        let tick = cfg.receives().then(|| {
            let mut t = tokio::time::interval(Duration::from_millis(10));
            // Late ticks catch up: the output keeps 100 frames a second.
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            t
        });
        let mut io = AudioIo {
            cfg: cfg.clone(),
            capture: cfg.sends().then(Capture::new),
            lines: (0..AUDIO_LINES).map(|_| None).collect(),
            parties: vec![None; AUDIO_LINES],
            channels: cfg.play_channels.clamp(1, 2),
            tick,
            index: 0,
            captured: None,
            #[cfg(feature = "alsa")]
            mic: None,
            #[cfg(feature = "alsa")]
            speaker: None,
        };
        let mut problems = Vec::new();
        for dir in [AudioDirection::Capture, AudioDirection::Playback] {
            if let Err(e) = io.open(dir) {
                problems.push(e);
            }
        }
        io.keep_tick();
        (io, problems)
    }

    /// The playout clock runs only while the mix goes somewhere (the application, or a
    /// playback device that opened): nothing is decoded for nobody.
    fn keep_tick(&mut self) {
        let outside = self.cfg.play == Some(crate::audio::Playback::Outside);
        #[cfg(feature = "alsa")]
        let plays = outside || self.speaker.is_some();
        #[cfg(not(feature = "alsa"))]
        let plays = outside;
        if !plays {
            self.tick = None;
        } else if self.tick.is_none() && self.cfg.receive {
            let mut t = tokio::time::interval(Duration::from_millis(10));
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            self.tick = Some(t);
        }
    }

    /// (Re)opens the configured device for `dir`, if the config uses one.
    #[cfg(feature = "alsa")]
    fn open(&mut self, dir: AudioDirection) -> Result<()> {
        use crate::audio::alsa_dev::DeviceThread;
        match dir {
            AudioDirection::Capture => {
                self.mic = None;
                self.captured = None;
                if let Some(name) = self.cfg.capture_device() {
                    let (tx, rx) = mpsc::channel(16);
                    self.mic = Some(DeviceThread::capture(name, tx)?);
                    self.captured = Some(rx);
                    tracing::info!(device = name, "audio capture");
                }
            }
            AudioDirection::Playback => {
                self.speaker = None;
                if let Some(name) = self.cfg.playback_device() {
                    self.speaker = Some(DeviceThread::playback(name, self.channels)?);
                    tracing::info!(device = name, "audio playback");
                }
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "alsa"))]
    fn open(&mut self, _dir: AudioDirection) -> Result<()> {
        Ok(())
    }

    /// Switches to device `index` of [`crate::audio::devices`] for `dir`.
    pub fn set_device(&mut self, dir: AudioDirection, index: usize) -> Result<()> {
        let list = crate::audio::devices(dir);
        let Some(name) = list.get(index).cloned() else {
            return Err(SdkError::new(
                fieldlink_proto::ErrorCode::AudioDevice,
                format!(
                    "no {} device {index}: there are {} ({})",
                    dir.name(),
                    list.len(),
                    list.join(", ")
                ),
            ));
        };
        match dir {
            AudioDirection::Capture => self.cfg.record = Some(name),
            AudioDirection::Playback => {
                self.cfg.play = Some(crate::audio::Playback::Device(name));
            }
        }
        let r = self.open(dir);
        self.keep_tick();
        r
    }

    /// Encodes one frame (checked by the caller's handle, or from the capture device).
    fn push(&mut self, rate: u32, channels: u16, pcm: &[i16]) -> Option<Result<Packet>> {
        self.capture.as_mut().map(|c| c.push(rate, channels, pcm))
    }

    /// Waits for a frame from the capture device or the next 10 ms tick (forever when
    /// the device neither captures nor receives).
    pub async fn wake(&mut self) -> Wake {
        let captured = async {
            match &mut self.captured {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match &mut self.tick {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            f = captured => Wake::Captured(f),
            _ = tick => Wake::Tick,
        }
    }

    /// Acts on a wake-up: sends a captured frame, or mixes this tick's frame; returns
    /// the events for the application.
    pub fn on_wake(&mut self, wake: Wake, peer: &mut Peer) -> Vec<Event> {
        let mut events = Vec::new();
        match wake {
            Wake::Captured(Some((rate, channels, pcm))) => self.send(peer, rate, channels, &pcm),
            // The capture thread ended (it said why in the log).
            Wake::Captured(None) => self.captured = None,
            Wake::Tick => {
                if let Some(lines) = self.stats() {
                    events.push(Event::AudioStats(lines));
                }
                if let Some(m) = self.mixed() {
                    events.push(Event::MixedAudio(m));
                }
            }
        }
        events
    }

    /// Encodes one 10 ms frame and sends it (audio never waits: what cannot be sent now
    /// is dropped).
    pub fn send(&mut self, peer: &mut Peer, rate: u32, channels: u16, pcm: &[i16]) {
        match self.push(rate, channels, pcm) {
            Some(Ok(p)) => {
                if let Err(e) = peer.write_audio(p.rtp_time, p.data) {
                    tracing::debug!("audio packet dropped: {e}");
                }
            }
            Some(Err(e)) => tracing::warn!("audio frame not sent: {e}"),
            None => {}
        }
    }

    pub fn on_packet(&mut self, line: usize, codec: AudioCodec, rtp_time: u64, data: Vec<u8>) {
        if self.tick.is_none() {
            return;
        }
        let Some(slot) = self.lines.get_mut(line) else {
            return;
        };
        // Another party on this line (a camera after a field device): a new decoder.
        if slot.as_ref().is_some_and(|jb| jb.codec() != codec) {
            *slot = None;
        }
        if slot.is_none() {
            match JitterBuffer::new(codec, self.channels) {
                Ok(jb) => *slot = Some(jb),
                Err(e) => {
                    tracing::warn!("audio decoder: {e}");
                    return;
                }
            }
        }
        if let Some(jb) = slot {
            jb.push(rtp_time, data, Instant::now().into_std());
        }
    }

    /// The mixed frame of this tick: played on the device, or returned for the
    /// application.
    fn mixed(&mut self) -> Option<MixedAudio> {
        let now = Instant::now().into_std();
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
        #[cfg(feature = "alsa")]
        if let Some(speaker) = &self.speaker {
            if !speaker.play(m.samples) {
                tracing::debug!(device = %speaker.name, "playback behind: frame dropped");
            }
            return None;
        }
        (self.cfg.play == Some(crate::audio::Playback::Outside)).then_some(m)
    }

    /// Once a second (every 100th frame), the figures of every line that has carried a
    /// party.
    fn stats(&self) -> Option<Vec<LineStats>> {
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
        self.parties.iter_mut().for_each(|p| *p = None);
    }

    /// The server gave line `line` to a new party.
    pub fn set_party(&mut self, line: usize, party: (DeviceId, Option<u32>)) {
        if let Some(p) = self.parties.get_mut(line) {
            *p = Some(party);
        }
    }

    /// The field device (not a camera channel) line `line` carries, if known.
    pub fn device_on(&self, line: usize) -> Option<&DeviceId> {
        match self.parties.get(line)? {
            Some((d, None)) => Some(d),
            _ => None,
        }
    }
}
