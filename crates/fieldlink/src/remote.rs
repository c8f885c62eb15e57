//! `fieldlink remote ...`: a remote device (operator console) on the command line.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use fieldlink_sdk::{
    DeviceConfig, DeviceId, ErrorCode, Event, Permission, Qos, RemoteDevice, SdkError,
};

use crate::audio_files::{AudioArgs, WavIn, WavOut};
use crate::device_io::{console, print, unhex, Action};

#[derive(ClapArgs)]
pub struct Args {
    /// Server WebSocket URL.
    #[arg(
        long,
        env = "FIELDLINK_SERVER",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    server: String,
    /// wss:// only: PEM of the CA (or the server's own certificate) to verify the server
    /// against, instead of the system's roots.
    #[arg(long, env = "FIELDLINK_CA")]
    ca: Option<std::path::PathBuf>,
    /// This remote device's id, project_id/device_id.
    #[arg(long, env = "FIELDLINK_DEVICE_ID")]
    device_id: DeviceId,
    /// Own password or a key-derived one.
    #[arg(long, env = "FIELDLINK_PASSWORD", hide_env_values = true)]
    password: String,
    /// Receivers of this remote device (SPEC §2 max_streams): conn_fd 0..max_streams-1.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=64))]
    max_streams: u32,
    /// Do not ask for master automatically when a session opens (SPEC §5 auto_permission 0).
    #[arg(long)]
    no_auto_permission: bool,
    /// JSON lines on stdout, for scripts.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the project's field devices with their online state.
    List,
    /// Open a session, print everything that arrives, and take commands from stdin:
    /// plain text = send it; {"send":"..","qos":0}, {"send_hex":".."}, {"request_permission":1|0}.
    Connect {
        #[arg(long)]
        gwid: DeviceId,
        /// Session authorization code (whitelisted projects).
        #[arg(long)]
        token: Option<String>,
        /// Leave after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
        /// Qos for plain-text stdin lines.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        #[command(flatten)]
        audio: AudioArgs,
    },
    /// Watch field streams on receivers: prints state changes and, every second, per
    /// conn_fd: fps, kbit/s, frames, keyframes, latency. Exits 0 only if every conn_fd played.
    Watch {
        #[arg(long)]
        gwid: DeviceId,
        /// Stream ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        streams: Vec<u32>,
        /// Receivers (conn_fd), comma-separated, one per stream.
        #[arg(long, value_delimiter = ',', required = true)]
        conn_fds: Vec<u32>,
        /// Leave after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long)]
        token: Option<String>,
        /// Record every stream into this directory (fragmented MP4 segments).
        #[arg(long)]
        record: Option<std::path::PathBuf>,
        /// Segment length for --record, seconds.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
        segment_secs: u32,
        /// SPEC §2 record_config JSON, e.g. '{"file_names":[{"file":"test","duration":15}]}'
        /// (one entry per stream; files go to --record, default ./recordings).
        #[arg(long)]
        record_config: Option<String>,
        /// Decode every frame (openh264), as a player would, and report frames decoded.
        #[arg(long)]
        decode: bool,
        /// Also accept H.265 (cameras in passthrough); H.265 frames are counted, not
        /// decoded or recorded.
        #[arg(long)]
        h265: bool,
        #[command(flatten)]
        audio: AudioArgs,
    },
    /// Diagnose the session with a field device (SPEC §6): connect the streams (decoding
    /// them), wait until they play, ask for the diagnosis, print it as one JSON object
    /// {"gwid","type","report"} and exit 0 only when `type` is 1.
    Diag {
        #[arg(long)]
        gwid: DeviceId,
        /// Stream ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        streams: Vec<u32>,
        /// Receivers (conn_fd), comma-separated, one per stream (default 0, 1, ...).
        #[arg(long, value_delimiter = ',')]
        conn_fds: Vec<u32>,
        #[arg(long)]
        token: Option<String>,
        /// Mode to report (the config's cloud_mode); compared with the field device's.
        #[arg(long, default_value = "public")]
        mode: String,
    },
    /// Open a session, wait for master, send control data, and leave.
    Send {
        #[arg(long)]
        gwid: DeviceId,
        /// UTF-8 text to send.
        #[arg(long, conflicts_with = "hex", required_unless_present = "hex")]
        data: Option<String>,
        /// Bytes to send, as hex.
        #[arg(long)]
        hex: Option<String>,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Send it this many times, at --rate per second.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long)]
        token: Option<String>,
    },
}

