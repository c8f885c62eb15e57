//! A field device on a test host with two links (two veth pairs into a namespace,
//! `network_bind` on both addresses, or on the first only), a server on this side, and a
//! remote playing the device's stream 0 while it sends control data (qos 0, 20 a second)
//! to the device: what the remote saw, what reached the device, and what the device said
//! of its paths. `plan` changes the links (loss, cuts) at each measured second. Used by
//! crates/fieldlink/tests/multipath.rs (asserts) and `fieldlink-bench multipath` (prints).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldlink_proto::bond::{Mode, PathState};
use fieldlink_sdk::{DeviceConfig, Event, Events, Qos, RemoteDevice};

use crate::netns::TestNet;
use crate::relay::{big_buffers, LossyRelay};

/// The server side of a run: started by [`run_paths`]'s `start` on the test network's
/// address, with the field device and a remote allowed to log in.
pub trait Platform {
    /// Why a server could not start or a remote could not play (the tests panic instead:
    /// `Infallible`; the bench reports the run as failed and goes on).
    type Error;
    /// The server's WebRTC socket (`ip:port`), where a delaying relay forwards to.
    fn udp(&self) -> String;
    /// The field device's login.
    fn field_config(&self) -> DeviceConfig;
    /// A remote playing the field device's stream 0 on conn_fd 0 (the project's
    /// permission mode makes it master: control data goes through).
    fn remote_playing(&self) -> impl Future<Output = Result<(RemoteDevice, Events), Self::Error>>;
}

/// What one run gave.
#[derive(Debug, Default)]
pub struct Run {
    pub seen: Seen,
    /// Control messages the remote sent, and those the field device received.
    pub sent: u32,
    pub got: u32,
    pub log: PathLog,
    /// Per path, what its qdisc (its shaper, where shaped) sent and dropped over the
    /// measured seconds: (bytes, packets dropped).
    pub links: [(u64, u64); 2],
}

/// What the remote saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// Frame numbers (from the test pattern's SEI) in arrival order, with the times the
    /// remote's SDK received them (not when this test got to them) and of their capture.
    pub frames: Vec<(u64, std::time::SystemTime, std::time::SystemTime)>,
    /// Frames of a source without frame numbers (a file): received and capture times.
    pub plain: Vec<(std::time::SystemTime, std::time::SystemTime)>,
}

/// A frame's capture to its arrival at the remote.
fn delay(f: &(u64, std::time::SystemTime, std::time::SystemTime)) -> Duration {
    f.1.duration_since(f.2).unwrap_or_default()
}

impl Seen {
    /// Frames missing between the first and the last.
    pub fn lost(&self) -> u64 {
        let mut nums: Vec<u64> = self.frames.iter().map(|f| f.0).collect();
        nums.sort_unstable();
        nums.dedup();
        match (nums.first(), nums.last()) {
            (Some(a), Some(b)) => b - a + 1 - nums.len() as u64,
            _ => 0,
        }
    }

    /// The longest wait between two frames beyond the wait between their captures: what
    /// the network added to the picture's rhythm.
    pub fn worst_extra_gap(&self) -> Duration {
        self.frames
            .windows(2)
            .map(|w| {
                let arrival = w[1].1.duration_since(w[0].1).unwrap_or_default();
                let capture = w[1].2.duration_since(w[0].2).unwrap_or_default();
                arrival.saturating_sub(capture)
            })
            .max()
            .unwrap_or_default()
    }

    /// Where the longest gaps were: (seconds after the first frame, gap), longest first.
    pub fn worst_gaps(&self, n: usize) -> Vec<(f64, Duration)> {
        let Some(first) = self.frames.first() else {
            return Vec::new();
        };
        let mut gaps: Vec<(f64, Duration)> = self
            .frames
            .windows(2)
            .map(|w| {
                let at = w[1]
                    .1
                    .duration_since(first.1)
                    .unwrap_or_default()
                    .as_secs_f64();
                (at, w[1].1.duration_since(w[0].1).unwrap_or_default())
            })
            .collect();
        gaps.sort_by_key(|g| std::cmp::Reverse(g.1));
        gaps.truncate(n);
        gaps
    }

