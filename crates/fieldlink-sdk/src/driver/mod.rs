//! The background task of one device: signalling WebSocket + peer connection, requests and
//! their answers, incoming events, and reconnection with state restore.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use fieldlink_proto::control::LateFilter;
use fieldlink_proto::{ClientMsg, ControlFrame, DeviceId, ErrorCode, Role, ServerMsg};

mod audio_io;
mod diagnosis;
mod establish;
mod video_in;

use crate::peer::{Peer, PeerEvent};
use crate::{Cmd, DeviceConfig, Event, Result, SdkError, Shared};
use establish::establish;

/// Requests waiting for an answer; more are refused (a server that stopped answering must
/// not make this grow without bound).
const MAX_PENDING: usize = 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Queues events for the application without ever blocking the connection.
struct Emitter {
    tx: mpsc::Sender<Event>,
    dropped: u64,
}

impl Emitter {
    fn emit(&mut self, ev: Event) {
        if self.dropped > 0
            && self
                .tx
                .try_send(Event::Lagged {
                    dropped: self.dropped,
                })
                .is_ok()
        {
            self.dropped = 0;
        }
        if self.dropped > 0 || self.tx.try_send(ev).is_err() {
            self.dropped += 1;
        }
    }
}

struct Connection {
    ws: Ws,
    peer: Peer,
    /// Events that arrived while connecting, delivered first.
    early: Vec<ServerMsg>,
}

fn to_msg(m: &ClientMsg) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

fn server_error(m: ServerMsg) -> SdkError {
    match m {
        ServerMsg::Error { code, message, .. } => SdkError::new(code, message),
        other => SdkError::new(ErrorCode::Internal, format!("unexpected answer: {other:?}")),
    }
}

fn parse(msg: Message) -> Option<std::result::Result<ServerMsg, ()>> {
    match msg {
        Message::Text(t) => Some(serde_json::from_str(t.as_str()).map_err(|_| ())),
        Message::Close(_) => None,
        _ => Some(Err(())),
    }
}

pub(crate) async fn start(
    role: Role,
    cfg: DeviceConfig,
    cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
) -> Result<()> {
    let conn = establish(role, &cfg).await?;
    let meter = crate::diag::Meter::new(cfg.streams as usize);
    let mut ev = Emitter {
        tx: events,
        dropped: 0,
    };
    for why in cfg.audio.problems() {
        tracing::warn!("{why}");
        ev.emit(Event::Warning {
            code: ErrorCode::AudioOff,
            message: why,
        });
    }
    let (audio, device_problems) = audio_io::AudioIo::new(&cfg.audio);
    for e in device_problems {
        tracing::warn!("audio off: {e}");
        ev.emit(Event::Warning {
            code: e.code,
            message: format!("audio off: {}", e.message),
        });
    }
    let driver = Driver {
        role,
        cfg,
        cmds,
        ev,
        shared,
        pending: HashMap::new(),
        next_req: 100,
        seq: 0,
        late: HashMap::new(),
        sessions: Vec::new(),
        codes: HashMap::new(),
        watches: HashMap::new(),
        sources: HashMap::new(),
        video_epoch: std::time::SystemTime::now(),
        decoders: Vec::new(),
        recorders: HashMap::new(),
        counts: HashMap::new(),
        last_estimate_kbps: 0,
        meter,
        audio,
    };
    tokio::spawn(driver.run(conn));
    Ok(())
}

/// What to do when a request is answered.
enum Pending {
    Caller(oneshot::Sender<Result<ServerMsg>>, ClientMsg),
    /// A session or code being restored after reconnecting.
    Restore(ClientMsg),
}

enum Stop {
    /// Reconnect: the connection broke.
    Lost(String),
    /// The application closed the device, or another login replaced it.
    Closed,
}