impl Cmd {
    /// The audio flags of the commands that hold a session open.
    fn audio(&self) -> Option<&AudioArgs> {
        match self {
            Cmd::Connect { audio, .. } | Cmd::Watch { audio, .. } => Some(audio),
            _ => None,
        }
    }
}

/// Starts `--audio-in` and opens `--audio-out`, if given.
fn audio_files(dev: &RemoteDevice, args: Option<&AudioArgs>) -> anyhow::Result<Option<WavOut>> {
    let Some(args) = args else {
        return Ok(None);
    };
    if let Some(p) = &args.audio_in {
        tokio::spawn(WavIn::open(p)?.feed(dev.audio_input()));
    }
    args.audio_out
        .as_deref()
        .map(|p| WavOut::create(p, 1))
        .transpose()
}

async fn login(a: &Args) -> anyhow::Result<(RemoteDevice, fieldlink_sdk::Events)> {
    let mut cfg = DeviceConfig::new(a.server.clone(), a.device_id.clone(), a.password.clone());
    cfg.server_ca = a.ca.clone();
    crate::device_io::warn_plain(&cfg);
    cfg.auto_permission = !a.no_auto_permission;
    cfg.streams = a.max_streams;
    if let Cmd::Watch {
        record,
        segment_secs,
        decode,
        h265,
        ..
    } = &a.cmd
    {
        cfg.decode = *decode;
        cfg.h265 = *h265;
        cfg.record = record
            .as_ref()
            .map(|dir| fieldlink_sdk::record::RecordSettings {
                dir: dir.clone(),
                segment_secs: *segment_secs,
            });
    }
    if let Some(audio) = a.cmd.audio() {
        // SPEC §3 defaults (this remote hears the field device), then the flags.
        cfg.audio = fieldlink_sdk::audio::AudioConfig::spec_default(fieldlink_sdk::Role::Remote);
        audio.apply(&mut cfg.audio);
    }
    if let Cmd::Diag { mode, .. } = &a.cmd {
        // A diagnosis also says whether the remote decodes what it receives.
        cfg.decode = true;
        cfg.mode = mode.clone();
    }
    RemoteDevice::connect(cfg)
        .await
        .with_context(|| format!("logging in as {}", a.device_id))
}

