//! Credentials for fieldlink (no I/O): key-derived device passwords and session
//! authorization codes (SPEC §8), stored-password hashing, and the login throttle.

pub mod keyed;
pub mod password;
pub mod throttle;

pub use keyed::{
    device_password, session_code, validate_project_key, verify_device_password,
    verify_session_code, KeyedError, USE_PROJECT_KEY_PWD,
};
pub use password::{hash_password, verify_password, verify_password_or_dummy, NO_PASSWORD};
pub use throttle::Throttle;

/// Constant-time equality of two strings (for tokens); lengths are not hidden.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