struct Driver {
    role: Role,
    cfg: DeviceConfig,
    cmds: mpsc::Receiver<Cmd>,
    ev: Emitter,
    shared: Arc<Shared>,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    seq: u32,
    /// Qos 0 late-drop filter per sender.
    late: HashMap<DeviceId, LateFilter>,
    /// Remote: sessions to restore after a reconnect.
    sessions: Vec<DeviceId>,
    codes: HashMap<DeviceId, String>,
    /// Remote: receivers to reconnect after a reconnect (conn_fd -> stream).
    watches: HashMap<u32, (DeviceId, u32)>,
    /// Field: the last source state told per stream, told again after a reconnect.
    sources: HashMap<u32, ClientMsg>,
    /// Field: RTP timestamps count from here.
    video_epoch: std::time::SystemTime,
    /// Remote with `decode`: one H.264 decoder per receiver.
    decoders: Vec<Option<openh264::decoder::Decoder>>,
    /// Remote: frame counters by receiver index, with the stream they count.
    counts: HashMap<usize, (Option<(DeviceId, u32)>, crate::receive::FrameCounts)>,
    /// Remote: open recordings by receiver index.
    recorders: HashMap<usize, crate::record::Recorder>,
    /// Field: the last bandwidth estimate reported to the application.
    last_estimate_kbps: u32,
    /// Diagnostics: counters per stream (field) or receiver (remote), running windows.
    meter: crate::diag::Meter,
    audio: audio_io::AudioIo,
}

impl Driver {
    async fn run(mut self, mut conn: Connection) {
        loop {
            for m in std::mem::take(&mut conn.early) {
                self.on_server(m);
            }
            let reason = match self.serve(&mut conn).await {
                Stop::Closed => {
                    self.finish_recordings();
                    let _ = conn.ws.close(None).await;
                    return;
                }
                Stop::Lost(r) => r,
            };
            tracing::info!(device = %self.cfg.device_id, %reason, "connection lost; reconnecting");
            for (_, p) in self.pending.drain() {
                if let Pending::Caller(reply, _) = p {
                    let _ = reply.send(Err(SdkError::new(ErrorCode::Disconnected, reason.clone())));
                }
            }
            self.shared
                .permissions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.ev.emit(Event::Disconnected { reason });
            match self.reconnect().await {
                Some(c) => conn = c,
                None => return,
            }
            self.audio.reset_lines();
            self.restore(&mut conn).await;
            self.ev.emit(Event::Reconnected);
        }
    }

