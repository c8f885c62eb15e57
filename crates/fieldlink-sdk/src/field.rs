//! The field device's handle (the machine on site): publishes its streams, sends control
//! data to every remote in session, decides permission requests.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{Cmd, DeviceConfig, DeviceId, Events, Handle, Permission, Qos, Result, Role};
use crate::{ErrorCode, SdkError, VideoSource};

/// A field device: publishes, receives control data, decides permission.
pub struct FieldDevice {
    h: Handle,
}

impl FieldDevice {
    /// Logs in and establishes the media connection; fails with the server's reason.
    pub async fn connect(cfg: DeviceConfig) -> Result<(FieldDevice, Events)> {
        let (h, ev) = Handle::start(Role::Field, cfg).await?;
        Ok((FieldDevice { h }, ev))
    }

    pub fn id(&self) -> &DeviceId {
        &self.h.id
    }

    /// Sends control (report) data to every remote device in session with this device.
    pub async fn send(&self, data: &[u8], qos: Qos) -> Result<()> {
        self.h.send(String::new(), data, qos).await
    }

    /// Starts publishing stream `stream_id` from `source` at its frame rate, until the
    /// device is closed. Keyframe requests from receivers reach the source.
    pub fn start_video(&self, stream_id: u32, mut source: impl VideoSource) -> Result<()> {
        let flags = self.h.shared.clone();
        let idx = stream_id as usize;
        if idx >= flags.keyframe_wanted.len() {
            return Err(SdkError::new(
                ErrorCode::StreamOutOfRange,
                format!(
                    "stream {stream_id} is not in 0..{} (DeviceConfig::streams)",
                    flags.keyframe_wanted.len()
                ),
            ));
        }
        let fps = source.fps();
        if !(fps > 0.0 && fps <= 240.0) {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                format!("source fps {fps} is not in (0, 240]"),
            ));
        }
        let tx = self.h.tx.clone();
        let _ = tx.try_send(Cmd::SourceStarted {
            stream: stream_id,
            fps,
            kbps: source.kbps(),
        });
        let paced = source.paced();
        let keyframe_on_request = source.keyframe_on_request();
        let state = move |ok: bool, reason: Option<String>| Cmd::SourceState {
            stream: stream_id,
            ok,
            reason,
            keyframe_on_request,
        };
        if !keyframe_on_request {
            let _ = tx.try_send(state(true, None));
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // The source's failure, while it lasts (told once, and again when it changes).
            let mut failed: Option<String> = None;
            let mut follower = crate::follow::Follower::default();
            loop {
                if paced {
                    tokio::select! {
                        _ = tick.tick() => {}
                        // A keyframe request is served now; the regular cadence restarts.
                        _ = flags.keyframe_notify[idx].notified() => tick.reset(),
                    }
                } else if tx.is_closed() {
                    return;
                }
                let force =
                    flags.keyframe_wanted[idx].swap(false, std::sync::atomic::Ordering::Relaxed);
                // Each stream gets an equal share of the bandwidth estimate.
                let streams = flags.keyframe_wanted.len().max(1) as u64;
                let est = if flags.adapt_bitrate {
                    // Before the first estimate: where the estimator starts, not the
                    // configured (highest) rate, which would flood a narrow link at once.
                    match flags
                        .estimate_bps
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        0 => crate::peer::INITIAL_BPS * streams,
                        e => e,
                    }
                } else {
                    0
                };
                let queue = match flags.queue_ms.load(std::sync::atomic::Ordering::Relaxed) {
                    u64::MAX => None,
                    ms => Some(std::time::Duration::from_millis(ms)),
                };
                let share_kbps = follower.follow(
                    (est as f64 * crate::follow::HEADROOM / 1000.0 / streams as f64) as u32,
                    queue,
                    std::time::Instant::now(),
                );
                if let (Some(max), true) = (source.kbps(), idx < 64) {
                    let bit = 1u64 << idx;
                    if share_kbps > 0 && u64::from(share_kbps) * 10 < u64::from(max) * 9 {
                        flags
                            .held_down
                            .fetch_or(bit, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        flags
                            .held_down
                            .fetch_and(!bit, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                // Encoding (or waiting for a camera) blocks: keep it off the async workers.
                let (s, r) = match tokio::task::spawn_blocking(move || {
                    if share_kbps > 0 {
                        source.set_target_kbps(share_kbps);
                    }
                    let r = source.next_frame(force);
                    (source, r)
                })
                .await
                {
                    Ok(v) => v,
                    Err(_) => return,
                };
                source = s;
                // `Some(new failure)`: a change to tell (`Some(None)`: it works again).
                let change = match &r {
                    Ok(Some(_)) if failed.is_some() => Some(None),
                    Err(e) if failed.as_deref() != Some(e.message.as_str()) => {
                        Some(Some(e.message.clone()))
                    }
                    _ => None,
                };
                if let Some(now_failed) = change {
                    failed = now_failed.clone();
                    let cmd = state(now_failed.is_none(), now_failed);
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(cmd) {
                        return;
                    }
                }
                match r {
                    Ok(Some(frame)) => {
                        follower.sent(
                            frame.data.len() * 8,
                            frame.keyframe,
                            fps,
                            std::time::Instant::now(),
                        );
                        // A full queue drops the frame rather than falling behind.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(Cmd::Video { stream: idx, frame })
                        {
                            return;
                        }
                    }
                    Ok(None) => {}
                    // The source recovers by itself (a camera reconnects); a paced one
                    // is asked again at its next tick, an unpaced one after a pause.
                    Err(_) if !paced => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => {}
                }
            }
        });
        Ok(())
    }

    /// Sets a remote device's level (SPEC §5 `set_operation_permission`).
    pub async fn set_operation_permission(
        &self,
        remote_id: &DeviceId,
        level: Permission,
    ) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::SetPermission {
                req: None,
                remote_id: remote_id.clone(),
                level,
            })
            .await
    }

    /// SPEC §3 external audio (`audio_external`): sends one PCM frame to the remotes in session that receive audio.
    /// The frame is exactly 10 ms of s16le samples, `channels` interleaved, at 8000,
    /// 16000, 24000, 32000, 44100 or 48000 Hz; anything else is refused whole with
    /// `BAD_AUDIO_FRAME` (nothing of it is sent). `AUDIO_OFF` when this device does not
    /// send external audio. Push in real time: frames are sent as they come.
    pub fn push_audio(&self, rate: u32, channels: u16, pcm: &[i16]) -> Result<()> {
        self.h.audio_input().push(rate, channels, pcm)
    }

    /// The same input as [`Self::push_audio`], for another task or thread.
    pub fn audio_input(&self) -> crate::AudioInput {
        self.h.audio_input()
    }

    /// SPEC §3 device selection: how many capture or playback devices there are
    /// (ALSA PCM names; 0 in a build without ALSA).
    pub fn audio_device_count(&self, dir: crate::audio::AudioDirection) -> usize {
        crate::audio::devices(dir).len()
    }

    /// The name of device `index` for `dir`, as `audio_record` / `audio_play` take it.
    pub fn audio_device_name(
        &self,
        dir: crate::audio::AudioDirection,
        index: usize,
    ) -> Option<String> {
        crate::audio::devices(dir).into_iter().nth(index)
    }

    /// Captures from / plays on device `index` from now on (`AUDIO_DEVICE` when there is
    /// no such device or it does not open; audio that way is then off).
    pub async fn set_audio_device(
        &self,
        dir: crate::audio::AudioDirection,
        index: usize,
    ) -> Result<()> {
        self.h.set_audio_device(dir, index).await
    }

    pub async fn close(self) {
        self.h.close().await
    }
}
