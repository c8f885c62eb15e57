//! The hub: one task that owns every logged-in device, the operation sessions, the
//! permission state of every field device, and every WebRTC peer connection on the one
//! UDP socket. Owning all of it in one place means no locks and a total order of events.
//!
//! WebSocket tasks talk to it with [`Cmd`]s; it answers and notifies through each client's
//! bounded outbound queue (a client that cannot keep up is disconnected, never waited on).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{Frequency, KeyframeRequestKind, MediaData, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{AbsCaptureTime, Extension};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use fieldlink_media::VideoCodec;
use fieldlink_proto::control::LateFilter;
use fieldlink_proto::{
    ControlFrame, DeviceId, ErrorCode, Permission, Qos, RateLimiter, Role, ServerMsg, StreamState,
};

use crate::gop::{CachedFrame, SourceInfo};
use crate::permission::{FieldControl, Out};
use crate::store::{now_ms, AuditEntry};

/// Outbound queue length per client; a client this far behind is dropped.
pub const CLIENT_QUEUE: usize = 512;
/// Reliable control messages waiting for one receiver's SCTP buffer.
const MAX_PENDING_RELIABLE: usize = 1024;
/// Above this many buffered bytes a lossy message is dropped rather than delivered late.
const LOSSY_BUFFER_LIMIT: usize = 8 * 1024;
/// Reliable control messages of one sender waiting for their turn under the rate limit
/// (10 s at the full rate).
const MAX_PACED: usize = 1000;
/// Most video m-lines (streams or receivers) of one peer connection.
const MAX_VIDEO_MLINES: usize = 64;
/// RTP header extension id for abs-capture-time (the SDK uses the same).
const EXT_ABS_CAPTURE_TIME: u8 = 5;
/// A keyframe request still unanswered after this long is sent again; before that, new
/// requests for the same stream wait for the same keyframe.
const KEYFRAME_REQUEST_RETRY: Duration = Duration::from_millis(300);
/// Most sessions one remote device may hold at once.
const MAX_SESSIONS_PER_REMOTE: usize = 64;

pub type ConnId = u64;

/// What a WebSocket task hands the hub about a logged-in device.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub device: DeviceId,
    pub role: Role,
    pub auto_permission: bool,
    /// The project lets remotes list field devices: this remote hears every field's presence.
    pub sees_all_fields: bool,
}

#[derive(Debug)]
pub enum Outbound {
    Msg(ServerMsg),
    /// Send this error and close the connection.
    Close(ErrorCode, String),
    /// To an external source (a GB28181 device): the streams receivers want now.
    Wanted(Vec<u32>),
    /// To an external source: control data from its master remote.
    Control {
        from: DeviceId,
        payload: Vec<u8>,
    },
}

#[derive(Debug)]
pub enum Cmd {
    Register {
        info: ClientInfo,
        out: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<ConnId>,
    },
    Unregister {
        conn: ConnId,
    },
    Offer {
        conn: ConnId,
        req: Option<u64>,
        sdp: String,
        video_mids: Vec<String>,
    },
    Watch {
        conn: ConnId,
        req: Option<u64>,
        gwid: DeviceId,
        stream_ids: Vec<u32>,
        conn_fds: Vec<u32>,
    },
    /// `None`: every receiver.
    Unwatch {
        conn: ConnId,
        req: Option<u64>,
        conn_fds: Option<Vec<u32>>,
    },
    Connect {
        conn: ConnId,
        req: Option<u64>,
        gwid: DeviceId,
    },
    Disconnect {
        conn: ConnId,
        req: Option<u64>,
        gwid: DeviceId,
    },
    RequestPermission {
        conn: ConnId,
        req: Option<u64>,
        gwid: DeviceId,
        level: Permission,
    },
    SetPermission {
        conn: ConnId,
        req: Option<u64>,
        remote: DeviceId,
        level: Permission,
    },
    /// A registered field client whose video comes from outside WebRTC (a GB28181
    /// device's channels): `streams` of them. Demand reaches it as `Outbound::Wanted`.
    External {
        conn: ConnId,
        streams: u32,
    },
    /// An external source's stream cannot be played (e.g. H.265 from a camera): its
    /// receivers fail with `reason`.
    ExternalFailed {
        conn: ConnId,
        stream: u32,
        reason: String,
    },
    /// One H.264 access unit of an external source's stream.
    ExternalFrame {
        conn: ConnId,
        stream: u32,
        data: Vec<u8>,
        /// 90 kHz.
        rtp_time: u64,
    },
    /// A field device's stream source failed, recovered, or says it cannot make
    /// keyframes on request (`ClientMsg::SourceState`).
    SourceState {
        conn: ConnId,
        req: Option<u64>,
        stream: u32,
        ok: bool,
        reason: Option<String>,
        keyframe_on_request: bool,
    },
    /// Close every connection and stop (server shutdown).
    Shutdown,
    /// The online devices of a project (`device` part of the id), each with its stream
    /// count (0 for remotes and for fields whose media is not set up yet).
    Online {
        project: String,
        reply: oneshot::Sender<HashMap<String, u32>>,
    },
}

/// Cloneable handle to the hub task.
#[derive(Clone, Debug)]
pub struct HubHandle {
    tx: mpsc::Sender<Cmd>,
}

impl HubHandle {
    pub async fn send(&self, cmd: Cmd) -> Result<(), ErrorCode> {
        self.tx.send(cmd).await.map_err(|_| ErrorCode::Internal)
    }

    pub async fn register(
        &self,
        info: ClientInfo,
        out: mpsc::Sender<Outbound>,
    ) -> Result<ConnId, ErrorCode> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Register { info, out, reply }).await?;
        rx.await.map_err(|_| ErrorCode::Internal)
    }

    pub async fn online(&self, project: &str) -> Result<HashMap<String, u32>, ErrorCode> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Online {
            project: project.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| ErrorCode::Internal)
    }
}

/// An audit record bound for the store.
pub type AuditRecord = (String, AuditEntry);

fn codec_of(p: &PayloadParams) -> VideoCodec {
    match p.spec().codec {
        str0m::format::Codec::H265 => VideoCodec::H265,
        _ => VideoCodec::H264,
    }
}

/// Told with `playing` on a stream whose source cannot make keyframes: after a loss
/// that repair cannot fix, the picture waits for the camera's next keyframe.
const PASSTHROUGH_NOTE: &str =
    "camera passthrough: keyframes come only at the camera's own interval (no keyframe on request)";

/// Why a receiver cannot play a stream in `codec`, and what to do about it.
fn codec_refused(codec: VideoCodec) -> String {
    format!(
        "the stream is {} (a camera in passthrough, protocol \"rtsp_enc\") and this \
         receiver did not negotiate it: set the stream's protocol to \"normal\" to \
         transcode to H.264, or receive with H.265 enabled",
        codec.name()
    )
}

/// Whether receiver `fd` of `peer` negotiated the codec of `params` (a receiver whose
/// media is not set up yet counts as taking it: it is checked again later).
fn takes(peer: &mut Peer, fd: usize, params: PayloadParams) -> bool {
    let Some(mid) = peer.video_mids.get(fd).copied() else {
        return true;
    };
    peer.rtc
        .writer(mid)
        .is_none_or(|w| receiver_pt(&w, params).is_some())
}

/// The receiver's payload type for frames with the source's `params`. str0m's
/// `match_params` looks at the server's codec list, not at what this m-line negotiated:
/// a remote that offered no H.265 must not be sent H.265.
fn receiver_pt(writer: &str0m::media::Writer, params: PayloadParams) -> Option<str0m::media::Pt> {
    let pt = writer.match_params(params)?;
    writer.payload_params().any(|p| p.pt() == pt).then_some(pt)
}

