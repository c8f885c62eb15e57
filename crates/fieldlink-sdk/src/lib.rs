//! fieldlink device SDK: a [`FieldDevice`] (the machine on site) or a [`RemoteDevice`] (an
//! operator console) logged in to a fieldlink server over WebSocket signalling, with one
//! WebRTC peer connection carrying control data on two data channels (qos 0 and qos 1).
//!
//! Each handle comes with one [`Events`] stream. The connection is kept up by a background
//! task: a dropped signalling or media connection is re-established without the
//! application's help ([`Event::Disconnected`] then [`Event::Reconnected`]), and sessions
//! and session codes are restored.

pub mod camera;
mod driver;
pub mod encode;
mod peer;
mod receive;
pub mod record;
pub mod transcode;
pub mod video;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use fieldlink_media::VideoCodec;
use fieldlink_proto::{control::check_payload, RateLimiter};
pub use fieldlink_proto::{DeviceId, ErrorCode, FieldInfo, Permission, Qos, Role, StreamState};
pub use video::{EncodedFrame, VideoSource};

/// How long a request waits for the server's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered for the application before the oldest undelivered are counted as lost.
pub const EVENT_QUEUE: usize = 4096;

/// Failure of an SDK call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SdkError {
    pub code: ErrorCode,
    pub message: String,
}

impl SdkError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SdkError {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for SdkError {
    fn from(code: ErrorCode) -> Self {
        SdkError::new(code, code.describe())
    }
}

pub type Result<T> = std::result::Result<T, SdkError>;

/// Where and who to log in as.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Server WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub server: String,
    pub device_id: DeviceId,
    /// Own password, or a key-derived one (SPEC §8).
    pub password: String,
    /// SPEC §5 `auto_permission`: a remote asks for master on connect; a field device
    /// grants whatever is asked.
    pub auto_permission: bool,
    /// Wait between reconnection attempts (doubles up to 8×).
    pub reconnect_delay: Duration,
    /// Video m-lines: a field device's `device_streams`, or a remote device's
    /// `max_streams` receivers (`conn_fd` 0..max_streams-1). 0 = control data only.
    pub streams: u32,
    /// Remote: also decode every received frame to I420 ([`VideoFrame::picture`]). Costs
    /// CPU on the connection task; leave off when the application decodes itself.
    pub decode: bool,
    /// Field: let video sources follow the bandwidth estimate
    /// ([`VideoSource::set_target_kbps`]), within their configured bitrate. On by default.
    /// [`Event::BitrateEstimate`] is reported either way.
    pub adapt_bitrate: bool,
    /// Remote: record every connected stream here unless `connect_streams_recorded` says
    /// otherwise (SPEC §2 global recording configuration).
    pub record: Option<record::RecordSettings>,
    /// Remote: also negotiate H.265, for streams of cameras in passthrough. The built-in
    /// decoder and recorder are H.264 only: H.265 frames reach the application as they
    /// are ([`Event::Frame`]). Off by default: the server then fails an H.265 stream on
    /// this device's receivers with a reason instead of sending what it cannot show.
    pub h265: bool,
}

impl DeviceConfig {
    pub fn new(
        server: impl Into<String>,
        device_id: DeviceId,
        password: impl Into<String>,
    ) -> Self {
        DeviceConfig {
            server: server.into(),
            device_id,
            password: password.into(),
            auto_permission: true,
            reconnect_delay: Duration::from_millis(500),
            streams: 0,
            decode: false,
            adapt_bitrate: true,
            record: None,
            h265: false,
        }
    }
}

