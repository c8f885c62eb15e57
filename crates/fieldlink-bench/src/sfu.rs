//! `fieldlink-bench sfu` (issue 18): the cost of forwarding one publisher's video to N
//! subscribers, all over real WebRTC on loopback, through fieldlink and through Janus's
//! streaming plugin (janus.rs) in the same run.
//!
//! Both servers get the same clip: real H.264 access units encoded once by the test
//! pattern (openh264) at the asked bitrate, looped at 25 fps. fieldlink's publisher is a
//! field device (the SDK); Janus's is plain RTP into a streaming mountpoint, as its
//! users feed it. Subscribers are remote devices (the SDK) for fieldlink and str0m peers
//! speaking Janus's WebSocket API for Janus. Each server runs alone on CPU 0; this
//! process (publisher and every subscriber) on CPU 1.
//!
//! Figures per N: server CPU over the measured seconds per forwarded Mbit (frame bytes
//! the subscribers got), forwarding delay per packet (the n-th packet of a frame leaving
//! the publisher's socket -> the n-th packet of that frame reaching a probe subscriber's
//! socket, read from the clear RTP header of SRTP), and frames lost at the subscribers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use fieldlink_sdk::video::{EncodedFrame, TestPattern, TestPatternConfig, VideoSource};
use fieldlink_sdk::{
    DeviceConfig, DeviceId, Event, FieldDevice, PacketDirection, PacketObserver, RemoteDevice,
    SdkError, VideoCodec,
};

use crate::tap::{self, Seen};
use crate::{cpu_secs, pct, start_server_in};
use fieldlink_testkit::netns::TestNet;

/// Frames per second of the clip.
pub const FPS: u32 = 25;
/// Subscribers whose every packet is timed (the others only count frames).
pub(crate) const PROBES: usize = 4;
/// Packets a probe's log keeps.
const LOG_CAP: usize = 200_000;
/// Subscribers joining at once.
pub(crate) const JOINING: usize = 16;

/// The clip: access units and whether each is a keyframe.
pub type Clip = Arc<Vec<(Vec<u8>, bool)>>;

/// Encodes `secs` seconds of the 1280x720 test pattern at `kbps`, a keyframe every 2 s.
pub fn clip(kbps: u32, secs: u32) -> anyhow::Result<Clip> {
    let mut tp = TestPattern::new(
        0,
        TestPatternConfig {
            width: 1280,
            height: 720,
            fps: f64::from(FPS),
            kbps,
            gop: 2 * FPS,
        },
    )?;
    let mut v = Vec::new();
    for _ in 0..secs * FPS {
        if let Some(f) = tp.next_frame(false)? {
            v.push((f.data, f.keyframe));
        }
    }
    if !v.first().is_some_and(|f| f.1) {
        bail!("the clip does not start with a keyframe");
    }
    Ok(Arc::new(v))
}

/// What subscribers got, counted as it arrives.
#[derive(Default)]
pub struct Counts {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
}

/// A bounded log of video RTP packets seen on one socket, while `on`.
pub struct PacketLog {
    pub on: Arc<AtomicBool>,
    pub seen: Mutex<Vec<Seen>>,
}

impl PacketLog {
    pub fn new(on: Arc<AtomicBool>) -> Arc<PacketLog> {
        Arc::new(PacketLog {
            on,
            seen: Mutex::new(Vec::new()),
        })
    }

    pub fn note(&self, datagram: &[u8], at: Instant) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(s) = tap::video_rtp(datagram, at) {
            let mut l = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() < LOG_CAP {
                l.push(s);
            }
        }
    }

    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The clip as a field device's source, looped; a keyframe request jumps to the next
/// keyframe of the clip. Counts the frames it hands out.
struct Looped {
    clip: Clip,
    next: usize,
    sent: Arc<AtomicU64>,
}

impl VideoSource for Looped {
    fn fps(&self) -> f64 {
        f64::from(FPS)
    }

    fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError> {
        if force_keyframe {
            while !self.clip[self.next % self.clip.len()].1 {
                self.next += 1;
            }
        }
        let (data, keyframe) = &self.clip[self.next % self.clip.len()];
        self.next += 1;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Some(EncodedFrame {
            codec: VideoCodec::H264,
            data: data.clone(),
            keyframe: *keyframe,
            capture: SystemTime::now(),
        }))
    }
}

/// The counters and logs of one run: what the publisher sent, what each subscriber got,
/// the packet logs of the publisher and of the first [`PROBES`] subscribers.
pub struct Load {
    pub counts: Vec<Arc<Counts>>,
    pub sent: Arc<AtomicU64>,
    pub recording: Arc<AtomicBool>,
    pub publisher: Arc<PacketLog>,
    pub probes: Vec<Arc<PacketLog>>,
}

