//! The remote device's handle (an operator console): sessions with field devices, its
//! receivers (`conn_fd`s) and windows, permission requests, control data to the field
//! device it is master of.

use tokio::sync::oneshot;

use crate::{record, ErrorCode, FieldInfo, Receiver, SdkError};
use crate::{Cmd, DeviceConfig, DeviceId, Events, Handle, Permission, Qos, Result, Role};

/// A remote device: opens sessions with field devices, asks for control, sends control data.
pub struct RemoteDevice {
    h: Handle,
    record: Option<record::RecordSettings>,
}

impl RemoteDevice {
    pub async fn connect(cfg: DeviceConfig) -> Result<(RemoteDevice, Events)> {
        let record = cfg.record.clone();
        let (h, ev) = Handle::start(Role::Remote, cfg).await?;
        Ok((RemoteDevice { h, record }, ev))
    }

    pub fn id(&self) -> &DeviceId {
        &self.h.id
    }

    /// The project's field devices with their online state (needs `FieldListEnable` 1).
    pub async fn list_fields(&self) -> Result<Vec<FieldInfo>> {
        match self
            .h
            .request(fieldlink_proto::ClientMsg::ListFields { req: None })
            .await?
        {
            fieldlink_proto::ServerMsg::FieldList { fields, .. } => Ok(fields),
            _ => Err(ErrorCode::Internal.into()),
        }
    }

