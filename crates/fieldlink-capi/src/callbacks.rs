//! The callbacks a C program registers, and how each SDK event reaches them. All run on
//! the device's one event thread, in the order the events happened; every pointer they
//! get is valid until they return.

use std::ffi::{c_char, c_int, c_void};
use std::time::UNIX_EPOCH;

use fieldlink_sdk::{ErrorCode, Event, PathState, StreamState, VideoCodec};

use crate::status::c_string;

/// `connection` callback `state`: signalling or media was lost; the SDK reconnects.
pub const FL_CONN_DISCONNECTED: c_int = 0;
/// Reconnected and restored (sessions, receivers) after `FL_CONN_DISCONNECTED`.
pub const FL_CONN_RECONNECTED: c_int = 1;
/// A reconnection attempt failed (`code` says why); the SDK keeps trying.
pub const FL_CONN_RECONNECT_FAILED: c_int = 2;
/// The server refused something after the fact (`code`), e.g. control data it dropped.
pub const FL_CONN_WARNING: c_int = 3;
/// The program's callbacks were too slow: `code` events were dropped.
pub const FL_CONN_LAGGED: c_int = 4;

/// `stream_state` values (SPEC §2, per conn_fd): routed, waiting for the first keyframe.
pub const FL_STREAM_CONNECTING: c_int = 0;
/// The first decodable frame arrived.
pub const FL_STREAM_PLAYING: c_int = 1;
/// It cannot play now (e.g. the field device went offline); it resumes by itself.
pub const FL_STREAM_FAILED: c_int = 2;
/// Disconnected: by request, by a new stream on the receiver, or the session ended.
pub const FL_STREAM_DISCONNECTED: c_int = 3;

/// `fl_path_stats.state` (SPEC §9): carries traffic.
pub const FL_PATH_UP: c_int = 0;
/// Heard again after being down; carries only copies until it has proved itself.
pub const FL_PATH_RECOVERING: c_int = 1;
/// Nothing heard on it for 300 ms or more; carries only probes.
pub const FL_PATH_DOWN: c_int = 2;

/// `fl_video_frame.codec`.
pub const FL_CODEC_H264: c_int = 0;
pub const FL_CODEC_H265: c_int = 1;

/// Control data (field: from the controlling remote; remote: report data from `from`,
/// the field device). `qos` 0 or 1.
pub type fl_control_data_cb = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        from: *const c_char,
        data: *const u8,
        len: usize,
        qos: c_int,
    ),
>;
/// Field, `auto_permission` 0: `remote_id` asks for `level` (1 master, 0 release);
/// answer with `fl_field_set_operation_permission`.
pub type fl_permission_request_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, remote_id: *const c_char, level: c_int)>;
/// Remote: this device's level for `gwid` and who is master now (NULL: nobody).
pub type fl_permission_state_cb = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        gwid: *const c_char,
        self_permission: c_int,
        master_id: *const c_char,
    ),
>;
/// Field: who is master of this device now (NULL: nobody).
pub type fl_master_cb = Option<unsafe extern "C" fn(ctx: *mut c_void, master_id: *const c_char)>;
/// Field: a remote opened (`joined` 1) or closed (0) an operation session.
pub type fl_session_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, remote_id: *const c_char, joined: c_int)>;
/// Remote: a receiver's state (`FL_STREAM_*`); `gwid` and `stream_id` are its stream;
/// `reason` is NULL or why it failed / disconnected.
pub type fl_stream_state_cb = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        conn_fd: u32,
        gwid: *const c_char,
        stream_id: u32,
        state: c_int,
        reason: *const c_char,
    ),
>;
/// Remote: a field device came online (1) or went offline (0).
pub type fl_presence_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, gwid: *const c_char, online: c_int)>;
/// Remote: the diagnosis asked for with `fl_remote_diag_request` (SPEC §6): `type` 1 =
/// success, < 0 = the error code; `json` is the report either way.
pub type fl_diag_report_cb = Option<
    unsafe extern "C" fn(ctx: *mut c_void, gwid: *const c_char, kind: c_int, json: *const c_char),
