//! `fl_remote_*`: the remote device (an operator console).

use std::ffi::{c_char, c_int, c_void};

use fieldlink_sdk::record::RecordConfig;
use fieldlink_sdk::{RemoteDevice, Role};

use crate::callbacks::{
    fl_connection_cb, fl_control_data_cb, fl_diag_report_cb, fl_mixed_audio_cb, fl_paths_cb,
    fl_permission_state_cb, fl_presence_cb, fl_stream_state_cb, fl_video_frame_cb, slot, Callbacks,
};
use crate::handle::{get, Handle};
use crate::status::{bad, copy_out, guard, opt_text, slice, text, FL_OK};
use crate::{audio_dir, device_id, to_level, to_qos};

/// A remote device. Made by `fl_remote_create`, freed by `fl_remote_free`.
pub struct fl_remote(pub(crate) Handle<RemoteDevice>);

/// Reads a remote device's config (a path to a JSON file, or the JSON text itself when
/// it starts with `{`; see docs/capi.md for its keys) and makes the device, not yet
/// connected: register callbacks, then `fl_remote_start`. On success `*out` is the
/// device (free it with `fl_remote_free`).
///
/// # Safety
/// `config` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_create(
    config: *const c_char,
    out: *mut *mut fl_remote,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(bad("out is NULL"));
        }
        let h = Handle::<RemoteDevice>::create(config)?;
        *out = Box::into_raw(Box::new(fl_remote(h)));
        Ok(FL_OK)
    })
}

/// Logs in (waits for the server's answer, up to 10 s). Callbacks registered before this
/// see every event from the start.
///
/// # Safety
/// `r` is NULL or a live device.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_start(r: *mut fl_remote) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let mut cfg = h.file.device_config(Role::Remote, &h.dir)?;
        // Internal rendering draws decoded pictures: decode unless told not to.
        cfg.decode = h.file.decode != Some(0);
        h.start(cfg, Some(crate::render::hook()), |_| Ok(()))?;
        Ok(FL_OK)
    })
}

/// Logs out and frees the device (see `fl_field_free`).
///
/// # Safety
/// `r` is NULL or a live device, not used by any other thread during or after the call.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_free(r: *mut fl_remote) -> c_int {
    guard(|| {
        if r.is_null() {
            return Ok(FL_OK);
        }
        if (*r).0.in_callback() {
            return Err(bad(
                "fl_remote_free from inside a callback of the same device",
            ));
        }
        Box::from_raw(r).0.close();
        Ok(FL_OK)
    })
}

/// The project's field devices as a JSON array (`[{"id":"p/d","name":"..","online":true,
/// "streams":2}]`), copied into `buf` (`cap` bytes) with a NUL. Returns the bytes it
/// needs with the NUL; `TOO_LARGE` (nothing written) when `buf` is NULL or too small.
///
/// # Safety
/// `r` is NULL or a live device; `buf` is NULL or has `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_list_fields(
    r: *mut fl_remote,
    buf: *mut c_char,
    cap: usize,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let list = h.block_on(h.device()?.list_fields())?;
        let json = serde_json::to_string(&list).map_err(|e| bad(e.to_string()))?;
        copy_out(&json, buf, cap)
    })
}

/// SPEC §2 `connect`: connects stream `stream_ids[i]` of `gwid` to receiver
/// `conn_fds[i]`, for `n` pairs; opens the operation session if needed. Asynchronous:
/// each receiver's state arrives through `fl_remote_on_stream_state`. `record_config` is
/// NULL (the config's global recording applies) or the SPEC's JSON
/// (`{"file_names":[{"file":"a","duration":15}, ...]}`, one entry per stream).
///
/// # Safety
/// `r` is NULL or a live device; strings are NULL or NUL-terminated; the arrays have `n`
/// readable values.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_connect(
    r: *mut fl_remote,
    gwid: *const c_char,
    n: u32,
    stream_ids: *const u32,
    conn_fds: *const u32,
    record_config: *const c_char,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let gwid = device_id(text(gwid, "gwid")?)?;
        let ids = slice(stream_ids, n as usize, "stream_ids")?;
        let fds = slice(conn_fds, n as usize, "conn_fds")?;
        let rc = opt_text(record_config, "record_config")?
            .map(RecordConfig::parse)
            .transpose()?;
        h.block_on(
            h.device()?
                .connect_streams_recorded(&gwid, ids, fds, rc.as_ref()),
        )?;
        Ok(FL_OK)
    })
}