    /// Opens an operation session with a field device. An automatic remote then asks for
    /// master; the outcome arrives as [`Event::Permission`].
    pub async fn open_session(&self, gwid: &DeviceId) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::Connect {
                req: None,
                gwid: gwid.clone(),
            })
            .await
    }

    pub async fn close_session(&self, gwid: &DeviceId) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::Disconnect {
                req: None,
                gwid: gwid.clone(),
            })
            .await
    }

    /// Sets the session authorization code for a field device (SPEC §8); a later code for
    /// the same field device replaces the earlier one.
    pub async fn set_session_permission_token(
        &self,
        field_id: &DeviceId,
        code: &str,
    ) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::SetSessionToken {
                req: None,
                field_id: field_id.clone(),
                code: code.to_string(),
            })
            .await
    }

    /// Asks for a level: 1 = master (decided by the field device), 0 = release.
    pub async fn request_permission(&self, gwid: &DeviceId, level: Permission) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::RequestPermission {
                req: None,
                gwid: gwid.clone(),
                level,
            })
            .await
    }

    /// Asks for a diagnosis of the session with `gwid` (SPEC §6 `diag_request`). Fails at
    /// once without a receiver connected to one of its streams (`NOT_CONNECTED`), when
    /// it is offline or one is already running; otherwise [`Event::Diagnosis`] follows
    /// after the 10 s measurement window.
    pub async fn diag_request(&self, gwid: &DeviceId) -> Result<()> {
        self.h
            .ok(fieldlink_proto::ClientMsg::Diagnose {
                req: None,
                gwid: gwid.clone(),
            })
            .await
    }

    /// Connects field streams to receivers, pairwise (SPEC §2 `connect`): asynchronous,
    /// each conn_fd then reports [`Event::StreamState`] (connecting, playing, ...). A
    /// receiver that had another stream drops it. Opens the operation session if needed.
    pub async fn connect_streams(
        &self,
        gwid: &DeviceId,
        stream_ids: &[u32],
        conn_fds: &[u32],
    ) -> Result<()> {
        self.connect_streams_recorded(gwid, stream_ids, conn_fds, None)
            .await
    }

    /// [`RemoteDevice::connect_streams`] with SPEC §2 `record_config` (one file name and
    /// segment length per stream); `None` applies the global [`DeviceConfig::record`].
    pub async fn connect_streams_recorded(
        &self,
        gwid: &DeviceId,
        stream_ids: &[u32],
        conn_fds: &[u32],
        record_config: Option<&record::RecordConfig>,
    ) -> Result<()> {
        if stream_ids.len() != conn_fds.len() || stream_ids.is_empty() {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                "give one conn_fd per stream id",
            ));
        }
        self.check_fds(conn_fds)?;
        if let Some(rc) = record_config {
            if rc.file_names.len() != stream_ids.len() {
                return Err(SdkError::new(
                    ErrorCode::BadRequest,
                    "record_config needs one file_names entry per stream",
                ));
            }
        }
        let targets: Vec<Option<record::Target>> = (0..stream_ids.len())
            .map(|i| match (record_config, &self.record) {
                (Some(rc), global) => Some(record::Target {
                    source: format!("{gwid}#{}", stream_ids[i]),
                    dir: global
                        .as_ref()
                        .map_or_else(|| std::path::PathBuf::from("recordings"), |g| g.dir.clone()),
                    base: rc.file_names[i].file.clone(),
                    segment_secs: rc.file_names[i].duration,
                }),
                (None, Some(g)) => Some(record::Target {
                    source: format!("{gwid}#{}", stream_ids[i]),
                    dir: g.dir.clone(),
                    base: format!("{}_{}_s{}", gwid.project, gwid.device, stream_ids[i]),
                    segment_secs: g.segment_secs.max(1),
                }),
                (None, None) => None,
            })
            .collect();
        // From now on frames on these receivers belong to the new streams: the first
        // keyframe can arrive before the server's state message does.
        self.set_receivers(conn_fds, |i, rc| {
            rc.stream = Some((gwid.clone(), stream_ids[i]));
            rc.record = targets[i].clone();
        });
        self.h
            .ok(fieldlink_proto::ClientMsg::Watch {
                req: None,
                gwid: gwid.clone(),
                stream_ids: stream_ids.to_vec(),
                conn_fds: conn_fds.to_vec(),
            })
            .await
    }

    /// Disconnects receivers (SPEC §2 `disconnect`).
    pub async fn disconnect_streams(&self, conn_fds: &[u32]) -> Result<()> {
        self.check_fds(conn_fds)?;
        // Frames still in flight for these receivers are not delivered.
        self.set_receivers(conn_fds, |_, rc| {
            rc.stream = None;
            rc.record = None;
        });
        self.h
            .ok(fieldlink_proto::ClientMsg::Unwatch {
                req: None,
                conn_fds: conn_fds.to_vec(),
            })
            .await
    }

    /// Disconnects every receiver (SPEC §2 `disconnect_all`).
    pub async fn disconnect_all(&self) -> Result<()> {
        let all: Vec<u32> = (0..self
            .h
            .shared
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u32)
            .collect();
        self.set_receivers(&all, |_, rc| {
            rc.stream = None;
            rc.record = None;
        });
        self.h
            .ok(fieldlink_proto::ClientMsg::UnwatchAll { req: None })
            .await
    }

    /// Binds receivers to windows (`Some(id)`) or to external rendering (`None`). Purely
    /// local: streams are not touched, so re-binding never interrupts them.
    pub fn set_windows(&self, conn_fds: &[u32], windows: &[Option<u64>]) -> Result<()> {
        if conn_fds.len() != windows.len() {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                "give one window per conn_fd",
            ));
        }
        self.check_fds(conn_fds)?;
        let mut r = self
            .h
            .shared
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (fd, w) in conn_fds.iter().zip(windows) {
            r[*fd as usize].window = *w;
        }
        Ok(())
    }

    /// Updates receivers `conn_fds` (`set(i, receiver)` for the i-th of them).
    fn set_receivers(&self, conn_fds: &[u32], set: impl Fn(usize, &mut Receiver)) {
        let mut r = self
            .h
            .shared
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, fd) in conn_fds.iter().enumerate() {
            if let Some(rc) = r.get_mut(*fd as usize) {
                set(i, rc);
            }
        }
    }

    fn check_fds(&self, conn_fds: &[u32]) -> Result<()> {
        let max = self
            .h
            .shared
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        for (i, fd) in conn_fds.iter().enumerate() {
            if *fd as usize >= max {
                return Err(SdkError::new(
                    ErrorCode::ConnFdOutOfRange,
                    format!("conn_fd {fd} is not in 0..{max} (max_streams)"),
                ));
            }
            if conn_fds[..i].contains(fd) {
                return Err(SdkError::new(
                    ErrorCode::BadRequest,
                    format!("conn_fd {fd} given twice"),
                ));
            }
        }
        Ok(())
    }

    /// This device's level for `gwid`, as last notified by the server.
    pub fn permission(&self, gwid: &DeviceId) -> Permission {
        self.h
            .shared
            .permissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(gwid)
            .copied()
            .unwrap_or(Permission::Guest)
    }

    /// Sends control data to a field device; only the master may (SPEC §4).
    pub async fn send(&self, gwid: &DeviceId, data: &[u8], qos: Qos) -> Result<()> {
        debug_assert_eq!(self.h.role, Role::Remote);
        if self.permission(gwid) != Permission::Master {
            return Err(ErrorCode::NotMaster.into());
        }
        self.h.send(gwid.to_string(), data, qos).await
    }

    /// Writes a raw control frame with none of the SDK's checks (size, rate, master).
    /// Only for testing that the server enforces them against a misbehaving client.
    #[doc(hidden)]
    pub async fn send_raw_frame(&self, frame: Vec<u8>, qos: Qos) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.h
            .tx
            .send(Cmd::SendRaw { frame, qos, reply })
            .await
            .map_err(|_| SdkError::from(ErrorCode::Disconnected))?;
        rx.await
            .unwrap_or_else(|_| Err(ErrorCode::Disconnected.into()))
    }

    /// SPEC §3 external audio (`audio_external`): sends one PCM frame to the field devices in session that receive audio.
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
