//! Session diagnostics (SPEC §6): what each side measured over the window, and the report
//! the server joins from both. Values are "ok" or a likely cause; numbers are numbers, and
//! an abnormal number's cause is in `notes` under the number's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long both sides measure, ms (SPEC §6: about 10 s).
pub const DIAG_WINDOW_MS: u32 = 10_000;
/// How long the server waits for the parts after the window, ms.
pub const DIAG_GRACE_MS: u32 = 3_000;
/// The value of a check that found nothing wrong.
pub const OK: &str = "ok";

/// A field device's measurement of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldPart {
    pub stream_id: u32,
    pub video_capture: String,
    pub video_encode: String,
    pub video_transfer: String,
    /// Send loss, percent (from the server's receiver reports).
    pub lost: f64,
    /// Frames per second sent.
    pub fps: f64,
    /// Bits per second sent.
    pub bps: u64,
    /// Round trip to the server, ms (`None`: not measured yet).
    pub rtt: Option<f64>,
    /// Causes of abnormal numbers, by field name.
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

/// A remote device's measurement of one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemotePart {
    pub conn_fd: u32,
    pub video_transfer: String,
    pub video_decode: String,
    /// Capture to arrival, ms (mean over the window; `None` without capture times).
    pub latency: Option<f64>,
    /// Receive loss before repair, percent.
    pub lost: f64,
    pub fps: f64,
    pub bps: u64,
    pub rtt: Option<f64>,
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

/// The report a remote device gets (the `json` of SPEC §6's callback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The remote's signalling connection (the vendor's MQTT; fieldlink's WebSocket).
    pub remote_mqtt_connect: String,
    /// "ok", or why the diagnosis itself failed or is incomplete.
    pub diag_error: String,
    /// The field device diagnosed.
    pub device_id: String,
    /// "ok" when the remote's mode (`cloud_mode`) equals the field device's.
    pub remote_mode: String,
    pub result: Vec<StreamReport>,
}

/// One connected stream of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub stream_id: u32,
    pub conn_fd: u32,
    /// `None` when the field device sent no part (see `diag_error`).
    pub field: Option<FieldSide>,
    pub remote: Option<RemoteSide>,
}

/// The field side of one stream: the server's view of its connections, and its part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSide {
    pub signal_connect: String,
    pub media_connect: String,
    #[serde(flatten)]
    pub part: FieldPart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteSide {
    pub signal_connect: String,
    pub media_connect: String,
    #[serde(flatten)]
    pub part: RemotePart,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_vendor_field_names() {
        let r = Report {
            remote_mqtt_connect: OK.into(),
            diag_error: OK.into(),
            device_id: "p/f".into(),
            remote_mode: OK.into(),
            result: vec![StreamReport {
                stream_id: 0,
                conn_fd: 1,
                field: Some(FieldSide {
                    signal_connect: OK.into(),
                    media_connect: OK.into(),
                    part: FieldPart {
                        stream_id: 0,
                        video_capture: OK.into(),
                        video_encode: OK.into(),
                        video_transfer: OK.into(),
                        lost: 0.0,
                        fps: 25.0,
                        bps: 800_000,
                        rtt: Some(1.0),
                        notes: BTreeMap::new(),
                    },
                }),
                remote: None,
            }],
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "remote_mqtt_connect",
            "diag_error",
            "device_id",
            "remote_mode",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let f = &v["result"][0]["field"];
        for k in [
            "signal_connect",
            "media_connect",
            "video_capture",
            "video_encode",
            "video_transfer",
            "lost",
            "fps",
            "bps",
            "rtt",
        ] {
            assert!(f.get(k).is_some(), "{k}");
        }
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
