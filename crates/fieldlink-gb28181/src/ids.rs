//! GB28181 ids: 20 decimal digits; the first 10 are the domain, digits 11–13 the type.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GB28181 id must be 20 decimal digits, got {0:?}")]
pub struct GbIdError(pub String);

/// What an id names (type code, digits 11–13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GbKind {
    Dvr,
    Nvr,
    Camera,
    Platform,
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GbId(String);

impl GbId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The domain / realm: the first 10 digits.
    pub fn domain(&self) -> &str {
        &self.0[..10]
    }
    pub fn type_code(&self) -> u16 {
        self.0[10..13].parse().unwrap_or(0)
    }
    pub fn kind(&self) -> GbKind {
        match self.type_code() {
            111 => GbKind::Dvr,
            118 => GbKind::Nvr,
            132 => GbKind::Camera,
            200 => GbKind::Platform,
            n => GbKind::Other(n),
        }
    }
}

impl FromStr for GbId {
    type Err = GbIdError;
    fn from_str(s: &str) -> Result<Self, GbIdError> {
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(GbId(s.to_string()))
        } else {
            Err(GbIdError(s.to_string()))
        }
    }
}

impl fmt::Display for GbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_domain() {
        let cam: GbId = "34020000001320000002".parse().unwrap();
        assert_eq!((cam.kind(), cam.domain()), (GbKind::Camera, "3402000000"));
        let p: GbId = "34020000002000000001".parse().unwrap();
        assert_eq!(p.kind(), GbKind::Platform);
        assert_eq!(
            "34020000001110000002".parse::<GbId>().unwrap().kind(),
            GbKind::Dvr
        );
        assert_eq!(
            "34020000001180000002".parse::<GbId>().unwrap().kind(),
            GbKind::Nvr
        );
        for bad in [
            "",
            "3402000000132000000",
            "340200000013200000021",
            "3402000000132000000x",
        ] {
            assert!(bad.parse::<GbId>().is_err(), "{bad}");
        }
    }
}
