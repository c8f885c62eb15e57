//! Device ids: `project_id/device_id`, and the two device roles.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest accepted project or device part of an id.
pub const MAX_ID_PART: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("device id must be written project_id/device_id, got {0:?}")]
    Shape(String),
    #[error("id part {0:?} must be 1..=64 characters of A-Z a-z 0-9 _ . -")]
    Part(String),
}

/// Checks one part of an id (a project id or a bare device id).
pub fn validate_part(part: &str) -> Result<(), IdError> {
    let ok = !part.is_empty()
        && part.len() <= MAX_ID_PART
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::Part(part.to_string()))
    }
}

/// A full device id, `project/device`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    pub project: String,
    pub device: String,
}

impl DeviceId {
    pub fn new(project: &str, device: &str) -> Result<Self, IdError> {
        validate_part(project)?;
        validate_part(device)?;
        Ok(Self {
            project: project.to_string(),
            device: device.to_string(),
        })
    }
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (p, d) = s
            .split_once('/')
            .ok_or_else(|| IdError::Shape(s.to_string()))?;
        if d.contains('/') {
            return Err(IdError::Shape(s.to_string()));
        }
        DeviceId::new(p, d)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.device)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a device is: a field device publishes and is controlled; a remote device watches
/// and controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Field,
    Remote,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Field => "field",
            Role::Remote => "remote",
        }
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s {
            "field" => Ok(Role::Field),
            "remote" => Ok(Role::Remote),
            _ => Err(IdError::Part(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: DeviceId = "proj1/dev1".parse().unwrap();
        assert_eq!(id.project, "proj1");
        assert_eq!(id.to_string(), "proj1/dev1");
        for bad in [
            "",
            "a",
            "a/",
            "/b",
            "a/b/c",
            "a b/c",
            &format!("a/{}", "x".repeat(65)),
        ] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
        }
    }
}