    /// Retries with backoff until connected or closed; calls meanwhile fail at once.
    async fn reconnect(&mut self) -> Option<Connection> {
        let mut delay = self.cfg.reconnect_delay;
        loop {
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = self.cmds.recv() => match cmd {
                        None | Some(Cmd::Close) => return None,
                        Some(Cmd::Request { reply, .. }) => { let _ = reply.send(Err(ErrorCode::Disconnected.into())); }
                        Some(Cmd::Send { reply, .. }) | Some(Cmd::SendRaw { reply, .. }) => {
                            let _ = reply.send(Err(ErrorCode::Disconnected.into()));
                        }
                        Some(Cmd::Video { stream, .. }) => {
                            if let Some(m) = self.meter.at(stream) { m.frames_in += 1; }
                        }
                        // Said while nobody can hear it: gone, like a live microphone's.
                        Some(Cmd::Audio { .. }) => {}
                        Some(Cmd::SetAudioDevice { dir, index, reply }) => {
                            let _ = reply.send(self.audio.set_device(dir, index));
                        }
                        Some(Cmd::SourceState { stream, ok, reason, keyframe_on_request }) => {
                            self.source_state(stream, ok, reason, keyframe_on_request);
                        }
                        Some(Cmd::SourceStarted { stream, fps, kbps }) => self.source_started(stream, fps, kbps),
                    }
                }
            }
            match establish(self.role, &self.cfg).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    self.ev.emit(Event::ReconnectFailed {
                        code: e.code,
                        message: e.message,
                    });
                    delay = (delay * 2).min(self.cfg.reconnect_delay * 8);
                }
            }
        }
    }

    async fn restore(&mut self, conn: &mut Connection) {
        let mut msgs: Vec<ClientMsg> = self
            .codes
            .iter()
            .map(|(f, c)| ClientMsg::SetSessionToken {
                req: None,
                field_id: f.clone(),
                code: c.clone(),
            })
            .collect();
        msgs.extend(self.sessions.iter().map(|g| ClientMsg::Connect {
            req: None,
            gwid: g.clone(),
        }));
        msgs.extend(self.watches.iter().map(|(fd, (g, s))| ClientMsg::Watch {
            req: None,
            gwid: g.clone(),
            stream_ids: vec![*s],
            conn_fds: vec![*fd],
        }));
        msgs.extend(self.sources.values().cloned());
        for mut m in msgs {
            let id = self.req_id();
            m.set_req(Some(id));
            if conn.ws.send(to_msg(&m)).await.is_ok() {
                self.pending.insert(id, Pending::Restore(m));
            }
        }
    }

    /// Remembers a stream's source state (for restores) and tells the application.
    fn source_state(
        &mut self,
        stream: u32,
        ok: bool,
        reason: Option<String>,
        keyframe_on_request: bool,
    ) -> ClientMsg {
        if let Some(info) = self.meter.info.get_mut(stream as usize) {
            info.failed = match (ok, info.failed.take(), &reason) {
                (true, _, _) => None,
                // Still failing: keep the first time, with the newest reason.
                (false, Some((_, since)), Some(r)) => Some((r.clone(), since)),
                (false, Some(old), None) => Some(old),
                (false, None, r) => Some((
                    r.clone().unwrap_or_else(|| "the source failed".into()),
                    Instant::now(),
                )),
            };
        }
        if ok {
            tracing::info!(stream, "video source working");
        } else {
            tracing::warn!(
                stream,
                "video source failed: {}",
                reason.as_deref().unwrap_or("")
            );
        }
        self.ev.emit(Event::SourceState {
            stream_id: stream,
            ok,
            reason: reason.clone(),
        });
        let m = ClientMsg::SourceState {
            req: None,
            stream_id: stream,
            ok,
            reason,
            keyframe_on_request,
        };
        self.sources.insert(stream, m.clone());
        m
    }

    fn req_id(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    async fn serve(&mut self, conn: &mut Connection) -> Stop {
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                m = conn.ws.next() => match m {
                    Some(Ok(msg)) => match parse(msg) {
                        Some(Ok(m)) => {
                            if let Some(stop) = self.on_server(m) { return stop; }
                        }
                        Some(Err(())) => {}
                        None => return Stop::Lost("server closed the signalling connection".into()),
                    },
                    Some(Err(e)) => return Stop::Lost(format!("signalling: {e}")),
                    None => return Stop::Lost("signalling connection closed".into()),
                },
                r = conn.peer.recv(&mut buf) => {
                    if let Ok((n, src, path)) = r { conn.peer.handle_datagram(&buf[..n], src, path); }
                }
                _ = tokio::time::sleep_until(conn.peer.next_timeout.into()) => conn.peer.handle_timeout(),
                _ = diagnosis::sleep_until_some(self.meter.next_due()) => {
                    for m in self.diag_reports() {
                        if let Err(e) = conn.ws.send(to_msg(&m)).await {
                            return Stop::Lost(format!("signalling: {e}"));
                        }
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None | Some(Cmd::Close) => return Stop::Closed,
                    Some(Cmd::Request { mut msg, reply }) => {
                        if self.pending.len() >= MAX_PENDING {
                            let _ = reply.send(Err(SdkError::new(ErrorCode::Congested, "too many requests waiting for the server")));
                            continue;
                        }
                        let id = self.req_id();
                        msg.set_req(Some(id));
                        if let Err(e) = conn.ws.send(to_msg(&msg)).await {
                            let _ = reply.send(Err(SdkError::new(ErrorCode::Disconnected, e.to_string())));
                            return Stop::Lost(format!("signalling: {e}"));
                        }
                        self.pending.insert(id, Pending::Caller(reply, msg));
                    }
                    Some(Cmd::Send { target, payload, qos, reply }) => {
                        self.seq = self.seq.wrapping_add(1);
                        let frame = ControlFrame { peer: &target, seq: self.seq, payload: &payload }.encode();
                        let r = match frame {
                            Ok(f) => conn.peer.write(qos, &f),
                            Err(e) => Err(SdkError::new(e.code(), e.to_string())),
                        };
                        let _ = reply.send(r);
                    }
                    Some(Cmd::SendRaw { frame, qos, reply }) => {
                        let _ = reply.send(conn.peer.write(qos, &frame));
                    }
                    Some(Cmd::SourceState { stream, ok, reason, keyframe_on_request }) => {
                        let mut m = self.source_state(stream, ok, reason, keyframe_on_request);
                        let id = self.req_id();
                        m.set_req(Some(id));
                        if conn.ws.send(to_msg(&m)).await.is_ok() {
                            self.pending.insert(id, Pending::Restore(m));
                        }
                    }
                    Some(Cmd::Video { stream, frame }) => {
                        let since = frame.capture.duration_since(self.video_epoch).unwrap_or_default();
                        let rtp = (since.as_micros() as u64).saturating_mul(9) / 100;
                        if frame.keyframe {
                            // Multipath balanced mode duplicates a keyframe's packets.
                            conn.peer.keyframe_sent();
                        }
                        let written = conn.peer.write_video(stream, frame.codec, &frame.data, rtp, frame.capture);
                        if let Some(m) = self.meter.at(stream) {
                            m.frames_in += 1;
                            if written.is_ok() {
                                m.frames_out += 1;
                                m.bytes += frame.data.len() as u64;
                            }
                        }
                        if let Err(e) = written {
                            tracing::debug!(stream, "video frame dropped: {e}");
                            if let Some(info) = self.meter.info.get_mut(stream) {
                                info.send_error = Some(e.message);
                            }
                        }
                    }
                    Some(Cmd::SourceStarted { stream, fps, kbps }) => self.source_started(stream, fps, kbps),
                    Some(Cmd::Audio { rate, channels, pcm }) => self.audio.send(&mut conn.peer, rate, channels, &pcm),
                    Some(Cmd::SetAudioDevice { dir, index, reply }) => {
                        let _ = reply.send(self.audio.set_device(dir, index));
                    }
                },
                wake = self.audio.wake() => {
                    for ev in self.audio.on_wake(wake, &mut conn.peer) {
                        self.ev.emit(ev);
                    }
                }
            }
            // The sources read the queue ([`crate::follow`]); u64::MAX: unknown.
            let queue = conn.peer.send_queue_ms().map_or(u64::MAX, |q| q as u64);
            self.shared
                .queue_ms
                .store(queue, std::sync::atomic::Ordering::Relaxed);
            for ev in conn.peer.poll() {
                match ev {
                    PeerEvent::Data(qos, data) => self.on_control(qos, &data),
                    PeerEvent::Frame {
                        index,
                        codec,
                        data,
                        rtp_time,
                        capture,
                        contiguous,
                    } => {
                        if self.on_frame(index, codec, data, rtp_time, capture, contiguous) {
                            conn.peer.request_keyframe(index);
                        }
                    }
                    PeerEvent::KeyframeRequest(index) => {
                        if let Some(flag) = self.shared.keyframe_wanted.get(index) {
                            flag.store(true, std::sync::atomic::Ordering::Relaxed);
                            self.shared.keyframe_notify[index].notify_one();
                        }
                    }
                    PeerEvent::EgressStats { index, loss, rtt } => {
                        self.meter.sample(index as u32, loss, rtt);
                        // Once a second (the first stream's statistics): the paths'.
                        if index == 0 {
                            self.paths_tick(&mut conn.peer);
                        }
                    }
                    PeerEvent::Stats {
                        index,
                        loss,
                        rtt,
                        nacks,
                        packets,
                    } => {
                        self.meter.sample(index as u32, loss, rtt);
                        if index == 0 {
                            self.paths_tick(&mut conn.peer);
                        }
                        let c = self
                            .counts
                            .get(&index)
                            .map(|(_, c)| c.clone())
                            .unwrap_or_default();
                        self.ev.emit(Event::ReceiverStats {
                            conn_fd: index as u32,
                            loss_pct: loss.map(|l| l * 100.0),
                            rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                            nacks,
                            packets,
                            frames: c.received,
                            decoded: self.cfg.decode.then_some(c.decoded),
                            dropped: c.dropped,
                        })
                    }
                    PeerEvent::Estimate(bps) => {
                        let held_down = self
                            .shared
                            .held_down
                            .load(std::sync::atomic::Ordering::Relaxed)
                            != 0;
                        conn.peer.pace_for(held_down);
                        self.shared
                            .estimate_bps
                            .store(bps, std::sync::atomic::Ordering::Relaxed);
                        let kbps = (bps / 1000) as u32;
                        // Report changes of more than 10% (the estimate moves constantly).
                        if kbps.abs_diff(self.last_estimate_kbps) * 10 > self.last_estimate_kbps {
                            self.last_estimate_kbps = kbps;
                            self.ev.emit(Event::BitrateEstimate { kbps });
                        }
                    }
                    PeerEvent::Audio {
                        line,
                        codec,
                        rtp_time,
                        data,
                    } => {
                        if codec == crate::audio::AudioCodec::Opus && !self.recorders.is_empty() {
                            if let Some(gwid) = self.audio.device_on(line).cloned() {
                                self.record_audio(&gwid, &data);
                            }
                        }
                        self.audio.on_packet(line, codec, rtp_time, data);
                    }
                    PeerEvent::Dead(why) => return Stop::Lost(why),
                    PeerEvent::Ready => {}
                }
            }
        }
    }

    fn on_control(&mut self, qos: fieldlink_proto::Qos, data: &[u8]) {
        let Ok(frame) = ControlFrame::decode(data) else {
            return;
        };
        let Ok(from) = frame.peer.parse::<DeviceId>() else {
            return;
        };
        if qos == fieldlink_proto::Qos::Lossy
            && !self.late.entry(from.clone()).or_default().accept(frame.seq)
        {
            return;
        }
        self.ev.emit(Event::ControlData {
            from,
            data: frame.payload.to_vec(),
            qos,
        });
    }

    /// Handles one server message; `Some` stops the connection.
    fn on_server(&mut self, m: ServerMsg) -> Option<Stop> {
        let req = match &m {
            ServerMsg::Ok { req }
            | ServerMsg::FieldList { req, .. }
            | ServerMsg::Error { req, .. }
            | ServerMsg::Pong { req } => *req,
            _ => None,
        };
        if let Some(p) = req.and_then(|r| self.pending.remove(&r)) {
            let ok = !matches!(m, ServerMsg::Error { .. });
            let (sent, caller) = match p {
                Pending::Caller(reply, sent) => (sent, Some(reply)),
                Pending::Restore(sent) => (sent, None),
            };
            if ok {
                self.remember(&sent);
            }
            match caller {
                Some(reply) => {
                    let _ = reply.send(if ok { Ok(m) } else { Err(server_error(m)) });
                }
                None if !ok => {
                    let e = server_error(m);
                    self.ev.emit(Event::Warning {
                        code: e.code,
                        message: format!("could not restore after reconnect: {}", e.message),
                    });
                }
                None => {}
            }
            return None;
        }
        match m {
            ServerMsg::Permission {
                field_id,
                self_permission,
                master_id,
            } => {
                self.shared
                    .permissions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(field_id.clone(), self_permission);
                self.ev.emit(Event::Permission {
                    field_id,
                    self_permission,
                    master_id,
                });
            }
            ServerMsg::PermissionRequest { remote_id, level } => {
                self.ev.emit(Event::PermissionRequest { remote_id, level })
            }
            ServerMsg::MasterChanged { master_id } => {
                self.ev.emit(Event::MasterChanged { master_id })
            }
            ServerMsg::RemoteJoined { remote_id } => {
                self.ev.emit(Event::RemoteJoined { remote_id })
            }
            ServerMsg::RemoteLeft { remote_id } => self.ev.emit(Event::RemoteLeft { remote_id }),
            ServerMsg::Presence { field_id, online } => {
                self.ev.emit(Event::Presence { field_id, online })
            }
            ServerMsg::StreamState {
                conn_fd,
                gwid,
                stream_id,
                state,
                reason,
            } => {
                if let Some(r) = self
                    .shared
                    .receivers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(conn_fd as usize)
                {
                    r.stream = match state {
                        fieldlink_proto::StreamState::Disconnected => None,
                        _ => Some((gwid.clone(), stream_id)),
                    };
                }
                if state == fieldlink_proto::StreamState::Disconnected {
                    // The recording of that stream is complete.
                    if let Some(mut rec) = self.recorders.remove(&(conn_fd as usize)) {
                        if let Err(e) = rec.finish() {
                            self.ev.emit(Event::Warning {
                                code: e.code,
                                message: e.message,
                            });
                        }
                    }
                }
                self.ev.emit(Event::StreamState {
                    conn_fd,
                    gwid,
                    stream_id,
                    state,
                    reason,
                });
            }
            ServerMsg::Warning { code, message, .. } => {
                self.ev.emit(Event::Warning { code, message })
            }
            ServerMsg::DiagStart {
                diag,
                window_ms,
                stream_ids,
                conn_fds,
                ..
            } => {
                let ids = match self.role {
                    Role::Field => stream_ids,
                    Role::Remote => conn_fds,
                };
                let window = Duration::from_millis(u64::from(window_ms.min(60_000)));
                self.meter.start(diag, &ids, window, Instant::now());
            }
            ServerMsg::Quality(q) => self.ev.emit(Event::Quality(*q)),
            ServerMsg::AudioLine {
                line,
                gwid,
                stream_id,
            } => {
                self.audio
                    .set_party(line as usize, (gwid.clone(), stream_id));
                self.ev.emit(Event::AudioLine {
                    line,
                    gwid,
                    stream_id,
                });
            }
            ServerMsg::DiagResult { gwid, kind, report } => self.ev.emit(Event::Diagnosis {
                gwid,
                kind,
                report: *report,
            }),
            ServerMsg::Error { code, message, .. } => {
                self.ev.emit(Event::Warning { code, message });
                if code == ErrorCode::Replaced {
                    return Some(Stop::Closed);
                }
            }
            _ => {}
        }
        None
    }

    /// Keeps what must be restored after a reconnect.
    fn remember(&mut self, sent: &ClientMsg) {
        match sent {
            ClientMsg::Connect { gwid, .. } if !self.sessions.contains(gwid) => {
                self.sessions.push(gwid.clone())
            }
            ClientMsg::Disconnect { gwid, .. } => {
                self.sessions.retain(|g| g != gwid);
                self.watches.retain(|_, (g, _)| g != gwid);
                self.shared
                    .permissions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(gwid);
            }
            ClientMsg::SetSessionToken { field_id, code, .. } => {
                self.codes.insert(field_id.clone(), code.clone());
            }
            ClientMsg::Watch {
                gwid,
                stream_ids,
                conn_fds,
                ..
            } => {
                if !self.sessions.contains(gwid) {
                    self.sessions.push(gwid.clone());
                }
                for (s, fd) in stream_ids.iter().zip(conn_fds) {
                    self.watches.insert(*fd, (gwid.clone(), *s));
                }
            }
            ClientMsg::Unwatch { conn_fds, .. } => {
                for fd in conn_fds {
                    self.watches.remove(fd);
                }
            }
            ClientMsg::UnwatchAll { .. } => self.watches.clear(),
            _ => {}
        }
    }
}
