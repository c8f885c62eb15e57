//! Signalling messages: JSON text frames over one WebSocket per device (`/ws`).
//!
//! Every message is an object with a `type`. A client request may carry `req` (a number the
//! client picks); the direct answer (`ok`, `error`, `answer`, `field_list`, `login_ok`)
//! echoes it. Everything else the server sends is an event.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, ErrorCode, Role};

/// Bumped on any incompatible change of these messages.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest signalling message the server accepts (an SDP offer fits comfortably).
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;

/// Control permission level (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(into = "u8", try_from = "u8")]
pub enum Permission {
    /// Watch video/audio, receive report data; cannot send control data.
    Guest = 0,
    /// Everything, including sending control data. At most one per field device.
    Master = 1,
}

impl From<Permission> for u8 {
    fn from(p: Permission) -> u8 {
        p as u8
    }
}

impl TryFrom<u8> for Permission {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Permission::Guest),
            1 => Ok(Permission::Master),
            _ => Err(format!("permission level must be 0 or 1, got {v}")),
        }
    }
}

/// State of a receiver (`conn_fd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Routed; waiting for the stream's first keyframe (one was requested).
    Connecting,
    /// The first decodable frame of the stream was forwarded.
    Playing,
    /// It cannot play now (e.g. the field device went offline); it resumes by itself.
    Failed,
    /// Disconnected (by request, by a new stream on the receiver, or the session ended).
    Disconnected,
}

/// A device's multipath request (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondOffer {
    /// Its paths (local addresses), 2..=8.
    pub paths: u8,
    /// `media_trans_mode`: 1 redundant, 2 balanced, 3 aggregate.
    pub mode: u8,
}

/// The server's answer to a [`BondOffer`]: the session the device's paths join, the key
/// their proofs use (64 hex digits; it crosses the logged-in signalling connection only),
/// and the server's UDP address the paths send to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondGrant {
    pub session: u32,
    pub key: String,
    pub addr: std::net::SocketAddr,
}

/// A field device as a remote device sees it in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInfo {
    pub id: DeviceId,
    pub name: String,
    pub online: bool,
    /// How many video streams it publishes now (ids `0..streams`); 0 while offline.
    #[serde(default)]
    pub streams: u32,
}

