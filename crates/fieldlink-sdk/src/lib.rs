//! fieldlink device SDK: a [`FieldDevice`] (the machine on site) or a [`RemoteDevice`] (an
//! operator console) logged in to a fieldlink server over WebSocket signalling, with one
//! WebRTC peer connection carrying video (a field device's streams, a remote's receivers)
//! and control data on two data channels (qos 0 and qos 1).
//!
//! Each handle comes with one [`Events`] stream. The connection is kept up by a background
//! task: a dropped signalling or media connection is re-established without the
//! application's help ([`Event::Disconnected`] then [`Event::Reconnected`]), and sessions
//! and session codes are restored.

pub mod audio;
pub mod camera;
pub mod config;
pub mod diag;
mod driver;
pub mod encode;
mod field;
mod follow;
mod peer;
mod receive;
pub mod record;
mod remote;
pub(crate) mod tls;
pub mod transcode;
pub mod video;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use field::FieldDevice;
pub use fieldlink_media::VideoCodec;
pub use fieldlink_proto::bond::{PathState, PathStats};
pub use fieldlink_proto::quality::{Quality, Scored};
use fieldlink_proto::{control::check_payload, RateLimiter};
pub use fieldlink_proto::{DeviceId, ErrorCode, FieldInfo, Permission, Qos, Role, StreamState};
pub use remote::RemoteDevice;
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
    /// Server WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`, or `wss://host/ws` for TLS.
    pub server: String,
    /// `wss://` only: a PEM file of the certificate(s) the server's must chain to (a private
    /// CA, or the server's own self-signed certificate); `None` = the system's roots. The
    /// config.json key `certificate`. The server's name is always checked too.
    pub server_ca: Option<std::path::PathBuf>,
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
    /// The device's mode (its config's `cloud_mode`, default "public"). A diagnosis
    /// reports a remote whose mode differs from the field device's.
    pub mode: String,
    /// Voice (SPEC §3). Off unless set: [`audio::AudioConfig::spec_default`] gives the
    /// SPEC's defaults (uplink only), which the CLI applies.
    pub audio: audio::AudioConfig,
    /// SPEC §9 `network_bind`: the local addresses media goes out from. Two or more: the
    /// connection is carried over all of them (docs/multipath.md); one: media uses that
    /// address; none (the default): the one the signalling connection uses.
    pub network_bind: Vec<std::net::IpAddr>,
    /// SPEC §9 `media_trans_mode` with several addresses (default balanced).
    pub media_trans_mode: fieldlink_proto::bond::Mode,
    /// Sees every datagram of the media connection as it is sent or received (SRTP: the
    /// RTP header is readable, the payload is not). For measuring tools, e.g.
    /// `fieldlink-bench sfu`, which times packets through the server. `None` by default.
    pub packet_observer: Option<PacketObserver>,
}

/// Which way a datagram went, for a [`PacketObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketDirection {
    Sent,
    Received,
}

/// A callback called with each datagram of a device's media connection, on the
/// connection's task: keep it short.
#[derive(Clone)]
pub struct PacketObserver(pub std::sync::Arc<ObserveFn>);

/// What a [`PacketObserver`] calls.
pub type ObserveFn = dyn Fn(PacketDirection, &[u8]) + Send + Sync;

impl std::fmt::Debug for PacketObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketObserver")
    }
}