/// SPEC §2 `set_windows`: binds receiver `conn_fds[i]` to X11 window `windows[i]`
/// (internal rendering: the SDK draws its video there, scaled, aspect kept) or, for 0,
/// to external rendering (`fl_remote_on_video_frame`). Re-binding never interrupts a
/// stream: swapping two receivers' windows swaps the pictures at their next frames.
///
/// # Safety
/// `r` is NULL or a live device; the arrays have `n` readable values.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_set_windows(
    r: *mut fl_remote,
    n: u32,
    conn_fds: *const u32,
    windows: *const u64,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let fds = slice(conn_fds, n as usize, "conn_fds")?;
        let ws: Vec<Option<u64>> = slice(windows, n as usize, "windows")?
            .iter()
            .map(|w| (*w != 0).then_some(*w))
            .collect();
        let dev = h.device()?;
        h.block_on(async { dev.set_windows(fds, &ws) })?;
        Ok(FL_OK)
    })
}

/// SPEC §2 `disconnect`: disconnects `n` receivers.
///
/// # Safety
/// `r` is NULL or a live device; `conn_fds` has `n` readable values.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_disconnect(
    r: *mut fl_remote,
    n: u32,
    conn_fds: *const u32,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let fds = slice(conn_fds, n as usize, "conn_fds")?;
        h.block_on(h.device()?.disconnect_streams(fds))?;
        Ok(FL_OK)
    })
}

/// SPEC §2 `disconnect_all`.
///
/// # Safety
/// `r` is NULL or a live device.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_disconnect_all(r: *mut fl_remote) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        h.block_on(h.device()?.disconnect_all())?;
        Ok(FL_OK)
    })
}

/// SPEC §4: control data to field device `gwid`; only the master may (`NOT_MASTER`).
/// `len` ≤ 700, at most 100 messages a second; `qos` 0 or 1.
///
/// # Safety
/// `r` is NULL or a live device; `gwid` is NULL or NUL-terminated; `data` has `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_send_control_data(
    r: *mut fl_remote,
    gwid: *const c_char,
    data: *const u8,
    len: usize,
    qos: c_int,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let gwid = device_id(text(gwid, "gwid")?)?;
        let data = slice(data, len, "data")?;
        let q = to_qos(qos)?;
        h.block_on(h.device()?.send(&gwid, data, q))?;
        Ok(FL_OK)
    })
}

/// SPEC §5: asks field device `gwid` for `level` (1 master, 0 release). The outcome
/// arrives through `fl_remote_on_permission_state`.
///
/// # Safety
/// `r` is NULL or a live device; `gwid` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_request_permission(
    r: *mut fl_remote,
    gwid: *const c_char,
    level: c_int,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let gwid = device_id(text(gwid, "gwid")?)?;
        h.block_on(h.device()?.request_permission(&gwid, to_level(level)?))?;
        Ok(FL_OK)
    })
}

/// SPEC §8: the session authorization code for field device `gwid`; a later code for
/// the same field device replaces the earlier one.
///
/// # Safety
/// `r` is NULL or a live device; strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_set_session_permission_token(
    r: *mut fl_remote,
    gwid: *const c_char,
    code: *const c_char,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let gwid = device_id(text(gwid, "gwid")?)?;
        let code = text(code, "code")?;
        h.block_on(h.device()?.set_session_permission_token(&gwid, code))?;
        Ok(FL_OK)
    })
}

