//! SIP digest authentication for REGISTER (RFC 2617 MD5, with and without `qop=auth`), and
//! the platform's nonces: unpredictable, expiring, bounded in number. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rand::RngCore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("Authorization header is not Digest")]
    NotDigest,
    #[error("Authorization header lacks {0}")]
    Missing(&'static str),
    #[error("unsupported digest algorithm {0:?}")]
    Algorithm(String),
    #[error("malformed Authorization header")]
    Malformed,
}

/// The fields of a device's `Authorization: Digest ...` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestResponse {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HA1 = MD5(user:realm:password): what a platform can store instead of the password.
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The expected `response` from HA1: HA2 = MD5(method:uri), response = MD5(HA1:nonce:HA2),
/// or MD5(HA1:nonce:nc:cnonce:qop:HA2) with `qop=auth`.
pub fn response_from_ha1(
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
) -> String {
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce, qop)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The expected `response` (RFC 2617) for a password.
pub fn expected_response(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
) -> String {
    response_from_ha1(&ha1(username, realm, password), method, uri, nonce, qop)
}

/// The `Authorization` header value a device sends for a REGISTER challenged with
/// `nonce` (MD5, no qop), as GB28181 devices write it.
pub fn register_authorization(
    username: &str,
    realm: &str,
    password: &str,
    uri: &str,
    nonce: &str,
) -> String {
    let resp = expected_response(username, realm, password, "REGISTER", uri, nonce, None);
    format!(
        "Digest username=\"{username}\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"{uri}\",response=\"{resp}\",algorithm=MD5"
    )
}

/// Splits `k=v, k="v, with comma"` parameters, tolerating spaces and missing quotes.
fn params(s: &str) -> Result<HashMap<String, String>, DigestError> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(DigestError::Malformed)?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').ok_or(DigestError::Malformed)?;
            value = r[..end].to_string();
            rest = &r[end + 1..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest
            .trim_start()
            .strip_prefix(',')
            .unwrap_or(rest)
            .trim_start();
        if key.is_empty() || out.len() > 32 {
            return Err(DigestError::Malformed);
        }
        out.insert(key, value);
    }
    Ok(out)
}

impl DigestResponse {
    /// Parses the value of an `Authorization` header.
    pub fn parse(header: &str) -> Result<DigestResponse, DigestError> {
        let h = header.trim();
        // Compare bytes: the header may hold any UTF-8, and index 6 is a char boundary
        // only once the first six bytes are the ASCII "Digest".
        if h.len() > 4096 || h.len() < 7 || !h.as_bytes()[..6].eq_ignore_ascii_case(b"digest") {
            return Err(DigestError::NotDigest);
        }
        let mut p = params(&h[6..])?;
        if let Some(a) = p.get("algorithm") {
            if !a.eq_ignore_ascii_case("md5") {
                return Err(DigestError::Algorithm(a.clone()));
            }
        }
        let mut take = |k: &'static str| p.remove(k).ok_or(DigestError::Missing(k));
        let mut r = DigestResponse {
            username: take("username")?,
            realm: take("realm")?,
            nonce: take("nonce")?,
            uri: take("uri")?,
            response: take("response")?,
            ..Default::default()
        };
        r.qop = p.remove("qop");
        r.nc = p.remove("nc");
        r.cnonce = p.remove("cnonce");
        r.opaque = p.remove("opaque");
        if r.qop.is_some() && (r.nc.is_none() || r.cnonce.is_none()) {
            return Err(DigestError::Missing("nc/cnonce"));
        }
        Ok(r)
    }

    /// True if the response matches `password` for `method` (HA2 uses the header's `uri`).
    pub fn verify(&self, password: &str, method: &str) -> bool {
        self.verify_ha1(&ha1(&self.username, &self.realm, password), method)
    }

