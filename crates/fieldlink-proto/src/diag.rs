//! Session diagnostics (SPEC §6): what each side measured over the window, and the report
//! the server joins from both. Values are "ok" or a likely cause; numbers are numbers, and
//! an abnormal number's cause is in `notes` under the number's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::DeviceId;

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
    /// The field device's network paths when its connection is carried over several
    /// (SPEC §9, `network_bind`); absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_paths: Vec<PathReport>,
}

/// Most network paths a report carries (`network_bind` has at most 8 addresses).
pub const MAX_PATHS: usize = 8;
/// The longest local address text a path measure may carry.
const MAX_LOCAL: usize = 64;

/// What a device measured of one of its network paths over the window (SPEC §9): the
/// connection's, the same for every stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathMeasure {
    pub path: u8,
    /// Its local address (`network_bind`).
    pub local: String,
    /// "up", "recovering" or "down" at the end of the window.
    pub state: String,
    /// Mean round trip, ms (`None`: never measured in the window).
    pub rtt_ms: Option<f64>,
    /// Mean loss (the larger of probes and data lost), percent.
    pub loss_pct: f64,
    /// Mean share of the bytes the device sent, percent (a datagram sent on two paths
    /// counts on both, so shares may add up to more than 100).
    pub share_pct: f64,
    /// Times it went down in the window.
    pub downs: u32,
}

impl PathMeasure {
    /// Cuts what the device wrote to sizes and ranges fit for a report.
    pub fn bounded(mut self) -> Self {
        self.local = self.local.chars().take(MAX_LOCAL).collect();
        if !matches!(self.state.as_str(), "up" | "recovering" | "down") {
            self.state = "unknown".into();
        }
        let pct = |v: f64| {
            if v.is_finite() {
                round1(v.clamp(0.0, 100.0))
            } else {
                0.0
            }
        };
        self.loss_pct = pct(self.loss_pct);
        self.share_pct = pct(self.share_pct);
        self.rtt_ms = self
            .rtt_ms
            .filter(|r| r.is_finite() && *r >= 0.0)
            .map(round1);
        self
    }
}

/// One network path in the report: its figures and "ok" or what is wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    #[serde(flatten)]
    pub measure: PathMeasure,
    pub check: String,
}

/// The check of one network path (thresholds: docs/diagnostics.md).
pub fn path_report(m: PathMeasure) -> PathReport {
    let m = m.bounded();
    let name = format!("path {} ({})", m.path, m.local);
    let check = if m.state == "down" {
        format!("{name} is down: nothing heard on it for 300 ms or more")
    } else if m.downs > 0 {
        format!(
            "{name} went down {} time{} in the window: the link drops out",
            m.downs,
            if m.downs == 1 { "" } else { "s" }
        )
    } else if m.loss_pct >= 1.0 {
        format!(
            "{name} loses {:.1}% (normal < 1%): the other paths carry what it loses",
            m.loss_pct
        )
    } else if let Some(r) = m.rtt_ms.filter(|r| *r >= 100.0) {
        format!("{name}: round trip {r:.0} ms (normal < 100 ms)")
    } else {
        OK.into()
    };
    PathReport { measure: m, check }
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

/// What a field device measured of one stream over the window (`diag_report`). The
/// server derives the checks and causes from it ([`field_part`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldMeasure {
    pub stream_id: u32,
    /// Length of the window, seconds.
    pub seconds: f64,
    /// Frames the source delivered, and those sent, with their bytes.
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes: u64,
    /// Mean send loss (percent) and RTT (ms) of the receiver reports in the window.
    pub loss_pct: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// The source's configured frame rate and highest bitrate (kbit/s, encoding sources).
    pub fps_configured: Option<f64>,
    pub kbps_configured: Option<u32>,
    /// The bandwidth estimate at the end of the window, kbit/s.
    pub estimate_kbps: Option<u32>,
    /// The source's failure, and for how long it has lasted (seconds), while it lasts.
    pub source_failed: Option<String>,
    pub failed_for_s: Option<u64>,
    /// Why the last frame could not be sent.
    pub send_error: Option<String>,
}