async fn open(dev: &RemoteDevice, gwid: &DeviceId, token: &Option<String>) -> anyhow::Result<()> {
    if let Some(t) = token {
        dev.set_session_permission_token(gwid, t)
            .await
            .context("session code")?;
    }
    dev.open_session(gwid)
        .await
        .with_context(|| format!("opening a session with {gwid}"))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (dev, mut events) = login(&a).await?;
    let mut wav_out = audio_files(&dev, a.cmd.audio())?;
    let json = a.json;
    match &a.cmd {
        Cmd::List => {
            let list = dev.list_fields().await.context("listing field devices")?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for f in list {
                    println!(
                        "{:<40} {:<8} {}",
                        f.id,
                        if f.online { "online" } else { "offline" },
                        f.name
                    );
                }
            }
        }
        Cmd::Connect {
            gwid,
            token,
            duration,
            qos,
            ..
        } => {
            open(&dev, gwid, token).await?;
            print(
                json,
                &serde_json::json!({"event": "session_open", "gwid": gwid}),
            );
            let default_qos = Qos::try_from(*qos).map_err(anyhow::Error::msg)?;
            let until =
                duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
            console(
                &mut events,
                json,
                default_qos,
                until,
                wav_out.as_mut(),
                async |action| match action {
                    Action::Send { gwid: g, data, qos } => {
                        dev.send(g.as_ref().unwrap_or(gwid), &data, qos).await
                    }
                    Action::Request(level) => dev.request_permission(gwid, level).await,
                    Action::Set(..) => Err(SdkError::new(
                        ErrorCode::WrongRoleForCall,
                        "only a field device sets permission",
                    )),
                },
            )
            .await;
        }
        Cmd::Watch {
            gwid,
            streams,
            conn_fds,
            duration,
            token,
            record_config,
            ..
        } => {
            if let Some(t) = token {
                dev.set_session_permission_token(gwid, t)
                    .await
                    .context("session code")?;
            }
            let rc = record_config
                .as_deref()
                .map(fieldlink_sdk::record::RecordConfig::parse)
                .transpose()?;
            let plan = WatchPlan {
                gwid,
                streams,
                conn_fds,
                duration: *duration,
                record_config: rc.as_ref(),
                audio_out: wav_out.as_mut(),
            };
            let played = watch(&dev, &mut events, json, plan).await?;
            dev.close().await;
            if let Some(w) = &mut wav_out {
                w.finish()?;
            }
            let missing: Vec<&u32> = conn_fds.iter().filter(|fd| !played.contains(fd)).collect();
            if !missing.is_empty() {
                bail!("conn_fd {missing:?} never reached playing");
            }
            return Ok(());
        }
        Cmd::Diag {
            gwid,
            streams,
            conn_fds,
            token,
            ..
        } => {
            let fds: Vec<u32> = if conn_fds.is_empty() {
                (0..streams.len() as u32).collect()
            } else {
                conn_fds.clone()
            };
            let kind = diag(&dev, &mut events, gwid, streams, &fds, token).await?;
            dev.close().await;
            if kind != 1 {
                let why = ErrorCode::from_code(kind).map_or("unknown error code", |c| c.describe());
                bail!("the diagnosis failed: type {kind} ({why})");
            }
            return Ok(());
        }
        Cmd::Send {
            gwid,
            data,
            hex,
            qos,
            count,
            rate,
            token,
        } => {
            let payload = match (data, hex) {
                (Some(d), _) => d.clone().into_bytes(),
                (None, Some(h)) => unhex(h).map_err(anyhow::Error::msg)?,
                (None, None) => bail!("give --data or --hex"),
            };
            let qos = Qos::try_from(*qos).map_err(anyhow::Error::msg)?;
            open(&dev, gwid, token).await?;
            if a.no_auto_permission {
                dev.request_permission(gwid, Permission::Master)
                    .await
                    .context("requesting master")?;
            }
            wait_master(&dev, &mut events, gwid).await?;
            let period = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 100.0));
            let mut tick = tokio::time::interval(period);
            for _ in 0..*count {
                tick.tick().await;
                dev.send(gwid, &payload, qos).await.context("sending")?;
            }
            print(
                json,
                &serde_json::json!({"event": "sent", "count": count, "gwid": gwid}),
            );
            // Let the last messages leave before closing.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    dev.close().await;
    if let Some(w) = &mut wav_out {
        w.finish()?;
    }
    Ok(())
}

async fn wait_master(
    dev: &RemoteDevice,
    events: &mut fieldlink_sdk::Events,
    gwid: &DeviceId,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dev.permission(gwid) != Permission::Master {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Permission { .. })) | Ok(Some(_)) => {}
            Ok(None) => bail!("connection closed"),
            Err(_) => bail!("not granted master of {gwid} within 10 s (is the field device online and granting?)"),
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    loss_pct: Option<f32>,
    rtt_ms: Option<f64>,
    frames: u64,
    bytes: u64,
    keyframes: u64,
    latency_ms: Vec<f64>,
    /// Cumulative, from the SDK's receiver statistics.
    decoded: Option<u64>,
    dropped: Option<u64>,
}

/// What `remote watch` connects.
struct WatchPlan<'a> {
    gwid: &'a DeviceId,
    streams: &'a [u32],
    conn_fds: &'a [u32],
    duration: Option<f64>,
    record_config: Option<&'a fieldlink_sdk::record::RecordConfig>,
    audio_out: Option<&'a mut WavOut>,
}

