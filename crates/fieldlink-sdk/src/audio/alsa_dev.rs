//! ALSA capture and playback (Linux), with device names exactly as the user writes them
//! (`hw:0,3,0`, `plughw:1,0`, `default`, `pulse`): the `alsa` crate opens any name the
//! ALSA configuration knows (cpal would rewrite `hw:0,3` and never match `hw:0,3,0`).
//!
//! Each open device runs on a thread of its own, 10 ms per period: capture hands frames
//! to the connection task (which sends them like external PCM); playback takes the mixed frames
//! from a short queue (a full queue drops the newest frame, an empty one lets ALSA
//! underrun and recover: audio never waits for the connection task, nor it for audio).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use fieldlink_proto::ErrorCode;

use super::Captured;
use super::{AudioDirection, EXTERNAL_RATES, FRAME, RATE};
use crate::SdkError;

/// Mixed frames queued for a playback device (40 ms).
const PLAYBACK_QUEUE: usize = 4;

fn alsa_dir(d: AudioDirection) -> Direction {
    match d {
        AudioDirection::Capture => Direction::Capture,
        AudioDirection::Playback => Direction::Playback,
    }
}

/// The PCM device names the ALSA configuration lists for `dir` (those for both
/// directions included), in its order.
pub fn devices(dir: AudioDirection) -> Vec<String> {
    let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") else {
        return Vec::new();
    };
    let want = alsa_dir(dir);
    let mut names: Vec<String> = hints
        .filter(|h| h.direction.is_none_or(|d| d == want))
        .filter_map(|h| h.name)
        .collect();
    names.dedup();
    names
}

/// Why `name` cannot be used, with the devices there are.
fn device_error(name: &str, dir: AudioDirection, what: impl std::fmt::Display) -> SdkError {
    let list = devices(dir);
    let listed = if list.is_empty() {
        "ALSA lists no devices (no sound card?)".to_string()
    } else {
        format!("devices: {}", list.join(", "))
    };
    SdkError::new(
        ErrorCode::AudioDevice,
        format!("ALSA {} device {name:?}: {what}; {listed}", dir.name()),
    )
}

/// Opens `name` for 16-bit interleaved audio at the rate nearest 48 kHz, periods of 10
/// ms. Returns the device, its rate and channel count.
fn open(name: &str, dir: AudioDirection, channels: u32) -> Result<(PCM, u32, u16), SdkError> {
    let pcm = PCM::new(name, alsa_dir(dir), false).map_err(|e| device_error(name, dir, e))?;
    let (rate, ch) = {
        let hw = HwParams::any(&pcm).map_err(|e| device_error(name, dir, e))?;
        let set = |r: alsa::Result<()>| r.map_err(|e| device_error(name, dir, e));
        set(hw.set_access(Access::RWInterleaved))?;
        set(hw.set_format(Format::s16()))
            .map_err(|_| device_error(name, dir, "takes no 16-bit samples (try plughw:)"))?;
        set(hw.set_channels(channels))
            .or_else(|_| set(hw.set_channels(2)))
            .map_err(|_| {
                device_error(
                    name,
                    dir,
                    format!("takes neither {channels} nor 2 channels (try plughw:)"),
                )
            })?;
        let rate = hw
            .set_rate_near(RATE, ValueOr::Nearest)
            .map_err(|e| device_error(name, dir, e))?;
        let ok = match dir {
            AudioDirection::Capture => EXTERNAL_RATES.contains(&rate),
            AudioDirection::Playback => rate == RATE,
        };
        if !ok {
            return Err(device_error(
                name,
                dir,
                format!("runs at {rate} Hz, not 48000 (try plughw:, which converts)"),
            ));
        }
        let period = i64::from(rate / 100);
        set(hw
            .set_period_size_near(period, ValueOr::Nearest)
            .map(|_| ()))?;
        set(hw.set_buffer_size_near(period * 4).map(|_| ()))?;
        set(pcm.hw_params(&hw))?;
        let ch = hw.get_channels().map_err(|e| device_error(name, dir, e))?;
        (rate, ch as u16)
    };
    Ok((pcm, rate, ch))
}

/// A device thread; stops when dropped.
pub struct DeviceThread {
    stop: Arc<AtomicBool>,
    /// Playback: where the mixed frames go.
    frames: Option<SyncSender<Vec<i16>>>,
    pub name: String,
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl DeviceThread {
    /// Captures from `name` and hands every 10 ms to `out` (a frame `out` has no room
    /// for is dropped: a live microphone does not wait).
    pub fn capture(
        name: &str,
        out: tokio::sync::mpsc::Sender<Captured>,
    ) -> Result<DeviceThread, SdkError> {
        let (pcm, rate, ch) = open(name, AudioDirection::Capture, 1)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let dev = name.to_string();
        std::thread::Builder::new()
            .name("fieldlink-capture".into())
            .spawn(move || {
                let Ok(io) = pcm.io_i16() else {
                    return;
                };
                let mut buf = vec![0i16; (rate / 100) as usize * usize::from(ch)];
                while !stopped.load(Ordering::Relaxed) && !out.is_closed() {
                    match io.readi(&mut buf) {
                        Ok(n) if n * usize::from(ch) == buf.len() => {
                            if out.try_send((rate, ch, buf.clone())).is_err() {
                                tracing::debug!(device = %dev, "captured frame dropped");
                            }
                        }
                        // A short read: the rest of the period comes with the next one.
                        Ok(_) => {}
                        Err(e) => {
                            if pcm.try_recover(e, true).is_err() {
                                tracing::warn!(device = %dev, "capture stopped: {e}");
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("capture thread: {e}")))?;
        Ok(DeviceThread {
            stop,
            frames: None,
            name: name.to_string(),
        })
    }

    /// Plays on `name` what [`Self::play`] is given (48 kHz, `channels`).
    pub fn playback(name: &str, channels: u16) -> Result<DeviceThread, SdkError> {
        let (pcm, _, ch) = open(name, AudioDirection::Playback, u32::from(channels))?;
        let (tx, rx): (SyncSender<Vec<i16>>, Receiver<Vec<i16>>) = sync_channel(PLAYBACK_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let dev = name.to_string();
        std::thread::Builder::new()
            .name("fieldlink-playback".into())
            .spawn(move || {
                let Ok(io) = pcm.io_i16() else {
                    return;
                };
                while let Ok(frame) = rx.recv() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    // The device's channel count, from the mixer's.
                    let out: Vec<i16> = match (channels, ch) {
                        (a, b) if a == b => frame,
                        (1, n) => frame
                            .iter()
                            .flat_map(|&s| std::iter::repeat_n(s, usize::from(n)))
                            .collect(),
                        (_, n) => frame
                            .chunks_exact(usize::from(channels))
                            .flat_map(|c| (0..usize::from(n)).map(move |i| c[i % c.len()]))
                            .collect(),
                    };
                    if let Err(e) = io.writei(&out) {
                        if pcm.try_recover(e, true).is_err() {
                            tracing::warn!(device = %dev, "playback stopped: {e}");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("playback thread: {e}")))?;
        Ok(DeviceThread {
            stop,
            frames: Some(tx),
            name: name.to_string(),
        })
    }

    /// Queues one mixed frame; false when the device is behind (the frame is dropped).
    pub fn play(&self, samples: Vec<i16>) -> bool {
        debug_assert!(samples.len().is_multiple_of(FRAME));
        match &self.frames {
            Some(tx) => match tx.try_send(samples) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }
}