    /// The same, against a stored HA1.
    pub fn verify_ha1(&self, ha1: &str, method: &str) -> bool {
        let qop = match (&self.qop, &self.nc, &self.cnonce) {
            (Some(q), Some(nc), Some(c)) => Some((nc.as_str(), c.as_str(), q.as_str())),
            _ => None,
        };
        let want = response_from_ha1(ha1, method, &self.uri, &self.nonce, qop);
        // Constant time over equal-length hex strings.
        want.len() == self.response.len()
            && want
                .bytes()
                .zip(self.response.to_ascii_lowercase().bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// What a presented nonce is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours but expired: answer 401 with `stale=true` and a fresh nonce.
    Stale,
    Unknown,
}

/// Nonces the platform handed out, each valid for `ttl`; at most `capacity` kept.
#[derive(Debug)]
pub struct Nonces {
    ttl: Duration,
    capacity: usize,
    issued: HashMap<String, Instant>,
    order: VecDeque<String>,
}

impl Nonces {
    pub fn new(ttl: Duration, capacity: usize) -> Nonces {
        Nonces {
            ttl,
            capacity: capacity.max(1),
            issued: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A fresh unpredictable nonce (128 random bits, hex).
    pub fn issue(&mut self, now: Instant) -> String {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        let n: String = b.iter().map(|x| format!("{x:02x}")).collect();
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.issued.remove(&old);
            }
        }
        self.issued.insert(n.clone(), now);
        self.order.push_back(n.clone());
        n
    }

    pub fn check(&self, nonce: &str, now: Instant) -> NonceCheck {
        match self.issued.get(nonce) {
            Some(t) if now.saturating_duration_since(*t) < self.ttl => NonceCheck::Valid,
            Some(_) => NonceCheck::Stale,
            None => NonceCheck::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_test_vector() {
        assert_eq!(
            expected_response(
                "34020000001110000002",
                "3402000000",
                "12345678",
                "REGISTER",
                "sip:34020000002000000001@3402000000",
                "29eb6d344c29a70a0997d173e937e693",
                None
            ),
            "42b636f290984b1d796907c882e4d5a8"
        );
        let h = r#"Digest username="34020000001110000002", realm="3402000000", nonce="29eb6d344c29a70a0997d173e937e693", uri="sip:34020000002000000001@3402000000", response="42b636f290984b1d796907c882e4d5a8", algorithm=MD5"#;
        let r = DigestResponse::parse(h).unwrap();
        assert!(r.verify("12345678", "REGISTER"));
        assert!(!r.verify("12345679", "REGISTER"));
        assert!(!r.verify("12345678", "INVITE"));
    }

    #[test]
    fn register_authorization_carries_the_spec_response() {
        let h = register_authorization(
            "34020000001110000002",
            "3402000000",
            "12345678",
            "sip:34020000002000000001@3402000000",
            "29eb6d344c29a70a0997d173e937e693",
        );
        assert!(
            h.contains(r#"response="42b636f290984b1d796907c882e4d5a8""#),
            "{h}"
        );
        assert!(DigestResponse::parse(&h)
            .unwrap()
            .verify("12345678", "REGISTER"));
    }

    #[test]
    fn qop_auth_variant() {
        let resp = expected_response(
            "u",
            "r",
            "p",
            "REGISTER",
            "sip:x",
            "n",
            Some(("00000001", "c0ffee", "auth")),
        );
        let h = format!(
            r#"Digest username="u",realm="r",nonce="n",uri="sip:x",response="{resp}",qop=auth,nc=00000001,cnonce="c0ffee""#
        );
        assert!(DigestResponse::parse(&h).unwrap().verify("p", "REGISTER"));
        let no_cnonce = format!(
            r#"Digest username="u",realm="r",nonce="n",uri="sip:x",response="{resp}",qop=auth"#
        );
        assert_eq!(
            DigestResponse::parse(&no_cnonce),
            Err(DigestError::Missing("nc/cnonce"))
        );
        assert!(matches!(
            DigestResponse::parse("Basic abc"),
            Err(DigestError::NotDigest)
        ));
        assert!(matches!(
            DigestResponse::parse(r#"Digest username="u",algorithm=SHA-256"#),
            Err(DigestError::Algorithm(_))
        ));
    }

    #[test]
    fn nonces_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut n = Nonces::new(Duration::from_secs(30), 2);
        let a = n.issue(t0);
        assert_ne!(a, n.issue(t0), "unpredictable, not repeated");
        assert_eq!(n.check(&a, t0 + Duration::from_secs(29)), NonceCheck::Valid);
        assert_eq!(n.check(&a, t0 + Duration::from_secs(30)), NonceCheck::Stale);
        assert_eq!(n.check("beef", t0), NonceCheck::Unknown);
        n.issue(t0);
        assert_eq!(
            n.check(&a, t0),
            NonceCheck::Unknown,
            "oldest evicted beyond capacity"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = DigestResponse::parse(&s);
            let _ = DigestResponse::parse(&format!("Digest {s}"));
        }
    }
}
