//! Janus 1.1 (Debian's `janus`) under the same load as fieldlink in `fieldlink-bench sfu`:
//! its streaming plugin takes the clip as plain RTP (H.264, RFC 6184 packetization) on a
//! mountpoint, and each subscriber is a str0m peer that asks for the mountpoint over
//! Janus's WebSocket API (create, attach, watch -> Janus's offer, start with our answer).
//! Janus is configured here, in a temporary folder: only the streaming plugin and the
//! WebSocket transport, ICE on loopback only, no session timeout.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::SdpOffer;
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use fieldlink_media::annexb::{h264_nal_type, nal_units};
use fieldlink_media::packetize::packetize;
use fieldlink_media::VideoCodec;
use fieldlink_rtc::Polled;

use crate::sfu::{measure, Clip, Counts, Figures, Load, PacketLog, ProbeThread, FPS};
use fieldlink_testkit::netns::TestNet;

/// RTP payload size of the publisher's packets (what str0m uses for the SDK's, near).
const RTP_PAYLOAD: usize = 1100;
const PT: u8 = 96;
const MOUNTPOINT: u64 = 1;

/// Where Janus and its modules are.
pub struct Janus {
    bin: PathBuf,
    modules: PathBuf,
}

pub fn find() -> Option<Janus> {
    let bin = [
        "/usr/bin/janus",
        "/usr/local/bin/janus",
        "/opt/janus/bin/janus",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())?;
    let modules = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("janus"))
        .chain([
            PathBuf::from("/usr/lib/janus"),
            PathBuf::from("/opt/janus/lib/janus"),
        ])
        .find(|p| p.join("plugins").join("libjanus_streaming.so").exists())?;
    Some(Janus { bin, modules })
}

/// The `.so` modules in `folder` other than `keep`, comma-separated (Janus's `disable`).
fn others(folder: &Path, keep: &str) -> String {
    let mut v: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(",")
}

/// The profile-level-id of the clip's first SPS (for the mountpoint's fmtp).
fn profile_level_id(clip: &Clip) -> String {
    clip.iter()
        .flat_map(|f| nal_units(&f.0))
        .find(|n| h264_nal_type(n) == Some(7) && n.len() >= 4)
        .map(|n| format!("{:02x}{:02x}{:02x}", n[1], n[2], n[3]))
        .unwrap_or_else(|| "42e01f".into())
}