/// Writes one frame to receiver `fd` of `peer` at `out_t` (90 kHz); false if it could
/// not (no such m-line, media not set up, or not a codec the receiver negotiated).
fn write_frame(
    peer: &mut Peer,
    fd: usize,
    data: &std::sync::Arc<[u8]>,
    out_t: u64,
    source: Option<&(PayloadParams, Instant, Option<AbsCaptureTime>)>,
) -> bool {
    let Some(mid) = peer.video_mids.get(fd).copied() else {
        return false;
    };
    let Some(writer) = peer.rtc.writer(mid) else {
        return false;
    };
    let pt = match source {
        Some((params, _, _)) => receiver_pt(&writer, *params),
        None => h264_pt(&writer),
    };
    let Some(pt) = pt else {
        return false;
    };
    let (arrived, capture) = match source {
        Some((_, at, act)) => (*at, *act),
        None => (Instant::now(), None),
    };
    let writer = match capture {
        Some(act) => writer.abs_capture_time(act),
        None => writer,
    };
    writer
        .write(pt, arrived, MediaTime::from_90khz(out_t), data.clone())
        .is_ok()
}

/// The receiver's own H.264 payload type (packetization mode 1 preferred), for frames
/// from sources that are not WebRTC peers.
fn h264_pt(writer: &str0m::media::Writer) -> Option<str0m::media::Pt> {
    let h264 = || {
        writer
            .payload_params()
            .filter(|p| p.spec().codec == str0m::format::Codec::H264)
    };
    h264()
        .find(|p| p.spec().format.packetization_mode == Some(1))
        .or_else(|| h264().next())
        .map(|p| p.pt())
}

/// Binds nothing itself: takes the bound socket, returns the handle and the task's future.
pub fn spawn(
    socket: UdpSocket,
    candidate_addr: SocketAddr,
    audit: mpsc::Sender<AuditRecord>,
) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let hub = Hub {
        socket,
        candidate_addr,
        next_conn: 1,
        clients: HashMap::new(),
        by_device: HashMap::new(),
        fields: HashMap::new(),
        by_addr: HashMap::new(),
        audit,
        dirty: Vec::new(),
        keyframe_rescan: None,
        replay_due: None,
    };
    let task = tokio::spawn(hub.run(rx));
    (HubHandle { tx }, task)
}

struct Peer {
    rtc: Rtc,
    /// Video m-lines by index: a field's stream ids, or a remote's conn_fds.
    video_mids: Vec<Mid>,
    /// Field: per stream, when a keyframe was asked for and none has come since.
    keyframe_asked: Vec<Option<Instant>>,
    /// Field: per stream, its source's state (and last group of pictures, if kept).
    sources: Vec<SourceInfo>,
    channels: [Option<ChannelId>; 2],
    pending_reliable: VecDeque<Vec<u8>>,
    next_timeout: Instant,
}

struct Client {
    info: ClientInfo,
    out: mpsc::Sender<Outbound>,
    peer: Option<Peer>,
    limiter: RateLimiter,
    /// Reliable control frames over the rate limit, waiting their turn.
    paced: VecDeque<Vec<u8>>,
    /// Remote: the field devices it is in session with.
    sessions: Vec<DeviceId>,
    /// Qos 0 late-drop filters, per sending device (the server never forwards stale ones).
    late: HashMap<DeviceId, LateFilter>,
    /// Last time a warning went out, so a flood of bad messages yields few warnings.
    last_warning: Option<(ErrorCode, Instant)>,
    /// Remote: its receivers (`conn_fd` = index).
    receivers: Vec<Receiver>,
    /// Field whose video comes from outside WebRTC: its stream count, and the demand
    /// last told to it.
    external: Option<(u32, Vec<u32>)>,
}

/// One receiver of a remote device: which stream it wants, and the timestamp rewrite
/// that keeps its output continuous across switches.
#[derive(Debug, Clone, Default)]
struct Receiver {
    want: Option<(DeviceId, u32)>,
    /// A keyframe of `want` has been forwarded since it was set.
    live: bool,
    /// Added (wrapping) to the source's 90 kHz time.
    offset: u64,
    last_out: Option<u64>,
    /// Frames (with their output time) still to write, oldest first: a start from a
    /// cached group of pictures goes out at [`REPLAY_BYTES`] per [`REPLAY_EVERY`] (a
    /// whole group at once overflows socket buffers), and live frames queue behind it.
    backlog: VecDeque<(CachedFrame, u64)>,
}

/// How much of a replayed group of pictures is written at once, and how often: about
/// 32 Mbit/s, so a receiver busy decoding does not overflow its socket buffer.
const REPLAY_BYTES: usize = 16 * 1024;
const REPLAY_EVERY: Duration = Duration::from_millis(4);

struct Hub {
    socket: UdpSocket,
    candidate_addr: SocketAddr,
    next_conn: ConnId,
    clients: HashMap<ConnId, Client>,
    by_device: HashMap<DeviceId, ConnId>,
    fields: HashMap<DeviceId, FieldControl>,
    by_addr: HashMap<SocketAddr, ConnId>,
    audit: mpsc::Sender<AuditRecord>,
    /// Peers written to outside `poll` (e.g. a keyframe request) that must be polled.
    dirty: Vec<ConnId>,
    /// When receivers still waiting for a keyframe ask again, if any wait.
    keyframe_rescan: Option<Instant>,
    /// When receivers with a backlog write their next part of it, if any have one.
    replay_due: Option<Instant>,
}

