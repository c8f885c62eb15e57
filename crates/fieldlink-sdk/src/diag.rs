//! Session diagnostics on the device (SPEC §6), pure: counters per stream (field) or
//! receiver (remote), the windows of running diagnoses, and the parts with their likely
//! causes. The driver feeds it facts and sends the parts; nothing here does I/O.
//!
//! Thresholds (docs/diagnostics.md): loss ≥ 1% and RTT ≥ 100 ms are abnormal (SPEC §6's
//! normal ranges; Twilio's network warnings also start at 1% loss), latency above 150 ms
//! (SPEC §6), frame rate or bitrate below 80% of the configured one, frames lost or
//! undecoded above 1% of those received.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fieldlink_proto::diag::{FieldPart, RemotePart, OK};
use fieldlink_proto::DeviceId;

/// Most diagnoses a device measures at once.
pub const MAX_WINDOWS: usize = 8;
/// Most loss/RTT samples kept per stream and window (stats come once a second).
const MAX_SAMPLES: usize = 64;

/// Cumulative counters of one stream (field) or receiver (remote).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    /// Field: frames the source delivered. Remote: frames that arrived complete.
    pub frames_in: u64,
    /// Field: frames sent. Remote: frames delivered to the application (decodable).
    pub frames_out: u64,
    pub bytes: u64,
    /// Remote: pictures decoded.
    pub decoded: u64,
    /// Remote: frames lost or unusable.
    pub dropped: u64,
    /// Remote: capture-to-arrival sum (ms) and count, for frames with a capture time.
    pub latency_sum_ms: f64,
    pub latency_n: u64,
}

impl Counts {
    fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            frames_in: self.frames_in.saturating_sub(earlier.frames_in),
            frames_out: self.frames_out.saturating_sub(earlier.frames_out),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            decoded: self.decoded.saturating_sub(earlier.decoded),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            latency_sum_ms: (self.latency_sum_ms - earlier.latency_sum_ms).max(0.0),
            latency_n: self.latency_n.saturating_sub(earlier.latency_n),
        }
    }
}

/// What a field device knows of one stream besides its counters.
#[derive(Debug, Default, Clone)]
pub struct StreamInfo {
    /// The source's frame rate and highest bitrate (kbit/s, for sources that encode).
    pub fps: Option<f64>,
    pub kbps: Option<u32>,
    /// The source's failure and since when, while it lasts.
    pub failed: Option<(String, Instant)>,
    /// Why the last frame could not be sent.
    pub send_error: Option<String>,
}

/// A loss fraction and RTT sample (from RTCP).
type Sample = (Option<f32>, Option<Duration>);

/// One running diagnosis.
#[derive(Debug)]
struct Window {
    diag: u64,
    started: Instant,
    due: Instant,
    /// Stream ids (field) or conn_fds (remote), with their counters at the start and
    /// the (loss fraction, RTT) samples since.
    items: Vec<(u32, Counts, Vec<Sample>)>,
}

/// A diagnosis whose window is over: the diagnosis id and, per id, what was measured.
#[derive(Debug)]
pub struct Finished {
    pub diag: u64,
    pub items: Vec<(u32, Measured)>,
}

/// What one stream or receiver did over a window.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub counts: Counts,
    pub seconds: f64,
    /// Mean loss, percent, and mean RTT, ms, of the samples.
    pub loss_pct: Option<f64>,
    pub rtt_ms: Option<f64>,
}

/// The counters of every stream or receiver, and the running windows.
#[derive(Debug, Default)]
pub struct Meter {
    pub counts: Vec<Counts>,
    pub info: Vec<StreamInfo>,
    windows: Vec<Window>,
}

impl Meter {
    pub fn new(n: usize) -> Meter {
        Meter {
            counts: vec![Counts::default(); n],
            info: vec![StreamInfo::default(); n],
            windows: Vec::new(),
        }
    }

    pub fn at(&mut self, i: usize) -> Option<&mut Counts> {
        self.counts.get_mut(i)
    }

    /// Starts measuring `ids` for `window`; ids out of range are left out. A diagnosis
    /// beyond [`MAX_WINDOWS`] is not measured (the server then reports it as timed out).
    pub fn start(&mut self, diag: u64, ids: &[u32], window: Duration, now: Instant) {
        if self.windows.len() >= MAX_WINDOWS || self.windows.iter().any(|w| w.diag == diag) {
            return;
        }
        let items = ids
            .iter()
            .filter_map(|id| Some((*id, self.counts.get(*id as usize)?.clone(), Vec::new())))
            .collect();
        self.windows.push(Window {
            diag,
            started: now,
            due: now + window,
            items,
        });
    }