    /// Of the test pattern's frames from the first seen to the last: (those that arrived
    /// within `budget` of their capture, all of them).
    pub fn on_time(&self, budget: Duration) -> (u64, u64) {
        let mut on: Vec<u64> = self
            .frames
            .iter()
            .filter(|f| delay(f) <= budget)
            .map(|f| f.0)
            .collect();
        on.sort_unstable();
        on.dedup();
        let nums = self.frames.iter().map(|f| f.0);
        let span = match (nums.clone().min(), nums.max()) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        };
        (on.len() as u64, span)
    }

    /// The frames that arrived later than `budget` after capture: (seconds after the first
    /// frame, capture to arrival), in arrival order. What a late frame waited says how
    /// many round trips its repair took.
    pub fn late(&self, budget: Duration) -> Vec<(f64, Duration)> {
        let Some(first) = self.frames.first() else {
            return Vec::new();
        };
        self.frames
            .iter()
            .map(|f| {
                let at = f.1.duration_since(first.1).unwrap_or_default();
                (at.as_secs_f64(), delay(f))
            })
            .filter(|&(_, d)| d > budget)
            .collect()
    }

    /// The capture-to-arrival time that fraction `q` of the frames took at most: the
    /// median (0.5) is what a frame takes without a repair, 0.99 what repairs add.
    pub fn delay_quantile(&self, q: f64) -> Duration {
        let mut d: Vec<Duration> = self.frames.iter().map(delay).collect();
        d.sort_unstable();
        let i = ((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1));
        d.get(i).copied().unwrap_or_default()
    }

    pub fn longest_gap(&self) -> Duration {
        self.frames
            .windows(2)
            .map(|w| w[1].1.duration_since(w[0].1).unwrap_or_default())
            .max()
            .unwrap_or_default()
    }
}

/// What the field device said of its paths (`Event::Paths`, once a second).
#[derive(Default, Debug)]
pub struct PathLog {
    /// The last figures.
    pub last: Vec<fieldlink_sdk::PathFigures>,
    /// Per path, seconds in which it carried traffic.
    pub used: [u32; 2],
    /// Each second, the paths' shares added up: bytes sent over all paths per byte of
    /// the connection (1 = no duplication).
    pub sent_per_byte: Vec<f64>,
    /// Each second, the paths' states.
    pub states: Vec<[PathState; 2]>,
    /// Where in `states` the measured seconds start.
    pub measured_from: usize,
    /// Where in `sent_per_byte` and `shares` (a second each, with one path or two) the
    /// measured seconds start.
    pub measured_seconds_from: usize,
    /// Each second, each path's share of the bytes.
    pub shares: Vec<[f64; 2]>,
}

impl PathLog {
    /// Over the measured seconds: the start (handshakes, a low first bitrate) would
    /// count control data's copies against little video.
    pub fn mean_sent_per_byte(&self) -> f64 {
        let s = &self.sent_per_byte[self.measured_seconds_from.min(self.sent_per_byte.len())..];
        s.iter().sum::<f64>() / s.len().max(1) as f64
    }

    /// Each path's share in the measured seconds.
    pub fn measured_shares(&self) -> &[[f64; 2]] {
        &self.shares[self.measured_seconds_from.min(self.shares.len())..]
    }

    /// Times path `i` changed state.
    pub fn changes(&self, i: usize) -> usize {
        self.states
            .windows(2)
            .filter(|w| w[0][i] != w[1][i])
            .count()
    }
}

/// What [`run_paths`] runs.
pub struct Setup {
    pub mode: Mode,
    pub secs: u64,
    /// Addresses the field device binds: 2 (both paths) or 1 (path 0 only: no bond).
    pub binds: usize,
    /// Each path's `tc tbf` rate, kbit/s (`None`: not shaped).
    pub shape: [Option<u32>; 2],
    /// An H.264 file to loop instead of the test pattern.
    pub file: Option<std::path::PathBuf>,
    /// One-way delay added to both paths each way, ms (0: none): the server is reached
    /// through a relay (`common::relay`) that delays the field device's datagrams.
    pub delay_ms: u32,
    /// Random loss on each path, %, from when the remote plays: through the 5-s settle
    /// and the measured seconds, so these measure a loss the device lives with, not its
    /// onset (what `plan` changes at a measured second is an onset).
    pub settle_loss: [u32; 2],
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: Mode::Redundant,
            secs: 30,
            binds: 2,
            shape: [None, None],
            file: None,
            delay_ms: 0,
            settle_loss: [0, 0],
        }
    }
}

