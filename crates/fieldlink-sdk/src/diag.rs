//! Session diagnostics on the device (SPEC §6), pure: counters per stream (field) or
//! receiver (remote), the windows of running diagnoses, and the measures sent when one
//! ends. The driver feeds it facts; the server derives the checks and causes from the
//! measures (`fieldlink_proto::diag`). Nothing here does I/O.

use std::time::{Duration, Instant};

use fieldlink_proto::diag::{FieldMeasure, PathMeasure, RemoteMeasure, MAX_PATHS};

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
    /// The connection's network paths (several: `network_bind`).
    paths: Vec<PathSum>,
}

/// One network path's figures summed over a window.
#[derive(Debug, Clone)]
struct PathSum {
    /// The latest figures (`downs`: counted since the connection began).
    last: PathMeasure,
    downs_before: u32,
    rtt_ms: f64,
    rtt_n: u32,
    loss_pct: f64,
    share_pct: f64,
    n: u32,
}

impl PathSum {
    fn measure(&self) -> PathMeasure {
        let n = f64::from(self.n.max(1));
        PathMeasure {
            rtt_ms: (self.rtt_n > 0).then(|| self.rtt_ms / f64::from(self.rtt_n)),
            loss_pct: self.loss_pct / n,
            share_pct: self.share_pct / n,
            downs: self.last.downs.saturating_sub(self.downs_before),
            ..self.last.clone()
        }
    }
}

/// A diagnosis whose window is over: the diagnosis id and, per id, what was measured.
#[derive(Debug)]
pub struct Finished {
    pub diag: u64,
    pub items: Vec<(u32, Measured)>,
    /// Each network path over the window (empty with one path).
    pub paths: Vec<PathMeasure>,
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
            paths: Vec::new(),
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

    /// The network paths' figures now (`downs` counted since the connection began),
    /// for every running window.
    pub fn paths_sample(&mut self, paths: &[PathMeasure]) {
        for w in &mut self.windows {
            for p in paths {
                let at = match w.paths.iter().position(|s| s.last.path == p.path) {
                    Some(i) => i,
                    None if w.paths.len() < MAX_PATHS => {
                        w.paths.push(PathSum {
                            last: p.clone(),
                            downs_before: p.downs,
                            rtt_ms: 0.0,
                            rtt_n: 0,
                            loss_pct: 0.0,
                            share_pct: 0.0,
                            n: 0,
                        });
                        w.paths.len() - 1
                    }
                    None => continue,
                };
                let s = &mut w.paths[at];
                if s.n as usize >= MAX_SAMPLES {
                    continue;
                }
                s.last = p.clone();
                if let Some(r) = p.rtt_ms {
                    s.rtt_ms += r;
                    s.rtt_n += 1;
                }
                s.loss_pct += p.loss_pct;
                s.share_pct += p.share_pct;
                s.n += 1;
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
                paths: w.paths.iter().map(PathSum::measure).collect(),
            });
        }
        out
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

impl Meter {
    /// What a field device reports of stream `id` over a finished window.
    pub fn field_measure(
        &self,
        id: u32,
        m: &Measured,
        estimate_kbps: Option<u32>,
        now: Instant,
    ) -> FieldMeasure {
        let info = self.info.get(id as usize).cloned().unwrap_or_default();
        FieldMeasure {
            stream_id: id,
            seconds: m.seconds,
            frames_in: m.counts.frames_in,
            frames_out: m.counts.frames_out,
            bytes: m.counts.bytes,
            loss_pct: m.loss_pct,
            rtt_ms: m.rtt_ms,
            fps_configured: info.fps,
            kbps_configured: info.kbps,
            estimate_kbps,
            failed_for_s: info
                .failed
                .as_ref()
                .map(|(_, since)| now.duration_since(*since).as_secs()),
            source_failed: info.failed.map(|(why, _)| why),
            send_error: info.send_error,
        }
    }
}

/// What a remote reports of receiver `id` over a finished window; `decoding`: the SDK
/// decodes (`DeviceConfig::decode`), so it knows how many frames were decoded.
pub fn remote_measure(id: u32, m: &Measured, decoding: bool) -> RemoteMeasure {
    let c = &m.counts;
    RemoteMeasure {
        conn_fd: id,
        seconds: m.seconds,
        frames_in: c.frames_in,
        frames_out: c.frames_out,
        decoded: decoding.then_some(c.decoded),
        dropped: c.dropped,
        bytes: c.bytes,
        loss_pct: m.loss_pct,
        rtt_ms: m.rtt_ms,
        latency_ms: (c.latency_n > 0).then(|| c.latency_sum_ms / c.latency_n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (w.loss_pct.map(|l| l.round()), w.rtt_ms.map(|r| r.round())),
            (Some(1.0), Some(50.0))
        );
        assert_eq!(f[0].items.len(), 2, "id 5 is out of range");
        assert!(f[0].paths.is_empty(), "one path: no path figures");
        assert!(m.next_due().is_none());
    }

    #[test]
    fn paths_are_averaged_over_the_window() {
        let t0 = Instant::now();
        let mut m = Meter::new(1);
        let p = |path: u8, state: &str, rtt: Option<f64>, loss: f64, share: f64, downs: u32| {
            PathMeasure {
                path,
                local: format!("10.6{path}.0.2"),
                state: state.into(),
                rtt_ms: rtt,
                loss_pct: loss,
                share_pct: share,
                downs,
            }
        };
        m.paths_sample(&[p(0, "up", Some(10.0), 0.0, 50.0, 2)]); // no window yet
        m.start(1, &[0], Duration::from_secs(10), t0);
        m.paths_sample(&[
            p(0, "up", Some(20.0), 0.0, 60.0, 2),
            p(1, "up", None, 4.0, 40.0, 0),
        ]);
        m.paths_sample(&[
            p(0, "up", Some(40.0), 2.0, 100.0, 2),
            p(1, "down", None, 100.0, 0.0, 1),
        ]);
        let f = m.take_due(t0 + Duration::from_secs(10));
        assert_eq!(
            f[0].paths,
            [
                p(0, "up", Some(30.0), 1.0, 80.0, 0),
                p(1, "down", None, 52.0, 20.0, 1)
            ]
        );
    }
}
