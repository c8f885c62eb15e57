//! Admin HTTP API (`/api/v1/...`, JSON, `Authorization: Bearer <admin token>`).
//! Every error is `{"code":<negative>,"name":"...","message":"..."}` with a 4xx status for
//! bad input. See docs/api.md.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use fieldlink_auth::{
    constant_time_eq, device_password, hash_password, session_code, validate_project_key,
    USE_PROJECT_KEY_PWD,
};
use fieldlink_proto::ids::validate_part;
use fieldlink_proto::{ErrorCode, Role};

use crate::store::{now_ms, Device, Project, Security, StoreError};
use crate::AppState;

pub struct ApiError(ErrorCode, String);

impl ApiError {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError(code, msg.into())
    }
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(ErrorCode::BadRequest, msg.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::new(ErrorCode::Conflict, "already exists"),
            StoreError::NotFound => ApiError::new(ErrorCode::NotFound, "not found"),
            e => {
                tracing::error!("store: {e}");
                ApiError::new(ErrorCode::Internal, "store error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body =
            serde_json::json!({"code": self.0.code(), "name": self.0.name(), "message": self.1});
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Largest admin API request body; a larger one is refused (413) before it is read whole.
pub const MAX_API_BODY: usize = 64 * 1024;

/// JSON body whose rejections come out in our error format.
pub struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("request body over the limit of {MAX_API_BODY} bytes"),
            )),
            Err(e) => Err(ApiError::bad(e.body_text())),
        }
    }
}

/// Query string whose rejections come out in our error format.
pub struct Q<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !state.admin_token.is_empty() && constant_time_eq(given, &state.admin_token) {
            Ok(Admin)
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "missing or wrong admin token",
            ))
        }
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{p}",
            get(get_project).put(update_project).delete(delete_project),
        )
        .route(
            "/api/v1/projects/{p}/devices",
            get(list_devices).post(create_device),
        )
        .route(
            "/api/v1/projects/{p}/devices/{d}",
            get(get_device).delete(delete_device),
        )
        .route(
            "/api/v1/projects/{p}/devices/{d}/password",
            put(set_password),
        )
        .route(
            "/api/v1/projects/{p}/device-password",
            post(make_device_password),
        )
        .route("/api/v1/projects/{p}/session-code", post(make_session_code))
        .route(
            "/api/v1/projects/{p}/whitelist",
            get(list_whitelist).post(add_whitelist),
        )
        .route(
            "/api/v1/projects/{p}/whitelist/{r}/{f}",
            delete(remove_whitelist),
        )
        .route("/api/v1/projects/{p}/audit", get(audit))
        .route("/api/v1/gb28181/devices", get(gb_devices))
        .route("/api/v1/gb28181/devices/{id}", put(gb_set_device))
        .route("/api/v1/gb28181/devices/{id}/ptz", post(gb_ptz))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Prometheus scrape (OpenMetrics text): counters from the tasks, gauges from a snapshot
/// of the hub and the GB28181 platform taken now. Prometheus sends the admin token with
/// `authorization: {credentials: ...}` in its scrape config.
async fn metrics(_: Admin, st: State<Arc<AppState>>) -> Result<Response, ApiError> {
    open_metrics(st).await
}