/// Runs `setup` on `net` (a fresh test network: a second link is added here) with the
/// server `start(address to listen on, extra arguments)` gives; `plan(net, second)` at
/// each measured second.
pub async fn run_paths<P: Platform, F: Future<Output = Result<P, P::Error>>>(
    setup: Setup,
    mut net: TestNet,
    start: impl FnOnce(String, Vec<String>) -> F,
    plan: impl Fn(&TestNet, u64),
) -> Result<Run, P::Error> {
    let Setup {
        mode,
        secs,
        binds,
        shape,
        file,
        delay_ms,
        settle_loss,
    } = setup;
    net.add_path();
    for (i, kbps) in shape.iter().enumerate() {
        if let Some(k) = kbps {
            net.shape_path(i, *k, 100);
        }
    }
    let (s, _relay) = if delay_ms == 0 {
        (start(net.host_ip.clone(), Vec::new()).await?, None)
    } else {
        // The server tells devices the relay's address; the relay delays what crosses it
        // from and to the host's two addresses (the remote, on this side, is not delayed).
        let front = tokio::net::UdpSocket::bind((net.host_ip.as_str(), 0))
            .await
            .expect("relay socket on the test link");
        big_buffers(&front);
        let front_addr = front.local_addr().expect("relay address").to_string();
        let s = start(
            net.host_ip.clone(),
            vec!["--public-addr".into(), front_addr],
        )
        .await?;
        let server = s.udp().parse().expect("server's udp address");
        let relay = LossyRelay::start(front, server).await;
        relay.delay_ms.store(delay_ms, Ordering::Relaxed);
        *relay.delayed.lock().unwrap() = (0..2)
            .map(|i| net.ns_ip_on(i).parse().expect("test address"))
            .collect();
        (s, Some(relay))
    };
    let host = net.runtime();
    let mut fc = s.field_config();
    let gwid = fc.device_id.clone();
    fc.streams = 1;
    fc.network_bind = (0..binds)
        .map(|i| net.ns_ip_on(i).parse().expect("test address"))
        .collect();
    fc.media_trans_mode = mode;
    let got = Arc::new(AtomicU32::new(0));
    let g = got.clone();
    let log = Arc::new(std::sync::Mutex::new(PathLog::default()));
    let l = log.clone();
    let field = host
        .run(async move {
            let (field, mut fe) = fieldlink_sdk::FieldDevice::connect(fc)
                .await
                .expect("field device login");
            tokio::spawn(async move {
                while let Some(e) = fe.recv().await {
                    match e {
                        Event::ControlData { .. } => {
                            g.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Paths(p) => {
                            if std::env::var_os("FIELDLINK_TEST_PATHS").is_some() {
                                for f in &p {
                                    eprintln!(
                                        "path {} {:?} rtt {:?} loss {:.3}/{:.3} share {:.2}",
                                        f.stats.id,
                                        f.stats.state,
                                        f.stats.rtt,
                                        f.stats.data_loss,
                                        f.stats.probe_loss,
                                        f.share
                                    );
                                }
                            }
                            let mut l = l.lock().unwrap();
                            for f in &p {
                                if f.share > 0.05 {
                                    l.used[usize::from(f.stats.id).min(1)] += 1;
                                }
                            }
                            let sum = p.iter().map(|f| f.share).sum();
                            l.sent_per_byte.push(sum);
                            let share = |i: usize| p.get(i).map_or(0.0, |f| f.share);
                            l.shares.push([share(0), share(1)]);
                            if p.len() == 2 {
                                l.states.push([p[0].stats.state, p[1].stats.state]);
                            }
                            l.last = p;
                        }
                        // What would explain figures that stop or change shape.
                        e @ (Event::Disconnected { .. }
                        | Event::Reconnected
                        | Event::ReconnectFailed { .. }
                        | Event::Warning { .. }
                        | Event::Lagged { .. }) => eprintln!("field device: {e:?}"),
                        _ => {}
                    }
                }
            });
            field
        })
        .await;
    // A console's usual stream: 640x360, 800 kbit/s, a keyframe every 2 s.
    let tp = fieldlink_sdk::video::TestPatternConfig {
        width: 640,
        height: 360,
        fps: 25.0,
        kbps: 800,
        gop: 50,
    };
    match file {
        None => field
            .start_video(
                0,
                fieldlink_sdk::video::TestPattern::new(0, tp).expect("pattern"),
            )
            .expect("video"),
        Some(f) => field
            .start_video(
                0,
                fieldlink_sdk::video::AnnexBFile::open(&f, 25.0).expect("clip"),
            )
            .expect("video"),
    }
    let (r, mut re) = s.remote_playing().await?;
    // Master (auto permission) before the control data starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.permission(&gwid) != fieldlink_sdk::Permission::Master {
        assert!(tokio::time::Instant::now() < deadline, "not master");
        crate::drain(&mut re, Duration::from_millis(50)).await;
    }
    for (i, pct) in settle_loss.into_iter().enumerate() {
        if pct > 0 {
            net.set_loss(i, pct);
        }
    }
    // Five seconds to settle: the paths' probes, and the source's start (its picture
    // size steps up once the estimator has found the links: a new keyframe).
    crate::drain(&mut re, Duration::from_secs(5)).await;
    {
        let mut l = log.lock().unwrap();
        l.measured_from = l.states.len();
        l.measured_seconds_from = l.shares.len();
    }
    let mut seen = Seen::default();
    let links_before = [net.path_counters(0), net.path_counters(1)];
    let mut sent = 0u32;
    let start = tokio::time::Instant::now();
    let mut next_send = start;
    for second in 0..secs {
        plan(&net, second);
        let end = start + Duration::from_secs(second + 1);
        loop {
            let until = end.min(next_send);
            match tokio::time::timeout_at(until, re.recv()).await {
                Ok(Some(Event::Frame(f))) => {
                    match (fieldlink_media::FrameMeta::find(&f.data), f.capture) {
                        (Some(m), Some(cap)) => seen.frames.push((m.frame, f.received, cap)),
                        (None, Some(cap)) => seen.plain.push((f.received, cap)),
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("remote closed"),
                Err(_) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= next_send {
                if r.send(&gwid, &sent.to_be_bytes(), Qos::Lossy).await.is_ok() {
                    sent += 1;
                }
                next_send += Duration::from_millis(50);
            }
            if now >= end {
                break;
            }
        }
    }
    let links = [0, 1].map(|i| {
        let (b, d) = net.path_counters(i);
        (
            b.saturating_sub(links_before[i].0),
            d.saturating_sub(links_before[i].1),
        )
    });
    // Whatever is still on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = got.load(Ordering::Relaxed);
    host.run(async move { field.close().await }).await;
    let log = std::mem::take(&mut *log.lock().unwrap());
    Ok(Run {
        seen,
        sent,
        got: received,
        log,
        links,
    })
}

/// Visible glitches: runs of frames lost or later than one frame interval + 20 ms after
/// the previous one; bad frames less than a second apart are one glitch.
pub fn glitches(seen: &Seen) -> usize {
    let bad: Vec<std::time::SystemTime> = seen
        .frames
        .windows(2)
        .filter(|w| {
            w[1].0 != w[0].0 + 1
                || w[1].1.duration_since(w[0].1).unwrap_or_default() > Duration::from_millis(60)
        })
        .map(|w| w[1].1)
        .collect();
    1.min(bad.len())
        + bad
            .windows(2)
            .filter(|w| w[1].duration_since(w[0]).unwrap_or_default() >= Duration::from_secs(1))
            .count()
}

/// A ~`kbps` kbit/s 1280x720 H.264 clip (x264 via ffmpeg, constant rate, a keyframe every
/// 2 s — a file cannot answer keyframe requests —, frames at most ~60 KB), 10 s at 25 fps;
/// `None` where ffmpeg is missing outside CI.
pub fn clip(dir: &std::path::Path, kbps: u32) -> Option<std::path::PathBuf> {
    let path = dir.join(format!("{kbps}k.h264"));
    let rate = format!("{}k", kbps * 6 / 5); // x264 ultrafast lands ~20 % under its target
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=1280x720:rate=25")
        .args(["-t", "10", "-vf", "noise=alls=30:allf=t", "-c:v", "libx264"])
        .args([
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
        ])
        .args([
            "-b:v", &rate, "-minrate", &rate, "-maxrate", &rate, "-bufsize", "500k",
        ])
        .args(["-g", "50", "-bf", "0", "-f", "h264"])
        .arg(&path)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(path),
        Ok(o) => panic!("ffmpeg: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            assert!(std::env::var("CI").is_err(), "ffmpeg is needed in CI: {e}");
            eprintln!("skipped: no ffmpeg ({e})");
            None
        }
    }
}

/// Frames within 150 ms of capture, of those the source sent in `secs` at 25 fps.
pub fn plain_on_time(seen: &Seen, secs: u64) -> f64 {
    let ok = seen
        .plain
        .iter()
        .filter(|(rx, cap)| {
            rx.duration_since(*cap).unwrap_or_default() <= Duration::from_millis(150)
        })
        .count();
    // A frame or two captured just before the first second arrive in it: at most all.
    (ok as f64 / (secs * 25) as f64).min(1.0)
}
