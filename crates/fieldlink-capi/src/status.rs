//! Return values, the calling thread's last error, and the boundary guard: every exported
//! function returns `FL_OK` (1) or a negative `ErrorCode`, and no panic crosses into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use fieldlink_sdk::{ErrorCode, SdkError};

/// Success.
pub const FL_OK: c_int = 1;

thread_local! {
    static LAST: RefCell<Option<SdkError>> = const { RefCell::new(None) };
}

pub(crate) type Res<T> = Result<T, SdkError>;

pub(crate) fn bad(msg: impl Into<String>) -> SdkError {
    SdkError::new(ErrorCode::BadRequest, msg)
}

/// Runs the body of an exported function: `Ok` is `FL_OK` (or the count it returns), an
/// error or a panic is remembered for `fl_last_error` and returned as its negative code.
pub(crate) fn guard(f: impl FnOnce() -> Res<c_int>) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(SdkError::new(
            ErrorCode::Internal,
            format!("panic inside libfieldlink: {what}"),
        ))
    });
    match r {
        Ok(v) => v,
        Err(e) => {
            let code = e.code.code();
            LAST.with(|l| *l.borrow_mut() = Some(e));
            code
        }
    }
}

/// A C string argument, checked: not NULL, UTF-8.
pub(crate) fn text<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    if p.is_null() {
        return Err(bad(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and, by the API's contract, a NUL-terminated string that outlives
    // the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// An optional C string argument (NULL = none).
pub(crate) fn opt_text<'a>(p: *const c_char, what: &str) -> Res<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        text(p, what).map(Some)
    }
}

/// `len` elements at `p`, checked: NULL is allowed only for none.
pub(crate) fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Res<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(bad(format!("{what} is NULL but its length is {len}")));
    }
    // SAFETY: non-NULL; the caller promises `len` readable elements for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A string for a callback: valid until the callback returns. A NUL inside (never in
/// ids; possibly in a message) is cut there rather than dropping the string.
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let n = e.nul_position();
        CString::new(&s.as_bytes()[..n]).unwrap_or_default()
    })
}

/// Copies `s` and a NUL into `buf` (`cap` bytes). Returns the bytes `s` needs with its
/// NUL; with a NULL or too small `buf` nothing is written and the error says how many.
pub(crate) fn copy_out(s: &str, buf: *mut c_char, cap: usize) -> Res<c_int> {
    let need = s.len() + 1;
    let n =
        c_int::try_from(need).map_err(|_| SdkError::new(ErrorCode::TooLarge, "text too long"))?;
    if buf.is_null() || cap < need {
        return Err(SdkError::new(
            ErrorCode::TooLarge,
            format!("the buffer needs {need} bytes (given {cap})"),
        ));
    }
    // SAFETY: `buf` is non-NULL with `cap >= need` writable bytes (the caller's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(n)
}

/// The name of an `ErrorCode` (e.g. "NOT_MASTER" for -30), "OK" for 1, NULL for a value
/// that is neither. The string is static.
#[no_mangle]
pub extern "C" fn fl_error_name(code: c_int) -> *const c_char {
    if code == FL_OK {
        return c"OK".as_ptr();
    }
    code_text(code).map_or(std::ptr::null(), |(name, _)| name.as_ptr())
}

/// A one-line description of an `ErrorCode`, "success" for 1, NULL for a value that is
/// neither. The string is static.
#[no_mangle]
pub extern "C" fn fl_error_describe(code: c_int) -> *const c_char {
    if code == FL_OK {
        return c"success".as_ptr();
    }
    code_text(code).map_or(std::ptr::null(), |(_, describe)| describe.as_ptr())
}

/// The name and description of `code` as C strings that live as long as the library.
fn code_text(code: c_int) -> Option<&'static (CString, CString)> {
    use std::sync::OnceLock;
    static TEXTS: OnceLock<Vec<(c_int, (CString, CString))>> = OnceLock::new();
    TEXTS
        .get_or_init(|| {
            ErrorCode::ALL
                .iter()
                .map(|c| (c.code(), (c_string(c.name()), c_string(c.describe()))))
                .collect()
        })
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, t)| t)
}

/// The message of the last failure on this thread ("why", with the values concerned),
/// copied into `buf` (`cap` bytes, NUL-terminated). Returns the bytes written with the NUL,
/// 0 when there was no failure, or `TOO_LARGE` when `buf` is too small (nothing written).
#[no_mangle]
pub extern "C" fn fl_last_error(buf: *mut c_char, cap: usize) -> c_int {
    let msg = LAST.with(|l| l.borrow().as_ref().map(|e| e.message.clone()));
    match msg {
        None => 0,
        Some(m) => guard(|| copy_out(&m, buf, cap)),
    }
}