/// Everything that happens to a device, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Control data arrived. On a field device `from` is the controller (a remote);
    /// on a remote device it is the field device (report data).
    ControlData {
        from: DeviceId,
        data: Vec<u8>,
        qos: Qos,
    },
    /// Remote: this device's level for a field device, and who is master now.
    Permission {
        field_id: DeviceId,
        self_permission: Permission,
        master_id: Option<DeviceId>,
    },
    /// Field (application mode): a remote asks for a level; answer with
    /// [`FieldDevice::set_operation_permission`].
    PermissionRequest {
        remote_id: DeviceId,
        level: Permission,
    },
    /// Field: who is master of this device now.
    MasterChanged {
        master_id: Option<DeviceId>,
    },
    /// Field: a remote opened / closed an operation session.
    RemoteJoined {
        remote_id: DeviceId,
    },
    RemoteLeft {
        remote_id: DeviceId,
    },
    /// Remote: a field device came online or went offline.
    Presence {
        field_id: DeviceId,
        online: bool,
    },
    /// The server refused something after the fact (e.g. control data it dropped).
    Warning {
        code: ErrorCode,
        message: String,
    },
    /// Signalling or media was lost; the SDK is reconnecting.
    Disconnected {
        reason: String,
    },
    /// Reconnected and restored after [`Event::Disconnected`].
    Reconnected,
    /// A reconnection attempt failed; the SDK keeps trying.
    ReconnectFailed {
        code: ErrorCode,
        message: String,
    },
    /// The application did not read events fast enough; this many were dropped.
    Lagged {
        dropped: u64,
    },
    /// Remote: the state of a receiver changed (SPEC §2 per-conn_fd state callback).
    StreamState {
        conn_fd: u32,
        gwid: DeviceId,
        stream_id: u32,
        state: StreamState,
        reason: Option<String>,
    },
    /// Remote: a video frame arrived on a receiver (external rendering).
    Frame(VideoFrame),
    /// Field: a stream's source failed (`ok` false, with the reason: a camera that cannot
    /// be reached, refuses the credentials, or sends a codec that cannot be used) or
    /// works again. Receivers of the stream see it as `failed` meanwhile.
    SourceState {
        stream_id: u32,
        ok: bool,
        reason: Option<String>,
    },
    /// Field: the bandwidth estimate for what this device sends changed (TWCC); the
    /// video sources share it (see [`VideoSource::set_target_kbps`]).
    BitrateEstimate {
        kbps: u32,
    },
    /// Remote: once a second per receiver, its network figures (from RTCP).
    ReceiverStats {
        conn_fd: u32,
        /// Packet loss before repair, percent.
        loss_pct: Option<f32>,
        /// Round trip time to the server.
        rtt_ms: Option<f64>,
        /// NACKs sent so far (repair requests).
        nacks: u64,
        packets: u64,
        /// Frames that arrived complete since the receiver was connected to its stream.
        frames: u64,
        /// Pictures decoded (only when [`DeviceConfig::decode`] is on).
        decoded: Option<u64>,
        /// Frames lost or unusable: missing after a gap, broken, or held back while the
        /// receiver waited for a keyframe after either.
        dropped: u64,
    },
}

/// One received video access unit.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoFrame {
    pub conn_fd: u32,
    /// The stream the receiver is connected to, as last announced by the server.
    pub stream: Option<(DeviceId, u32)>,
    /// The window the receiver is bound to (`set_windows`), `None` = external rendering.
    pub window: Option<u64>,
    pub codec: VideoCodec,
    /// Annex-B access unit.
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// RTP time, 90 kHz, continuous per receiver across switches.
    pub rtp_time: u64,
    /// Capture time on the field device's clock (abs-capture-time), when sent.
    pub capture: Option<std::time::SystemTime>,
    pub received: std::time::SystemTime,
    /// The decoded picture, when [`DeviceConfig::decode`] is on and the decoder had one.
    pub picture: Option<Picture>,
}

/// A decoded I420 picture, planes tightly packed (stride = width, chroma = width / 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

/// The event stream of one device.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the device is closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