/// Connects, then reports every second until `duration`; returns the conn_fds that played.
async fn watch(
    dev: &RemoteDevice,
    events: &mut fieldlink_sdk::Events,
    json: bool,
    plan: WatchPlan<'_>,
) -> anyhow::Result<Vec<u32>> {
    let WatchPlan {
        gwid,
        streams,
        conn_fds,
        duration,
        record_config,
        mut audio_out,
    } = plan;
    dev.connect_streams_recorded(gwid, streams, conn_fds, record_config)
        .await
        .context("connecting streams")?;
    let until = duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut tallies: std::collections::BTreeMap<u32, Tally> =
        conn_fds.iter().map(|fd| (*fd, Tally::default())).collect();
    let mut played = Vec::new();
    let mut totals: std::collections::BTreeMap<u32, u64> = Default::default();
    // One future for the whole loop, so no signal falls between two turns.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let stop = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Frame(f)) => {
                    let t = tallies.entry(f.conn_fd).or_default();
                    t.frames += 1;
                    t.bytes += f.data.len() as u64;
                    t.keyframes += u64::from(f.keyframe);
                    if let Some(l) = crate::device_io::latency_ms(&f) {
                        t.latency_ms.push(l);
                    }
                }
                Some(Event::MixedAudio(m)) => {
                    if let Some(w) = audio_out.as_deref_mut() {
                        w.write(&m);
                    }
                }
                Some(Event::ReceiverStats { conn_fd, loss_pct, rtt_ms, decoded, dropped, .. }) => {
                    let t = tallies.entry(conn_fd).or_default();
                    t.loss_pct = loss_pct;
                    t.rtt_ms = rtt_ms;
                    t.decoded = decoded;
                    t.dropped = Some(dropped);
                }
                Some(e) => {
                    if let Event::StreamState { conn_fd, state: fieldlink_sdk::StreamState::Playing, .. } = &e {
                        if !played.contains(conn_fd) {
                            played.push(*conn_fd);
                        }
                    }
                    print(json, &crate::device_io::event_json(&e));
                }
                None => bail!("connection closed"),
            },
            _ = tick.tick() => {
                for (fd, t) in std::mem::take(&mut tallies) {
                    let mut l = t.latency_ms.clone();
                    l.sort_by(f64::total_cmp);
                    let p50 = l.get(l.len() / 2).copied();
                    *totals.entry(fd).or_default() += t.frames;
                    print(json, &serde_json::json!({
                        "event": "stats", "conn_fd": fd, "fps": t.frames, "kbps": t.bytes * 8 / 1000,
                        "keyframes": t.keyframes, "latency_ms": p50.map(|v| (v * 10.0).round() / 10.0),
                        "loss_pct": t.loss_pct, "rtt_ms": t.rtt_ms,
                        "frames_total": totals[&fd], "frames_decoded": t.decoded,
                        "frames_dropped": t.dropped,
                    }));
                }
                tallies = conn_fds.iter().map(|fd| (*fd, Tally::default())).collect();
            }
            _ = stop => break,
            _ = &mut interrupted => break,
        }
    }
    Ok(played)
}

/// `remote diag`: connects, waits for playing (or 15 s), asks, prints the report; returns
/// its `type`.
async fn diag(
    dev: &RemoteDevice,
    events: &mut fieldlink_sdk::Events,
    gwid: &DeviceId,
    streams: &[u32],
    conn_fds: &[u32],
    token: &Option<String>,
) -> anyhow::Result<i32> {
    if streams.len() != conn_fds.len() {
        bail!(
            "give one --conn-fds entry per stream ({} streams)",
            streams.len()
        );
    }
    open(dev, gwid, token).await?;
    dev.connect_streams(gwid, streams, conn_fds)
        .await
        .context("connecting streams")?;
    let mut playing: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !conn_fds.iter().all(|fd| playing.contains(fd)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::StreamState { conn_fd, state, .. })) => {
                if state == fieldlink_sdk::StreamState::Playing {
                    playing.push(conn_fd);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("connection closed"),
            // Not all playing: the diagnosis says why.
            Err(_) => break,
        }
    }
    eprintln!("measuring for about 10 s...");
    dev.diag_request(gwid)
        .await
        .with_context(|| format!("requesting a diagnosis of {gwid}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Diagnosis { gwid, kind, report })) => {
                let out = serde_json::json!({"gwid": gwid, "type": kind, "report": report});
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(kind);
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("connection closed"),
            Err(_) => bail!("no diagnosis from the server within 20 s"),
        }
    }
}