>;
/// Remote: one received video frame (external rendering; also called for receivers
/// bound to a window, with `window` set).
pub type fl_video_frame_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, frame: *const fl_video_frame)>;
/// `audio_play` "outside": every 10 ms the mixed audio of every party heard, s16le
/// interleaved, `samples` in all (per channel × channels), 48000 Hz.
pub type fl_mixed_audio_cb = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        pcm: *const i16,
        samples: usize,
        rate: u32,
        channels: u16,
    ),
>;
/// The connection's state (`FL_CONN_*`), with an `ErrorCode` (or the count of dropped
/// events for `FL_CONN_LAGGED`; 0 when none) and a message (NULL when none).
pub type fl_connection_cb = Option<
    unsafe extern "C" fn(ctx: *mut c_void, state: c_int, code: c_int, message: *const c_char),
>;

/// Once a second while the connection is carried over several network paths
/// (`network_bind`): each path's figures, `n` of them, in path order.
pub type fl_paths_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, paths: *const fl_path_stats, n: usize)>;

/// One network path's figures. `local` is valid until the callback returns.
#[repr(C)]
pub struct fl_path_stats {
    /// Its index: the position of its address in `network_bind`.
    pub path: u32,
    /// Its local address, as text.
    pub local: *const c_char,
    /// `FL_PATH_UP`, `FL_PATH_RECOVERING` or `FL_PATH_DOWN`.
    pub state: c_int,
    /// Smoothed round trip, ms; -1 while not measured.
    pub rtt_ms: f64,
    /// Loss (the larger of probes and data lost), percent.
    pub loss_pct: f64,
    /// Share of the bytes sent in the last second, percent (a datagram sent on two paths
    /// counts on both).
    pub share_pct: f64,
    /// Times it went down since the connection began.
    pub downs: u32,
}

/// One received video frame. Every pointer is valid until the callback returns.
#[repr(C)]
pub struct fl_video_frame {
    pub conn_fd: u32,
    /// The stream the receiver is connected to (`gwid` NULL when not yet known).
    pub gwid: *const c_char,
    pub stream_id: u32,
    /// The window the receiver is bound to, 0 = external rendering.
    pub window: u64,
    /// `FL_CODEC_H264` or `FL_CODEC_H265`.
    pub codec: c_int,
    /// The Annex-B access unit.
    pub data: *const u8,
    pub len: usize,
    pub keyframe: c_int,
    /// RTP time, 90 kHz, continuous per receiver across switches.
    pub rtp_time: u64,
    /// Capture time on the field device's clock, µs since 1970; 0 when not sent.
    pub capture_time_us: i64,
    /// The decoded I420 picture (config `"decode":1`); `y` NULL when there is none.
    pub width: u32,
    pub height: u32,
    pub y: *const u8,
    pub u: *const u8,
    pub v: *const u8,
    pub stride_y: u32,
    pub stride_u: u32,
    pub stride_v: u32,
}

/// A program's `void* context`: handed back as it was given, never read by us.
#[derive(Clone, Copy)]
pub(crate) struct Ctx(pub *mut c_void);
// SAFETY: the pointer is only passed back to the program's own callbacks; the program
// says in the header's contract that it may be used from the event thread.
unsafe impl Send for Ctx {}

type Slot<F> = Option<(F, Ctx)>;
type Fn<T> = <T as Unwrap>::F;

/// `Option<fn>` → `fn`, to name a slot by its callback type.
pub(crate) trait Unwrap {
    type F: Copy;
}
impl<F: Copy> Unwrap for Option<F> {
    type F = F;
}

/// Every callback slot of a device; copied out before calling, so a callback may
/// register or unregister callbacks (and call any other function) without deadlock.
#[derive(Clone, Copy, Default)]
pub(crate) struct Callbacks {
    pub control_data: Slot<Fn<fl_control_data_cb>>,
    pub permission_request: Slot<Fn<fl_permission_request_cb>>,
    pub permission_state: Slot<Fn<fl_permission_state_cb>>,
    pub master: Slot<Fn<fl_master_cb>>,
    pub session: Slot<Fn<fl_session_cb>>,
    pub stream_state: Slot<Fn<fl_stream_state_cb>>,
    pub presence: Slot<Fn<fl_presence_cb>>,
    pub diag_report: Slot<Fn<fl_diag_report_cb>>,
    pub video_frame: Slot<Fn<fl_video_frame_cb>>,
    pub mixed_audio: Slot<Fn<fl_mixed_audio_cb>>,
    pub connection: Slot<Fn<fl_connection_cb>>,
    pub paths: Slot<Fn<fl_paths_cb>>,
}

