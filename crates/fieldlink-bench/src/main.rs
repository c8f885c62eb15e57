//! `fieldlink-bench audio`: voice mouth-to-ear latency and CPU per stream (audio.rs).
//! `fieldlink-bench control`: control-data latency through a real `fieldlink server`
//! process on loopback, and how many field+remote pairs at 100 Hz it sustains on one core
//! with p99 under 5 ms. The server is pinned to CPU 0 (`taskset`), this process to CPU 1.
//! Figures go to stdout; see docs/benchmarks.md.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fieldlink_sdk::{
    DeviceConfig, DeviceId, Event, Events, FieldDevice, Permission, Qos, RemoteDevice,
};
use fieldlink_server::store::{Device, Project, Security, Store};

mod audio;
mod camera;
mod gb;
mod gb_bad;
mod gb_load;
mod janus;
mod multipath;
mod sfu;
mod tap;

#[derive(Parser)]
#[command(about = "fieldlink benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Video: capture-to-arrival latency and switch time through the server.
    Video {
        /// Seconds of latency measurement.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Switches to time.
        #[arg(long, default_value_t = 100)]
        switches: u32,
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
    /// SFU forwarding: one publisher (1280x720 H.264 at `kbps`, 25 fps) and N subscribers
    /// over WebRTC on loopback, through fieldlink and then through Janus's streaming
    /// plugin (Debian package janus); server CPU per forwarded Mbit, forwarding delay per
    /// packet, frames lost, and the CPU ratio per N.
    Sfu {
        /// Subscriber counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,100,200")]
        subscribers: Vec<usize>,
        /// Seconds measured per run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// The publisher's bitrate, kbit/s (the encoder's target for the clip).
        #[arg(long, default_value_t = 2000)]
        kbps: u32,
        /// Only fieldlink.
        #[arg(long)]
        no_janus: bool,
        /// fieldlink's media threads to run with, comma-separated: 1 runs the server on
        /// CPU 0 alone; more let it use CPUs 0 and 1 (shared with the subscribers on a
        /// 2-core machine).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        media_threads: Vec<usize>,
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
    /// RTSP cameras: CPU per 720p25/1080p25 stream and added latency, passthrough and
    /// transcode, with ffmpeg doing the same job as the reference. Needs ffmpeg and
    /// GStreamer's RTSP server (see .ci/run).
    Rtsp {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// The test camera script.
        #[arg(long, default_value = "tests/rtsp/camera.py")]
        script: PathBuf,
    },
    /// Multipath (SPEC §9): the field device on a test host with two links (network
    /// namespace, nftables loss, tc rate, a delaying relay; needs root, iproute2,
    /// nftables, ffmpeg), each case run with two paths and with one over the same links;
    /// a table of the figures and the gain.
    Multipath {
        /// Seconds of the 30 s cases (loss40, aggregate, split, balanced); loss20 and
        /// flap run twice as long.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Cuts of 5 s (one every 10 s) in the cut case.
        #[arg(long, default_value_t = 10)]
        cuts: u64,
        /// Cases to run, comma-separated: cut, loss40, loss20, aggregate, split,
        /// balanced, flap.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "cut,loss40,loss20,aggregate,split,balanced,flap"
        )]
        cases: Vec<String>,
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
    /// Control-data latency (qos 0 and 1) and capacity at 100 Hz.
    Control {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Largest number of field+remote pairs to try.
        #[arg(long, default_value_t = 64)]
        max_pairs: usize,
        /// The fieldlink binary (default: next to this one).
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
    /// Voice: mouth-to-ear latency (external PCM in at a field device -> mixed PCM out at
    /// a remote), clean and at 10% loss, and CPU per audio stream.
    Audio {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Audio streams for the CPU measurement.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
    /// GB28181 registrations: SIPp registers `devices` new devices at `rate` per second;
    /// registered/failed, response times, server CPU per registration. Needs sipp.
    Gb {
        #[arg(long, default_value_t = 2000)]
        devices: u32,
        /// Registrations started per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Then register the same devices again (known, online) at this rate.
        #[arg(long)]
        again: Option<u32>,
        /// Do not run the same load against kamailio (Debian package kamailio).
        #[arg(long)]
        no_kamailio: bool,
        /// Then the same devices register once more (at `again`'s rate) while bad input
        /// floods fieldlink: garbage datagrams, wrong-password registrations, 1 000 idle
        /// TCP connections; prints the answer p99 beside the run without it.
        #[arg(long)]
        bad_input: bool,
        /// Instead of the storms: this many devices (our own load generator, many UDP
        /// source ports, real digest) register, answer the platform's queries and keep
        /// alive every 60 s; prints the server's RSS and CPU share while they keep alive.
        #[arg(long)]
        keepalive: Option<u32>,
        /// How long to measure the keepalives, seconds (after every device registered).
        #[arg(long, default_value_t = 120)]
        keepalive_secs: u64,
        #[arg(long)]
        fieldlink: Option<PathBuf>,
    },
}

/// Time base shared by senders and receivers (one process, one clock).
fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn stamp() -> Vec<u8> {
    (epoch().elapsed().as_nanos() as u64).to_be_bytes().to_vec()
}

fn latency_us(data: &[u8]) -> Option<u64> {
    let sent = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    Some((epoch().elapsed().as_nanos() as u64).saturating_sub(sent) / 1000)
}

struct Server {
    child: Child,
    ws: String,
    /// The server's WebRTC socket.
    udp: String,
    /// The server's GB28181 SIP socket, when it has one.
    sip: Option<String>,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_server(bin: &PathBuf, pairs: usize, extra: &[String]) -> anyhow::Result<Server> {
    start_server_in(bin, pairs, extra, None, "0").await
}

/// [`start_server`] inside a test host's namespace (listening on its address), or on
/// loopback when `net` is `None`.
async fn start_server_in(
    bin: &PathBuf,
    pairs: usize,
    extra: &[String],
    net: Option<&fieldlink_testkit::netns::TestNet>,
    cpus: &str,
) -> anyhow::Result<Server> {
    let prefix = net
        .map(fieldlink_testkit::netns::TestNet::exec_prefix)
        .unwrap_or_default();
    let ip = net.map_or("127.0.0.1", |n| n.ns_ip.as_str());
    launch(bin, pairs, extra, &prefix, ip, cpus).await
}

/// The server process, after `prefix` (e.g. `ip netns exec NS`), listening on `ip`, on
/// `cpus` where taskset is installed (`""`: not pinned); a project `bench` with `pairs` field devices
/// `bench/f{i}` and remotes `bench/r{i}`, password `pw`.
async fn launch(
    bin: &PathBuf,
    pairs: usize,
    extra: &[String],
    prefix: &[String],
    ip: &str,
    cpus: &str,
) -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!("fieldlink-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("fieldlink.db").display());
    let store = Store::open(&url).await?;
    store
        .create_project(&Project {
            id: "bench".into(),
            name: "bench".into(),
            security: Security::default(),
            created_ms: 0,
        })
        .await?;
    let hash = fieldlink_auth::hash_password("pw");
    for i in 0..pairs {
        for (id, kind) in [
            (format!("f{i}"), fieldlink_sdk::Role::Field),
            (format!("r{i}"), fieldlink_sdk::Role::Remote),
        ] {
            store
                .create_device(&Device {
                    project_id: "bench".into(),
                    device_id: id.clone(),
                    kind,
                    name: id,
                    password: hash.clone(),
                    key_password_only: false,
                    auto_registered: false,
                    created_ms: 0,
                })
                .await?;
        }
    }
    store.close().await;
    let pinned = !cpus.is_empty() && Command::new("taskset").arg("--version").output().is_ok();
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    argv.extend(prefix.iter().map(Into::into));
    if pinned {
        argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
    }
    argv.push(bin.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.args([
        "server",
        "--listen",
        &format!("{ip}:0"),
        "--udp-listen",
        &format!("{ip}:0"),
        "--admin-token",
        "bench",
    ])
    .arg("--data-dir")
    .arg(&dir)
    .args(extra)
    .env("FIELDLINK_LOG", "warn")
    .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let ready: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
    let ws = ready["ws"].as_str().context("ws address")?.to_string();
    let udp = ready["udp"].as_str().context("udp address")?.to_string();
    let sip = ready["sip"].as_str().map(str::to_string);
    if !pinned && !cpus.is_empty() {
        eprintln!("note: taskset not found; the server is not pinned to one core");
    }
    Ok(Server {
        child,
        ws,
        udp,
        sip,
        dir,
    })
}

/// CPU seconds (user + system) used so far by a process.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

struct Pair {
    field: Arc<FieldDevice>,
    remote: Arc<RemoteDevice>,
    gwid: DeviceId,
    fe: Events,
    re: Events,
}

async fn pair(ws: &str, i: usize) -> anyhow::Result<Pair> {
    let gwid: DeviceId = format!("bench/f{i}").parse()?;
    let (field, fe) = FieldDevice::connect(DeviceConfig::new(ws, gwid.clone(), "pw")).await?;
    let (remote, mut re) =
        RemoteDevice::connect(DeviceConfig::new(ws, format!("bench/r{i}").parse()?, "pw")).await?;
    remote.open_session(&gwid).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while remote.permission(&gwid) != Permission::Master {
        if tokio::time::timeout_at(deadline, re.recv()).await.is_err() {
            bail!("pair {i}: no master");
        }
    }
    Ok(Pair {
        field: Arc::new(field),
        remote: Arc::new(remote),
        gwid,
        fe,
        re,
    })
}

#[derive(Default)]
struct Stats {
    lat_us: Mutex<Vec<u64>>,
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// Runs every pair at 100 Hz in both directions for `secs`; returns (field->remote,
/// remote->field) statistics.
async fn run_load(pairs: Vec<Pair>, qos: Qos, secs: u64) -> (Arc<Stats>, Arc<Stats>, Vec<Pair>) {
    let down = Arc::new(Stats::default()); // field -> remote
    let up = Arc::new(Stats::default()); // remote -> field
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let mut back = Vec::new();
    for (k, p) in pairs.into_iter().enumerate() {
        let Pair {
            field,
            remote,
            gwid,
            mut fe,
            mut re,
        } = p;
        let (f2, r2, g2, d2, u2) = (
            field.clone(),
            remote.clone(),
            gwid.clone(),
            down.clone(),
            up.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread the senders over the 10 ms period.
            tokio::time::sleep(Duration::from_micros((k as u64 * 379) % 10_000)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < stop {
                tick.tick().await;
                for (r, st) in [
                    (f2.send(&stamp(), qos).await, &d2),
                    (r2.send(&g2, &stamp(), qos).await, &u2),
                ] {
                    match r {
                        Ok(()) => st.sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => st.send_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
        let (d3, u3) = (down.clone(), up.clone());
        let recv = tokio::spawn(async move {
            let until = tokio::time::Instant::from_std(stop + Duration::from_millis(500));
            loop {
                tokio::select! {
                    e = fe.recv() => if let Some(Event::ControlData { data, .. }) = e {
                        if let Some(l) = latency_us(&data) { u3.lat_us.lock().unwrap().push(l); u3.received.fetch_add(1, Ordering::Relaxed); }
                    },
                    e = re.recv() => if let Some(Event::ControlData { data, .. }) = e {
                        if let Some(l) = latency_us(&data) { d3.lat_us.lock().unwrap().push(l); d3.received.fetch_add(1, Ordering::Relaxed); }
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            (fe, re)
        });
        back.push((field, remote, gwid, recv));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = Vec::new();
    for (field, remote, gwid, recv) in back {
        if let Ok((fe, re)) = recv.await {
            out.push(Pair {
                field,
                remote,
                gwid,
                fe,
                re,
            });
        }
    }
    (down, up, out)
}

fn summary(name: &str, s: &Stats) -> (f64, f64, f64) {
    let mut v = std::mem::take(&mut *s.lat_us.lock().unwrap());
    let sent = s.sent.load(Ordering::Relaxed).max(1);
    let delivered = s.received.load(Ordering::Relaxed) as f64 / sent as f64 * 100.0;
    let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
    println!("  {name:<16} sent {sent:>7}  delivered {delivered:>6.2}%  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms");
    (p50, p99, delivered)
}

async fn control(secs: u64, max_pairs: usize, bin: PathBuf) -> anyhow::Result<()> {
    epoch();
    let server = start_server(&bin, max_pairs, &[]).await?;
    let pid = server.child.id();
    println!("fieldlink-bench control: server pid {pid} (CPU 0), {secs} s per step, loopback");

    println!("\n1 pair, 100 Hz each way:");
    let mut pairs = vec![pair(&server.ws, 0).await?];
    for qos in [Qos::Lossy, Qos::Reliable] {
        let (down, up, back) = run_load(pairs, qos, secs).await;
        pairs = back;
        println!(" qos {}:", qos as u8);
        summary("field->remote", &down);
        summary("remote->field", &up);
    }

    println!("\ncapacity, qos 0, 100 Hz each way per pair (server on one core):");
    println!(
        "  {:>5} {:>10} {:>10} {:>11} {:>11} {:>11}",
        "pairs", "p50 ms", "p99 ms", "delivered", "server CPU", "bench CPU"
    );
    // Doubling until p99 >= 5 ms (or loss), then bisecting to within 1/8 of the boundary.
    let (mut best, mut worst) = (0usize, None::<usize>);
    let mut n = 1;
    loop {
        while pairs.len() < n {
            let i = pairs.len();
            pairs.push(pair(&server.ws, i).await?);
        }
        let step: Vec<Pair> = pairs.drain(..n).collect();
        let (cpu0, me0) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let t0 = Instant::now();
        let (down, up, back) = run_load(step, Qos::Lossy, secs).await;
        pairs.splice(0..0, back);
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_secs(pid) - cpu0) / wall * 100.0;
        let me = (cpu_secs(std::process::id()) - me0) / wall * 100.0;
        let mut all: Vec<u64> = std::mem::take(&mut *down.lat_us.lock().unwrap());
        all.append(&mut up.lat_us.lock().unwrap());
        let sent = down.sent.load(Ordering::Relaxed) + up.sent.load(Ordering::Relaxed);
        let recvd = down.received.load(Ordering::Relaxed) + up.received.load(Ordering::Relaxed);
        let delivered = recvd as f64 / sent.max(1) as f64 * 100.0;
        let (p50, p99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
        println!("  {n:>5} {p50:>10.3} {p99:>10.3} {delivered:>10.2}% {cpu:>10.1}% {me:>10.1}%");
        if p99 < 5.0 && delivered > 99.0 {
            best = n;
        } else {
            worst = Some(n);
        }
        n = match worst {
            None if n >= max_pairs => break,
            None => (n * 2).min(max_pairs),
            Some(w) if w - best > (best / 8).max(1) => best + (w - best) / 2,
            Some(_) => break,
        };
    }
    match worst {
        Some(w) => println!("\nRESULT: {best} field+remote pairs at 100 Hz each way with p99 < 5 ms ({w} pairs did not)"),
        None => println!("\nRESULT: {best} field+remote pairs at 100 Hz each way with p99 < 5 ms (the most tried)"),
    }
    println!("(when bench CPU is near 100%, the load generator, not the server, is the limit)");
    Ok(())
}

async fn video(secs: u64, switches: u32, bin: PathBuf) -> anyhow::Result<()> {
    use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
    // All media crosses a timestamping tap that the server advertises as its address.
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let public = front.local_addr()?.to_string();
    let server = start_server(&bin, 2, &["--public-addr".to_string(), public]).await?;
    let log = tap::start(front, server.udp.parse()?, 1_000_000);
    println!(
        "fieldlink-bench video: server pid {} (CPU 0), loopback, 640x360 25 fps test pattern",
        server.child.id()
    );
    let gwid: DeviceId = "bench/f0".parse()?;
    let mut fc = DeviceConfig::new(server.ws.as_str(), gwid.clone(), "pw");
    fc.streams = 2;
    let (field, _fe) = FieldDevice::connect(fc).await?;
    for i in 0..2 {
        field.start_video(i, TestPattern::new(i, TestPatternConfig::default())?)?;
    }
    let mut rc = DeviceConfig::new(server.ws.as_str(), "bench/r0".parse()?, "pw");
    rc.streams = 1;
    let (remote, mut ev) = RemoteDevice::connect(rc).await?;
    remote.connect_streams(&gwid, &[0], &[0]).await?;
    // A second remote decodes, as a player would: capture -> picture.
    let mut rc = DeviceConfig::new(server.ws.as_str(), "bench/r1".parse()?, "pw");
    rc.streams = 1;
    rc.decode = true;
    let (player, mut pev) = RemoteDevice::connect(rc).await?;
    player.connect_streams(&gwid, &[0], &[0]).await?;

    // Capture (field clock) to arrival (same host clock): encode + send + server + receive.
    let (mut lat, mut glass) = (Vec::new(), Vec::new());
    let since = |f: &fieldlink_sdk::VideoFrame| {
        f.capture
            .and_then(|c| f.received.duration_since(c).ok())
            .map(|d| d.as_micros() as u64)
    };
    log.lock()
        .map_err(|_| anyhow::anyhow!("tap log"))?
        .inbound
        .clear();
    log.lock()
        .map_err(|_| anyhow::anyhow!("tap log"))?
        .outbound
        .clear();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        tokio::select! {
            e = ev.recv() => if let Some(Event::Frame(f)) = e { lat.extend(since(&f)); },
            e = pev.recv() => if let Some(Event::Frame(f)) = e {
                if f.picture.is_some() { glass.extend(since(&f)); }
            },
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    let (mut per_packet, mut frame_first) = {
        let l = log.lock().map_err(|_| anyhow::anyhow!("tap log"))?;
        tap::server_delays(&l)
    };
    drop(player);
    let n = lat.len();
    println!("\ncapture -> frame complete at the remote ({n} frames):");
    println!(
        "  p50 {:.2} ms  p99 {:.2} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    let n = glass.len();
    println!(
        "\nglass-to-glass minus camera: capture -> decoded picture at the remote ({n} frames):"
    );
    println!(
        "  p50 {:.2} ms  p99 {:.2} ms",
        pct(&mut glass, 0.5),
        pct(&mut glass, 0.99)
    );
    println!(
        "\nadded by the server, at a tap on its UDP port ({} packets, {} frames to one of two receivers):",
        per_packet.len(),
        frame_first.len()
    );
    println!(
        "  per packet (n-th packet of a frame in -> n-th out)  p50 {:.3} ms  p99 {:.3} ms",
        pct(&mut per_packet, 0.5),
        pct(&mut per_packet, 0.99)
    );
    println!(
        "  frame complete in -> its first packet out            p50 {:.3} ms  p99 {:.3} ms",
        pct(&mut frame_first, 0.5),
        pct(&mut frame_first, 0.99)
    );

    // Switch: connect call on a playing receiver -> first frame of the new stream.
    let mut times = Vec::new();
    for i in 0..switches {
        let target = (i + 1) % 2;
        let t0 = Instant::now();
        remote.connect_streams(&gwid, &[target], &[0]).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ev.recv()).await {
                Ok(Some(Event::Frame(f))) => {
                    if fieldlink_media::FrameMeta::find(&f.data).map(|m| m.stream_id)
                        == Some(target)
                    {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                _ => bail!("switch {i} did not complete"),
            }
        }
        times.push(t0.elapsed().as_micros() as u64);
        // Let the receiver settle for a few frames, as an operator would.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!("\nswitch time, {switches} switches (frame interval 40 ms):");
    println!(
        "  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        pct(&mut times, 1.0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let bin_of = |given: Option<PathBuf>| -> anyhow::Result<PathBuf> {
        let bin = match given {
            Some(b) => b,
            None => std::env::current_exe()?.with_file_name("fieldlink"),
        };
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p fieldlink)",
                bin.display()
            );
        }
        // This process on CPU 1, away from the server.
        let _ = Command::new("taskset")
            .args(["-a", "-pc", "1", &std::process::id().to_string()])
            .output();
        Ok(bin)
    };
    match cli.cmd {
        Cmd::Control {
            secs,
            max_pairs,
            fieldlink,
        } => rt.block_on(control(secs, max_pairs, bin_of(fieldlink)?)),
        Cmd::Video {
            secs,
            switches,
            fieldlink,
        } => rt.block_on(video(secs, switches, bin_of(fieldlink)?)),
        Cmd::Sfu {
            subscribers,
            secs,
            kbps,
            no_janus,
            media_threads,
            fieldlink,
        } => rt.block_on(sfu::sfu(
            subscribers,
            secs,
            kbps,
            no_janus,
            media_threads,
            bin_of(fieldlink)?,
        )),
        Cmd::Multipath {
            secs,
            cuts,
            cases,
            fieldlink,
        } => rt.block_on(multipath::multipath(secs, cuts, cases, bin_of(fieldlink)?)),
        Cmd::Rtsp { secs, script } => rt.block_on(camera::rtsp(secs, &script)),
        Cmd::Audio {
            secs,
            streams,
            fieldlink,
        } => rt.block_on(audio::audio(secs, streams, bin_of(fieldlink)?)),
        Cmd::Gb {
            rate,
            keepalive: Some(n),
            keepalive_secs,
            fieldlink,
            ..
        } => rt.block_on(gb_load::keepalive(
            n,
            rate,
            keepalive_secs,
            bin_of(fieldlink)?,
        )),
        Cmd::Gb {
            devices,
            rate,
            again,
            no_kamailio,
            bad_input,
            keepalive: None,
            fieldlink,
            ..
        } => rt.block_on(gb::gb(
            devices,
            rate,
            again,
            no_kamailio,
            bad_input,
            bin_of(fieldlink)?,
        )),
    }
}