    /// A loss/RTT sample of stream or receiver `id` (from RTCP).
    pub fn sample(&mut self, id: u32, loss: Option<f32>, rtt: Option<Duration>) {
        for w in &mut self.windows {
            for (i, _, samples) in &mut w.items {
                if *i == id && samples.len() < MAX_SAMPLES {
                    samples.push((loss, rtt));
                }
            }
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.windows.iter().map(|w| w.due).min()
    }

    /// The windows that are over at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Some(i) = self.windows.iter().position(|w| w.due <= now) {
            let w = self.windows.swap_remove(i);
            let seconds = now.duration_since(w.started).as_secs_f64().max(0.001);
            let items = w
                .items
                .into_iter()
                .map(|(id, start, samples)| {
                    let now_counts = self.counts.get(id as usize).cloned().unwrap_or_default();
                    let loss = mean(samples.iter().filter_map(|(l, _)| l.map(f64::from)));
                    let rtt = mean(
                        samples
                            .iter()
                            .filter_map(|(_, r)| r.map(|d| d.as_secs_f64() * 1000.0)),
                    );
                    let m = Measured {
                        counts: now_counts.minus(&start),
                        seconds,
                        loss_pct: loss.map(|l| l * 100.0),
                        rtt_ms: rtt,
                    };
                    (id, m)
                })
                .collect();
            out.push(Finished {
                diag: w.diag,
                items,
            });
        }
        out
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
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

/// The field device's part for one stream. `estimate_kbps`: the bandwidth estimate now.
pub fn field_part(
    stream_id: u32,
    m: &Measured,
    info: &StreamInfo,
    estimate_kbps: Option<u32>,
    now: Instant,
) -> FieldPart {
    let (c, seconds, loss_pct, rtt_ms) = (&m.counts, m.seconds, m.loss_pct, m.rtt_ms);
    let fps = c.frames_out as f64 / seconds;
    let bps = (c.bytes as f64 * 8.0 / seconds) as u64;
    let in_fps = c.frames_in as f64 / seconds;
    let lost = round1(loss_pct.unwrap_or(0.0));
    let mut notes = BTreeMap::new();
    let video_capture = match &info.failed {
        Some((why, since)) => format!(
            "no input frames from camera ({why}; since {} s ago)",
            now.duration_since(*since).as_secs()
        ),
        None if c.frames_in == 0 => {
            format!("no input frames from the source in {seconds:.0} s")
        }
        None => OK.into(),
    };
    let video_encode = match info.fps {
        Some(cfg) if c.frames_in > 0 && in_fps < cfg * 0.8 => format!(
            "the source delivers {in_fps:.1} fps, {cfg} configured (camera or encoder too slow)"
        ),
        _ => OK.into(),
    };
    let video_transfer = if c.frames_in > 0 && c.frames_out * 100 < c.frames_in * 99 {
        format!(
            "{} of {} frames could not be sent ({})",
            c.frames_in - c.frames_out,
            c.frames_in,
            info.send_error
                .as_deref()
                .unwrap_or("media connection not ready")
        )
    } else {
        OK.into()
    };
    let est = estimate_kbps
        .map(|e| format!(", estimate {e} kbit/s"))
        .unwrap_or_default();
    if let Some(cfg) = info.fps.filter(|cfg| c.frames_in > 0 && fps < cfg * 0.8) {
        notes.insert(
            "fps".into(),
            format!("{fps:.1} fps sent, {cfg} configured{est}"),
        );
    }
    if let Some(cfg) = info
        .kbps
        .filter(|k| c.frames_in > 0 && bps < u64::from(*k) * 800)
    {
        let limited = estimate_kbps.is_some_and(|e| e < cfg);
        let why = if limited {
            "network limited"
        } else {
            "the encoder makes less than configured (a simple picture)"
        };
        notes.insert(
            "bps".into(),
            format!("{why}: {} kbit/s sent, {cfg} configured{est}", bps / 1000),
        );
    }
    network_notes(&mut notes, lost, rtt_ms, "send");
    FieldPart {
        stream_id,
        video_capture,
        video_encode,
        video_transfer,
        lost,
        fps: round1(fps),
        bps,
        rtt: rtt_ms.map(round1),
        notes,
    }
}

/// The remote device's part for one receiver. `decoding`: the SDK decodes
/// (`DeviceConfig::decode`).
pub fn remote_part(
    conn_fd: u32,
    m: &Measured,
    decoding: bool,
    stream: Option<&(DeviceId, u32)>,
) -> RemotePart {
    let (c, seconds, loss_pct, rtt_ms) = (&m.counts, m.seconds, m.loss_pct, m.rtt_ms);
    let fps = c.frames_in as f64 / seconds;
    let bps = (c.bytes as f64 * 8.0 / seconds) as u64;
    let lost = round1(loss_pct.unwrap_or(0.0));
    let mut notes = BTreeMap::new();
    let video_transfer = if c.frames_in == 0 {
        match stream {
            Some((g, s)) => format!("no video received in {seconds:.0} s from {g} stream {s}"),
            None => "the receiver is not connected to a stream".into(),
        }
    } else if c.dropped * 100 > c.frames_in {
        format!(
            "{} of {} frames lost or unusable (loss the repairs did not cover)",
            c.dropped, c.frames_in
        )
    } else {
        OK.into()
    };
    let video_decode = if !decoding {
        "not measured: the application decodes (DeviceConfig::decode is off)".into()
    } else if c.frames_out > 0 && c.decoded * 100 < c.frames_out * 99 {
        format!(
            "receiver not decoding: {} frames decoded of {} received",
            c.decoded, c.frames_out
        )
    } else {
        OK.into()
    };
    let latency = (c.latency_n > 0).then(|| round1(c.latency_sum_ms / c.latency_n as f64));
    if let Some(l) = latency.filter(|l| *l > 150.0) {
        notes.insert(
            "latency".into(),
            format!(
                "video latency {l:.0} ms (normal 30–150 ms; clocks of the two devices must agree)"
            ),
        );
    }
    network_notes(&mut notes, lost, rtt_ms, "receive");
    RemotePart {
        conn_fd,
        video_transfer,
        video_decode,
        latency,
        lost,
        fps: round1(fps),
        bps,
        rtt: rtt_ms.map(round1),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(counts: Counts, loss_pct: Option<f64>, rtt_ms: Option<f64>) -> Measured {
        Measured {
            counts,
            seconds: 10.0,
            loss_pct,
            rtt_ms,
        }
    }

    #[test]
    fn a_window_reports_what_happened_in_it() {
        let t0 = Instant::now();
        let mut m = Meter::new(2);
        m.counts[0].frames_in = 100; // before the window: not reported
        m.start(7, &[0, 1, 5], Duration::from_secs(10), t0);
        assert_eq!(m.next_due(), Some(t0 + Duration::from_secs(10)));
        m.counts[0].frames_in += 250;
        m.counts[0].frames_out += 250;
        m.counts[0].bytes += 1_000_000;
        m.sample(0, Some(0.02), Some(Duration::from_millis(40)));
        m.sample(0, Some(0.0), Some(Duration::from_millis(60)));
        assert!(m.take_due(t0 + Duration::from_secs(9)).is_empty());
        let f = m.take_due(t0 + Duration::from_secs(10));
        assert_eq!(f.len(), 1);
        let (id, w) = &f[0].items[0];
        assert_eq!(
            (*id, w.counts.frames_in, w.counts.bytes),
            (0, 250, 1_000_000)
        );
        assert_eq!(
            (w.loss_pct.map(round1), w.rtt_ms.map(round1)),
            (Some(1.0), Some(50.0))
        );
        assert_eq!(f[0].items.len(), 2, "id 5 is out of range");
        assert!(m.next_due().is_none());
    }

    #[test]
    fn healthy_stream_is_ok_everywhere() {
        let now = Instant::now();
        let c = Counts {
            frames_in: 250,
            frames_out: 250,
            bytes: 1_000_000,
            ..Default::default()
        };
        let info = StreamInfo {
            fps: Some(25.0),
            kbps: Some(800),
            ..Default::default()
        };
        let m = measured(c, Some(0.0), Some(2.0));
        let p = field_part(0, &m, &info, Some(900), now);
        assert_eq!(
            (&*p.video_capture, &*p.video_encode, &*p.video_transfer),
            (OK, OK, OK)
        );
        assert_eq!((p.fps, p.bps), (25.0, 800_000));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn causes_name_what_is_wrong() {
        let now = Instant::now();
        let info = StreamInfo {
            fps: Some(25.0),
            kbps: Some(1500),
            failed: Some((
                "camera rtsp://127.0.0.1/cam: connection refused".into(),
                now - Duration::from_secs(4),
            )),
            send_error: None,
        };
        let p = field_part(
            1,
            &measured(Counts::default(), None, None),
            &info,
            None,
            now,
        );
        assert!(
            p.video_capture.starts_with("no input frames from camera")
                && p.video_capture.contains("since 4 s ago"),
            "{}",
            p.video_capture
        );
        let limited = Counts {
            frames_in: 90,
            frames_out: 90,
            bytes: 375_000,
            ..Default::default()
        };
        let info = StreamInfo {
            fps: Some(25.0),
            kbps: Some(1500),
            ..Default::default()
        };
        let m = measured(limited, Some(3.0), Some(150.0));
        let p = field_part(0, &m, &info, Some(300), now);
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
        let not_decoding = Counts {
            frames_in: 240,
            frames_out: 240,
            ..Default::default()
        };
        let r = remote_part(0, &measured(not_decoding, None, None), true, None);
        assert_eq!(
            r.video_decode,
            "receiver not decoding: 0 frames decoded of 240 received"
        );
        let r = remote_part(0, &measured(Counts::default(), None, None), true, None);
        assert!(
            r.video_transfer.contains("not connected"),
            "{}",
            r.video_transfer
        );
    }
}