impl DeviceConfig {
    pub fn new(
        server: impl Into<String>,
        device_id: DeviceId,
        password: impl Into<String>,
    ) -> Self {
        DeviceConfig {
            server: server.into(),
            server_ca: None,
            device_id,
            password: password.into(),
            auto_permission: true,
            reconnect_delay: Duration::from_millis(500),
            streams: 0,
            decode: false,
            adapt_bitrate: true,
            record: None,
            h265: false,
            mode: "public".into(),
            audio: audio::AudioConfig::off(),
            network_bind: Vec::new(),
            media_trans_mode: fieldlink_proto::bond::Mode::Balanced,
            packet_observer: None,
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
    /// Remote: every 2 s per playing receiver, its connection quality as the server
    /// scored it (`fieldlink_proto::quality`), with the figures and why it is not
    /// excellent.
    Quality(fieldlink_proto::quality::Scored),
    /// Remote: the diagnosis asked for with [`RemoteDevice::diag_request`] (SPEC §6
    /// `(gwid, type, json)`): `kind` 1 = success, < 0 = the error code; the report is
    /// there either way (`serde_json::to_string` gives the SPEC's JSON).
    Diagnosis {
        gwid: DeviceId,
        kind: i32,
        report: fieldlink_proto::diag::Report,
    },
    /// With `audio_play` "outside": every 10 ms, the mixed audio of every party heard
    /// (silence when nobody talks).
    MixedAudio(audio::MixedAudio),
    /// Once a second while audio is received: each audio line's jitter buffer figures.
    AudioStats(Vec<audio::LineStats>),
    /// SPEC §9: once a second while the connection is carried over several paths
    /// (`network_bind`), each path's figures, in path order.
    Paths(Vec<PathFigures>),
    /// Audio line `line` now carries `gwid` (with `stream_id`: one channel of a camera).
    AudioLine {
        line: u32,
        gwid: DeviceId,
        stream_id: Option<u32>,
    },
}

/// One network path's figures ([`Event::Paths`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PathFigures {
    /// Its local address (`network_bind`).
    pub local: std::net::IpAddr,
    /// Round trip, probe loss, data loss, state, counters (see `fieldlink_proto::bond`).
    pub stats: PathStats,
    /// Its share of the bytes this device sent in the last second (0–1; with
    /// duplication the shares add up to more than 1).
    pub share: f64,
}

impl PathFigures {
    /// These figures as a diagnosis reports them (`downs` since the connection began).
    pub fn measure(&self) -> fieldlink_proto::diag::PathMeasure {
        let s = &self.stats;
        fieldlink_proto::diag::PathMeasure {
            path: s.id,
            local: self.local.to_string(),
            state: s.state.name().into(),
            rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
            loss_pct: s.data_loss.max(s.probe_loss) * 100.0,
            share_pct: self.share * 100.0,
            downs: s.downs,
        }
    }
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

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
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
    /// Use device `index` of `audio::devices(dir)`.
    SetAudioDevice {
        dir: audio::AudioDirection,
        index: usize,
        reply: oneshot::Sender<Result<()>>,
    },
    /// External PCM, checked: 10 ms at `rate`, interleaved.
    Audio {
        rate: u32,
        channels: u16,
        pcm: Vec<i16>,
    },
    /// Field: one encoded frame of a stream.
    Video { stream: usize, frame: EncodedFrame },
    /// Field: a stream's source started, with its frame rate and highest bitrate.
    SourceStarted {
        stream: u32,
        fps: f64,
        kbps: Option<u32>,
    },
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
    /// Field: the queue on the path to the server, ms (`u64::MAX`: not measured).
    pub queue_ms: std::sync::atomic::AtomicU64,
    /// Field: a bit per stream whose source the network holds under 90 % of its
    /// configured bitrate (video is paced while any is: `Peer::pace_for`).
    pub held_down: std::sync::atomic::AtomicU64,
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

/// Where external PCM goes (`audio_external`): a cheap clone of the device's audio
/// input, for the thread or task that produces the audio. While one is held, the device's
/// connection task keeps running until the device is closed.
#[derive(Clone)]
pub struct AudioInput {
    tx: mpsc::Sender<Cmd>,
    sends: bool,
}

impl AudioInput {
    /// The device was closed: pushing is of no use any more.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// SPEC §3 external PCM: one frame of exactly 10 ms, s16le interleaved, at one of
    /// [`audio::EXTERNAL_RATES`]. A wrong frame is refused whole (`BAD_AUDIO_FRAME`);
    /// a frame the connection task cannot take now is `CONGESTED`; `AUDIO_OFF` when the
    /// device does not send external audio.
    pub fn push(&self, rate: u32, channels: u16, pcm: &[i16]) -> Result<()> {
        if !self.sends {
            return Err(ErrorCode::AudioOff.into());
        }
        audio::check_frame(rate, channels, pcm.len())?;
        self.tx
            .try_send(Cmd::Audio {
                rate,
                channels,
                pcm: pcm.to_vec(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SdkError::new(
                    ErrorCode::Congested,
                    "the connection task is behind; push audio in real time",
                ),
                mpsc::error::TrySendError::Closed(_) => ErrorCode::Disconnected.into(),
            })
    }
}

struct Handle {
    role: Role,
    id: DeviceId,
    tx: mpsc::Sender<Cmd>,
    limiter: Mutex<RateLimiter>,
    shared: Arc<Shared>,
    /// The device sends external PCM (`audio_enable` + `audio_external`).
    audio_sends: bool,
}

impl Handle {
    async fn start(role: Role, cfg: DeviceConfig) -> Result<(Handle, Events)> {
        let (tx, rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let adapt = cfg.adapt_bitrate;
        // External PCM only: a device capturing from ALSA sends what it captures.
        let audio_sends = cfg.audio.enable && cfg.audio.external;
        let shared = Arc::new(Shared {
            permissions: Default::default(),
            keyframe_wanted: (0..cfg.streams).map(|_| Default::default()).collect(),
            keyframe_notify: (0..cfg.streams).map(|_| Default::default()).collect(),
            estimate_bps: Default::default(),
            queue_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            held_down: Default::default(),
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
                audio_sends,
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

    fn audio_input(&self) -> AudioInput {
        AudioInput {
            tx: self.tx.clone(),
            sends: self.audio_sends,
        }
    }

    async fn set_audio_device(&self, dir: audio::AudioDirection, index: usize) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::SetAudioDevice { dir, index, reply })
            .await
            .map_err(|_| SdkError::from(ErrorCode::Disconnected))?;
        rx.await
            .unwrap_or_else(|_| Err(ErrorCode::Disconnected.into()))
    }

    async fn close(&self) {
        let _ = self.tx.send(Cmd::Close).await;
    }
}
