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

#[cfg(test)]
mod tests {
    //! The conventions, called as C would (the whole API against a server: the C
    //! examples in crates/fieldlink/tests/capi.rs).
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        let mut buf = [0 as c_char; 512];
        let n = fl_last_error(buf.as_mut_ptr(), buf.len());
        assert!(n > 0, "a message was left");
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn null_pointers_are_errors_with_a_message_not_crashes() {
        let mut f: *mut fl_field = std::ptr::null_mut();
        unsafe {
            assert_eq!(fl_field_create(std::ptr::null(), &mut f), -2);
            assert_eq!(last(), "config is NULL");
            assert_eq!(fl_field_create(c"{}".as_ptr(), std::ptr::null_mut()), -2);
            assert_eq!(last(), "out is NULL");
            assert_eq!(
                fl_field_send_control_data(std::ptr::null_mut(), std::ptr::null(), 0, 1),
                -2
            );
            assert_eq!(last(), "field is NULL");
            assert_eq!(
                fl_remote_connect(
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null()
                ),
                -2
            );
            assert_eq!(
                fl_field_free(std::ptr::null_mut()),
                FL_OK,
                "freeing NULL is allowed"
            );
        }
    }

    #[test]
    fn a_bad_config_says_what_is_wrong() {
        let mut f: *mut fl_field = std::ptr::null_mut();
        let cfg = cr#"{"device_id":"f","projectid":"p","password":"x","max_streams":3}"#;
        assert_eq!(unsafe { fl_field_create(cfg.as_ptr(), &mut f) }, -2);
        assert!(last().contains("max_streams is a key of the other device role"));
        assert!(f.is_null(), "nothing made");
        assert_eq!(
            unsafe { fl_field_create(c"/no/such/config.json".as_ptr(), &mut f) },
            -2
        );
        assert!(last().contains("/no/such/config.json"));
    }

    #[test]
    fn calls_before_start_and_bad_arguments_are_refused_by_code() {
        let mut r: *mut fl_remote = std::ptr::null_mut();
        let cfg = cr#"{"device_id":"r","projectid":"p","password":"x","max_streams":2}"#;
        unsafe {
            assert_eq!(fl_remote_create(cfg.as_ptr(), &mut r), FL_OK);
            let gwid = c"p/f".as_ptr();
            assert_eq!(
                fl_remote_disconnect_all(r),
                -3,
                "NOT_LOGGED_IN before start"
            );
            assert_eq!(
                fl_remote_send_control_data(r, gwid, c"x".as_ptr().cast(), 1, 2),
                -2
            );
            assert_eq!(last(), "qos must be 0 or 1, got 2");
            assert_eq!(fl_remote_request_permission(r, c"nonsense".as_ptr(), 1), -2);
            assert!(last().contains("is not a device id"));
            // 3 pairs announced, NULL arrays.
            assert_eq!(
                fl_remote_connect(
                    r,
                    gwid,
                    3,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null()
                ),
                -2
            );
            assert_eq!(last(), "stream_ids is NULL but its length is 3");
            assert_eq!(fl_remote_free(r), FL_OK);
        }
    }

    #[test]
    fn a_server_that_is_not_there_fails_the_start_and_the_device_still_frees() {
        let mut r: *mut fl_remote = std::ptr::null_mut();
        // Port 9 on loopback: nothing listens (connection refused at once).
        let cfg =
            cr#"{"device_id":"r","projectid":"p","password":"x","server":"ws://127.0.0.1:9/ws"}"#;
        unsafe {
            assert_eq!(fl_remote_create(cfg.as_ptr(), &mut r), FL_OK);
            let t = std::time::Instant::now();
            let rc = fl_remote_start(r);
            assert!(rc < 0, "{rc}");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(12),
                "{:?}",
                t.elapsed()
            );
            eprintln!(
                "{}: {}",
                CStr::from_ptr(fl_error_name(rc)).to_string_lossy(),
                last()
            );
            assert_eq!(fl_remote_disconnect_all(r), -3, "still not logged in");
            assert_eq!(fl_remote_free(r), FL_OK);
        }
    }

    #[test]
    fn codes_have_names_and_buffers_too_small_are_not_overrun() {
        let name = |c| {
            unsafe { CStr::from_ptr(fl_error_name(c)) }
                .to_str()
                .unwrap()
        };
        assert_eq!(name(FL_OK), "OK");
        assert_eq!(name(-30), "NOT_MASTER");
        assert_eq!(name(-31), "MESSAGE_TOO_LARGE");
        assert!(fl_error_name(-999).is_null());
        assert!(fl_error_describe(-999).is_null());
        let mut small = [0x55 as c_char; 4];
        assert_eq!(
            unsafe { fl_audio_device_name(7, 0, small.as_mut_ptr(), 4) },
            -2
        );
        assert_eq!(
            status::copy_out("hello", small.as_mut_ptr(), 4)
                .unwrap_err()
                .code
                .code(),
            -50
        );
        assert!(small.iter().all(|b| *b == 0x55), "nothing written");
        assert_eq!(status::copy_out("abc", small.as_mut_ptr(), 4), Ok(4));
        assert_eq!(
            unsafe { CStr::from_ptr(small.as_ptr()) }.to_str(),
            Ok("abc")
        );
    }

    #[test]
    fn a_panic_becomes_internal_not_an_abort() {
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, -1);
        assert!(last().contains("boom"));
    }
}