struct Running {
    child: Child,
    dir: PathBuf,
    ws: String,
    rtp: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Janus's ports in the namespace (ours alone, so free).
const WS_PORT: u16 = 8188;
const RTP_PORT: u16 = 5004;

async fn start(j: &Janus, clip: &Clip, net: &TestNet) -> anyhow::Result<Running> {
    let dir = std::env::temp_dir().join(format!("fieldlink-bench-janus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (ws_port, rtp_port, ip) = (WS_PORT, RTP_PORT, net.ns_ip.as_str());
    let m = &j.modules;
    let main = format!(
        r#"general: {{
	configs_folder = "{dir}"
	plugins_folder = "{m}/plugins"
	transports_folder = "{m}/transports"
	events_folder = "{m}/events"
	loggers_folder = "{m}/loggers"
	debug_level = 3
	session_timeout = 0
}}
nat: {{
	nice_debug = false
	ignore_mdns = true
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
events: {{
	broadcast = false
	disable = "{events}"
}}
loggers: {{
	disable = "{loggers}"
}}
"#,
        dir = dir.display(),
        m = m.display(),
        plugins = others(&m.join("plugins"), "libjanus_streaming.so"),
        transports = others(&m.join("transports"), "libjanus_websockets.so"),
        events = others(&m.join("events"), ""),
        loggers = others(&m.join("loggers"), ""),
    );
    std::fs::write(dir.join("janus.jcfg"), main)?;
    std::fs::write(
        dir.join("janus.transport.websockets.jcfg"),
        format!(
            "general: {{\n\tjson = \"plain\"\n\tws = true\n\tws_port = {ws_port}\n\tws_ip = \"{ip}\"\n\twss = false\n}}\nadmin: {{\n\tadmin_ws = false\n\tadmin_wss = false\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.plugin.streaming.jcfg"),
        format!(
            "general: {{\n}}\nbench: {{\n\ttype = \"rtp\"\n\tid = {MOUNTPOINT}\n\tdescription = \"fieldlink-bench\"\n\tmedia = (\n\t\t{{\n\t\t\ttype = \"video\"\n\t\t\tmid = \"v\"\n\t\t\tport = {rtp_port}\n\t\t\tpt = {PT}\n\t\t\tcodec = \"h264\"\n\t\t\tfmtp = \"profile-level-id={};packetization-mode=1\"\n\t\t}}\n\t)\n}}\n",
            profile_level_id(clip)
        ),
    )?;
    let log = std::fs::File::create(dir.join("janus.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns, "taskset", "-c", "0"])
        .arg(&j.bin)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-F")
        .arg(&dir)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", j.bin.display()))?;
    let running = Running {
        child,
        dir,
        ws: format!("ws://{ip}:{ws_port}"),
        rtp: SocketAddr::new(ip.parse()?, rtp_port),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect((ip, ws_port)).await.is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(running.dir.join("janus.log")).unwrap_or_default();
            bail!("Janus did not open its WebSocket port in 15 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(running)
}

/// Sends the clip to the mountpoint as RTP at 25 fps, noting each packet, until `stop`.
async fn publish(
    from: std::net::IpAddr,
    to: SocketAddr,
    clip: Clip,
    sent: Arc<AtomicU64>,
    log: Arc<PacketLog>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let u = UdpSocket::bind(SocketAddr::new(from, 0)).await?;
    let ssrc: u32 = 0x4a41_4e55;
    let (mut seq, mut frame) = (0u16, 0u32);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / FPS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (au, _) = &clip[frame as usize % clip.len()];
        let ts = frame.wrapping_mul(90_000 / FPS);
        let payloads = packetize(VideoCodec::H264, au, RTP_PAYLOAD);
        let last = payloads.len().saturating_sub(1);
        for (i, p) in payloads.iter().enumerate() {
            let mut pkt = Vec::with_capacity(12 + p.len());
            pkt.push(0x80);
            pkt.push(if i == last { 0x80 | PT } else { PT });
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&ts.to_be_bytes());
            pkt.extend_from_slice(&ssrc.to_be_bytes());
            pkt.extend_from_slice(p);
            seq = seq.wrapping_add(1);
            log.note(&pkt, Instant::now());
            let _ = u.send_to(&pkt, to).await;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        frame += 1;
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a request and returns the first message for its transaction that is not an ack.
async fn call(ws: &mut Ws, mut req: Value, tx: &str) -> anyhow::Result<Value> {
    req["transaction"] = json!(tx);
    ws.send(Message::text(req.to_string())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("Janus did not answer in 20 s")?
            .context("Janus closed the WebSocket")??;
        let Ok(text) = m.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if v["transaction"] != tx || v["janus"] == "ack" {
            continue;
        }
        if v["janus"] == "error" {
            bail!("Janus: {}", v["error"]);
        }
        return Ok(v);
    }
}

/// One subscriber: watches the mountpoint, then receives until the task is stopped.
async fn subscribe(
    from: std::net::IpAddr,
    url: String,
    counts: Arc<Counts>,
    probe: Option<Arc<PacketLog>>,
    joined: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let v = call(&mut ws, json!({"janus": "create"}), "c").await?;
    let session = v["data"]["id"].as_u64().context("no session id")?;
    let v = call(
        &mut ws,
        json!({"janus": "attach", "session_id": session, "plugin": "janus.plugin.streaming"}),
        "a",
    )
    .await?;
    let handle = v["data"]["id"].as_u64().context("no handle id")?;
    let v = call(
        &mut ws,
        json!({"janus": "message", "session_id": session, "handle_id": handle,
               "body": {"request": "watch", "id": MOUNTPOINT}}),
        "w",
    )
    .await?;
    let sdp = v["jsep"]["sdp"]
        .as_str()
        .with_context(|| format!("no offer from Janus: {v}"))?;

    if std::env::var_os("FIELDLINK_BENCH_DEBUG").is_some() {
        eprintln!("Janus offer:\n{sdp}");
    }
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).await?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let answer = rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
    if std::env::var_os("FIELDLINK_BENCH_DEBUG").is_some() {
        eprintln!("our answer:\n{}", answer.to_sdp_string());
    }
    let v = call(
        &mut ws,
        json!({"janus": "message", "session_id": session, "handle_id": handle,
               "body": {"request": "start"},
               "jsep": {"type": "answer", "sdp": answer.to_sdp_string()}}),
        "s",
    )
    .await?;
    if v["plugindata"]["data"]["error"].is_string() {
        bail!("Janus refused start: {v}");
    }
    ws.send(Message::text(
        json!({"janus": "trickle", "session_id": session, "handle_id": handle,
               "transaction": "t", "candidate": {"completed": true}})
        .to_string(),
    ))
    .await?;
    drop(joined);

    let mut buf = vec![0u8; 2048];
    loop {
        let polled = fieldlink_rtc::drive(
            &mut rtc,
            |t| {
                let _ = socket.try_send_to(&t.contents, t.destination);
            },
            |_, e| {
                if let Event::MediaData(d) = e {
                    counts.frames.fetch_add(1, Ordering::Relaxed);
                    counts
                        .bytes
                        .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                }
                ControlFlow::Continue(())
            },
        );
        let next = match polled {
            Polled::Timeout(t) => t,
            Polled::Stopped => Instant::now(),
            Polled::Ended(_) => bail!("the peer connection with Janus ended"),
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => if let Ok((n, src)) = r {
                let at = Instant::now();
                if let Some(p) = &probe { p.note(&buf[..n], at); }
                if let Some(i) = fieldlink_rtc::udp_input(at, &buf[..n], src, local) {
                    fieldlink_rtc::handle_input(&mut rtc, i);
                }
            },
            m = ws.next() => match m {
                Some(Ok(m)) => trickle(&mut rtc, &m),
                _ => bail!("Janus closed the WebSocket"),
            },
            _ = tokio::time::sleep_until(next.into()) => {
                fieldlink_rtc::handle_input(&mut rtc, Input::Timeout(Instant::now()));
            }
        }
    }
}

/// A candidate Janus trickles after its offer.
fn trickle(rtc: &mut Rtc, m: &Message) {
    let Some(v) = m
        .to_text()
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return;
    };
    if v["janus"] != "trickle" {
        return;
    }
    if let Some(c) = v["candidate"]["candidate"].as_str() {
        if let Ok(c) = Candidate::from_sdp_string(c) {
            rtc.add_remote_candidate(c);
        }
    }
}

/// Janus at `n` subscribers: a fresh Janus, the RTP publisher, the subscribers.
pub async fn run(
    j: &Janus,
    n: usize,
    secs: u64,
    clip: &Clip,
    net: &TestNet,
) -> anyhow::Result<Figures> {
    let janus = start(j, clip, net).await?;
    let from: std::net::IpAddr = net.host_ip.parse()?;
    let pid = janus.child.id();
    let load = Load::new(n);
    let stop = Arc::new(AtomicBool::new(false));
    let pubtask = tokio::spawn(publish(
        from,
        janus.rtp,
        clip.clone(),
        load.sent.clone(),
        load.publisher.clone(),
        stop.clone(),
    ));
    let gate = Arc::new(tokio::sync::Semaphore::new(super::sfu::JOINING));
    let probe_rt = ProbeThread::start()?;
    let mut subs = Vec::new();
    for (i, c) in load.counts.iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        let task = probe_rt.for_subscriber(i).spawn(subscribe(
            from,
            janus.ws.clone(),
            c.clone(),
            load.probes.get(i).cloned(),
            permit,
        ));
        subs.push(task);
    }
    let figures = measure(pid, secs, &load).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for s in subs {
        if s.is_finished() {
            if let Ok(Err(e)) = s.await {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  a Janus subscriber stopped: {e:#}");
                }
            }
        } else {
            s.abort();
        }
    }
    let _ = pubtask.await;
    drop(probe_rt);
    if figures.joined == 0 {
        let log = std::fs::read_to_string(janus.dir.join("janus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("  no subscriber got video from Janus; the end of its log:");
        for l in tail.iter().rev() {
            eprintln!("    {l}");
        }
    }
    drop(janus);
    Ok(figures)
}
