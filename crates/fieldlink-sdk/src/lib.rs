//! fieldlink device SDK: a [`FieldDevice`] (the machine on site) or a [`RemoteDevice`] (an
//! operator console) logged in to a fieldlink server over WebSocket signalling, with one
//! WebRTC peer connection carrying control data on two data channels (qos 0 and qos 1).
//!
//! Each handle comes with one [`Events`] stream. The connection is kept up by a background
//! task: a dropped signalling or media connection is re-established without the
//! application's help ([`Event::Disconnected`] then [`Event::Reconnected`]), and sessions
//! and session codes are restored.

mod driver;
mod peer;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use fieldlink_proto::{control::check_payload, RateLimiter};
pub use fieldlink_proto::{DeviceId, ErrorCode, FieldInfo, Permission, Qos, Role};

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
    /// Log out and stop the connection task.
    Close,
}

/// State both the handle and the driver see.
#[derive(Default)]
pub(crate) struct Shared {
    /// Remote: own level per field device, as last notified.
    pub permissions: Mutex<std::collections::HashMap<DeviceId, Permission>>,
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
        let shared = Arc::new(Shared::default());
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
}

impl RemoteDevice {
    pub async fn connect(cfg: DeviceConfig) -> Result<(RemoteDevice, Events)> {
        let (h, ev) = Handle::start(Role::Remote, cfg).await?;
        Ok((RemoteDevice { h }, ev))
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
