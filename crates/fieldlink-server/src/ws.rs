//! WebSocket signalling (`GET /ws`): one connection per device. The first message must be
//! `login`; after that, requests either need the store (listing, whitelist checks) and are
//! answered here, or go to the hub, which answers through the outbound queue so that
//! answers and events keep their order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use tokio::sync::mpsc;

use fieldlink_auth::{verify_session_code, KeyedError};
use fieldlink_proto::signal::MAX_SIGNAL_BYTES;
use fieldlink_proto::{
    ClientMsg, DeviceId, ErrorCode, FieldInfo, Role, ServerMsg, PROTOCOL_VERSION,
};

use crate::hub::{AudioOffer, ClientInfo, Cmd, ConnId, Outbound, CLIENT_QUEUE};
use crate::login::{authenticate, now_unix};
use crate::AppState;

const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages up to this size are read whole, so that one over [`MAX_SIGNAL_BYTES`] can be
/// refused with an answer and a clean close; a larger one breaks the stream at once (its
/// answer is then sent, but may be lost to the connection reset).
const READ_LIMIT: usize = 4 * MAX_SIGNAL_BYTES;
/// Most session codes one connection keeps (one per field device).
const MAX_SESSION_CODES: usize = 256;

pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(crate::tls::ClientAddr(addr)): ConnectInfo<crate::tls::ClientAddr>,
) -> Response {
    ws.max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        .on_upgrade(move |socket| run(socket, state, addr))
}

fn text(msg: &ServerMsg) -> Message {
    // Serializing our own enum cannot fail.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(msg).unwrap_or_default(),
    ))
}

fn payload_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

