//! `fieldlink-bench audio`: mouth-to-ear latency of the voice path (external PCM pushed
//! at the field device → mixed PCM handed out at the remote, one process, one clock)
//! through a real server on loopback, clean and with 10% loss towards the server; and
//! CPU per audio stream: the server forwarding, the SDK encoding, decoding and mixing.
//!
//! Latency: the field device sends silence with a 10 ms 1 kHz burst every 250 ms; the
//! remote finds each burst's first loud sample in the mixed output. Goal (docs/
//! benchmarks.md): p50 ≤ 50 ms, p99 ≤ 80 ms on loopback, a third of G.114's 150 ms.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fieldlink_sdk::audio::{tone::Tone, Playback, FRAME};
use fieldlink_sdk::{DeviceConfig, DeviceId, Event, FieldDevice, RemoteDevice};
use tokio::net::UdpSocket;

use crate::{cpu_secs, pct, start_server};

/// Frames between bursts (250 ms), and the silence before an onset (150 ms, in samples).
const BURST_EVERY: u64 = 25;
const QUIET_BEFORE: usize = 48 * 150;
/// A loud sample, and the silence that must come before a burst's onset.
const LOUD: i16 = 3000;

/// A UDP relay in front of the server that drops `loss` % of datagrams going to it.
fn lossy_relay(front: UdpSocket, server: SocketAddr, loss: Arc<AtomicU32>) {
    let front = Arc::new(front);
    tokio::spawn(async move {
        let mut ups: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> = Default::default();
        let mut buf = vec![0u8; 2048];
        let mut n_seen: u64 = 0;
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            if !ups.contains_key(&client) {
                if ups.len() >= 64 {
                    continue;
                }
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(server).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                let (up2, front2) = (up.clone(), front.clone());
                tokio::spawn(async move {
                    let mut b = vec![0u8; 2048];
                    while let Ok(n) = up2.recv(&mut b).await {
                        let _ = front2.send_to(&b[..n], client).await;
                    }
                });
                ups.insert(client, up);
            }
            n_seen += 1;
            // A fixed pseudo-random pattern (LCG), so runs compare.
            let r = (n_seen
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33)
                % 100;
            if r < u64::from(loss.load(Ordering::Relaxed)) {
                continue;
            }
            let _ = ups[&client].send(&buf[..n]).await;
        }
    });
}

async fn devices(
    ws: &str,
    i: usize,
) -> anyhow::Result<(
    FieldDevice,
    fieldlink_sdk::Events,
    RemoteDevice,
    fieldlink_sdk::Events,
)> {
    let gwid: DeviceId = format!("bench/f{i}").parse()?;
    let mut fc = DeviceConfig::new(ws, gwid.clone(), "pw");
    fc.audio.enable = true;
    fc.audio.external = true;
    let (field, fe) = FieldDevice::connect(fc).await?;
    let mut rc = DeviceConfig::new(ws, format!("bench/r{i}").parse()?, "pw");
    rc.audio.receive = true;
    rc.audio.play = Some(Playback::Outside);
    let (remote, re) = RemoteDevice::connect(rc).await?;
    remote.open_session(&gwid).await?;
    Ok((field, fe, remote, re))
}

/// Bursts for `secs`: latencies in µs, and bursts sent.
async fn latency(
    field: &FieldDevice,
    re: &mut fieldlink_sdk::Events,
    secs: u64,
) -> (Vec<u64>, u64) {
    let pushed: Arc<Mutex<Vec<Instant>>> = Default::default();
    let input = field.audio_input();
    let p2 = pushed.clone();
    let pusher = tokio::spawn(async move {
        let mut tone = Tone::new(1000.0, 48000, 12000.0);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for n in 0u64.. {
            tick.tick().await;
            let mut f = tone.next_frame();
            if n % BURST_EVERY != 0 {
                f.fill(0);
            }
            // A frame is "said" when its last sample is: that is when it is pushed.
            let at = Instant::now();
            if input.push(48000, 1, &f).is_ok() && n % BURST_EVERY == 0 {
                p2.lock().unwrap_or_else(|p| p.into_inner()).push(at);
            }
        }
    });
    let mut lat = Vec::new();
    let mut quiet = 0usize;
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(e)) = tokio::time::timeout_at(end, re.recv()).await {
        let Event::MixedAudio(m) = e else { continue };
        let now = Instant::now();
        for (i, s) in m.samples.iter().enumerate() {
            if s.unsigned_abs() >= LOUD.unsigned_abs() {
                if quiet >= QUIET_BEFORE {
                    // The onset `FRAME - i` samples before this frame's end (now).
                    let onset = now - Duration::from_micros(((FRAME - i) as u64) * 1000 / 48);
                    let pushes = pushed.lock().unwrap_or_else(|p| p.into_inner());
                    // The burst pushed last before the onset (bursts are 250 ms apart).
                    if let Some(t) = pushes.iter().rev().find(|t| **t <= onset) {
                        // Its first sample was said 10 ms before its push.
                        let said = *t - Duration::from_millis(10);
                        lat.push(onset.duration_since(said).as_micros() as u64);
                    }
                }
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
    }
    pusher.abort();
    let sent = pushed.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    (lat, sent)
}

/// The SDK's own work per 10 ms of one stream, timed here: encode, decode, mix.
fn sdk_costs() -> (f64, f64, f64) {
    let n = 2000;
    let mut tone = Tone::new(1000.0, 48000, 10000.0);
    let frames: Vec<Vec<i16>> = (0..n).map(|_| tone.next_frame()).collect();
    let mut enc =
        opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    let _ = enc.set_bitrate(opus::Bitrate::Bits(fieldlink_sdk::audio::OPUS_BITRATE));
    let _ = enc.set_inband_fec(true);
    let _ = enc.set_packet_loss_perc(10);
    let t = Instant::now();
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| enc.encode_vec(f, 1500).unwrap_or_default())
        .collect();
    let encode = t.elapsed().as_secs_f64() / n as f64;
    let mut dec = opus::Decoder::new(48000, opus::Channels::Mono).expect("decoder");
    let mut out = vec![0i16; FRAME];
    let t = Instant::now();
    for p in &packets {
        let _ = dec.decode(p, &mut out, false);
    }
    let decode = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for f in frames.chunks(4) {
        std::hint::black_box(fieldlink_sdk::audio::mix(std::hint::black_box(f), 1));
    }
    let mix = t.elapsed().as_secs_f64() / (n / 4) as f64;
    (encode, decode, mix)
}

