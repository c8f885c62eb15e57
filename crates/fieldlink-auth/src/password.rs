//! Stored device passwords: PBKDF2-HMAC-SHA256 with a random salt, encoded as
//! `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const SCHEME: &str = "pbkdf2-sha256";
const ITERATIONS: u32 = 20_000;

fn derive(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// The stored password of a device that has none (a GB28181 camera, which never logs in
/// over WebSocket): no password matches it, and storing it costs no hashing.
pub const NO_PASSWORD: &str = "!none";

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hash = derive(password, &salt, ITERATIONS);
    format!(
        "{SCHEME}${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    )
}

/// Like [`verify_password`], and as slow when there is no usable hash to check (no device,
/// a device without a password of its own): then a hash of a password nobody knows is
/// checked instead, so the time a login takes does not tell whether the device exists.
pub fn verify_password_or_dummy(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some((iter, salt, hash)) = stored.and_then(parse) {
        return derive(password, &salt, iter).ct_eq(hash.as_slice()).into();
    }
    let dummy = DUMMY.get_or_init(|| {
        let mut secret = [0u8; 16];
        rand::rng().fill_bytes(&mut secret);
        hash_password(&B64.encode(secret))
    });
    let _ = verify_password(password, dummy);
    false
}

/// The iterations, salt and hash of a well-formed stored hash.
fn parse(stored: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let (Ok(iter), Ok(salt), Ok(hash)) = (iter.parse::<u32>(), B64.decode(salt), B64.decode(hash))
    else {
        return None;
    };
    (1..=10_000_000)
        .contains(&iter)
        .then_some((iter, salt, hash))
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Some((iter, salt, hash)) = parse(stored) else {
        return false;
    };
    derive(password, &salt, iter).ct_eq(hash.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("secret");
        assert!(h.starts_with("pbkdf2-sha256$"));
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert_ne!(h, hash_password("secret"), "salted");
        for bad in [
            "",
            "secret",
            "pbkdf2-sha256$x$y$z",
            "USEPROJECTKEYPWD",
            NO_PASSWORD,
            "pbkdf2-sha256$0$AA$AA",
        ] {
            assert!(!verify_password("secret", bad));
            assert!(!verify_password_or_dummy("secret", Some(bad)));
        }
        assert!(verify_password_or_dummy("secret", Some(&h)));
        assert!(!verify_password_or_dummy("Secret", Some(&h)));
        assert!(!verify_password_or_dummy("secret", None));
    }
}