/// Messages a device sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message on a connection.
    Login {
        #[serde(default)]
        req: Option<u64>,
        version: u32,
        device_id: DeviceId,
        password: String,
        role: Role,
        /// SPEC §5 `auto_permission` (default true).
        #[serde(default = "yes")]
        auto_permission: bool,
        /// The device's mode (its config's `cloud_mode`, default "public"); a diagnosis
        /// reports a remote whose mode differs from the field device's.
        #[serde(default = "public")]
        mode: String,
    },
    /// WebRTC offer (the device is the offerer; the server answers, ICE-lite).
    Offer {
        #[serde(default)]
        req: Option<u64>,
        sdp: String,
        /// The video m-lines' mids in order: a field device's stream 0, 1, ...
        /// (sendonly), or a remote device's receivers `conn_fd` 0, 1, ... (recvonly).
        #[serde(default)]
        video_mids: Vec<String>,
        /// The audio m-lines' mids (Opus): each carries one party heard; the first also
        /// carries what this device says, when `audio_send`. Empty = no audio.
        #[serde(default)]
        audio_mids: Vec<String>,
        /// The device sends audio (SPEC §3 `audio_enable`, with something to send).
        #[serde(default)]
        audio_send: bool,
        /// The device takes audio (SPEC §3 `audio_receive`, with somewhere to play it).
        #[serde(default)]
        audio_receive: bool,
        /// The device speaks fieldlink's datagram FEC (fieldlink_rtc::fec); browsers do not.
        #[serde(default)]
        fec: bool,
        /// The device has several network paths (SPEC §9 `network_bind`) and asks to
        /// carry the connection over all of them (docs/multipath.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bond: Option<BondOffer>,
    },
    /// Remote only: list the project's field devices (needs `FieldListEnable` = 1).
    ListFields {
        #[serde(default)]
        req: Option<u64>,
    },
    /// Remote only: open an operation session with a field device.
    Connect {
        #[serde(default)]
        req: Option<u64>,
        gwid: DeviceId,
    },
    /// Remote only: connect field streams to receivers, pairwise (SPEC §2 `connect`).
    /// Opens the operation session if needed. A receiver that had another stream drops it.
    Watch {
        #[serde(default)]
        req: Option<u64>,
        gwid: DeviceId,
        stream_ids: Vec<u32>,
        conn_fds: Vec<u32>,
    },
    /// Remote only: disconnect receivers (SPEC §2 `disconnect`).
    Unwatch {
        #[serde(default)]
        req: Option<u64>,
        conn_fds: Vec<u32>,
    },
    /// Remote only: disconnect every receiver (SPEC §2 `disconnect_all`).
    UnwatchAll {
        #[serde(default)]
        req: Option<u64>,
    },
    /// Remote only: end an operation session.
    Disconnect {
        #[serde(default)]
        req: Option<u64>,
        gwid: DeviceId,
    },
    /// Remote only: session authorization code for a whitelisted project (SPEC §8).
    /// A later code for the same field device replaces the earlier one.
    SetSessionToken {
        #[serde(default)]
        req: Option<u64>,
        field_id: DeviceId,
        code: String,
    },
    /// Remote only: ask the field device for a permission level (1 master, 0 release).
    RequestPermission {
        #[serde(default)]
        req: Option<u64>,
        gwid: DeviceId,
        level: Permission,
    },
    /// Field only: decide a remote device's level (application mode, or to revoke).
    SetPermission {
        #[serde(default)]
        req: Option<u64>,
        remote_id: DeviceId,
        level: Permission,
    },
    /// Field only: the state of a stream's source (a camera). While `ok` is false its
    /// receivers are `failed` with `reason`; `keyframe_on_request` false (a camera in
    /// passthrough) makes the server start new receivers from the stream's last keyframe.
    SourceState {
        #[serde(default)]
        req: Option<u64>,
        stream_id: u32,
        ok: bool,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default = "yes")]
        keyframe_on_request: bool,
    },
    /// Remote only: diagnose the session with a field device (SPEC §6). Answered at once
    /// (`ok`, or why not); the report follows as `diag_result` after the window.
    Diagnose {
        #[serde(default)]
        req: Option<u64>,
        gwid: DeviceId,
    },
    /// Either role: what this device measured for diagnosis `diag` (`diag_start`): a
    /// field device one `field` measure per stream, a remote one `remote` per receiver.
    /// The server derives the checks and causes.
    DiagReport {
        #[serde(default)]
        req: Option<u64>,
        diag: u64,
        #[serde(default)]
        field: Vec<crate::diag::FieldMeasure>,
        #[serde(default)]
        remote: Vec<crate::diag::RemoteMeasure>,
        /// A field device carried over several network paths: each path's figures.
        #[serde(default)]
        paths: Vec<crate::diag::PathMeasure>,
    },
    Ping {
        #[serde(default)]
        req: Option<u64>,
    },
}

fn yes() -> bool {
    true
}

fn public() -> String {
    "public".into()
}

/// Binds the `req` field of any `ClientMsg` variant (all have one) and evaluates `$body`.
macro_rules! with_req {
    ($msg:expr, $req:ident => $body:expr) => {
        match $msg {
            ClientMsg::Login { req: $req, .. }
            | ClientMsg::Offer { req: $req, .. }
            | ClientMsg::ListFields { req: $req }
            | ClientMsg::Connect { req: $req, .. }
            | ClientMsg::Disconnect { req: $req, .. }
            | ClientMsg::Watch { req: $req, .. }
            | ClientMsg::Unwatch { req: $req, .. }
            | ClientMsg::UnwatchAll { req: $req }
            | ClientMsg::SetSessionToken { req: $req, .. }
            | ClientMsg::RequestPermission { req: $req, .. }
            | ClientMsg::SetPermission { req: $req, .. }
            | ClientMsg::SourceState { req: $req, .. }
            | ClientMsg::Diagnose { req: $req, .. }
            | ClientMsg::DiagReport { req: $req, .. }
            | ClientMsg::Ping { req: $req } => $body,
        }
    };
}

impl ClientMsg {
    /// Sets the request number the answer will echo.
    pub fn set_req(&mut self, id: Option<u64>) {
        with_req!(self, req => *req = id)
    }

    pub fn req(&self) -> Option<u64> {
        with_req!(self, req => *req)
    }
}