enum PeerEvent {
    Open(ChannelId, String),
    Data(ChannelId, Vec<u8>),
    Media(Box<MediaData>),
    /// A remote's receiver asks for a keyframe.
    Keyframe(Mid),
    Dead(&'static str),
}

impl Hub {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            let next = self
                .clients
                .values()
                .filter_map(|c| c.peer.as_ref().map(|p| p.next_timeout))
                .chain(
                    self.clients
                        .values()
                        .filter(|c| !c.paced.is_empty())
                        .map(|c| c.limiter.next_free(now)),
                )
                .chain(self.keyframe_rescan)
                .chain(self.replay_due)
                .min()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.on_udp(&buf[..n], source),
                    Err(e) => tracing::debug!("udp receive: {e}"),
                },
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Shutdown) | None => break,
                    Some(cmd) => {
                        // Frames never change demand; everything else may.
                        let may_change_demand = !matches!(cmd, Cmd::ExternalFrame { .. });
                        self.on_cmd(cmd);
                        if may_change_demand {
                            self.update_demand();
                        }
                    }
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            self.drive_timeouts();
            self.retry_keyframes();
            self.drain_backlogs();
            for conn in std::mem::take(&mut self.dirty) {
                self.poll(conn);
            }
        }
        for c in self.clients.values() {
            let _ = c.out.try_send(Outbound::Close(
                ErrorCode::Disconnected,
                "server shutting down".into(),
            ));
        }
        tracing::info!("hub stopped");
    }

    // ---- commands -------------------------------------------------------------------

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Register { info, out, reply } => {
                let conn = self.register(info, out);
                let _ = reply.send(conn);
            }
            Cmd::Unregister { conn } => self.unregister(conn),
            Cmd::Watch {
                conn,
                req,
                gwid,
                stream_ids,
                conn_fds,
            } => {
                let r = self.watch(conn, &gwid, &stream_ids, &conn_fds);
                self.reply(conn, req, r);
            }
            Cmd::Unwatch {
                conn,
                req,
                conn_fds,
            } => {
                let r = self.unwatch(conn, conn_fds.as_deref());
                self.reply(conn, req, r);
            }
            Cmd::Offer {
                conn,
                req,
                sdp,
                video_mids,
            } => {
                let msg = match self.accept_offer(conn, &sdp, &video_mids) {
                    Ok(sdp) => ServerMsg::Answer { req, sdp },
                    Err((code, why)) => ServerMsg::error(req, code, why),
                };
                self.send(conn, msg);
            }
            Cmd::Connect { conn, req, gwid } => {
                let r = self.connect(conn, &gwid);
                self.reply(conn, req, r);
            }
            Cmd::Disconnect { conn, req, gwid } => {
                let r = self.disconnect(conn, &gwid);
                self.reply(conn, req, r);
            }
            Cmd::RequestPermission {
                conn,
                req,
                gwid,
                level,
            } => {
                let r = self.request_permission(conn, &gwid, level);
                self.reply(conn, req, r);
            }
            Cmd::SetPermission {
                conn,
                req,
                remote,
                level,
            } => {
                let r = self.set_permission(conn, &remote, level);
                self.reply(conn, req, r);
            }
            Cmd::External { conn, streams } => {
                let device = self.clients.get_mut(&conn).map(|c| {
                    c.external = Some((streams, Vec::new()));
                    c.info.device.clone()
                });
                if let Some(d) = device {
                    self.field_video_ready(&d);
                }
            }
            Cmd::ExternalFailed {
                conn,
                stream,
                reason,
            } => {
                if let Some(field) = self.clients.get(&conn).map(|c| c.info.device.clone()) {
                    self.fail_stream(&field, stream, &reason);
                }
            }
            Cmd::ExternalFrame {
                conn,
                stream,
                data,
                rtp_time,
            } => {
                let field = self
                    .clients
                    .get(&conn)
                    .filter(|c| c.external.as_ref().is_some_and(|(n, _)| stream < *n))
                    .map(|c| c.info.device.clone());
                if let Some(field) = field {
                    let written = self.forward(&field, stream, &data.into(), rtp_time, None);
                    for c in written {
                        if !self.dirty.contains(&c) {
                            self.dirty.push(c);
                        }
                    }
                }
            }
            Cmd::SourceState {
                conn,
                req,
                stream,
                ok,
                reason,
                keyframe_on_request,
            } => {
                let r = self.source_state(conn, stream, ok, reason, keyframe_on_request);
                self.reply(conn, req, r);
            }
            Cmd::Shutdown => {}
            Cmd::Online { project, reply } => {
                let online = self
                    .by_device
                    .keys()
                    .filter(|d| d.project == project)
                    .map(|d| {
                        let n = self.stream_count(d).unwrap_or(0);
                        (d.device.clone(), u32::try_from(n).unwrap_or(u32::MAX))
                    })
                    .collect();
                let _ = reply.send(online);
            }
        }
    }

    fn reply(&mut self, conn: ConnId, req: Option<u64>, r: Result<(), ErrorCode>) {
        let msg = match r {
            Ok(()) => ServerMsg::Ok { req },
            Err(code) => ServerMsg::error(req, code, code.describe()),
        };
        self.send(conn, msg);
    }

    fn register(&mut self, info: ClientInfo, out: mpsc::Sender<Outbound>) -> ConnId {
        if let Some(old) = self.by_device.get(&info.device).copied() {
            if let Some(c) = self.clients.get(&old) {
                let _ = c.out.try_send(Outbound::Close(
                    ErrorCode::Replaced,
                    "the same device logged in again".into(),
                ));
            }
            self.unregister(old);
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let device = info.device.clone();
        let role = info.role;
        let auto = info.auto_permission;
        self.clients.insert(
            conn,
            Client {
                info,
                out,
                peer: None,
                limiter: RateLimiter::default(),
                paced: VecDeque::new(),
                sessions: Vec::new(),
                late: HashMap::new(),
                last_warning: None,
                receivers: Vec::new(),
                external: None,
            },
        );
        self.by_device.insert(device.clone(), conn);
        tracing::info!(device = %device, role = role.as_str(), conn, "device online");
        if role == Role::Field {
            let members = self
                .fields
                .get(&device)
                .map(|fc| fc.members().to_vec())
                .unwrap_or_default();
            let first_auto = members
                .iter()
                .find(|m| {
                    self.by_device
                        .get(*m)
                        .and_then(|c| self.clients.get(c))
                        .is_some_and(|c| c.info.auto_permission)
                })
                .cloned();
            let fc = self
                .fields
                .entry(device.clone())
                .or_insert_with(|| FieldControl::new(device.clone()));
            let outs = fc.field_presence(true, auto, first_auto);
            for m in members {
                self.send(conn, ServerMsg::RemoteJoined { remote_id: m });
            }
            // Remotes learn the field is online before any permission change it brings.
            self.broadcast_presence(&device, true);
            self.apply(&device, outs);
        }
        conn
    }

    fn unregister(&mut self, conn: ConnId) {
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        self.by_addr.retain(|_, c| *c != conn);
        let device = client.info.device.clone();
        if self.by_device.get(&device) == Some(&conn) {
            self.by_device.remove(&device);
        }
        tracing::info!(device = %device, conn, "device offline");
        match client.info.role {
            Role::Field => {
                if let Some(fc) = self.fields.get_mut(&device) {
                    let outs = fc.field_presence(false, true, None);
                    self.apply(&device, outs);
                }
                self.broadcast_presence(&device, false);
                self.set_watchers(
                    &device,
                    None,
                    StreamState::Failed,
                    Some("field device offline"),
                );
                self.drop_idle(&device);
            }
            Role::Remote => {
                for gwid in client.sessions {
                    self.leave(&device, &gwid);
                }
            }
        }
    }

    fn connect(&mut self, conn: ConnId, gwid: &DeviceId) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        if client.sessions.contains(gwid) {
            return Ok(());
        }
        if client.sessions.len() >= MAX_SESSIONS_PER_REMOTE {
            return Err(ErrorCode::BadRequest);
        }
        client.sessions.push(gwid.clone());
        let remote = client.info.device.clone();
        let auto = client.info.auto_permission;
        let fc = self
            .fields
            .entry(gwid.clone())
            .or_insert_with(|| FieldControl::new(gwid.clone()));
        let online = fc.field_online();
        let outs = fc.join(&remote, auto);
        self.send(
            conn,
            ServerMsg::Presence {
                field_id: gwid.clone(),
                online,
            },
        );
        if let Some(f) = self.by_device.get(gwid).copied() {
            self.send(
                f,
                ServerMsg::RemoteJoined {
                    remote_id: remote.clone(),
                },
            );
        }
        tracing::info!(remote = %remote, field = %gwid, "session opened");
        self.apply(gwid, outs);
        Ok(())
    }

    fn disconnect(&mut self, conn: ConnId, gwid: &DeviceId) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if !client.sessions.contains(gwid) {
            return Err(ErrorCode::NotInSession);
        }
        client.sessions.retain(|g| g != gwid);
        let remote = client.info.device.clone();
        self.leave(&remote, gwid);
        Ok(())
    }

    fn leave(&mut self, remote: &DeviceId, gwid: &DeviceId) {
        if let Some(conn) = self.by_device.get(remote).copied() {
            let fds: Vec<u32> = self
                .clients
                .get(&conn)
                .map(|c| {
                    c.receivers
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.want.as_ref().is_some_and(|(f, _)| f == gwid))
                        .map(|(i, _)| i as u32)
                        .collect()
                })
                .unwrap_or_default();
            let _ = self.unwatch(conn, Some(&fds));
        }
        if let Some(fc) = self.fields.get_mut(gwid) {
            let outs = fc.leave(remote);
            self.apply(gwid, outs);
        }
        if let Some(f) = self.by_device.get(gwid).copied() {
            self.send(
                f,
                ServerMsg::RemoteLeft {
                    remote_id: remote.clone(),
                },
            );
        }
        tracing::info!(remote = %remote, field = %gwid, "session closed");
        self.drop_idle(gwid);
    }

    fn drop_idle(&mut self, field: &DeviceId) {
        if self.fields.get(field).is_some_and(|fc| fc.is_idle()) {
            self.fields.remove(field);
        }
    }

    fn request_permission(
        &mut self,
        conn: ConnId,
        gwid: &DeviceId,
        level: Permission,
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        let remote = client.info.device.clone();
        let fc = self.fields.get_mut(gwid).ok_or(ErrorCode::NotInSession)?;
        let outs = fc.request(&remote, level)?;
        self.apply(gwid, outs);
        Ok(())
    }

    fn set_permission(
        &mut self,
        conn: ConnId,
        remote: &DeviceId,
        level: Permission,
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Field {
            return Err(ErrorCode::WrongRoleForCall);
        }
        let field = client.info.device.clone();
        let fc = self.fields.get_mut(&field).ok_or(ErrorCode::NotInSession)?;
        let outs = fc.set(remote, level)?;
        self.apply(&field, outs);
        Ok(())
    }

    /// Carries out what the permission state machine asked for.
    fn apply(&mut self, field: &DeviceId, outs: Vec<Out>) {
        for o in outs {
            match o {
                Out::Notify {
                    remote,
                    self_permission,
                    master,
                } => self.send_to_device(
                    &remote,
                    ServerMsg::Permission {
                        field_id: field.clone(),
                        self_permission,
                        master_id: master,
                    },
                ),
                Out::AskField { remote, level } => self.send_to_device(
                    field,
                    ServerMsg::PermissionRequest {
                        remote_id: remote,
                        level,
                    },
                ),
                Out::FieldMaster { master } => {
                    self.send_to_device(field, ServerMsg::MasterChanged { master_id: master })
                }
                Out::Audit {
                    previous,
                    master,
                    actor,
                    cause,
                } => {
                    tracing::info!(field = %field, ?previous, ?master, actor = %actor, cause = cause.as_str(), "master changed");
                    let entry = AuditEntry {
                        ts_ms: now_ms(),
                        field_id: field.to_string(),
                        previous_master: previous.map(|d| d.to_string()),
                        master: master.map(|d| d.to_string()),
                        actor: actor.to_string(),
                        cause: cause.as_str().to_string(),
                    };
                    if self.audit.try_send((field.project.clone(), entry)).is_err() {
                        tracing::error!(field = %field, "audit queue full: permission change not recorded");
                    }
                }
            }
        }
    }

    fn broadcast_presence(&mut self, field: &DeviceId, online: bool) {
        let members: HashSet<DeviceId> = self
            .fields
            .get(field)
            .map(|fc| fc.members().iter().cloned().collect())
            .unwrap_or_default();
        let targets: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.info.role == Role::Remote
                    && c.info.device.project == field.project
                    && (c.info.sees_all_fields || members.contains(&c.info.device))
            })
            .map(|(id, _)| *id)
            .collect();
        for t in targets {
            self.send(
                t,
                ServerMsg::Presence {
                    field_id: field.clone(),
                    online,
                },
            );
        }
    }

    fn send_to_device(&mut self, device: &DeviceId, msg: ServerMsg) {
        if let Some(conn) = self.by_device.get(device).copied() {
            self.send(conn, msg);
        }
    }

    /// Queues a message; a client whose queue is full is disconnected.
    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        let Some(c) = self.clients.get(&conn) else {
            return;
        };
        if c.out.try_send(Outbound::Msg(msg)).is_err() {
            tracing::warn!(device = %c.info.device, "signalling queue full or closed: disconnecting");
            let _ = c.out.try_send(Outbound::Close(
                ErrorCode::Congested,
                "signalling queue overflow".into(),
            ));
            self.unregister(conn);
        }
    }

    /// A warning about something the client sent; at most one per code per second.
    fn warn(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        let now = Instant::now();
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        if let Some((last_code, at)) = c.last_warning {
            if last_code == code && now.duration_since(at) < Duration::from_secs(1) {
                return;
            }
        }
        c.last_warning = Some((code, now));
        let _ = c
            .out
            .try_send(Outbound::Msg(ServerMsg::warning(code, message)));
    }

    // ---- video routing ---------------------------------------------------------------

    /// SPEC §2 connect: routes `stream_ids[i]` of `gwid` to receiver `conn_fds[i]`.
    fn watch(
        &mut self,
        conn: ConnId,
        gwid: &DeviceId,
        stream_ids: &[u32],
        conn_fds: &[u32],
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        if stream_ids.len() != conn_fds.len() || stream_ids.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        if conn_fds
            .iter()
            .any(|fd| *fd as usize >= client.receivers.len())
        {
            return Err(ErrorCode::ConnFdOutOfRange);
        }
        // The stream count is known while the field device is online.
        let streams = self.stream_count(gwid);
        if let Some(n) = streams {
            if n == 0 {
                return Err(ErrorCode::NoVideo);
            }
            if stream_ids.iter().any(|s| *s as usize >= n) {
                return Err(ErrorCode::StreamOutOfRange);
            }
        }
        self.connect(conn, gwid)?;
        // Streams whose source (a camera) does not work now, and why.
        let failed: HashMap<u32, String> = self
            .by_device
            .get(gwid)
            .and_then(|f| self.clients.get(f))
            .and_then(|c| c.peer.as_ref())
            .map(|p| {
                p.sources
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as u32, s.failed.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut msgs = Vec::new();
        let mut started = Vec::new();
        if let Some(client) = self.clients.get_mut(&conn) {
            for (s, fd) in stream_ids.iter().zip(conn_fds) {
                let r = &mut client.receivers[*fd as usize];
                let new = Some((gwid.clone(), *s));
                if r.want == new && r.live {
                    continue;
                }
                if let Some((of, os)) = r.want.take() {
                    msgs.push(stream_state(
                        *fd,
                        of,
                        os,
                        StreamState::Disconnected,
                        Some("another stream was connected"),
                    ));
                }
                r.want = new;
                r.live = false;
                r.backlog.clear();
                let (state, why) = match (streams, failed.get(s)) {
                    (None, _) => (StreamState::Failed, Some("field device offline")),
                    (Some(_), Some(why)) => (StreamState::Failed, Some(why.as_str())),
                    (Some(_), None) => (StreamState::Connecting, None),
                };
                if state == StreamState::Connecting {
                    started.push((*fd as usize, *s));
                }
                msgs.push(stream_state(*fd, gwid.clone(), *s, state, why));
            }
        }
        for m in msgs {
            self.send(conn, m);
        }
        for (fd, s) in started {
            self.start_from_gop(conn, fd, gwid, s);
        }
        for s in stream_ids {
            self.ask_keyframe(gwid, *s);
        }
        self.keyframe_rescan = Some(Instant::now() + KEYFRAME_REQUEST_RETRY / 3);
        Ok(())
    }

    /// SPEC §2 disconnect / disconnect_all (`None`).
    fn unwatch(&mut self, conn: ConnId, conn_fds: Option<&[u32]>) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        let all: Vec<u32> = (0..client.receivers.len() as u32).collect();
        let fds = conn_fds.unwrap_or(&all);
        if fds.iter().any(|fd| *fd as usize >= client.receivers.len()) {
            return Err(ErrorCode::ConnFdOutOfRange);
        }
        let mut msgs = Vec::new();
        for fd in fds {
            let r = &mut client.receivers[*fd as usize];
            if let Some((f, s)) = r.want.take() {
                r.live = false;
                r.backlog.clear();
                msgs.push(stream_state(*fd, f, s, StreamState::Disconnected, None));
            }
        }
        for m in msgs {
            self.send(conn, m);
        }
        Ok(())
    }

    /// Receivers of one stream fail, and stop wanting it (it cannot play).
    fn fail_stream(&mut self, field: &DeviceId, stream: u32, why: &str) {
        let want = Some((field.clone(), stream));
        let mut out = Vec::new();
        for (conn, c) in self.clients.iter_mut() {
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if r.want == want {
                    r.want = None;
                    r.live = false;
                    r.backlog.clear();
                    out.push((
                        *conn,
                        stream_state(
                            fd as u32,
                            field.clone(),
                            stream,
                            StreamState::Failed,
                            Some(why),
                        ),
                    ));
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// Tells every receiver watching `field` (only its `stream`, if given) a new state
    /// (field offline / back, a source failed / works again).
    fn set_watchers(
        &mut self,
        field: &DeviceId,
        stream: Option<u32>,
        state: StreamState,
        why: Option<&str>,
    ) {
        let mut out = Vec::new();
        for (conn, c) in self.clients.iter_mut() {
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if let Some((f, s)) = &r.want {
                    if f == field && stream.is_none_or(|x| x == *s) {
                        r.live = false;
                        r.backlog.clear();
                        out.push((*conn, stream_state(fd as u32, f.clone(), *s, state, why)));
                    }
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// How many streams an online field device has: its video m-lines, or an external
    /// source's channels.
    fn stream_count(&self, field: &DeviceId) -> Option<usize> {
        let c = self
            .by_device
            .get(field)
            .and_then(|c| self.clients.get(c))?;
        match (&c.external, &c.peer) {
            (Some((n, _)), _) => Some(*n as usize),
            (None, Some(p)) => Some(p.video_mids.len()),
            (None, None) => None,
        }
    }

    /// A field device's video m-lines are known: receivers waiting for it connect.
    fn field_video_ready(&mut self, field: &DeviceId) {
        let n = self.stream_count(field).unwrap_or(0);
        let mut out = Vec::new();
        for (conn, c) in self.clients.iter_mut() {
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                let Some((f, s)) = r.want.clone() else {
                    continue;
                };
                if &f != field {
                    continue;
                }
                r.live = false;
                r.backlog.clear();
                if (s as usize) < n {
                    out.push((
                        *conn,
                        stream_state(fd as u32, f, s, StreamState::Connecting, None),
                    ));
                } else {
                    r.want = None;
                    out.push((
                        *conn,
                        stream_state(
                            fd as u32,
                            f,
                            s,
                            StreamState::Disconnected,
                            Some("stream id out of range for this field device"),
                        ),
                    ));
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// Receivers still waiting for a keyframe ask again: a PLI can be lost on the way, and
    /// `ask_keyframe` spaces the requests by `KEYFRAME_REQUEST_RETRY`.
    fn retry_keyframes(&mut self) {
        let now = Instant::now();
        if self.keyframe_rescan.is_some_and(|t| t > now) {
            return;
        }
        let mut waiting: Vec<(DeviceId, u32)> = self
            .clients
            .values()
            .flat_map(|c| c.receivers.iter())
            .filter(|r| !r.live)
            .filter_map(|r| r.want.clone())
            .collect();
        waiting.sort();
        waiting.dedup();
        self.keyframe_rescan = (!waiting.is_empty()).then(|| now + KEYFRAME_REQUEST_RETRY / 3);
        for (f, s) in waiting {
            self.ask_keyframe(&f, s);
        }
    }

    /// Asks a field device's stream for a keyframe, unless one is already on its way.
    fn ask_keyframe(&mut self, field: &DeviceId, stream: u32) {
        let Some(conn) = self.by_device.get(field).copied() else {
            return;
        };
        let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
            return;
        };
        let i = stream as usize;
        if peer.sources.get(i).is_some_and(|s| !s.keyframe_on_request) {
            return; // it cannot make one (new receivers start from its cached group)
        }
        let (Some(mid), Some(asked)) = (
            peer.video_mids.get(i).copied(),
            peer.keyframe_asked.get_mut(i),
        ) else {
            return;
        };
        let now = Instant::now();
        if asked.is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_RETRY) {
            return;
        }
        if asked.is_some() {
            tracing::debug!(%field, stream, "keyframe request repeated");
        }
        if let Some(mut w) = peer.rtc.writer(mid) {
            if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                *asked = Some(now);
                if !self.dirty.contains(&conn) {
                    self.dirty.push(conn);
                }
            }
        }
    }

    /// A frame from a field device's WebRTC peer: answers its keyframe request, if any,
    /// keeps it for new receivers if its source cannot make keyframes, and forwards it.
    fn on_media(&mut self, from: ConnId, d: Box<MediaData>) -> Vec<ConnId> {
        let Some((field, stream)) = self.clients.get(&from).and_then(|c| {
            if c.info.role != Role::Field {
                return None;
            }
            let s = c
                .peer
                .as_ref()?
                .video_mids
                .iter()
                .position(|m| *m == d.mid)?;
            Some((c.info.device.clone(), s as u32))
        }) else {
            return Vec::new();
        };
        let keyframe = codec_of(&d.params).is_keyframe(&d.data);
        let in_t = d.time.rebase(Frequency::NINETY_KHZ).numer();
        if let Some(peer) = self.clients.get_mut(&from).and_then(|c| c.peer.as_mut()) {
            let i = stream as usize;
            if keyframe {
                // The request, if any, is answered.
                if let Some(a) = peer.keyframe_asked.get_mut(i) {
                    *a = None;
                }
            }
            if let Some(src) = peer.sources.get_mut(i).filter(|s| !s.keyframe_on_request) {
                src.gop.push(
                    keyframe,
                    CachedFrame {
                        data: d.data.clone(),
                        in_t,
                        params: d.params,
                    },
                );
            }
        }
        let source = Some((d.params, d.network_time, d.ext_vals.abs_capture_time));
        self.forward(&field, stream, &d.data, in_t, source)
    }

    /// Forwards one frame of a field device's stream to every receiver that wants it. A
    /// receiver starts on a keyframe; its timestamps continue from what it played before.
    /// `source`: the WebRTC source's payload parameters, arrival time and capture time
    /// (external sources have none: the receiver's own H.264 payload type is used).
    fn forward(
        &mut self,
        field: &DeviceId,
        stream: u32,
        data: &std::sync::Arc<[u8]>,
        in_t: u64,
        source: Option<(PayloadParams, Instant, Option<AbsCaptureTime>)>,
    ) -> Vec<ConnId> {
        let members: Vec<ConnId> = self
            .fields
            .get(field)
            .map(|fc| {
                fc.members()
                    .iter()
                    .filter_map(|m| self.by_device.get(m).copied())
                    .collect()
            })
            .unwrap_or_default();
        let codec = source
            .as_ref()
            .map_or(VideoCodec::H264, |(p, _, _)| codec_of(p));
        let keyframe = codec.is_keyframe(data);
        let want = Some((field.clone(), stream));
        let passthrough = self
            .by_device
            .get(field)
            .and_then(|c| self.clients.get(c))
            .and_then(|c| c.peer.as_ref())
            .and_then(|p| p.sources.get(stream as usize))
            .is_some_and(|s| !s.keyframe_on_request);
        let note = passthrough.then_some(PASSTHROUGH_NOTE);
        let mut written = Vec::new();
        let mut msgs = Vec::new();
        for conn in members {
            let Some(c) = self.clients.get_mut(&conn) else {
                continue;
            };
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if r.want != want {
                    continue;
                }
                if let Some((params, _, _)) = &source {
                    if !takes(peer, fd, *params) {
                        // The receiver did not negotiate the stream's codec: it fails
                        // once, with what to do about it.
                        r.want = None;
                        r.live = false;
                        r.backlog.clear();
                        let why = codec_refused(codec);
                        let m = stream_state(
                            fd as u32,
                            field.clone(),
                            stream,
                            StreamState::Failed,
                            Some(&why),
                        );
                        msgs.push((conn, m));
                        continue;
                    }
                }
                if !r.live {
                    if !keyframe {
                        continue;
                    }
                    r.live = true;
                    // Continue one frame interval after the last output, whatever the source.
                    r.offset = r
                        .last_out
                        .map_or(0, |l| l.wrapping_add(3000).wrapping_sub(in_t));
                    msgs.push((
                        conn,
                        stream_state(fd as u32, field.clone(), stream, StreamState::Playing, note),
                    ));
                }
                let out_t = in_t.wrapping_add(r.offset) & 0xFFFF_FFFF_FFFF;
                r.last_out = Some(out_t);
                if !r.backlog.is_empty() {
                    if r.backlog.len() >= 2 * crate::gop::MAX_GOP_FRAMES {
                        // It does not drain (the receiver's writer is gone?): start over
                        // at the next keyframe rather than grow.
                        r.backlog.clear();
                        r.live = false;
                        continue;
                    }
                    if let Some((params, _, _)) = &source {
                        let f = CachedFrame {
                            data: data.clone(),
                            in_t,
                            params: *params,
                        };
                        r.backlog.push_back((f, out_t));
                    }
                    continue;
                }
                if write_frame(peer, fd, data, out_t, source.as_ref()) && !written.contains(&conn) {
                    written.push(conn);
                }
            }
        }
        for (conn, m) in msgs {
            self.send(conn, m);
        }
        written
    }

    /// Starts receiver `fd` of `conn` at once from the cached frames of a stream whose
    /// source cannot make keyframes (a camera in passthrough). The cached frames go out
    /// back to back, one 90 kHz tick apart, so a player shows the newest at once instead
    /// of replaying the group at its pace; live frames continue after them.
    fn start_from_gop(&mut self, conn: ConnId, fd: usize, field: &DeviceId, stream: u32) {
        let frames: Vec<CachedFrame> = match self
            .by_device
            .get(field)
            .and_then(|f| self.clients.get(f))
            .and_then(|c| c.peer.as_ref())
            .and_then(|p| p.sources.get(stream as usize))
        {
            Some(src) if !src.keyframe_on_request => src.gop.frames().to_vec(),
            _ => return,
        };
        let Some(last) = frames.last() else {
            return;
        };
        let last_in = last.in_t;
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let (Some(peer), Some(r)) = (c.peer.as_mut(), c.receivers.get_mut(fd)) else {
            return;
        };
        if !takes(peer, fd, last.params) {
            return; // not this receiver's codec: the next frame fails it
        }
        let base = r.last_out.map_or(0, |l| l.wrapping_add(3000));
        let mut out_t = base;
        r.backlog.clear();
        for (i, f) in frames.into_iter().enumerate() {
            out_t = base.wrapping_add(i as u64) & 0xFFFF_FFFF_FFFF;
            r.backlog.push_back((f, out_t));
        }
        r.live = true;
        r.last_out = Some(out_t);
        r.offset = out_t.wrapping_sub(last_in);
        let m = stream_state(
            fd as u32,
            field.clone(),
            stream,
            StreamState::Playing,
            Some(PASSTHROUGH_NOTE),
        );
        self.send(conn, m);
        self.replay_due = Some(Instant::now());
    }

    /// Writes the next part of every receiver's backlog (see [`Receiver::backlog`]).
    fn drain_backlogs(&mut self) {
        let now = Instant::now();
        if self.replay_due.is_none_or(|t| t > now) {
            return;
        }
        self.replay_due = None;
        for (conn, c) in self.clients.iter_mut() {
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                let mut budget = REPLAY_BYTES;
                while budget > 0 {
                    let Some((f, out_t)) = r.backlog.pop_front() else {
                        break;
                    };
                    budget = budget.saturating_sub(f.data.len());
                    write_frame(peer, fd, &f.data, out_t, Some(&(f.params, now, None)));
                    if !self.dirty.contains(conn) {
                        self.dirty.push(*conn);
                    }
                }
                if !r.backlog.is_empty() {
                    self.replay_due = Some(now + REPLAY_EVERY);
                }
            }
        }
    }

    /// `ClientMsg::SourceState` from a field device: receivers of a failed stream are
    /// told why, and resume when it works again.
    fn source_state(
        &mut self,
        conn: ConnId,
        stream: u32,
        ok: bool,
        reason: Option<String>,
        keyframe_on_request: bool,
    ) -> Result<(), ErrorCode> {
        let c = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        let field = c.info.device.clone();
        let src = c
            .peer
            .as_mut()
            .ok_or(ErrorCode::MediaNotReady)?
            .sources
            .get_mut(stream as usize)
            .ok_or(ErrorCode::StreamOutOfRange)?;
        src.keyframe_on_request = keyframe_on_request;
        if keyframe_on_request {
            src.gop.clear();
        }
        let was_failed = src.failed.is_some();
        src.failed = if ok {
            None
        } else {
            Some(reason.unwrap_or_else(|| "video source failed".into()))
        };
        if let Some(why) = src.failed.clone() {
            src.gop.clear();
            tracing::info!(%field, stream, "source failed: {why}");
            self.set_watchers(&field, Some(stream), StreamState::Failed, Some(&why));
        } else if was_failed {
            tracing::info!(%field, stream, "source works again");
            self.set_watchers(&field, Some(stream), StreamState::Connecting, None);
            self.ask_keyframe(&field, stream);
        }
        Ok(())
    }

    /// Tells each external source which of its streams receivers want, when that changed.
    fn update_demand(&mut self) {
        let mut wanted: HashMap<DeviceId, Vec<u32>> = HashMap::new();
        for c in self.clients.values() {
            for (f, s) in c.receivers.iter().filter_map(|r| r.want.as_ref()) {
                wanted.entry(f.clone()).or_default().push(*s);
            }
        }
        for c in self.clients.values_mut() {
            let Some((_, told)) = c.external.as_mut() else {
                continue;
            };
            let mut now = wanted.remove(&c.info.device).unwrap_or_default();
            now.sort_unstable();
            now.dedup();
            if *told != now {
                *told = now.clone();
                let _ = c.out.try_send(Outbound::Wanted(now));
            }
        }
    }

    // ---- WebRTC -----------------------------------------------------------------------

    fn accept_offer(
        &mut self,
        conn: ConnId,
        sdp: &str,
        video_mids: &[String],
    ) -> Result<String, (ErrorCode, String)> {
        if video_mids.len() > MAX_VIDEO_MLINES {
            return Err((
                ErrorCode::BadRequest,
                format!("at most {MAX_VIDEO_MLINES} video streams"),
            ));
        }
        let client = self
            .clients
            .get_mut(&conn)
            .ok_or((ErrorCode::NotLoggedIn, "not logged in".to_string()))?;
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| (ErrorCode::BadRequest, format!("bad SDP offer: {e}")))?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(true)
            // H.265 reaches remotes that negotiate it (cameras in passthrough).
            .enable_h265(true)
            .set_extension(EXT_ABS_CAPTURE_TIME, Extension::AbsoluteCaptureTime)
            .build(now);
        let cand = Candidate::host(self.candidate_addr, "udp")
            .map_err(|e| (ErrorCode::Internal, format!("candidate: {e}")))?;
        rtc.add_local_candidate(cand);
        let answer = catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer)))
            .map_err(|_| {
                (
                    ErrorCode::BadRequest,
                    "SDP offer could not be handled".to_string(),
                )
            })?
            .map_err(|e| (ErrorCode::BadRequest, format!("SDP offer refused: {e}")))?;
        // A new offer replaces the previous peer connection (media reconnect).
        let mids: Vec<Mid> = video_mids.iter().map(|m| Mid::from(m.as_str())).collect();
        let (packets, age) = fieldlink_media::RTX_CACHE;
        for mid in &mids {
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(*mid, None) {
                tx.set_rtx_cache(packets, age, Some(fieldlink_media::RTX_RATIO_CAP));
            }
        }
        client.peer = Some(Peer {
            rtc,
            keyframe_asked: vec![None; mids.len()],
            sources: mids.iter().map(|_| SourceInfo::default()).collect(),
            video_mids: mids,
            channels: [None, None],
            pending_reliable: VecDeque::new(),
            next_timeout: now,
        });
        self.by_addr.retain(|_, c| *c != conn);
        let n = video_mids.len();
        match client.info.role {
            Role::Remote => {
                // A new peer connection starts every receiver on a keyframe again.
                client.receivers.resize(n, Receiver::default());
                for r in &mut client.receivers {
                    r.live = false;
                    r.backlog.clear();
                }
                let wanted: Vec<(DeviceId, u32)> = client
                    .receivers
                    .iter()
                    .filter_map(|r| r.want.clone())
                    .collect();
                for (f, s) in wanted {
                    self.ask_keyframe(&f, s);
                }
            }
            Role::Field => {
                let device = client.info.device.clone();
                self.field_video_ready(&device);
            }
        }
        Ok(answer.to_sdp_string())
    }

    fn on_udp(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.candidate_addr,
                contents,
            },
        );
        let conn = match self.by_addr.get(&source) {
            Some(c) if self.peer_accepts(*c, &input) => Some(*c),
            _ => {
                let found = self
                    .clients
                    .iter()
                    .find(|(_, c)| c.peer.as_ref().is_some_and(|p| p.rtc.accepts(&input)))
                    .map(|(id, _)| *id);
                if let Some(c) = found {
                    self.by_addr.insert(source, c);
                }
                found
            }
        };
        let Some(conn) = conn else {
            return;
        };
        if let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
            let ok = catch_unwind(AssertUnwindSafe(|| peer.rtc.handle_input(input)));
            if !matches!(ok, Ok(Ok(()))) {
                peer.rtc.disconnect();
            }
        }
        self.poll(conn);
    }

    fn peer_accepts(&self, conn: ConnId, input: &Input) -> bool {
        self.clients
            .get(&conn)
            .and_then(|c| c.peer.as_ref())
            .is_some_and(|p| p.rtc.accepts(input))
    }

    fn drive_timeouts(&mut self) {
        let now = Instant::now();
        for conn in self.drive_paced(now) {
            self.poll(conn);
        }
        let due: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.peer.as_ref().is_some_and(|p| p.next_timeout <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            if let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
                let ok = catch_unwind(AssertUnwindSafe(|| {
                    peer.rtc.handle_input(Input::Timeout(now))
                }));
                if !matches!(ok, Ok(Ok(()))) {
                    peer.rtc.disconnect();
                }
            }
            self.poll(conn);
        }
    }

    /// Drains one peer's output: sends datagrams, then handles its events (which may write
    /// to other peers, which are then polled in turn).
    fn poll(&mut self, first: ConnId) {
        let mut todo = vec![first];
        let mut rounds = 0;
        while let Some(conn) = todo.pop() {
            rounds += 1;
            if rounds > 10_000 {
                tracing::error!("poll loop did not settle");
                break;
            }
            let events = self.poll_one(conn);
            for ev in events {
                match ev {
                    PeerEvent::Open(cid, label) => {
                        if let Some(peer) =
                            self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut())
                        {
                            if let Some(q) = Qos::from_label(&label) {
                                peer.channels[q as usize] = Some(cid);
                            }
                        }
                    }
                    PeerEvent::Data(cid, data) => {
                        let qos = self
                            .clients
                            .get(&conn)
                            .and_then(|c| c.peer.as_ref())
                            .and_then(|p| p.channels.iter().position(|c| *c == Some(cid)));
                        let Some(qos) =
                            qos.map(|i| if i == 0 { Qos::Lossy } else { Qos::Reliable })
                        else {
                            continue;
                        };
                        for target in self.on_control(conn, qos, data) {
                            if !todo.contains(&target) {
                                todo.push(target);
                            }
                        }
                    }
                    PeerEvent::Media(d) => {
                        for target in self.on_media(conn, d) {
                            if !todo.contains(&target) {
                                todo.push(target);
                            }
                        }
                    }
                    PeerEvent::Keyframe(mid) => {
                        let want = self.clients.get(&conn).and_then(|c| {
                            let fd = c.peer.as_ref()?.video_mids.iter().position(|m| *m == mid)?;
                            c.receivers.get(fd)?.want.clone()
                        });
                        if let Some((f, s)) = want {
                            self.ask_keyframe(&f, s);
                        }
                    }
                    PeerEvent::Dead(why) => {
                        if let Some(c) = self.clients.get_mut(&conn) {
                            tracing::info!(device = %c.info.device, why, "media connection closed");
                            c.peer = None;
                        }
                        self.by_addr.retain(|_, c| *c != conn);
                        self.warn(
                            conn,
                            ErrorCode::MediaNotReady,
                            format!("media connection closed: {why}"),
                        );
                    }
                }
            }
        }
    }

    fn poll_one(&mut self, conn: ConnId) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
            return events;
        };
        flush_reliable(peer);
        // Serve timeouts already due here, while that makes progress (bounded): the hub's
        // timer has millisecond granularity, and a queued burst would otherwise leave one
        // packet per wake-up.
        let (mut due_now, mut progressed) = (0, true);
        loop {
            if !peer.rtc.is_alive() {
                events.push(PeerEvent::Dead("peer connection ended"));
                return events;
            }
            let out = match catch_unwind(AssertUnwindSafe(|| peer.rtc.poll_output())) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::debug!("poll_output: {e}");
                    events.push(PeerEvent::Dead("WebRTC error"));
                    return events;
                }
                Err(_) => {
                    events.push(PeerEvent::Dead("WebRTC panic"));
                    return events;
                }
            };
            match out {
                Output::Timeout(t) => {
                    let now = Instant::now();
                    if t <= now && progressed && due_now < 256 {
                        due_now += 1;
                        progressed = false;
                        let ok = catch_unwind(AssertUnwindSafe(|| {
                            peer.rtc.handle_input(Input::Timeout(now))
                        }));
                        if matches!(ok, Ok(Ok(()))) {
                            continue;
                        }
                        peer.rtc.disconnect();
                    }
                    peer.next_timeout = t;
                    return events;
                }
                Output::Transmit(t) => {
                    progressed = true;
                    // UDP: a full socket buffer means loss, which WebRTC repairs or tolerates.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::ChannelOpen(cid, label) => {
                        if let Some(mut ch) = peer.rtc.channel(cid) {
                            ch.set_buffered_amount_low_threshold(LOSSY_BUFFER_LIMIT / 2);
                        }
                        events.push(PeerEvent::Open(cid, label));
                    }
                    Event::ChannelData(d) => events.push(PeerEvent::Data(d.id, d.data)),
                    Event::MediaData(d) => events.push(PeerEvent::Media(Box::new(d))),
                    Event::KeyframeRequest(r) => events.push(PeerEvent::Keyframe(r.mid)),
                    Event::ChannelBufferedAmountLow(_) => flush_reliable(peer),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        peer.rtc.disconnect();
                    }
                    _ => {}
                },
            }
        }
    }

    /// Admits one control message under the sender's rate limit. Lossy messages over the
    /// limit are dropped. Reliable ones are paced: a compliant sender's messages can
    /// arrive in a burst after the network held them back (SCTP retransmission), and must
    /// not be lost, so they wait their turn in a bounded queue; a sender that keeps
    /// exceeding the limit fills it and loses messages (with a warning).
    /// Returns the peers written to (to be polled).
    fn on_control(&mut self, from: ConnId, qos: Qos, data: Vec<u8>) -> Vec<ConnId> {
        let now = Instant::now();
        if let Err(e) = ControlFrame::decode(&data) {
            self.warn(from, e.code(), format!("control data refused: {e}"));
            return Vec::new();
        }
        let Some(sender) = self.clients.get_mut(&from) else {
            return Vec::new();
        };
        let admitted = match qos {
            Qos::Lossy => sender.limiter.try_acquire(now),
            Qos::Reliable if sender.paced.is_empty() && sender.limiter.try_acquire(now) => true,
            Qos::Reliable if sender.paced.len() < MAX_PACED => {
                sender.paced.push_back(data);
                return Vec::new();
            }
            Qos::Reliable => false,
        };
        if !admitted {
            self.warn(
                from,
                ErrorCode::RateLimited,
                "control data dropped: over 100 messages/s".into(),
            );
            return Vec::new();
        }
        self.route(from, qos, &data)
    }

    /// Releases paced reliable messages whose turn has come.
    fn drive_paced(&mut self, now: Instant) -> Vec<ConnId> {
        let senders: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.paced.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let mut touched = Vec::new();
        for from in senders {
            while let Some(data) = self.clients.get_mut(&from).and_then(|c| {
                if c.paced.is_empty() || !c.limiter.try_acquire(now) {
                    None
                } else {
                    c.paced.pop_front()
                }
            }) {
                for t in self.route(from, Qos::Reliable, &data) {
                    if !touched.contains(&t) {
                        touched.push(t);
                    }
                }
            }
        }
        touched
    }

    /// Forwards one admitted control message to its receivers.
    fn route(&mut self, from: ConnId, qos: Qos, data: &[u8]) -> Vec<ConnId> {
        let Ok(frame) = ControlFrame::decode(data) else {
            return Vec::new();
        };
        let Some(sender) = self.clients.get(&from) else {
            return Vec::new();
        };
        let me = sender.info.device.clone();
        let fwd = ControlFrame {
            peer: &me.to_string(),
            seq: frame.seq,
            payload: frame.payload,
        }
        .encode();
        let Ok(fwd) = fwd else {
            return Vec::new();
        };
        let targets: Vec<ConnId> = match sender.info.role {
            Role::Field => self
                .fields
                .get(&me)
                .map(|fc| {
                    fc.members()
                        .iter()
                        .filter_map(|m| self.by_device.get(m).copied())
                        .collect()
                })
                .unwrap_or_default(),
            Role::Remote => {
                let Ok(gwid) = frame.peer.parse::<DeviceId>() else {
                    self.warn(
                        from,
                        ErrorCode::BadRequest,
                        "control data names no valid field device".into(),
                    );
                    return Vec::new();
                };
                let check = match self.fields.get(&gwid) {
                    Some(fc) if fc.is_member(&me) => {
                        if fc.master() == Some(&me) {
                            self.by_device
                                .get(&gwid)
                                .copied()
                                .ok_or(ErrorCode::FieldOffline)
                        } else {
                            Err(ErrorCode::NotMaster)
                        }
                    }
                    _ => Err(ErrorCode::NotInSession),
                };
                match check {
                    Ok(c) => vec![c],
                    Err(code) => {
                        self.warn(
                            from,
                            code,
                            format!("control data for {gwid} dropped: {}", code.describe()),
                        );
                        return Vec::new();
                    }
                }
            }
        };
        let mut written = Vec::new();
        for t in targets {
            let Some(target) = self.clients.get_mut(&t) else {
                continue;
            };
            if qos == Qos::Lossy && !target.late.entry(me.clone()).or_default().accept(frame.seq) {
                continue;
            }
            if target.external.is_some() {
                // Not a WebRTC peer: the source's own task interprets it (GB28181 PTZ).
                let _ = target.out.try_send(Outbound::Control {
                    from: me.clone(),
                    payload: frame.payload.to_vec(),
                });
                continue;
            }
            let Some(peer) = target.peer.as_mut() else {
                continue;
            };
            let Some(cid) = peer.channels[qos as usize] else {
                continue;
            };
            match qos {
                Qos::Lossy => {
                    if let Some(mut ch) = peer.rtc.channel(cid) {
                        // Congested: drop rather than deliver late.
                        if ch.buffered_amount() <= LOSSY_BUFFER_LIMIT {
                            let _ = ch.write(true, &fwd);
                        }
                    }
                }
                Qos::Reliable => {
                    if peer.pending_reliable.len() >= MAX_PENDING_RELIABLE {
                        tracing::warn!(device = %target.info.device, "reliable control queue full: receiver too slow, message dropped");
                        let _ = target.out.try_send(Outbound::Msg(ServerMsg::warning(
                            ErrorCode::Congested,
                            "reliable control data dropped: receiver queue full",
                        )));
                        continue;
                    }
                    peer.pending_reliable.push_back(fwd.clone());
                    flush_reliable(peer);
                }
            }
            written.push(t);
        }
        written
    }
}

fn stream_state(
    conn_fd: u32,
    gwid: DeviceId,
    stream_id: u32,
    state: StreamState,
    reason: Option<&str>,
) -> ServerMsg {
    ServerMsg::StreamState {
        conn_fd,
        gwid,
        stream_id,
        state,
        reason: reason.map(str::to_string),
    }
}

/// Writes queued reliable messages while the SCTP buffer accepts them.
fn flush_reliable(peer: &mut Peer) {
    let Some(cid) = peer.channels[Qos::Reliable as usize] else {
        return;
    };
    while let Some(front) = peer.pending_reliable.front() {
        let Some(mut ch) = peer.rtc.channel(cid) else {
            return;
        };
        match ch.write(true, front) {
            Ok(true) => {
                peer.pending_reliable.pop_front();
            }
            _ => return,
        }
    }
}