/// What a remote device measured of one receiver over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteMeasure {
    pub conn_fd: u32,
    pub seconds: f64,
    /// Frames that arrived complete, and those usable (decodable).
    pub frames_in: u64,
    pub frames_out: u64,
    /// Pictures decoded; `None` when the device does not decode itself.
    pub decoded: Option<u64>,
    /// Frames lost or unusable.
    pub dropped: u64,
    pub bytes: u64,
    pub loss_pct: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// Mean capture-to-arrival (or display) latency, ms.
    pub latency_ms: Option<f64>,
}

/// The longest text a device may put in a measure (a camera's failure reason).
pub const MAX_REASON: usize = 300;

impl FieldMeasure {
    /// Cuts what the device wrote to sizes fit for a report.
    pub fn bounded(mut self) -> Self {
        let cut = |s: &mut Option<String>| {
            if let Some(t) = s {
                *t = t.chars().take(MAX_REASON).collect();
            }
        };
        cut(&mut self.source_failed);
        cut(&mut self.send_error);
        self
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A rate per second over a window (never divides by zero or a negative time).
fn per_s(n: f64, seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.001 {
        n / seconds
    } else {
        0.0
    }
}

/// Notes on loss and RTT, the same for both sides.
fn network_notes(notes: &mut BTreeMap<String, String>, lost: f64, rtt: Option<f64>, dir: &str) {
    if lost >= 1.0 {
        notes.insert(
            "lost".into(),
            format!("{dir} loss {lost:.1}% (normal < 1%): the network drops packets"),
        );
    }
    if let Some(r) = rtt.filter(|r| *r >= 100.0) {
        notes.insert(
            "rtt".into(),
            format!("round trip {r:.0} ms to the server (normal < 100 ms)"),
        );
    }
}

/// The checks and causes of one stream's field side (thresholds: docs/diagnostics.md).
pub fn field_part(m: &FieldMeasure) -> FieldPart {
    let fps = per_s(m.frames_out as f64, m.seconds);
    let bps = per_s(m.bytes as f64 * 8.0, m.seconds) as u64;
    let in_fps = per_s(m.frames_in as f64, m.seconds);
    let lost = round1(m.loss_pct.unwrap_or(0.0).clamp(0.0, 100.0));
    let mut notes = BTreeMap::new();
    let video_capture = match &m.source_failed {
        Some(why) => format!(
            "no input frames from camera ({why}; since {} s ago)",
            m.failed_for_s.unwrap_or(0)
        ),
        None if m.frames_in == 0 => {
            format!("no input frames from the source in {:.0} s", m.seconds)
        }
        None => OK.into(),
    };
    let video_encode = match m.fps_configured {
        Some(cfg) if m.frames_in > 0 && in_fps < cfg * 0.8 => format!(
            "the source delivers {in_fps:.1} fps, {cfg} configured (camera or encoder too slow)"
        ),
        _ => OK.into(),
    };
    let video_transfer = if m.frames_in > 0 && m.frames_out * 100 < m.frames_in * 99 {
        format!(
            "{} of {} frames could not be sent ({})",
            m.frames_in.saturating_sub(m.frames_out),
            m.frames_in,
            m.send_error
                .as_deref()
                .unwrap_or("media connection not ready")
        )
    } else {
        OK.into()
    };
    let est = m
        .estimate_kbps
        .map(|e| format!(", estimate {e} kbit/s"))
        .unwrap_or_default();
    if let Some(cfg) = m
        .fps_configured
        .filter(|cfg| m.frames_in > 0 && fps < cfg * 0.8)
    {
        notes.insert(
            "fps".into(),
            format!("{fps:.1} fps sent, {cfg} configured{est}"),
        );
    }
    if let Some(cfg) = m
        .kbps_configured
        .filter(|k| m.frames_in > 0 && bps < u64::from(*k) * 800)
    {
        let why = if m.estimate_kbps.is_some_and(|e| e < cfg) {
            "network limited"
        } else {
            "the encoder makes less than configured (a simple picture)"
        };
        notes.insert(
            "bps".into(),
            format!("{why}: {} kbit/s sent, {cfg} configured{est}", bps / 1000),
        );
    }
    network_notes(&mut notes, lost, m.rtt_ms, "send");
    FieldPart {
        stream_id: m.stream_id,
        video_capture,
        video_encode,
        video_transfer,
        lost,
        fps: round1(fps),
        bps,
        rtt: m.rtt_ms.map(round1),
        notes,
    }
}

/// The checks and causes of one receiver's remote side. `stream`: what it is connected
/// to, for the cause when nothing arrived.
pub fn remote_part(m: &RemoteMeasure, stream: Option<(&DeviceId, u32)>) -> RemotePart {
    let fps = per_s(m.frames_in as f64, m.seconds);
    let bps = per_s(m.bytes as f64 * 8.0, m.seconds) as u64;
    let lost = round1(m.loss_pct.unwrap_or(0.0).clamp(0.0, 100.0));
    let mut notes = BTreeMap::new();
    let video_transfer = if m.frames_in == 0 {
        match stream {
            Some((g, s)) => format!(
                "no video received in {:.0} s from {g} stream {s}",
                m.seconds
            ),
            None => "the receiver is not connected to a stream".into(),
        }
    } else if m.dropped * 100 > m.frames_in {
        format!(
            "{} of {} frames lost or unusable (loss the repairs did not cover)",
            m.dropped, m.frames_in
        )
    } else {
        OK.into()
    };
    let video_decode = match m.decoded {
        None => "not measured: the application decodes (DeviceConfig::decode is off)".into(),
        Some(d) if m.frames_out > 0 && d * 100 < m.frames_out * 99 => format!(
            "receiver not decoding: {d} frames decoded of {} received",
            m.frames_out
        ),
        Some(_) => OK.into(),
    };
    let latency = m.latency_ms.filter(|l| l.is_finite()).map(round1);
    if let Some(l) = latency.filter(|l| *l > 150.0) {
        notes.insert(
            "latency".into(),
            format!(
                "video latency {l:.0} ms (normal 30–150 ms; clocks of the two devices must agree)"
            ),
        );
    }
    network_notes(&mut notes, lost, m.rtt_ms, "receive");
    RemotePart {
        conn_fd: m.conn_fd,
        video_transfer,
        video_decode,
        latency,
        lost,
        fps: round1(fps),
        bps,
        rtt: m.rtt_ms.map(round1),
        notes,
    }
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
            field_paths: Vec::new(),
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
        assert!(v.get("field_paths").is_none(), "absent with one path");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn paths_are_checked_and_bounded() {
        let p = |state: &str, loss: f64, downs: u32| PathMeasure {
            path: 1,
            local: "10.65.0.2".into(),
            state: state.into(),
            rtt_ms: Some(31.26),
            loss_pct: loss,
            share_pct: 48.04,
            downs,
        };
        let ok = path_report(p("up", 0.2, 0));
        assert_eq!(ok.check, OK);
        assert_eq!(
            (ok.measure.rtt_ms, ok.measure.share_pct),
            (Some(31.3), 48.0)
        );
        assert_eq!(
            path_report(p("down", 0.0, 1)).check,
            "path 1 (10.65.0.2) is down: nothing heard on it for 300 ms or more"
        );
        assert_eq!(
            path_report(p("up", 0.0, 3)).check,
            "path 1 (10.65.0.2) went down 3 times in the window: the link drops out"
        );
        assert!(path_report(p("up", 12.0, 0)).check.contains("loses 12.0%"));
        let v = serde_json::to_value(path_report(p("up", 0.0, 0))).unwrap();
        for k in [
            "path",
            "local",
            "state",
            "rtt_ms",
            "loss_pct",
            "share_pct",
            "downs",
            "check",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        // What a device may write is cut down, never trusted.
        let odd = PathMeasure {
            local: "x".repeat(10_000),
            state: "<script>".into(),
            rtt_ms: Some(f64::NAN),
            loss_pct: 1e12,
            share_pct: -5.0,
            ..Default::default()
        }
        .bounded();
        assert_eq!(
            (
                odd.local.len(),
                &*odd.state,
                odd.rtt_ms,
                odd.loss_pct,
                odd.share_pct
            ),
            (MAX_LOCAL, "unknown", None, 100.0, 0.0)
        );
    }

    fn field(frames: u64, bytes: u64) -> FieldMeasure {
        FieldMeasure {
            seconds: 10.0,
            frames_in: frames,
            frames_out: frames,
            bytes,
            fps_configured: Some(25.0),
            kbps_configured: Some(800),
            ..Default::default()
        }
    }

    #[test]
    fn healthy_stream_is_ok_everywhere() {
        let mut m = field(250, 1_000_000);
        m.loss_pct = Some(0.0);
        m.rtt_ms = Some(2.0);
        m.estimate_kbps = Some(900);
        let p = field_part(&m);
        assert_eq!(
            (&*p.video_capture, &*p.video_encode, &*p.video_transfer),
            (OK, OK, OK)
        );
        assert_eq!((p.fps, p.bps), (25.0, 800_000));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn causes_name_what_is_wrong() {
        let mut stopped = field(0, 0);
        stopped.source_failed = Some("camera rtsp://127.0.0.1/cam: connection refused".into());
        stopped.failed_for_s = Some(4);
        let p = field_part(&stopped);
        assert!(
            p.video_capture.starts_with("no input frames from camera")
                && p.video_capture.contains("since 4 s ago"),
            "{}",
            p.video_capture
        );
        let mut limited = field(90, 375_000);
        limited.kbps_configured = Some(1500);
        limited.loss_pct = Some(3.0);
        limited.rtt_ms = Some(150.0);
        limited.estimate_kbps = Some(300);
        let p = field_part(&limited);
        assert!(
            p.notes["bps"]
                .starts_with("network limited: 300 kbit/s sent, 1500 configured, estimate 300"),
            "{:?}",
            p.notes
        );
        assert!(
            p.notes["fps"].contains("9.0 fps sent, 25 configured"),
            "{:?}",
            p.notes
        );
        assert!(p.notes.contains_key("lost") && p.notes.contains_key("rtt"));
        assert!(p.video_encode.contains("9.0 fps"), "{}", p.video_encode);
        let not_decoding = RemoteMeasure {
            seconds: 10.0,
            frames_in: 240,
            frames_out: 240,
            decoded: Some(0),
            ..Default::default()
        };
        let r = remote_part(&not_decoding, None);
        assert_eq!(
            r.video_decode,
            "receiver not decoding: 0 frames decoded of 240 received"
        );
        let nothing = RemoteMeasure {
            seconds: 10.0,
            decoded: Some(0),
            ..Default::default()
        };
        let g: DeviceId = "p/f".parse().unwrap();
        let r = remote_part(&nothing, Some((&g, 1)));
        assert_eq!(
            r.video_transfer,
            "no video received in 10 s from p/f stream 1"
        );
        // Nonsense from a device gives numbers, not a panic.
        let odd = RemoteMeasure {
            seconds: -1.0,
            frames_in: u64::MAX,
            latency_ms: Some(f64::NAN),
            loss_pct: Some(1e9),
            ..Default::default()
        };
        let r = remote_part(&odd, None);
        assert_eq!((r.fps, r.latency, r.lost), (0.0, None, 100.0));
    }
}