/// Whether a receive failed because the message was over [`MAX_SIGNAL_BYTES`].
fn too_large(e: &axum::Error) -> bool {
    use std::error::Error;
    e.source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// Tells the device that its message was over the limit, then closes (1009 "message too
/// big"): the rest of an oversized message is not read, so the stream cannot go on.
async fn refuse_too_large(socket: &mut WebSocket, addr: SocketAddr) {
    tracing::info!(%addr, limit = MAX_SIGNAL_BYTES, "signalling message over the limit; closing");
    let why = format!("a signalling message is at most {MAX_SIGNAL_BYTES} bytes; closing");
    let _ = socket
        .send(text(&ServerMsg::error(None, ErrorCode::TooLarge, why)))
        .await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1009,
            reason: Utf8Bytes::from_static("message too big"),
        })))
        .await;
    // Wait (briefly) for the device's close: dropping a socket with its unread bytes
    // resets the connection, and a reset can discard what was just said.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn run(mut socket: WebSocket, state: Arc<AppState>, addr: SocketAddr) {
    let login = match tokio::time::timeout(LOGIN_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(m))) if payload_len(&m) > MAX_SIGNAL_BYTES => {
            return refuse_too_large(&mut socket, addr).await
        }
        Ok(Some(Err(e))) if too_large(&e) => return refuse_too_large(&mut socket, addr).await,
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ClientMsg>(&t).ok(),
        _ => None,
    };
    let Some(ClientMsg::Login {
        req,
        version,
        device_id,
        password,
        role,
        auto_permission,
        mode,
    }) = login
    else {
        let _ = socket
            .send(text(&ServerMsg::error(
                None,
                ErrorCode::NotLoggedIn,
                "first message must be a valid login",
            )))
            .await;
        return;
    };
    if version != PROTOCOL_VERSION {
        let msg =
            format!("server speaks protocol version {PROTOCOL_VERSION}, device sent {version}");
        let _ = socket
            .send(text(&ServerMsg::error(
                req,
                ErrorCode::VersionMismatch,
                msg,
            )))
            .await;
        return;
    }
    let project = match authenticate(
        &state.store,
        &state.throttles,
        &device_id,
        role,
        password,
        addr.ip(),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => {
            state.metrics.login_refused(r.reason);
            let msg = ServerMsg::Error {
                req,
                code: r.code,
                name: r.code.name().to_string(),
                message: r.message,
                retry_after_ms: r.retry_after.map(|d| d.as_millis() as u64),
            };
            let _ = socket.send(text(&msg)).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel(CLIENT_QUEUE);
    let info = ClientInfo {
        device: device_id.clone(),
        role,
        auto_permission,
        sees_all_fields: project.security.field_list_enable == 1,
        // A mode is a short word ("public", "private"); keep what is shown short.
        mode: mode.chars().take(32).collect(),
    };
    let Ok(conn) = state.hub.register(info, out_tx).await else {
        return;
    };
    let ok = ServerMsg::LoginOk {
        req,
        device_id: device_id.clone(),
        role,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if socket.send(text(&ok)).await.is_ok() {
        let mut session = Session {
            addr,
            state: state.clone(),
            conn,
            device: device_id,
            role,
            codes: HashMap::new(),
        };
        session.serve(&mut socket, &mut out_rx).await;
    }
    let _ = state.hub.send(Cmd::Unregister { conn }).await;
}

struct Session {
    addr: SocketAddr,
    state: Arc<AppState>,
    conn: ConnId,
    device: DeviceId,
    role: Role,
    /// Session authorization codes by field device; a later one replaces an earlier one.
    codes: HashMap<DeviceId, String>,
}

impl Session {
    async fn serve(&mut self, socket: &mut WebSocket, out_rx: &mut mpsc::Receiver<Outbound>) {
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let t = match incoming {
                        Some(Ok(m)) if payload_len(&m) > MAX_SIGNAL_BYTES => {
                            return refuse_too_large(socket, self.addr).await;
                        }
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(_))) => {
                            let e = ServerMsg::error(None, ErrorCode::BadRequest, "signalling is JSON text");
                            if socket.send(text(&e)).await.is_err() { return; }
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) if too_large(&e) => return refuse_too_large(socket, self.addr).await,
                        _ => return,
                    };
                    let reply = match serde_json::from_str::<ClientMsg>(&t) {
                        Ok(msg) => self.handle(msg).await,
                        Err(e) => Some(ServerMsg::error(None, ErrorCode::BadRequest, format!("bad message: {e}"))),
                    };
                    if let Some(r) = reply {
                        if socket.send(text(&r)).await.is_err() { return; }
                    }
                }
                out = out_rx.recv() => match out {
                    Some(Outbound::Msg(m)) => {
                        if socket.send(text(&m)).await.is_err() { return; }
                    }
                    Some(Outbound::Wanted(_) | Outbound::Control(_)) => {} // external sources only
                    Some(Outbound::Close(code, why)) => {
                        let _ = socket.send(text(&ServerMsg::error(None, code, why))).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    None => return,
                }
            }
        }
    }

    fn need(&self, role: Role, req: Option<u64>) -> Result<(), ServerMsg> {
        if self.role == role {
            Ok(())
        } else {
            Err(ServerMsg::error(
                req,
                ErrorCode::WrongRoleForCall,
                format!("only a {} device may do this", role.as_str()),
            ))
        }
    }

    /// Handles one request; `Some` is an answer to send now, `None` means the hub answers.
    async fn handle(&mut self, msg: ClientMsg) -> Option<ServerMsg> {
        let req = msg.req();
        let r = self.handle_inner(msg).await;
        match r {
            Ok(cmd) => match self.state.hub.send(cmd).await {
                Ok(()) => None,
                Err(code) => Some(ServerMsg::error(req, code, "server shutting down")),
            },
            Err(answer) => Some(answer),
        }
    }

    /// `Ok`: a command for the hub, which answers. `Err`: the answer to send now — an
    /// error, or the result of a request answered here (so `?` ends a request early).
    async fn handle_inner(&mut self, msg: ClientMsg) -> Result<Cmd, ServerMsg> {
        let conn = self.conn;
        let err = |req, code: ErrorCode| ServerMsg::error(req, code, code.describe());
        match msg {
            ClientMsg::Login { req, .. } => Err(ServerMsg::error(
                req,
                ErrorCode::BadRequest,
                "already logged in",
            )),
            ClientMsg::Ping { req } => Err(ServerMsg::Pong { req }),
            ClientMsg::SourceState {
                req,
                stream_id,
                ok,
                reason,
                keyframe_on_request,
            } => {
                self.need(Role::Field, req)?;
                // A reason is shown to operators: keep it to a line.
                let reason = reason.map(|r| r.chars().take(300).collect());
                Ok(Cmd::SourceState {
                    conn,
                    req,
                    stream: stream_id,
                    ok,
                    reason,
                    keyframe_on_request,
                })
            }
            ClientMsg::Offer {
                req,
                sdp,
                video_mids,
                audio_mids,
                audio_send,
                audio_receive,
                fec,
                bond,
            } => Ok(Cmd::Offer {
                conn,
                req,
                sdp,
                video_mids,
                fec,
                bond,
                audio: AudioOffer {
                    mids: audio_mids,
                    send: audio_send,
                    receive: audio_receive,
                },
            }),
            ClientMsg::Watch {
                req,
                gwid,
                stream_ids,
                conn_fds,
            } => {
                self.need(Role::Remote, req)?;
                self.may_connect(req, &gwid).await?;
                Ok(Cmd::Watch {
                    conn,
                    req,
                    gwid,
                    stream_ids,
                    conn_fds,
                })
            }
            ClientMsg::Unwatch { req, conn_fds } => {
                self.need(Role::Remote, req)?;
                Ok(Cmd::Unwatch {
                    conn,
                    req,
                    conn_fds: Some(conn_fds),
                })
            }
            ClientMsg::UnwatchAll { req } => {
                self.need(Role::Remote, req)?;
                Ok(Cmd::Unwatch {
                    conn,
                    req,
                    conn_fds: None,
                })
            }
            ClientMsg::ListFields { req } => {
                self.need(Role::Remote, req)?;
                let project = self.project(req).await?;
                if project.security.field_list_enable != 1 {
                    return Err(err(req, ErrorCode::FieldListDisabled));
                }
                let devices = self
                    .state
                    .store
                    .devices(&project.id, Some(Role::Field))
                    .await
                    .map_err(|_| err(req, ErrorCode::Internal))?;
                let online = self
                    .state
                    .hub
                    .online(&project.id)
                    .await
                    .map_err(|c| err(req, c))?;
                let fields = devices
                    .into_iter()
                    .filter_map(|d| {
                        let id = DeviceId::new(&d.project_id, &d.device_id).ok()?;
                        let streams = online.get(&d.device_id).map(|o| o.streams);
                        Some(FieldInfo {
                            online: streams.is_some(),
                            streams: streams.unwrap_or(0),
                            id,
                            name: d.name,
                        })
                    })
                    .collect();
                Err(ServerMsg::FieldList { req, fields })
            }
            ClientMsg::Connect { req, gwid } => {
                self.need(Role::Remote, req)?;
                self.may_connect(req, &gwid).await?;
                Ok(Cmd::Connect { conn, req, gwid })
            }
            ClientMsg::Disconnect { req, gwid } => {
                self.need(Role::Remote, req)?;
                Ok(Cmd::Disconnect { conn, req, gwid })
            }
            ClientMsg::SetSessionToken {
                req,
                field_id,
                code,
            } => {
                self.need(Role::Remote, req)?;
                if code.len() > 256 {
                    return Err(err(req, ErrorCode::SessionCodeInvalid));
                }
                if !self.codes.contains_key(&field_id) && self.codes.len() >= MAX_SESSION_CODES {
                    return Err(ServerMsg::error(
                        req,
                        ErrorCode::BadRequest,
                        "too many session codes",
                    ));
                }
                self.codes.insert(field_id.clone(), code);
                let project = self.project(req).await?;
                match self.check_code(&project, &field_id) {
                    Ok(()) => Err(ServerMsg::Ok { req }),
                    Err(c) => Err(err(req, c)),
                }
            }
            ClientMsg::RequestPermission { req, gwid, level } => {
                self.need(Role::Remote, req)?;
                Ok(Cmd::RequestPermission {
                    conn,
                    req,
                    gwid,
                    level,
                })
            }
            ClientMsg::SetPermission {
                req,
                remote_id,
                level,
            } => {
                self.need(Role::Field, req)?;
                Ok(Cmd::SetPermission {
                    conn,
                    req,
                    remote: remote_id,
                    level,
                })
            }
            ClientMsg::Diagnose { req, gwid } => {
                self.need(Role::Remote, req)?;
                Ok(Cmd::Diagnose { conn, req, gwid })
            }
            ClientMsg::DiagReport {
                req,
                diag,
                field,
                remote,
                paths,
            } => Ok(Cmd::DiagReport {
                conn,
                req,
                diag,
                field,
                remote,
                paths,
            }),
        }
    }

    async fn project(&self, req: Option<u64>) -> Result<crate::store::Project, ServerMsg> {
        match self.state.store.project(&self.device.project).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(ServerMsg::error(
                req,
                ErrorCode::UnknownProject,
                "project was deleted",
            )),
            Err(_) => Err(ServerMsg::error(
                req,
                ErrorCode::Internal,
                "store unavailable",
            )),
        }
    }

    fn check_code(
        &self,
        project: &crate::store::Project,
        field: &DeviceId,
    ) -> Result<(), ErrorCode> {
        let code = self.codes.get(field).ok_or(ErrorCode::NotWhitelisted)?;
        if !project.security.key_on() {
            return Err(ErrorCode::SessionCodeInvalid);
        }
        verify_session_code(
            &project.security.key,
            &self.device.to_string(),
            &field.to_string(),
            code,
            now_unix(),
        )
        .map_err(|e| match e {
            KeyedError::Expired { .. } => ErrorCode::SessionCodeExpired,
            _ => ErrorCode::SessionCodeInvalid,
        })
    }

    /// Same project, an existing field device, and the whitelist (or a session code).
    async fn may_connect(&self, req: Option<u64>, gwid: &DeviceId) -> Result<(), ServerMsg> {
        let err = |code: ErrorCode| {
            ServerMsg::error(
                req,
                code,
                format!("cannot connect to {gwid}: {}", code.describe()),
            )
        };
        if gwid.project != self.device.project {
            return Err(err(ErrorCode::NotFound));
        }
        let project = self.project(req).await?;
        let store = &self.state.store;
        match store.device(&gwid.project, &gwid.device).await {
            Ok(Some(d)) if d.kind == Role::Field => {}
            Ok(_) => return Err(err(ErrorCode::NotFound)),
            Err(_) => return Err(err(ErrorCode::Internal)),
        }
        if project.security.whitelist_enable == 1 {
            let listed = store
                .is_whitelisted(&project.id, &self.device.device, &gwid.device)
                .await
                .map_err(|_| err(ErrorCode::Internal))?;
            if !listed {
                self.check_code(&project, gwid).map_err(err)?;
            }
        }
        Ok(())
    }
}
