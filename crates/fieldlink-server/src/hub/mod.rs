//! The hub: one task that owns every logged-in device, the operation sessions, the
//! permission state of every field device, and every WebRTC peer connection on the one
//! UDP socket. Owning all of it in one place means no locks and a total order of events.
//!
//! WebSocket tasks talk to it with [`Cmd`]s; it answers and notifies through each client's
//! bounded outbound queue (a client that cannot keep up is disconnected, never waited on).
//!
//! This module holds the task (its tables, its loop, the dispatch of commands) and the
//! messages to clients; each concern is a module of its own, all working on [`Hub`]:
//! - `cmd`: the interface ([`Cmd`], [`Outbound`], [`HubHandle`]);
//! - `sessions`: login presence, operation sessions, permission decisions, audit;
//! - `receivers`: what each receiver (`conn_fd`) wants and the stream states it is told;
//! - `audio`: audio forwarding between the parties of a session (lines, who is heard);
//! - `forward`: media forwarding, keyframe requests, starts from the cached GOP (`gop`);
//! - `control`: control-data limits, pacing and delivery;
//! - `diag`: session diagnostics (starting one, joining both sides' parts, the report);
//! - `quality`: each playing receiver's connection quality, scored every 2 s;
//! - `peer`: the str0m peer connections (offers, UDP in, timeouts, polling);
//! - `timers`: when each peer wants its next timeout (a heap, not a scan of every peer).

mod audio;
mod cmd;
mod control;
mod diag;
mod forward;
mod gop;
mod peer;
mod quality;
mod receivers;
mod sessions;
mod timers;
mod udp_out;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use fieldlink_proto::control::LateFilter;
use fieldlink_proto::{DeviceId, ErrorCode, RateLimiter, ServerMsg};

pub use cmd::{
    AudioOffer, AuditRecord, ClientInfo, Cmd, ConnId, HubHandle, Online, Outbound, CLIENT_QUEUE,
};

use crate::metrics::{HubSnapshot, Metrics};
use crate::permission::FieldControl;
use peer::Peer;
use receivers::Receiver;

/// Binds nothing itself: takes the bound socket, returns the handle and the task's future.
pub fn spawn(
    socket: UdpSocket,
    candidate_addr: SocketAddr,
    media_threads: usize,
    fec: bool,
    audit: mpsc::Sender<AuditRecord>,
    metrics: Arc<Metrics>,
) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let pool = (media_threads > 1)
        .then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(media_threads)
                .thread_name(|i| format!("fieldlink-media-{i}"))
                .build()
                .map_err(|e| tracing::warn!("media threads: {e}; forwarding on the hub's task"))
                .ok()
        })
        .flatten();
    let hub = Hub {
        pool,
        fec,
        socket,
        out: udp_out::UdpOut::new(),
        candidate_addr,
        next_conn: 1,
        clients: HashMap::new(),
        by_device: HashMap::new(),
        fields: HashMap::new(),
        by_addr: HashMap::new(),
        by_bond: HashMap::new(),
        audit,
        metrics,
        dirty: Vec::new(),
        keyframe_rescan: None,
        replay_due: None,
        diags: Vec::new(),
        next_diag: 0,
        quality_due: Instant::now() + quality::EVERY,
        peers: Default::default(),
        timers: Default::default(),
        paced: Default::default(),
        remotes: Default::default(),
        demand: HashMap::new(),
    };
    let task = tokio::spawn(hub.run(rx));
    (HubHandle { tx }, task)
}

/// One logged-in device (a WebSocket login, or an external source such as a GB28181
/// camera) and everything the hub keeps for it.
struct Client {
    info: ClientInfo,
    out: mpsc::Sender<Outbound>,
    /// Boxed: a peer is ~10 KB, and most clients of a big GB28181 site (cameras) have
    /// none.
    peer: Option<Box<Peer>>,
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
    /// Field: what arrived per stream (receivers' quality compares with it; a GB28181
    /// device's diagnosis is measured from it).
    frames_in: Vec<Arrived>,
}

/// Frames and bytes that arrived from one stream of a field device.
#[derive(Debug, Clone, Copy, Default)]
struct Arrived {
    frames: u64,
    bytes: u64,
}

/// The task's state: every table the modules of the hub work on.
struct Hub {
    socket: UdpSocket,
    /// How peers' datagrams leave on `socket` (GSO batches).
    out: udp_out::UdpOut,
    /// The media threads (`[webrtc] media_threads` > 1): batches of peers are polled on
    /// them at once ([`Hub::poll_all`]); `None` = on this task.
    pool: Option<rayon::ThreadPool>,
    /// `[webrtc] fec`: peers that offer FEC get it.
    fec: bool,
    candidate_addr: SocketAddr,
    next_conn: ConnId,
    clients: HashMap<ConnId, Client>,
    by_device: HashMap<DeviceId, ConnId>,
    fields: HashMap<DeviceId, FieldControl>,
    by_addr: HashMap<SocketAddr, ConnId>,
    /// Bonded peers (SPEC §9) by their bond session: their datagrams come from several
    /// addresses, each admitted by the bond itself.
    by_bond: HashMap<u32, ConnId>,
    audit: mpsc::Sender<AuditRecord>,
    metrics: Arc<Metrics>,
    /// Peers written to outside `poll` (e.g. a keyframe request) that must be polled.
    dirty: Vec<ConnId>,
    /// When receivers still waiting for a keyframe ask again, if any wait.
    keyframe_rescan: Option<Instant>,
    /// When receivers with a backlog write their next part of it, if any have one.
    replay_due: Option<Instant>,
    /// Running diagnoses (at most [`diag::MAX_DIAGS`]).
    diags: Vec<diag::Diag>,
    next_diag: u64,
    /// When the receivers are scored next.
    quality_due: Instant,
    /// The clients with a WebRTC peer: the only ones with timeouts, paced control data
    /// and receivers, so the scans that must visit every peer visit these, not the (maybe
    /// 100 000) GB28181 cameras among the clients.
    peers: std::collections::BTreeSet<ConnId>,
    /// The peers' next timeouts, soonest first.
    timers: timers::PeerTimers,
    /// The clients with paced control data waiting (`control`).
    paced: std::collections::BTreeSet<ConnId>,
    /// The remote clients: the only ones with receivers and the ones told presence.
    remotes: std::collections::BTreeSet<ConnId>,
    /// The demand last computed per field device (non-empty only), to tell external
    /// sources only what changed.
    demand: HashMap<DeviceId, Vec<u32>>,
}

