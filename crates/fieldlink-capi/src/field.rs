//! `fl_field_*`: the field device (the machine on site).

use std::ffi::{c_char, c_int, c_void};

use fieldlink_sdk::{FieldDevice, Role};

use crate::callbacks::{
    fl_connection_cb, fl_control_data_cb, fl_master_cb, fl_mixed_audio_cb, fl_paths_cb,
    fl_permission_request_cb, fl_session_cb, slot, Callbacks,
};
use crate::handle::{get, Handle};
use crate::status::{guard, slice, text, FL_OK};
use crate::{audio_dir, to_level, to_qos};

/// A field device. Made by `fl_field_create`, freed by `fl_field_free`.
pub struct fl_field(pub(crate) Handle<FieldDevice>);

/// Reads a field device's config (`config`: a path to config.json, or the JSON text
/// itself when it starts with `{`; the shape `fieldlink field --config` reads) and makes
/// the device, not yet connected: register callbacks, then `fl_field_start`. On success
/// `*out` is the device (free it with `fl_field_free`).
///
/// # Safety
/// `config` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fl_field_create(config: *const c_char, out: *mut *mut fl_field) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(crate::status::bad("out is NULL"));
        }
        let h = Handle::<FieldDevice>::create(config)?;
        *out = Box::into_raw(Box::new(fl_field(h)));
        Ok(FL_OK)
    })
}

/// Logs in (waits for the server's answer, up to 10 s) and starts every stream of the
/// config's `streams_config` (test pattern, file or RTSP camera). Callbacks registered
/// before this see every event from the start.
///
/// # Safety
/// `f` is NULL or a live device.
#[no_mangle]
pub unsafe extern "C" fn fl_field_start(f: *mut fl_field) -> c_int {
    guard(|| {
        let h = &get(f, "field")?.0;
        let cfg = h.file.device_config(Role::Field, &h.dir)?;
        let sources = h.file.sources()?;
        h.start(cfg, None, |dev| {
            for (i, src) in sources.into_iter().enumerate() {
                dev.start_video(i as u32, src)?;
            }
            Ok(())
        })?;
        Ok(FL_OK)
    })
}

/// Logs out and frees the device: the event thread ends after its last callback, which
/// this waits for. Not from inside one of the device's callbacks (`BAD_REQUEST`, nothing
/// freed). NULL is ignored.
///
/// # Safety
/// `f` is NULL or a live device, not used by any other thread during or after the call.
#[no_mangle]
pub unsafe extern "C" fn fl_field_free(f: *mut fl_field) -> c_int {
    guard(|| {
        if f.is_null() {
            return Ok(FL_OK);
        }
        if (*f).0.in_callback() {
            return Err(crate::status::bad(
                "fl_field_free from inside a callback of the same device",
            ));
        }
        Box::from_raw(f).0.close();
        Ok(FL_OK)
    })
}

/// SPEC §4: control data (report data) to every remote in session with this device.
/// `len` ≤ 700, at most 100 messages a second; `qos` 0 (lossy) or 1 (reliable).
///
/// # Safety
/// `f` is NULL or a live device; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fl_field_send_control_data(
    f: *mut fl_field,
    data: *const u8,
    len: usize,
    qos: c_int,
) -> c_int {
    guard(|| {
        let h = &get(f, "field")?.0;
        let data = slice(data, len, "data")?;
        let q = to_qos(qos)?;
        h.block_on(h.device()?.send(data, q))?;
        Ok(FL_OK)
    })
}

/// SPEC §5 (`auto_permission` 0): gives `remote_id` (`project/device`) `level` (1 master,
/// 0 guest); every remote concerned is notified.
///
/// # Safety
/// `f` is NULL or a live device; `remote_id` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fl_field_set_operation_permission(
    f: *mut fl_field,
    remote_id: *const c_char,
    level: c_int,
) -> c_int {
    guard(|| {
        let h = &get(f, "field")?.0;
        let id = crate::device_id(text(remote_id, "remote_id")?)?;
        let l = to_level(level)?;
        h.block_on(h.device()?.set_operation_permission(&id, l))?;
        Ok(FL_OK)
    })
}

/// SPEC §3 (`audio_external` 1): one frame of PCM to send: exactly 10 ms, s16le,
/// `channels` interleaved, `samples` values in all, at 8000/16000/24000/32000/44100/48000.
///
/// # Safety
/// `f` is NULL or a live device; `pcm` has `samples` readable values.
#[no_mangle]
pub unsafe extern "C" fn fl_field_push_audio(
    f: *mut fl_field,
    pcm: *const i16,
    samples: usize,
    rate: u32,
    channels: u16,
) -> c_int {
    guard(|| {
        let h = &get(f, "field")?.0;
        h.device()?
            .push_audio(rate, channels, slice(pcm, samples, "pcm")?)?;
        Ok(FL_OK)
    })
}

/// SPEC §3: captures from (`dir` `FL_AUDIO_CAPTURE`) or plays on (`FL_AUDIO_PLAYBACK`)
/// device `index` of `fl_audio_device_name` from now on.
///
/// # Safety
/// `f` is NULL or a live device.
#[no_mangle]
pub unsafe extern "C" fn fl_field_set_audio_device(
    f: *mut fl_field,
    dir: c_int,
    index: u32,
) -> c_int {
    guard(|| {
        let h = &get(f, "field")?.0;
        let d = audio_dir(dir)?;
        h.block_on(h.device()?.set_audio_device(d, index as usize))?;
        Ok(FL_OK)
    })
}

/// Sets one callback slot of `dev`.
fn on(dev: *mut fl_field, set: impl FnOnce(&mut Callbacks)) -> c_int {
    guard(|| {
        let h = &get(dev, "field")?.0;
        set(&mut h.callbacks.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(FL_OK)
    })
}

/// Control data from the controlling remote (`TRRO_onControlData`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_control_data(
    dev: *mut fl_field,
    cb: fl_control_data_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.control_data = slot(cb, ctx))
}

/// A remote asks for a level (`auto_permission` 0; `TRRO_onOperationPermissionRequest`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_permission_request(
    dev: *mut fl_field,
    cb: fl_permission_request_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.permission_request = slot(cb, ctx))
}

/// Who is master of this device now.
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_master(
    dev: *mut fl_field,
    cb: fl_master_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.master = slot(cb, ctx))
}

/// A remote opened or closed an operation session.
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_session(
    dev: *mut fl_field,
    cb: fl_session_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.session = slot(cb, ctx))
}

/// The mixed audio of the remotes heard (`audio_play` "outside").
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_mixed_audio(
    dev: *mut fl_field,
    cb: fl_mixed_audio_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.mixed_audio = slot(cb, ctx))
}

/// The connection's state, warnings, and a stream whose source failed
/// (`FL_CONN_WARNING` with `SOURCE_FAILED`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_connection(
    dev: *mut fl_field,
    cb: fl_connection_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.connection = slot(cb, ctx))
}

/// Each network path's figures, once a second, while the connection is carried over
/// several (`network_bind` with two or more addresses).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_field_on_paths(
    dev: *mut fl_field,
    cb: fl_paths_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.paths = slot(cb, ctx))
}