/// SPEC §6: asks for a diagnosis of the session with `gwid` (a receiver must be connected
/// to one of its streams: `NOT_CONNECTED` otherwise). The report arrives ~10 s later
/// through `fl_remote_on_diag_report`.
///
/// # Safety
/// `r` is NULL or a live device; `gwid` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_diag_request(r: *mut fl_remote, gwid: *const c_char) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let gwid = device_id(text(gwid, "gwid")?)?;
        h.block_on(h.device()?.diag_request(&gwid))?;
        Ok(FL_OK)
    })
}

/// SPEC §3 (`audio_external` 1): one 10 ms PCM frame to send (see `fl_field_push_audio`).
///
/// # Safety
/// `r` is NULL or a live device; `pcm` has `samples` readable values.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_push_audio(
    r: *mut fl_remote,
    pcm: *const i16,
    samples: usize,
    rate: u32,
    channels: u16,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        h.device()?
            .push_audio(rate, channels, slice(pcm, samples, "pcm")?)?;
        Ok(FL_OK)
    })
}

/// SPEC §3: captures from / plays on device `index` (see `fl_field_set_audio_device`).
///
/// # Safety
/// `r` is NULL or a live device.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_set_audio_device(
    r: *mut fl_remote,
    dir: c_int,
    index: u32,
) -> c_int {
    guard(|| {
        let h = &get(r, "remote")?.0;
        let d = audio_dir(dir)?;
        h.block_on(h.device()?.set_audio_device(d, index as usize))?;
        Ok(FL_OK)
    })
}

/// Sets one callback slot of `dev`.
fn on(dev: *mut fl_remote, set: impl FnOnce(&mut Callbacks)) -> c_int {
    guard(|| {
        let h = &get(dev, "remote")?.0;
        set(&mut h.callbacks.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(FL_OK)
    })
}

/// Report data from a field device (`TRRO_onReportData`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_report_data(
    dev: *mut fl_remote,
    cb: fl_control_data_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.control_data = slot(cb, ctx))
}

/// This device's permission level for a field device changed, or its master did
/// (`TRRO_OnOperationPermissionState`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_permission_state(
    dev: *mut fl_remote,
    cb: fl_permission_state_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.permission_state = slot(cb, ctx))
}

/// A receiver's state (SPEC §2 per-conn_fd state callback).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_stream_state(
    dev: *mut fl_remote,
    cb: fl_stream_state_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.stream_state = slot(cb, ctx))
}

/// A field device came online or went offline.
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_presence(
    dev: *mut fl_remote,
    cb: fl_presence_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.presence = slot(cb, ctx))
}

/// The diagnosis report (`TRRO_OnDiagReport`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_diag_report(
    dev: *mut fl_remote,
    cb: fl_diag_report_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.diag_report = slot(cb, ctx))
}

/// Every received video frame (external rendering).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_video_frame(
    dev: *mut fl_remote,
    cb: fl_video_frame_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.video_frame = slot(cb, ctx))
}

/// The mixed audio of every party heard (`audio_play` "outside";
/// `TRRO_onRemoteMixAudioFrame`).
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_mixed_audio(
    dev: *mut fl_remote,
    cb: fl_mixed_audio_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.mixed_audio = slot(cb, ctx))
}

/// The connection's state and warnings.
///
/// # Safety
/// `dev` is NULL or live; `cb` is NULL (unregister) or a function that may be called with
/// `ctx` on the device's event thread until it is unregistered or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn fl_remote_on_connection(
    dev: *mut fl_remote,
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
pub unsafe extern "C" fn fl_remote_on_paths(
    dev: *mut fl_remote,
    cb: fl_paths_cb,
    ctx: *mut c_void,
) -> c_int {
    on(dev, |c| c.paths = slot(cb, ctx))
}