impl Hub {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            let next = self
                .paced
                .iter()
                .filter_map(|c| self.clients.get(c))
                .map(|c| c.limiter.next_free(now))
                .chain(self.timers.next())
                .chain(self.keyframe_rescan)
                .chain(self.replay_due)
                .chain(self.next_diag_due())
                .chain(Some(self.quality_due))
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
                        let may_change_demand = !matches!(
                            cmd,
                            Cmd::ExternalFrame { .. } | Cmd::ExternalAudio { .. }
                        );
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
            self.diags_due(Instant::now());
            self.score_receivers(Instant::now());
            let dirty = std::mem::take(&mut self.dirty);
            self.poll_all(dirty);
        }
        for c in self.clients.values() {
            let _ = c.out.try_send(Outbound::Close(
                ErrorCode::Disconnected,
                "server shutting down".into(),
            ));
        }
        tracing::info!("hub stopped");
    }

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
                audio,
                fec,
                bond,
            } => {
                let fec = fec && self.fec;
                let msg = match self.accept_offer(conn, &sdp, &video_mids, audio, fec, bond) {
                    Ok((sdp, bond)) => ServerMsg::Answer {
                        req,
                        sdp,
                        fec,
                        bond,
                    },
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
                // Again for a source already known (its catalog grew): only the count
                // changes, so nobody's picture restarts.
                let device = self
                    .clients
                    .get_mut(&conn)
                    .and_then(|c| match &mut c.external {
                        Some((n, _)) => {
                            *n = streams;
                            None
                        }
                        None => {
                            c.external = Some((streams, Vec::new()));
                            Some(c.info.device.clone())
                        }
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
                codec,
                data,
                rtp_time,
            } => {
                let field = self
                    .clients
                    .get(&conn)
                    .filter(|c| c.external.as_ref().is_some_and(|(n, _)| stream < *n))
                    .map(|c| c.info.device.clone());
                if let Some(field) = field {
                    let kind = forward::FrameKind::of(codec, &data);
                    let written = self.forward(&field, stream, &data.into(), rtp_time, None, kind);
                    for c in written {
                        if !self.dirty.contains(&c) {
                            self.dirty.push(c);
                        }
                    }
                }
            }
            Cmd::ExternalAudio {
                conn,
                stream,
                alaw,
                data,
                rtp_time,
            } => {
                for c in self.on_external_audio(conn, stream, alaw, data, rtp_time) {
                    if !self.dirty.contains(&c) {
                        self.dirty.push(c);
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
            Cmd::Diagnose { conn, req, gwid } => {
                let r = self.diagnose(conn, &gwid);
                self.reply(conn, req, r);
            }
            Cmd::DiagReport {
                conn,
                req,
                diag,
                field,
                remote,
                paths,
            } => {
                let r = self.diag_report(conn, diag, field, remote, paths);
                self.reply(conn, req, r);
            }
            Cmd::Shutdown => {}
            Cmd::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::Online { project, reply } => {
                let online = self
                    .by_device
                    .keys()
                    .filter(|d| d.project == project)
                    .map(|d| {
                        let n = self.stream_count(d).unwrap_or(0);
                        let audio = self
                            .by_device
                            .get(d)
                            .and_then(|c| self.clients.get(c))
                            .and_then(|c| c.peer.as_ref()?.audio.as_ref());
                        let o = Online {
                            streams: u32::try_from(n).unwrap_or(u32::MAX),
                            audio_send: audio.is_some_and(|a| a.send),
                            audio_receive: audio.is_some_and(|a| a.receive),
                        };
                        (d.device.clone(), o)
                    })
                    .collect();
                let _ = reply.send(online);
            }
        }
    }

    /// What `/metrics` shows of the live state, counted from the tables themselves.
    fn snapshot(&self) -> HubSnapshot {
        let mut s = HubSnapshot::default();
        for c in self.clients.values() {
            match c.info.role {
                fieldlink_proto::Role::Field => s.fields_online += 1,
                fieldlink_proto::Role::Remote => s.remotes_online += 1,
            }
            s.sessions += c.sessions.len() as u64;
            s.receivers_playing += c
                .receivers
                .iter()
                .filter(|r| r.live && r.want.is_some())
                .count() as u64;
        }
        s
    }

    fn reply(&mut self, conn: ConnId, req: Option<u64>, r: Result<(), ErrorCode>) {
        let msg = match r {
            Ok(()) => ServerMsg::Ok { req },
            Err(code) => ServerMsg::error(req, code, code.describe()),
        };
        self.send(conn, msg);
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
        if c.out.try_send(Outbound::Msg(Box::new(msg))).is_err() {
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
            .try_send(Outbound::Msg(Box::new(ServerMsg::warning(code, message))));
    }
}