/// Messages the server sends to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    LoginOk {
        req: Option<u64>,
        device_id: DeviceId,
        role: Role,
        server_version: String,
    },
    Answer {
        req: Option<u64>,
        sdp: String,
        /// Both sides wrap their datagrams in FEC (the offer asked and the server agrees).
        #[serde(default)]
        fec: bool,
        /// The server carries the connection over the device's paths: join them with this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bond: Option<BondGrant>,
    },
    Ok {
        req: Option<u64>,
    },
    Error {
        req: Option<u64>,
        code: ErrorCode,
        name: String,
        message: String,
        /// For TOO_MANY_ATTEMPTS: how long to wait before trying again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    FieldList {
        req: Option<u64>,
        fields: Vec<FieldInfo>,
    },
    /// To a field device: a remote device opened a session with it.
    RemoteJoined {
        remote_id: DeviceId,
    },
    /// To a field device: a remote device's session ended.
    RemoteLeft {
        remote_id: DeviceId,
    },
    /// To remote devices: a field device came online or went offline.
    Presence {
        field_id: DeviceId,
        online: bool,
    },
    /// To a remote device: its permission for a field device and who is master now
    /// (SPEC §5 notification `(field_devid, self_permission, master_devid)`).
    Permission {
        field_id: DeviceId,
        self_permission: Permission,
        master_id: Option<DeviceId>,
    },
    /// To a field device in application mode: a remote asks for a level.
    PermissionRequest {
        remote_id: DeviceId,
        level: Permission,
    },
    /// To a field device: who is master of it now.
    MasterChanged {
        master_id: Option<DeviceId>,
    },
    /// To a remote: the state of one receiver (SPEC §2 state callback per conn_fd).
    StreamState {
        conn_fd: u32,
        gwid: DeviceId,
        stream_id: u32,
        state: StreamState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Something the device sent was refused after the fact (e.g. control data dropped).
    Warning {
        code: ErrorCode,
        /// The code's name, as in `error`.
        #[serde(default)]
        name: String,
        message: String,
    },
    /// To both sides of a diagnosis: measure for `window_ms` from now, then send
    /// `diag_report`. A field device measures `stream_ids`, a remote `conn_fds`.
    DiagStart {
        diag: u64,
        gwid: DeviceId,
        window_ms: u32,
        #[serde(default)]
        stream_ids: Vec<u32>,
        #[serde(default)]
        conn_fds: Vec<u32>,
    },
    /// To a remote, every 2 s per playing receiver: its connection quality
    /// (`fieldlink_proto::quality`), the figures it was scored from, and why it is not
    /// excellent.
    Quality(Box<crate::quality::Scored>),
    /// Audio line `line` of this device now carries `gwid` (a device; with `stream_id`,
    /// one channel of a camera). Sent when a line is given to a new party.
    AudioLine {
        line: u32,
        gwid: DeviceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream_id: Option<u32>,
    },
    /// To the remote that asked: the diagnosis of `gwid` (SPEC §6 `(gwid, type, json)`):
    /// `kind` 1 = success, < 0 = the error code; the report is there either way.
    DiagResult {
        gwid: DeviceId,
        kind: i32,
        report: Box<crate::diag::Report>,
    },
    Pong {
        req: Option<u64>,
    },
}

impl ServerMsg {
    pub fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            req,
            code,
            name: code.name().to_string(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn warning(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Warning {
            code,
            name: code.name().to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_json_shape() {
        let m: ClientMsg = serde_json::from_str(
            r#"{"type":"login","version":1,"device_id":"p/d","password":"x","role":"remote"}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMsg::Login {
                auto_permission: true,
                ..
            }
        ));
        let bad = r#"{"type":"request_permission","gwid":"p/f","level":2}"#;
        assert!(serde_json::from_str::<ClientMsg>(bad).is_err());
        let mut m2 = m.clone();
        m2.set_req(Some(9));
        assert_eq!((m.req(), m2.req()), (None, Some(9)));
        let e = ServerMsg::error(Some(3), ErrorCode::NotMaster, "nope");
        let s = serde_json::to_string(&e).unwrap();
        assert!(
            s.contains(r#""code":-30"#) && s.contains(r#""name":"NOT_MASTER""#),
            "{s}"
        );
        let p = ServerMsg::Permission {
            field_id: "p/f".parse().unwrap(),
            self_permission: Permission::Master,
            master_id: Some("p/r".parse().unwrap()),
        };
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(
            s,
            r#"{"type":"permission","field_id":"p/f","self_permission":1,"master_id":"p/r"}"#
        );
    }
}
