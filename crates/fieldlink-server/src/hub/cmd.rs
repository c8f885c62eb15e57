//! The hub's interface: the commands other tasks send it ([`Cmd`]), what it sends back to
//! each client ([`Outbound`]), and the cloneable [`HubHandle`]. Holds no state; nothing
//! here reaches into the hub's tables (they live in the task, `mod.rs`).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use fieldlink_proto::{DeviceId, ErrorCode, Permission, Role, ServerMsg};

use crate::store::AuditEntry;

/// Outbound queue length per client; a client this far behind is dropped.
pub const CLIENT_QUEUE: usize = 512;

pub type ConnId = u64;

/// What a WebSocket task hands the hub about a logged-in device.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub device: DeviceId,
    pub role: Role,
    pub auto_permission: bool,
    /// The project lets remotes list field devices: this remote hears every field's presence.
    pub sees_all_fields: bool,
    /// The device's mode (`cloud_mode`), compared by a diagnosis.
    pub mode: String,
}

#[derive(Debug)]
/// Big variants are boxed: every client's channel holds a block of 32 of these from the
/// start, and a big GB28181 site has 100 000 clients.
pub enum Outbound {
    Msg(Box<ServerMsg>),
    /// Send this error and close the connection.
    Close(ErrorCode, String),
    /// To an external source (a GB28181 device): the streams receivers want now.
    Wanted(Vec<u32>),
    /// To an external source: control data from its master remote (who, what).
    Control(Box<(DeviceId, Vec<u8>)>),
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
        audio: AudioOffer,
        /// The device offered FEC.
        fec: bool,
        /// The device asked to carry the connection over several paths.
        bond: Option<fieldlink_proto::signal::BondOffer>,
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
    /// Sent again when the count grows (receivers of the other streams play on).
    External {
        conn: ConnId,
        streams: u32,
    },
    /// An external source's stream cannot be played (a codec the SFU does not carry):
    /// its receivers fail with `reason`.
    ExternalFailed {
        conn: ConnId,
        stream: u32,
        reason: String,
    },
    /// One access unit (Annex B) of an external source's stream.
    ExternalFrame {
        conn: ConnId,
        stream: u32,
        codec: fieldlink_media::VideoCodec,
        data: Vec<u8>,
        /// 90 kHz.
        rtp_time: u64,
    },
    /// One G.711 audio frame of an external source's stream (a GB28181 camera's channel).
    ExternalAudio {
        conn: ConnId,
        stream: u32,
        /// A-law (PCMA), else µ-law (PCMU).
        alaw: bool,
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
    /// A remote asks for a diagnosis of its session with `gwid` (SPEC §6).
    Diagnose {
        conn: ConnId,
        req: Option<u64>,
        gwid: DeviceId,
    },
    /// A device's measurement for a running diagnosis.
    DiagReport {
        conn: ConnId,
        req: Option<u64>,
        diag: u64,
        field: Vec<fieldlink_proto::diag::FieldMeasure>,
        remote: Vec<fieldlink_proto::diag::RemoteMeasure>,
        paths: Vec<fieldlink_proto::diag::PathMeasure>,
    },
    /// Close every connection and stop (server shutdown).
    Shutdown,
    /// The live state `/metrics` shows.
    Snapshot {
        reply: oneshot::Sender<crate::metrics::HubSnapshot>,
    },
    /// The online devices of a project (`device` part of the id), each with its stream
    /// count (0 for remotes and for fields whose media is not set up yet).
    Online {
        project: String,
        reply: oneshot::Sender<HashMap<String, Online>>,
    },
}

/// Cloneable handle to the hub task.
#[derive(Clone, Debug)]
pub struct HubHandle {
    pub(super) tx: mpsc::Sender<Cmd>,
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

    pub async fn snapshot(&self) -> Result<crate::metrics::HubSnapshot, ErrorCode> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Snapshot { reply }).await?;
        rx.await.map_err(|_| ErrorCode::Internal)
    }

    /// The project's logged-in devices by device id.
    pub async fn online(&self, project: &str) -> Result<HashMap<String, Online>, ErrorCode> {
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

/// One logged-in device, as the API and field lists see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Online {
    /// Its streams (a field device; 0 for a remote).
    pub streams: u32,
    /// It sends audio, and takes audio (what its media connection offered).
    pub audio_send: bool,
    pub audio_receive: bool,
}

/// The audio part of an offer: its lines' mids (the first also sends when `send`).
#[derive(Debug, Clone, Default)]
pub struct AudioOffer {
    pub mids: Vec<String>,
    pub send: bool,
    pub receive: bool,
}