pub async fn audio(secs: u64, streams: usize, bin: PathBuf) -> anyhow::Result<()> {
    let front = UdpSocket::bind("127.0.0.1:0").await?;
    let public = front.local_addr()?.to_string();
    let server = start_server(&bin, streams.max(1), &["--public-addr".to_string(), public]).await?;
    let loss = Arc::new(AtomicU32::new(0));
    lossy_relay(front, server.udp.parse()?, loss.clone());
    println!(
        "fieldlink-bench audio: server pid {} (CPU 0), loopback through a relay, Opus 48 kHz mono \
         10 ms packets, FEC on",
        server.child.id()
    );
    let (field, _fe, _remote, mut re) = devices(&server.ws, 0).await.context("devices")?;
    // Let playout settle before measuring.
    let _ = latency(&field, &mut re, 2).await;
    for (name, pct_loss) in [("loopback", 0), ("10% loss to the server", 10)] {
        loss.store(pct_loss, Ordering::Relaxed);
        let (mut lat, sent) = latency(&field, &mut re, secs).await;
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        println!(
            "mouth-to-ear, {name}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms ({} of {sent} bursts found)",
            pct(&mut lat, 1.0),
            lat.len()
        );
        if pct_loss == 0 {
            println!(
                "  goal p50 <= 50 ms, p99 <= 80 ms: {}",
                if p50 <= 50.0 && p99 <= 80.0 {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    loss.store(0, Ordering::Relaxed);
    drop((field, re));

    // CPU: `streams` field devices talking, each heard by its remote.
    let mut pairs = Vec::new();
    for i in 0..streams {
        pairs.push(devices(&server.ws, i).await.context("devices")?);
    }
    let mut pushers = Vec::new();
    for (f, _, _, _) in &pairs {
        let input = f.audio_input();
        pushers.push(tokio::spawn(async move {
            let mut tone = Tone::new(440.0, 48000, 8000.0);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let _ = input.push(48000, 1, &tone.next_frame());
            }
        }));
    }
    // The remotes' events are read, as an application would.
    let mut readers = Vec::new();
    for (f, fe, r, re) in pairs {
        readers.push(tokio::spawn(async move {
            let (_f, _fe, _r, mut re) = (f, fe, r, re);
            while re.recv().await.is_some() {}
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = server.child.id();
    let (s0, me0, t0) = (cpu_secs(pid), cpu_secs(std::process::id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = (cpu_secs(pid) - s0) / wall;
    let sdk_cpu = (cpu_secs(std::process::id()) - me0) / wall;
    for t in pushers.into_iter().chain(readers) {
        t.abort();
    }
    println!(
        "CPU, {streams} streams for {secs} s: server {:.2}% of a core per stream (forwarding); \
         this process {:.2}% per stream (the SDK's field encode + remote decode, mix, \
         playout clock, events; and the relay)",
        100.0 * server_cpu / streams as f64,
        100.0 * sdk_cpu / streams as f64,
    );
    let (enc, dec, mix) = sdk_costs();
    println!(
        "SDK work per 10 ms of one stream, timed alone: encode {:.0} µs ({:.2}% of a core), \
         decode {:.0} µs ({:.2}%), mix of 4 parties {:.1} µs",
        enc * 1e6,
        enc * 1e4,
        dec * 1e6,
        dec * 1e4,
        mix * 1e6
    );
    Ok(())
}