/// A slot from what the program registered (NULL function = unregister).
pub(crate) fn slot<F: Copy>(f: Option<F>, ctx: *mut c_void) -> Slot<F> {
    f.map(|f| (f, Ctx(ctx)))
}

fn opt_c(s: Option<&str>) -> Option<std::ffi::CString> {
    s.map(c_string)
}

fn ptr(s: &Option<std::ffi::CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

fn state_code(s: StreamState) -> c_int {
    match s {
        StreamState::Connecting => FL_STREAM_CONNECTING,
        StreamState::Playing => FL_STREAM_PLAYING,
        StreamState::Failed => FL_STREAM_FAILED,
        StreamState::Disconnected => FL_STREAM_DISCONNECTED,
    }
}

/// Calls the callback `ev` is for, if one is registered. `before_frame` runs first for
/// every video frame (internal rendering).
pub(crate) fn dispatch(ev: &Event, cb: &Callbacks) {
    // SAFETY (every call below): the program registered these functions with this
    // context; the arguments are valid for the duration of the call.
    unsafe {
        match ev {
            Event::ControlData { from, data, qos } => {
                if let Some((f, c)) = cb.control_data {
                    let from = c_string(&from.to_string());
                    f(
                        c.0,
                        from.as_ptr(),
                        data.as_ptr(),
                        data.len(),
                        u8::from(*qos).into(),
                    );
                }
            }
            Event::PermissionRequest { remote_id, level } => {
                if let Some((f, c)) = cb.permission_request {
                    let id = c_string(&remote_id.to_string());
                    f(c.0, id.as_ptr(), u8::from(*level).into());
                }
            }
            Event::Permission {
                field_id,
                self_permission,
                master_id,
            } => {
                if let Some((f, c)) = cb.permission_state {
                    let gwid = c_string(&field_id.to_string());
                    let master = opt_c(master_id.as_ref().map(|m| m.to_string()).as_deref());
                    f(
                        c.0,
                        gwid.as_ptr(),
                        u8::from(*self_permission).into(),
                        ptr(&master),
                    );
                }
            }
            Event::MasterChanged { master_id } => {
                if let Some((f, c)) = cb.master {
                    let master = opt_c(master_id.as_ref().map(|m| m.to_string()).as_deref());
                    f(c.0, ptr(&master));
                }
            }
            Event::RemoteJoined { remote_id } | Event::RemoteLeft { remote_id } => {
                if let Some((f, c)) = cb.session {
                    let id = c_string(&remote_id.to_string());
                    f(
                        c.0,
                        id.as_ptr(),
                        matches!(ev, Event::RemoteJoined { .. }).into(),
                    );
                }
            }
            Event::Presence { field_id, online } => {
                if let Some((f, c)) = cb.presence {
                    let id = c_string(&field_id.to_string());
                    f(c.0, id.as_ptr(), (*online).into());
                }
            }
            Event::StreamState {
                conn_fd,
                gwid,
                stream_id,
                state,
                reason,
            } => {
                if let Some((f, c)) = cb.stream_state {
                    let g = c_string(&gwid.to_string());
                    let r = opt_c(reason.as_deref());
                    f(
                        c.0,
                        *conn_fd,
                        g.as_ptr(),
                        *stream_id,
                        state_code(*state),
                        ptr(&r),
                    );
                }
            }
            Event::Diagnosis { gwid, kind, report } => {
                if let Some((f, c)) = cb.diag_report {
                    let g = c_string(&gwid.to_string());
                    let json = c_string(&serde_json::to_string(report).unwrap_or_default());
                    f(c.0, g.as_ptr(), *kind, json.as_ptr());
                }
            }
            Event::Frame(fr) => {
                if let Some((f, c)) = cb.video_frame {
                    let gwid = opt_c(fr.stream.as_ref().map(|(g, _)| g.to_string()).as_deref());
                    let pic = fr.picture.as_ref();
                    let frame = fl_video_frame {
                        conn_fd: fr.conn_fd,
                        gwid: ptr(&gwid),
                        stream_id: fr.stream.as_ref().map_or(0, |(_, s)| *s),
                        window: fr.window.unwrap_or(0),
                        codec: match fr.codec {
                            VideoCodec::H264 => FL_CODEC_H264,
                            _ => FL_CODEC_H265,
                        },
                        data: fr.data.as_ptr(),
                        len: fr.data.len(),
                        keyframe: fr.keyframe.into(),
                        rtp_time: fr.rtp_time,
                        capture_time_us: fr
                            .capture
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_micros() as i64),
                        width: pic.map_or(0, |p| p.width as u32),
                        height: pic.map_or(0, |p| p.height as u32),
                        y: pic.map_or(std::ptr::null(), |p| p.y.as_ptr()),
                        u: pic.map_or(std::ptr::null(), |p| p.u.as_ptr()),
                        v: pic.map_or(std::ptr::null(), |p| p.v.as_ptr()),
                        stride_y: pic.map_or(0, |p| p.width as u32),
                        stride_u: pic.map_or(0, |p| p.width as u32 / 2),
                        stride_v: pic.map_or(0, |p| p.width as u32 / 2),
                    };
                    f(c.0, &frame);
                }
            }
            Event::Paths(paths) => {
                if let Some((f, c)) = cb.paths {
                    let locals: Vec<_> = paths
                        .iter()
                        .map(|p| c_string(&p.local.to_string()))
                        .collect();
                    let stats: Vec<fl_path_stats> = paths
                        .iter()
                        .zip(&locals)
                        .map(|(p, local)| {
                            let m = p.measure();
                            fl_path_stats {
                                path: m.path.into(),
                                local: local.as_ptr(),
                                state: match p.stats.state {
                                    PathState::Up => FL_PATH_UP,
                                    PathState::Recovering => FL_PATH_RECOVERING,
                                    PathState::Down => FL_PATH_DOWN,
                                },
                                rtt_ms: m.rtt_ms.unwrap_or(-1.0),
                                loss_pct: m.loss_pct,
                                share_pct: m.share_pct,
                                downs: m.downs,
                            }
                        })
                        .collect();
                    f(c.0, stats.as_ptr(), stats.len());
                }
            }
            Event::MixedAudio(m) => {
                if let Some((f, c)) = cb.mixed_audio {
                    f(c.0, m.samples.as_ptr(), m.samples.len(), 48_000, m.channels);
                }
            }
            Event::Disconnected { reason } => {
                connection(cb, FL_CONN_DISCONNECTED, 0, Some(reason));
            }
            Event::Reconnected => connection(cb, FL_CONN_RECONNECTED, 0, None),
            Event::ReconnectFailed { code, message } => {
                connection(cb, FL_CONN_RECONNECT_FAILED, code.code(), Some(message));
            }
            Event::Warning { code, message } => {
                connection(cb, FL_CONN_WARNING, code.code(), Some(message));
            }
            Event::Lagged { dropped } => connection(
                cb,
                FL_CONN_LAGGED,
                c_int::try_from(*dropped).unwrap_or(c_int::MAX),
                None,
            ),
            Event::SourceState {
                stream_id,
                ok: false,
                reason,
            } => {
                let why = reason.as_deref().unwrap_or("its source failed");
                let m = format!("stream {stream_id}: {why}");
                connection(
                    cb,
                    FL_CONN_WARNING,
                    ErrorCode::SourceFailed.code(),
                    Some(&m),
                );
            }
            // Figures the C API does not carry (yet): the SDK's statistics events, and a
            // source working again (its receivers say `FL_STREAM_PLAYING`).
            Event::SourceState { ok: true, .. }
            | Event::BitrateEstimate { .. }
            | Event::ReceiverStats { .. }
            | Event::Quality(_)
            | Event::AudioStats(_)
            | Event::AudioLine { .. } => {}
        }
    }
}

unsafe fn connection(cb: &Callbacks, state: c_int, code: c_int, message: Option<&str>) {
    if let Some((f, c)) = cb.connection {
        let m = opt_c(message);
        f(c.0, state, code, ptr(&m));
    }
}