pub(crate) enum Cmd {
    /// A signalling request; answered when the server's reply with the same `req` arrives.
    Request {
        msg: fieldlink_proto::ClientMsg,
        reply: oneshot::Sender<Result<fieldlink_proto::ServerMsg>>,
    },
    /// Control data to write on a data channel.
    Send {
        target: String,
        payload: Vec<u8>,
        qos: Qos,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Bytes written to a data channel as they are (tests of server-side enforcement).
    SendRaw {
        frame: Vec<u8>,
        qos: Qos,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Field: one encoded frame of a stream.
    Video { stream: usize, frame: EncodedFrame },
    /// Field: a stream's source failed or recovered (told to the server and the app).
    SourceState {
        stream: u32,
        ok: bool,
        reason: Option<String>,
        keyframe_on_request: bool,
    },
    /// Log out and stop the connection task.
    Close,
}

/// State both the handle and the driver see.
pub(crate) struct Shared {
    /// Remote: own level per field device, as last notified.
    pub permissions: Mutex<std::collections::HashMap<DeviceId, Permission>>,
    /// Field: per stream, a receiver asked for a keyframe (flag, and a wake-up so the
    /// source answers at once instead of at its next frame time).
    pub keyframe_wanted: Vec<std::sync::atomic::AtomicBool>,
    pub keyframe_notify: Vec<tokio::sync::Notify>,
    /// Field: the current send-side bandwidth estimate, bits per second (0 = none yet).
    pub estimate_bps: std::sync::atomic::AtomicU64,
    /// Field: sources follow the estimate (`DeviceConfig::adapt_bitrate`).
    pub adapt_bitrate: bool,
    /// Remote: per receiver, its stream and window.
    pub receivers: Mutex<Vec<Receiver>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Receiver {
    pub stream: Option<(DeviceId, u32)>,
    pub window: Option<u64>,
    /// Where this receiver records, if it does.
    pub record: Option<record::Target>,
}

struct Handle {
    role: Role,
    id: DeviceId,
    tx: mpsc::Sender<Cmd>,
    limiter: Mutex<RateLimiter>,
    shared: Arc<Shared>,
}

impl Handle {
    async fn start(role: Role, cfg: DeviceConfig) -> Result<(Handle, Events)> {
        let (tx, rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let adapt = cfg.adapt_bitrate;
        let shared = Arc::new(Shared {
            permissions: Default::default(),
            keyframe_wanted: (0..cfg.streams).map(|_| Default::default()).collect(),
            keyframe_notify: (0..cfg.streams).map(|_| Default::default()).collect(),
            estimate_bps: Default::default(),
            adapt_bitrate: adapt,
            receivers: Mutex::new(vec![Receiver::default(); cfg.streams as usize]),
        });
        let id = cfg.device_id.clone();
        driver::start(role, cfg, rx, ev_tx, shared.clone()).await?;
        Ok((
            Handle {
                role,
                id,
                tx,
                limiter: Mutex::new(RateLimiter::default()),
                shared,
            },
            Events { rx: ev_rx },
        ))
    }

    async fn request(&self, msg: fieldlink_proto::ClientMsg) -> Result<fieldlink_proto::ServerMsg> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request { msg, reply })
            .await
            .map_err(|_| SdkError::from(ErrorCode::Disconnected))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ErrorCode::Disconnected.into()),
            Err(_) => Err(ErrorCode::Timeout.into()),
        }
    }

    async fn ok(&self, msg: fieldlink_proto::ClientMsg) -> Result<()> {
        self.request(msg).await.map(|_| ())
    }

    /// SPEC §4 limits, checked before anything leaves the device.
    async fn send(&self, target: String, payload: &[u8], qos: Qos) -> Result<()> {
        check_payload(payload).map_err(|e| SdkError::new(e.code(), e.to_string()))?;
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_acquire(Instant::now());
        if !allowed {
            return Err(ErrorCode::RateLimited.into());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send {
                target,
                payload: payload.to_vec(),
                qos,
                reply,
            })
            .await
            .map_err(|_| SdkError::from(ErrorCode::Disconnected))?;
        rx.await
            .unwrap_or_else(|_| Err(ErrorCode::Disconnected.into()))
    }

    async fn close(&self) {
        let _ = self.tx.send(Cmd::Close).await;
    }
}

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
                let est = if flags.adapt_bitrate {
                    flags
                        .estimate_bps
                        .load(std::sync::atomic::Ordering::Relaxed)
                } else {
                    0
                };
                // Leave headroom: encoders overshoot (keyframes), and a full link means loss.
                let share_kbps =
                    (est * 85 / 100 / 1000 / flags.keyframe_wanted.len().max(1) as u64) as u32;
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

    pub async fn close(self) {
        self.h.close().await
    }
}

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

    pub async fn close(self) {
        self.h.close().await
    }
}
