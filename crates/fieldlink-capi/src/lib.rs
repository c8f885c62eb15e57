//! libfieldlink: fieldlink's field and remote devices for C and C++ programs.
//!
//! Conventions (as the vendor's SDK and rustls-ffi): every function returns `FL_OK` (1)
//! on success or a negative `ErrorCode` (`fl_error_name`, `fl_last_error` for the
//! message); every callback takes the program's `void* context` first; buffers are
//! pointer + length; every pointer is checked for NULL; no panic crosses into C. Each
//! device has one event thread on which all its callbacks run, in order; a callback may
//! call any function of the API (except freeing its own device). The header,
//! `include/fieldlink.h`, is generated from this crate by cbindgen (tests/header.rs).
#![allow(non_camel_case_types)]

mod callbacks;
mod field;
mod handle;
mod remote;
mod render;
mod status;

use std::ffi::{c_char, c_int};

use fieldlink_sdk::audio::AudioDirection;
use fieldlink_sdk::{DeviceId, Permission, Qos};

pub use callbacks::*;
pub use field::*;
pub use remote::*;
pub use status::{fl_error_describe, fl_error_name, fl_last_error, FL_OK};

use status::{bad, copy_out, guard, Res};

/// `dir` of the audio device functions: microphones.
pub const FL_AUDIO_CAPTURE: c_int = 0;
/// `dir` of the audio device functions: speakers.
pub const FL_AUDIO_PLAYBACK: c_int = 1;

fn to_qos(q: c_int) -> Res<Qos> {
    u8::try_from(q)
        .map_err(|_| bad(format!("qos must be 0 or 1, got {q}")))
        .and_then(|q| Qos::try_from(q).map_err(bad))
}

fn to_level(l: c_int) -> Res<Permission> {
    u8::try_from(l)
        .map_err(|_| bad(format!("permission level must be 0 or 1, got {l}")))
        .and_then(|l| Permission::try_from(l).map_err(bad))
}

fn device_id(s: &str) -> Res<DeviceId> {
    s.parse()
        .map_err(|e| bad(format!("{s:?} is not a device id (project/device): {e}")))
}

fn audio_dir(d: c_int) -> Res<AudioDirection> {
    match d {
        FL_AUDIO_CAPTURE => Ok(AudioDirection::Capture),
        FL_AUDIO_PLAYBACK => Ok(AudioDirection::Playback),
        _ => Err(bad(format!(
            "audio direction must be FL_AUDIO_CAPTURE (0) or FL_AUDIO_PLAYBACK (1), got {d}"
        ))),
    }
}

/// SPEC §3: how many capture (`FL_AUDIO_CAPTURE`) or playback (`FL_AUDIO_PLAYBACK`)
/// devices there are (≥ 0), or a negative error.
#[no_mangle]
pub extern "C" fn fl_audio_device_count(dir: c_int) -> c_int {
    guard(|| {
        let n = fieldlink_sdk::audio::devices(audio_dir(dir)?).len();
        Ok(c_int::try_from(n).unwrap_or(c_int::MAX))
    })
}

/// SPEC §3: the ALSA name of device `index` (as `audio_record` / `audio_play` take it),
/// copied into `buf` (`cap` bytes) with a NUL. Returns the bytes written with the NUL;
/// `AUDIO_DEVICE` for no such device, `TOO_LARGE` when `buf` is NULL or too small.
///
/// # Safety
/// `buf` is NULL or has `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fl_audio_device_name(
    dir: c_int,
    index: u32,
    buf: *mut c_char,
    cap: usize,
) -> c_int {
    guard(|| {
        let list = fieldlink_sdk::audio::devices(audio_dir(dir)?);
        let name = list.get(index as usize).ok_or_else(|| {
            fieldlink_sdk::SdkError::new(
                fieldlink_sdk::ErrorCode::AudioDevice,
                format!("no device {index}: there are {}", list.len()),
            )
        })?;
        copy_out(name, buf, cap)
    })
}