impl Load {
    pub fn new(n: usize) -> Load {
        let recording = Arc::new(AtomicBool::new(false));
        Load {
            counts: (0..n).map(|_| Arc::new(Counts::default())).collect(),
            sent: Arc::new(AtomicU64::new(0)),
            publisher: PacketLog::new(recording.clone()),
            probes: (0..n.min(PROBES))
                .map(|_| PacketLog::new(recording.clone()))
                .collect(),
            recording,
        }
    }
}

/// A thread of its own for the probe subscribers: among hundreds of subscribers on one
/// task queue, a probe would read its socket late and the wait would count as
/// forwarding delay. Its tasks end when it is dropped.
pub struct ProbeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeThread {
    pub fn start() -> anyhow::Result<ProbeThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("probes".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ProbeThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where subscriber `i`'s tasks run: the probes here, the others on the caller's.
    pub fn for_subscriber(&self, i: usize) -> tokio::runtime::Handle {
        if i < PROBES {
            self.handle.clone()
        } else {
            tokio::runtime::Handle::current()
        }
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One server's figures at one N.
pub struct Figures {
    pub n: usize,
    /// Subscribers that got video before measuring.
    pub joined: usize,
    pub secs: f64,
    pub cpu_s: f64,
    pub frames_sent: u64,
    pub frames_got: u64,
    pub bytes_got: u64,
    /// Microseconds.
    pub per_packet: Vec<u64>,
}

impl Figures {
    pub fn mbit(&self) -> f64 {
        self.bytes_got as f64 * 8.0 / 1e6
    }

    /// Server CPU milliseconds per forwarded Mbit (= CPU seconds per second per Mbit/s).
    pub fn cpu_ms_per_mbit(&self) -> f64 {
        if self.bytes_got == 0 {
            return f64::NAN;
        }
        self.cpu_s * 1000.0 / self.mbit()
    }

    /// Frames the subscribers did not get, percent of what was sent to them.
    pub fn loss_pct(&self) -> f64 {
        let want = self.frames_sent * self.n as u64;
        if want == 0 {
            return 100.0;
        }
        100.0 * (1.0 - self.frames_got as f64 / want as f64).max(0.0)
    }
}

/// Measures `secs` once every subscriber (or all that joined within 60 s) gets video:
/// the server's CPU, the frames and bytes counted, the probes' packet delays.
pub async fn measure(pid: u32, secs: u64, load: &Load) -> Figures {
    let Load {
        counts,
        sent,
        recording,
        publisher,
        probes,
    } = load;
    let n = counts.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let joined = || {
        counts
            .iter()
            .filter(|c| c.frames.load(Ordering::Relaxed) > 0)
            .count()
    };
    while joined() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let joining settle (keyframe bursts, probes) before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joined = joined();
    let total = |f: fn(&Counts) -> &AtomicU64| -> u64 {
        counts.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    };
    let (f0, b0, s0) = (
        total(|c| &c.frames),
        total(|c| &c.bytes),
        sent.load(Ordering::Relaxed),
    );
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    recording.store(false, Ordering::Relaxed);
    let cpu_s = cpu_secs(pid) - cpu0;
    let elapsed = t0.elapsed().as_secs_f64();
    let frames_sent = sent.load(Ordering::Relaxed) - s0;
    // Frames in flight when the window closed arrive within a few ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (f1, b1) = (total(|c| &c.frames), total(|c| &c.bytes));
    let inbound = publisher.take();
    let mut per_packet = Vec::new();
    for p in probes {
        let mut outbound = p.take();
        align(&inbound, &mut outbound);
        if std::env::var_os("FIELDLINK_BENCH_DEBUG").is_some() {
            let frames = |v: &[Seen]| {
                let mut m: std::collections::HashMap<u32, usize> = Default::default();
                for x in v {
                    *m.entry(x.rtp_time).or_default() += 1;
                }
                m
            };
            let (fi, fo) = (frames(&inbound), frames(&outbound));
            let same = fo.iter().filter(|(t, n)| fi.get(t) == Some(n)).count();
            let common = fo.keys().filter(|t| fi.contains_key(t)).count();
            eprintln!(
                "  probe: {} packets in ({} frames), {} out ({} frames), {common} frames in both, {same} with as many packets",
                inbound.len(), fi.len(), outbound.len(), fo.len()
            );
        }
        let (pp, _) = tap::server_delays(&tap::Log {
            inbound: inbound.clone(),
            outbound,
        });
        per_packet.extend(pp);
    }
    Figures {
        n,
        joined,
        secs: elapsed,
        cpu_s,
        frames_sent,
        frames_got: f1 - f0,
        bytes_got: b1 - b0,
        per_packet,
    }
}

/// Rewrites `out`'s RTP times to the publisher's: a server may start its output at
/// another timestamp (Janus does). Candidate offsets map one of the first packets out to
/// a frame sent in the second before it (the very first may belong to a frame sent before
/// the log began); the offset under which the most packets out belong to a frame already
/// sent wins, and of equals (the frame before also "matches") the one with the least
/// total delay.
fn align(inb: &[Seen], out: &mut [Seen]) {
    // Per publisher frame (RTP time), when its first packet left.
    let mut sent_at: std::collections::HashMap<u32, Instant> = Default::default();
    for s in inb {
        sent_at.entry(s.rtp_time).or_insert(s.at);
    }
    let mut candidates: Vec<u32> = Vec::new();
    for o in out.iter().take(20) {
        for (ts, at) in &sent_at {
            if *at <= o.at && o.at.duration_since(*at) < Duration::from_secs(1) {
                candidates.push(o.rtp_time.wrapping_sub(*ts));
            }
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    let score = |off: u32| {
        let (mut n, mut total) = (0usize, Duration::ZERO);
        for o in out.iter() {
            if let Some(at) = sent_at.get(&o.rtp_time.wrapping_sub(off)) {
                if *at <= o.at {
                    n += 1;
                    total += o.at.duration_since(*at);
                }
            }
        }
        (n, std::cmp::Reverse(total))
    };
    let Some(offset) = candidates.into_iter().max_by_key(|off| score(*off)) else {
        return;
    };
    for o in out {
        o.rtp_time = o.rtp_time.wrapping_sub(offset);
    }
}

/// fieldlink at `n` subscribers: a fresh server, the publisher, the subscribers.
pub async fn fieldlink(
    n: usize,
    secs: u64,
    clip: &Clip,
    bin: &PathBuf,
    net: Option<&TestNet>,
    threads: usize,
) -> anyhow::Result<Figures> {
    let cpus = if threads > 1 { "0,1" } else { "0" };
    let extra = ["--media-threads".to_string(), threads.to_string()];
    let server = start_server_in(bin, n.max(1), &extra, net, cpus).await?;
    let pid = server.child.id();
    let load = Load::new(n);
    let gwid: DeviceId = "bench/f0".parse()?;
    let mut fc = DeviceConfig::new(server.ws.as_str(), gwid.clone(), "pw");
    fc.streams = 1;
    // A fixed bitrate: the clip is what it is.
    fc.adapt_bitrate = false;
    let log = load.publisher.clone();
    fc.packet_observer = Some(PacketObserver(Arc::new(move |dir, d| {
        if dir == PacketDirection::Sent {
            log.note(d, Instant::now());
        }
    })));
    let (field, _fe) = FieldDevice::connect(fc).await?;
    field.start_video(
        0,
        Looped {
            clip: clip.clone(),
            next: 0,
            sent: load.sent.clone(),
        },
    )?;
    let gate = Arc::new(tokio::sync::Semaphore::new(JOINING));
    let probe_rt = ProbeThread::start()?;
    let mut joining = Vec::new();
    for (i, c) in load.counts.iter().enumerate() {
        let mut rc = DeviceConfig::new(server.ws.as_str(), format!("bench/r{i}").parse()?, "pw");
        rc.streams = 1;
        rc.auto_permission = false;
        if let Some(p) = load.probes.get(i).cloned() {
            rc.packet_observer = Some(PacketObserver(Arc::new(move |dir, d| {
                if dir == PacketDirection::Received {
                    p.note(d, Instant::now());
                }
            })));
        }
        let (c, gate, gwid) = (c.clone(), gate.clone(), gwid.clone());
        joining.push(probe_rt.for_subscriber(i).spawn(async move {
            let permit = gate.acquire_owned().await;
            let (remote, mut ev) = RemoteDevice::connect(rc).await?;
            remote.connect_streams(&gwid, &[0], &[0]).await?;
            drop(permit);
            let count = tokio::spawn(async move {
                while let Some(e) = ev.recv().await {
                    if let Event::Frame(f) = e {
                        c.frames.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                    }
                }
            });
            anyhow::Ok((remote, count))
        }));
    }
    let mut subscribers = Vec::new();
    for (i, j) in joining.into_iter().enumerate() {
        match j.await {
            Ok(Ok(s)) => subscribers.push(s),
            Ok(Err(e)) => eprintln!("  subscriber {i} did not join: {e:#}"),
            Err(e) => eprintln!("  subscriber {i}: {e}"),
        }
    }
    let figures = measure(pid, secs, &load).await;
    for (remote, count) in subscribers {
        count.abort();
        drop(remote);
    }
    drop(probe_rt);
    drop(field);
    drop(server);
    Ok(figures)
}

/// The whole bench: every N through fieldlink, then through Janus, then the table.
pub async fn sfu(
    counts: Vec<usize>,
    secs: u64,
    kbps: u32,
    no_janus: bool,
    media_threads: Vec<usize>,
    bin: PathBuf,
) -> anyhow::Result<()> {
    if media_threads.is_empty() || media_threads.iter().any(|t| *t == 0 || *t > 64) {
        bail!("--media-threads: 1..=64 each");
    }
    if counts.is_empty() || counts.iter().any(|n| *n == 0 || *n > 1000) {
        bail!("--subscribers: 1..=1000 each");
    }
    let janus = if no_janus {
        None
    } else {
        Some(
            crate::janus::find()
                .context("Janus not found (apt-get install janus), or run with --no-janus")?,
        )
    };
    // Janus gathers no ICE candidates on loopback: both servers go in a namespace of
    // our own, reached over a veth pair.
    let net = match TestNet::try_create().map_err(anyhow::Error::msg) {
        Ok(n) => Some(n),
        Err(e) if janus.is_none() => {
            eprintln!("note: no test namespace ({e:#}); fieldlink on loopback");
            None
        }
        Err(e) => {
            return Err(e.context(
                "Janus needs a test namespace (run as root, iproute2), or run with --no-janus",
            ))
        }
    };
    let path = net.as_ref().map_or("loopback".to_string(), |n| {
        format!(
            "a veth pair ({} -> {} in namespace {})",
            n.host_ip, n.ns_ip, n.ns
        )
    });
    let clip = clip(kbps, 10)?;
    let clip_kbps = clip.iter().map(|f| f.0.len()).sum::<usize>() as f64 * 8.0 / 1000.0 / 10.0;
    println!(
        "fieldlink-bench sfu: one publisher, 1280x720 test pattern at {FPS} fps, {clip_kbps:.0} kbit/s measured \
         (asked {kbps}), keyframe every 2 s; servers on CPU 0, publisher and subscribers on CPU 1; {secs} s per run; over {path}"
    );
    let mut rows = Vec::new();
    for &n in &counts {
        let mut fs = Vec::new();
        for &t in &media_threads {
            println!("fieldlink ({t} media threads), {n} subscribers ...");
            let f = fieldlink(n, secs, &clip, &bin, net.as_ref(), t).await?;
            print_run("fieldlink", &f);
            fs.push((t, f));
        }
        let j = match &janus {
            Some(j) => {
                println!("Janus, {n} subscribers ...");
                let net = net.as_ref().context("no test namespace")?;
                let r = crate::janus::run(j, n, secs, &clip, net).await?;
                print_run("Janus", &r);
                Some(r)
            }
            None => None,
        };
        rows.push((fs, j));
    }
    println!();
    println!("| subscribers | server | joined | forwarded | CPU per forwarded Mbit | forwarding p50 / p99 | frames lost | fieldlink ÷ Janus CPU |");
    println!("|---|---|---|---|---|---|---|---|");
    for (fs, j) in &mut rows {
        for (t, f) in fs {
            let ratio = j
                .as_ref()
                .map(|j| format!("{:.2} ×", f.cpu_ms_per_mbit() / j.cpu_ms_per_mbit()))
                .unwrap_or_else(|| "(no Janus)".into());
            let name = format!(
                "fieldlink, {t} media thread{}",
                if *t > 1 { "s" } else { "" }
            );
            row(&name, f, &ratio);
        }
        if let Some(j) = j {
            row("Janus", j, "");
        }
    }
    Ok(())
}

fn print_run(name: &str, f: &Figures) {
    println!(
        "  {name}: {} of {} joined, {:.1} Mbit/s forwarded, server CPU {:.2} s in {:.1} s, {} frames sent, {:.2} % lost, {} packets timed",
        f.joined,
        f.n,
        f.mbit() / f.secs,
        f.cpu_s,
        f.secs,
        f.frames_sent,
        f.loss_pct(),
        f.per_packet.len()
    );
}

fn row(name: &str, f: &mut Figures, ratio: &str) {
    let timed = if f.per_packet.is_empty() {
        "—".to_string()
    } else {
        format!(
            "{:.2} / {:.2} ms",
            pct(&mut f.per_packet, 0.5),
            pct(&mut f.per_packet, 0.99)
        )
    };
    println!(
        "| {} | {name} | {} | {:.1} Mbit/s | {:.2} ms | {timed} | {:.2} % | {ratio} |",
        f.n,
        f.joined,
        f.mbit() / f.secs,
        f.cpu_ms_per_mbit(),
        f.loss_pct()
    );
}