/// The scrape itself, with no token check: for `metrics_listen`, the separate address
/// that serves nothing else.
pub async fn open_metrics(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let hub = st
        .hub
        .snapshot()
        .await
        .map_err(|c| ApiError::new(c, "the hub is not running"))?;
    let gb_online = st.gb.as_ref().map_or(0, |g| {
        g.devices().iter().filter(|d| d.online).count() as u64
    });
    let body = st.metrics.render(&hub, gb_online);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

fn check_security(s: &Security) -> Result<(), ApiError> {
    if !(0..=1).contains(&s.mode) {
        return Err(ApiError::bad("Mode must be 0 or 1"));
    }
    if !s.key.is_empty() {
        validate_project_key(&s.key).map_err(|e| ApiError::bad(format!("Key: {e}")))?;
    }
    if s.mode == 1 && s.key.is_empty() {
        return Err(ApiError::bad("Mode 1 needs a Key"));
    }
    if !(0..=3).contains(&s.auto_register) {
        return Err(ApiError::bad("AutoRegister must be 0, 1, 2 or 3"));
    }
    if !(0..=1).contains(&s.field_list_enable) || !(0..=1).contains(&s.whitelist_enable) {
        return Err(ApiError::bad(
            "FieldListEnable and WhitelistEnable must be 0 or 1",
        ));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    validate_part(id).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(flatten)]
    security: SecurityPatch,
}

/// Security fields, each optional (absent = default on create, unchanged on update).
#[derive(Deserialize, Default)]
struct SecurityPatch {
    #[serde(rename = "Mode")]
    mode: Option<i64>,
    #[serde(rename = "Key")]
    key: Option<String>,
    #[serde(rename = "AutoRegister")]
    auto_register: Option<i64>,
    #[serde(rename = "FieldListEnable")]
    field_list_enable: Option<i64>,
    #[serde(rename = "WhitelistEnable")]
    whitelist_enable: Option<i64>,
}

impl SecurityPatch {
    fn apply(self, mut s: Security) -> Security {
        s.mode = self.mode.unwrap_or(s.mode);
        s.key = self.key.unwrap_or(s.key);
        s.auto_register = self.auto_register.unwrap_or(s.auto_register);
        s.field_list_enable = self.field_list_enable.unwrap_or(s.field_list_enable);
        s.whitelist_enable = self.whitelist_enable.unwrap_or(s.whitelist_enable);
        s
    }
}

async fn list_projects(_: Admin, State(st): State<Arc<AppState>>) -> ApiResult<Vec<Project>> {
    Ok(Json(st.store.projects().await?))
}

async fn create_project(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Body(p): Body<NewProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    check_id("id", &p.id)?;
    let security = p.security.apply(Security::default());
    check_security(&security)?;
    let project = Project {
        name: if p.name.is_empty() {
            p.id.clone()
        } else {
            p.name
        },
        id: p.id,
        security,
        created_ms: now_ms(),
    };
    st.store.create_project(&project).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

async fn load_project(st: &AppState, id: &str) -> Result<Project, ApiError> {
    st.store
        .project(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no project {id:?}")))
}

async fn get_project(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
) -> ApiResult<Project> {
    Ok(Json(load_project(&st, &p).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    name: Option<String>,
    #[serde(flatten)]
    security: SecurityPatch,
}

async fn update_project(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Body(patch): Body<ProjectPatch>,
) -> ApiResult<Project> {
    let mut project = load_project(&st, &p).await?;
    project.security = patch.security.apply(project.security);
    check_security(&project.security)?;
    if let Some(n) = patch.name {
        project.name = n;
    }
    st.store
        .update_project(&p, &project.name, &project.security)
        .await?;
    Ok(Json(project))
}

async fn delete_project(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.store.delete_project(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct DeviceView {
    #[serde(flatten)]
    device: Device,
    online: bool,
    /// While online: whether it sends and takes audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<AudioView>,
}

#[derive(Serialize)]
struct AudioView {
    send: bool,
    receive: bool,
}

impl DeviceView {
    fn new(
        device: Device,
        online: &std::collections::HashMap<String, crate::hub::Online>,
    ) -> DeviceView {
        let o = online.get(&device.device_id);
        DeviceView {
            online: o.is_some(),
            audio: o.map(|o| AudioView {
                send: o.audio_send,
                receive: o.audio_receive,
            }),
            device,
        }
    }
}

#[derive(Deserialize)]
struct KindQuery {
    kind: Option<Role>,
}

async fn list_devices(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Q(q): Q<KindQuery>,
) -> ApiResult<Vec<DeviceView>> {
    load_project(&st, &p).await?;
    let online = st
        .hub
        .online(&p)
        .await
        .map_err(|c| ApiError::new(c, "hub unavailable"))?;
    let list = st.store.devices(&p, q.kind).await?;
    Ok(Json(
        list.into_iter()
            .map(|d| DeviceView::new(d, &online))
            .collect(),
    ))
}

fn check_password(pw: &str) -> Result<String, ApiError> {
    if pw == USE_PROJECT_KEY_PWD {
        return Ok(pw.to_string());
    }
    if pw.is_empty() || pw.len() > 128 {
        return Err(ApiError::bad(
            "password must be 1..=128 bytes, or USEPROJECTKEYPWD",
        ));
    }
    Ok(hash_password(pw))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
    kind: Role,
    #[serde(default)]
    name: String,
    password: String,
}

async fn create_device(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Body(d): Body<NewDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    check_id("id", &d.id)?;
    load_project(&st, &p).await?;
    let stored = check_password(&d.password)?;
    let device = Device {
        project_id: p,
        name: if d.name.is_empty() {
            d.id.clone()
        } else {
            d.name
        },
        device_id: d.id,
        kind: d.kind,
        key_password_only: stored == USE_PROJECT_KEY_PWD,
        password: stored,
        auto_registered: false,
        created_ms: now_ms(),
    };
    st.store.create_device(&device).await?;
    Ok((StatusCode::CREATED, Json(device)))
}

async fn get_device(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path((p, d)): Path<(String, String)>,
) -> ApiResult<DeviceView> {
    let device = st
        .store
        .device(&p, &d)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no device {p}/{d}")))?;
    let online = st
        .hub
        .online(&p)
        .await
        .map_err(|c| ApiError::new(c, "hub unavailable"))?;
    Ok(Json(DeviceView::new(device, &online)))
}

async fn delete_device(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path((p, d)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.store.delete_device(&p, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn set_password(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path((p, d)): Path<(String, String)>,
    Body(b): Body<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let stored = check_password(&b.password)?;
    st.store.set_device_password(&p, &d, &stored).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordRequest {
    device_id: String,
    /// Minutes from now the password stays valid (default 1 day).
    #[serde(default = "one_day")]
    valid_minutes: u64,
}

fn one_day() -> u64 {
    24 * 60
}

/// The project's key (it must be in use) and the expiry, in minutes since the epoch,
/// `valid_minutes` from now.
async fn key_and_expiry(
    st: &AppState,
    p: &str,
    valid_minutes: u64,
) -> Result<(String, u64), ApiError> {
    let project = load_project(st, p).await?;
    if !project.security.key_on() {
        return Err(ApiError::new(
            ErrorCode::KeyModeOff,
            "project has no shared key in use (Mode 1 with a Key)",
        ));
    }
    if valid_minutes == 0 || valid_minutes > 10 * 366 * 24 * 60 {
        return Err(ApiError::bad("valid_minutes must be 1..=10 years"));
    }
    let expire = crate::login::now_unix() / 60 + valid_minutes;
    Ok((project.security.key, expire))
}

/// Generates a key-derived password for a device of the project (SPEC §8).
async fn make_device_password(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Body(b): Body<PasswordRequest>,
) -> ApiResult<serde_json::Value> {
    check_id("device_id", &b.device_id)?;
    let (key, expire) = key_and_expiry(&st, &p, b.valid_minutes).await?;
    let dev = format!("{p}/{}", b.device_id);
    Ok(Json(serde_json::json!({
        "device_id": dev,
        "expire": expire,
        "password": device_password(&key, &dev, expire),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionCodeRequest {
    remote_id: String,
    field_id: String,
    /// Minutes from now the code stays valid (default 1 day).
    #[serde(default = "one_day")]
    valid_minutes: u64,
}

/// SPEC §8 session authorization code: lets `remote_id` watch `field_id` without a
/// whitelist entry.
async fn make_session_code(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Body(b): Body<SessionCodeRequest>,
) -> ApiResult<serde_json::Value> {
    check_id("remote_id", &b.remote_id)?;
    check_id("field_id", &b.field_id)?;
    let (key, expire) = key_and_expiry(&st, &p, b.valid_minutes).await?;
    let (remote, field) = (
        format!("{p}/{}", b.remote_id),
        format!("{p}/{}", b.field_id),
    );
    Ok(Json(serde_json::json!({
        "remote_id": remote,
        "field_id": field,
        "expire": expire,
        "code": session_code(&key, &remote, &field, expire),
    })))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhitelistEntry {
    remote_id: String,
    field_id: String,
}

async fn list_whitelist(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
) -> ApiResult<Vec<WhitelistEntry>> {
    load_project(&st, &p).await?;
    let list = st.store.whitelist(&p).await?;
    Ok(Json(
        list.into_iter()
            .map(|(remote_id, field_id)| WhitelistEntry {
                remote_id,
                field_id,
            })
            .collect(),
    ))
}

async fn add_whitelist(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Body(e): Body<WhitelistEntry>,
) -> Result<StatusCode, ApiError> {
    check_id("remote_id", &e.remote_id)?;
    check_id("field_id", &e.field_id)?;
    load_project(&st, &p).await?;
    st.store
        .add_whitelist(&p, &e.remote_id, &e.field_id)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn remove_whitelist(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path((p, r, f)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    st.store.remove_whitelist(&p, &r, &f).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    field_id: Option<String>,
    limit: Option<i64>,
}

async fn audit(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(p): Path<String>,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Vec<crate::store::AuditEntry>> {
    load_project(&st, &p).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad("limit must be 1..=10000"));
    }
    Ok(Json(
        st.store.audit(&p, q.field_id.as_deref(), limit).await?,
    ))
}

fn gb(st: &AppState) -> Result<&crate::gb::GbHandle, ApiError> {
    st.gb.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "GB28181 is off on this server (start it with --sip-listen)",
        )
    })
}

/// GB28181 devices: online state, address, channels (and which are playing).
async fn gb_devices(
    _: Admin,
    State(st): State<Arc<AppState>>,
) -> ApiResult<Vec<crate::gb::GbDeviceView>> {
    Ok(Json(gb(&st)?.devices()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GbDevicePatch {
    /// The device's own digest password ("" = back to the server default).
    password: Option<String>,
    /// `udp`, `tcp-passive`, `tcp-active`, or "" for the server default.
    media_mode: Option<String>,
    /// Pull its channels as soon as it registers (SPEC §10 "always on").
    always_on: Option<bool>,
}

#[derive(Serialize)]
struct GbDeviceSettings {
    id: String,
    own_password: bool,
    media_mode: String,
    always_on: bool,
}

/// Sets a GB28181 device's own password, media mode and always-on pull (kept across
/// restarts; the password is stored as its digest HA1, never in clear).
async fn gb_set_device(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Body(patch): Body<GbDevicePatch>,
) -> ApiResult<GbDeviceSettings> {
    let realm = gb(&st)?.realm().to_string();
    let gid: fieldlink_gb28181::GbId = id
        .parse()
        .map_err(|e| ApiError::bad(format!("device id: {e}")))?;
    if let Some(m) = &patch.media_mode {
        if !m.is_empty() && fieldlink_gb28181::sdp::MediaMode::parse(m).is_none() {
            return Err(ApiError::bad(
                "media_mode must be udp, tcp-passive, tcp-active or \"\"",
            ));
        }
    }
    if patch.password.as_ref().is_some_and(|p| p.len() > 128) {
        return Err(ApiError::bad("password: at most 128 bytes"));
    }
    let mut s = st.store.gb_device(gid.as_str()).await?.unwrap_or_default();
    if let Some(p) = patch.password {
        s.ha1 = if p.is_empty() {
            String::new()
        } else {
            fieldlink_gb28181::digest::ha1(gid.as_str(), &realm, &p)
        };
    }
    if let Some(m) = patch.media_mode {
        s.media_mode = m;
    }
    if let Some(a) = patch.always_on {
        s.always_on = a;
    }
    st.store.set_gb_device(gid.as_str(), &s).await?;
    gb(&st)?.settings_changed(&gid, s.clone()).await;
    Ok(Json(GbDeviceSettings {
        id: gid.to_string(),
        own_password: !s.ha1.is_empty(),
        media_mode: s.media_mode,
        always_on: s.always_on,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PtzRequest {
    /// Channel index (catalog order), default 0.
    #[serde(default)]
    channel: u32,
    /// stop, left, right, up, down, up_left, up_right, down_left, down_right, zoom_in, zoom_out.
    command: String,
    /// 0–255, default 128.
    speed: Option<u8>,
}

/// Moves a GB28181 camera: the platform sends a `DeviceControl` with `PTZCmd`. 202: sent
/// (cameras do not confirm PTZ).
async fn gb_ptz(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Body(req): Body<PtzRequest>,
) -> Result<StatusCode, ApiError> {
    let h = gb(&st)?;
    let gid: fieldlink_gb28181::GbId = id
        .parse()
        .map_err(|e| ApiError::bad(format!("device id: {e}")))?;
    let ptz = fieldlink_gb28181::ptz::Ptz::named(&req.command, req.speed.unwrap_or(128))
        .ok_or_else(|| {
            ApiError::bad(
                "command must be stop, left, right, up, down, up_left, up_right, down_left, down_right, zoom_in or zoom_out",
            )
        })?;
    h.ptz(&gid, req.channel, ptz)
        .await
        .map_err(|e| ApiError::new(ErrorCode::FieldOffline, e))?;
    Ok(StatusCode::ACCEPTED)
}
