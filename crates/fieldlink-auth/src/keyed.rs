//! Key-derived credentials (SPEC §8):
//! `strip(base64(HMAC_SHA256(key, msg))) + "_" + expire`, where strip drops `+`, `/`, `=`
//! and `expire` is UNIX time / 60 (minutes).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The stored password that means "only a key-derived password may log in".
pub const USE_PROJECT_KEY_PWD: &str = "USEPROJECTKEYPWD";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyedError {
    #[error("not of the form <signature>_<expire minutes>")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
    #[error("expired at minute {expire} (now minute {now})")]
    Expired { expire: u64, now: u64 },
    #[error("project key must be 32 characters of lowercase letters and digits")]
    BadKey,
}

/// Checks a project shared key: exactly 32 of `a-z0-9`.
pub fn validate_project_key(key: &str) -> Result<(), KeyedError> {
    if key.len() == 32
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(KeyedError::BadKey)
    }
}

fn sign(key: &str, msg: &str) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(msg.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    b64.chars()
        .filter(|c| !matches!(c, '+' | '/' | '='))
        .collect()
}

/// The key-derived password of device `dev_id` (`project/device`) valid until minute `expire`.
pub fn device_password(key: &str, dev_id: &str, expire: u64) -> String {
    format!("{}_{expire}", sign(key, &format!("{dev_id}{expire}")))
}

/// The session authorization code letting `remote_id` watch `field_id` until minute `expire`.
pub fn session_code(key: &str, remote_id: &str, field_id: &str, expire: u64) -> String {
    format!(
        "{}_{expire}",
        sign(key, &format!("{remote_id}{field_id}{expire}"))
    )
}

fn split(presented: &str) -> Result<u64, KeyedError> {
    let (sig, exp) = presented.rsplit_once('_').ok_or(KeyedError::Malformed)?;
    if sig.is_empty() || exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyedError::Malformed);
    }
    exp.parse().map_err(|_| KeyedError::Malformed)
}

fn check(expected: &str, presented: &str, expire: u64, now_unix: u64) -> Result<(), KeyedError> {
    if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(KeyedError::Mismatch);
    }
    let now = now_unix / 60;
    if expire < now {
        return Err(KeyedError::Expired { expire, now });
    }
    Ok(())
}

/// Verifies a key-derived device password at server time `now_unix` (seconds).
pub fn verify_device_password(
    key: &str,
    dev_id: &str,
    presented: &str,
    now_unix: u64,
) -> Result<(), KeyedError> {
    let expire = split(presented)?;
    check(
        &device_password(key, dev_id, expire),
        presented,
        expire,
        now_unix,
    )
}

/// Verifies a session authorization code at server time `now_unix` (seconds).
pub fn verify_session_code(
    key: &str,
    remote_id: &str,
    field_id: &str,
    presented: &str,
    now_unix: u64,
) -> Result<(), KeyedError> {
    let expire = split(presented)?;
    check(
        &session_code(key, remote_id, field_id, expire),
        presented,
        expire,
        now_unix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn spec_test_vectors() {
        assert_eq!(
            device_password(KEY, "proj1/dev1", 29433600),
            "sINpihXd9RT0pkibuCg4Z3NlhJuCpUFCZE3pqNlk8do_29433600"
        );
        assert_eq!(
            session_code(KEY, "proj1/remote1", "proj1/dev1", 29433600),
            "ZbHRkwBaykRp7h9tG9CecqmAUkcw5Bt5v8Q46S7XeQQ_29433600"
        );
    }

    #[test]
    fn verify_checks_signature_then_expiry() {
        let pw = device_password(KEY, "proj1/dev1", 1000);
        assert_eq!(
            verify_device_password(KEY, "proj1/dev1", &pw, 1000 * 60),
            Ok(())
        );
        assert_eq!(
            verify_device_password(KEY, "proj1/dev1", &pw, 1000 * 60 + 59),
            Ok(())
        );
        assert_eq!(
            verify_device_password(KEY, "proj1/dev1", &pw, 1001 * 60),
            Err(KeyedError::Expired {
                expire: 1000,
                now: 1001
            })
        );
        assert_eq!(
            verify_device_password(KEY, "proj1/dev2", &pw, 0),
            Err(KeyedError::Mismatch)
        );
        // Changing the expiry invalidates the signature.
        let forged = pw.replace("_1000", "_9999");
        assert_eq!(
            verify_device_password(KEY, "proj1/dev1", &forged, 0),
            Err(KeyedError::Mismatch)
        );
        for bad in [
            "",
            "_",
            "abc",
            "abc_",
            "_123",
            "abc_12x",
            "abc_99999999999999999999999",
        ] {
            assert_eq!(
                verify_device_password(KEY, "p/d", bad, 0),
                Err(KeyedError::Malformed),
                "{bad}"
            );
        }
        let code = session_code(KEY, "p/r", "p/f", 50);
        assert!(verify_session_code(KEY, "p/r", "p/f", &code, 50 * 60).is_ok());
        assert_eq!(
            verify_session_code(KEY, "p/r2", "p/f", &code, 0),
            Err(KeyedError::Mismatch)
        );
    }

    #[test]
    fn project_key_shape() {
        assert!(validate_project_key(KEY).is_ok());
        assert!(validate_project_key(&KEY.to_uppercase()).is_err());
        assert!(validate_project_key(&KEY[1..]).is_err());
        assert!(validate_project_key("0123456789abcdef0123456789abcde_").is_err());
    }
}
