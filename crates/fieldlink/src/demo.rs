//! `fieldlink demo`: the server with its embedded defaults, a demo project and a demo
//! field device that reports every second and echoes control data, ready to operate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::{DeviceConfig, Event, FieldDevice, Qos};
use fieldlink_server::store::{now_ms, Device, Project, Security, StoreError};
use fieldlink_server::Config;

#[derive(ClapArgs)]
pub struct Args {
    /// HTTP and WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// WebRTC UDP address.
    #[arg(long, default_value = "127.0.0.1:3478")]
    udp_listen: std::net::SocketAddr,
    /// Where the demo keeps its database.
    #[arg(long, default_value = "fieldlink-demo")]
    data_dir: PathBuf,
    /// GB28181 SIP address (port 0: any free port; the demo's simulated camera finds it).
    #[arg(long, default_value = "127.0.0.1:0")]
    sip_listen: std::net::SocketAddr,
}

const PROJECT: &str = "demo";
const FIELD: &str = "field1";
const FIELD_PW: &str = "field1";
const OPERATORS: [&str; 2] = ["op1", "op2"];
const OPERATOR_PW: &str = "op";
const ADMIN_TOKEN: &str = "demo";
/// Test-pattern video streams of the demo field device.
const STREAMS: u32 = 4;

fn ignore_existing(r: Result<(), StoreError>) -> anyhow::Result<()> {
    match r {
        Ok(()) | Err(StoreError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = Config {
        listen: a.listen,
        data_dir: a.data_dir,
        admin_token: ADMIN_TOKEN.into(),
        webrtc: fieldlink_server::config::WebRtcConfig {
            udp_listen: a.udp_listen,
            ..Default::default()
        },
        gb28181: fieldlink_server::config::Gb28181Config {
            sip_listen: Some(a.sip_listen),
            project: PROJECT.into(),
            ..Default::default()
        },
        ..Config::default()
    };
    let running = fieldlink_server::start(config)
        .await
        .context("starting the demo server")?;
    let store = running.store.clone();
    ignore_existing(
        store
            .create_project(&Project {
                id: PROJECT.into(),
                name: "fieldlink demo".into(),
                security: Security::default(),
                created_ms: now_ms(),
            })
            .await,
    )?;
    let hash = fieldlink_auth::hash_password(OPERATOR_PW);
    let mut devices = vec![(
        FIELD,
        fieldlink_sdk::Role::Field,
        fieldlink_auth::hash_password(FIELD_PW),
    )];
    devices.extend(
        OPERATORS
            .iter()
            .map(|o| (*o, fieldlink_sdk::Role::Remote, hash.clone())),
    );
    for (id, kind, password) in devices {
        let d = Device {
            project_id: PROJECT.into(),
            device_id: id.into(),
            kind,
            name: id.into(),
            password,
            key_password_only: false,
            auto_registered: false,
            created_ms: now_ms(),
        };
        ignore_existing(store.create_device(&d).await)?;
    }
    let ws = format!("ws://{}/ws", running.http_addr);
    let gwid = format!("{PROJECT}/{FIELD}").parse()?;
    let mut cfg = DeviceConfig::new(ws.clone(), gwid, FIELD_PW);
    cfg.streams = STREAMS;
    // Its microphone: a chime operators hear in the console at once (uplink, SPEC §3).
    cfg.audio.enable = true;
    cfg.audio.external = true;
    let (field, mut events) = FieldDevice::connect(cfg)
        .await
        .context("starting the demo field device")?;
    for i in 0..STREAMS {
        let source = TestPattern::new(i, TestPatternConfig::default())?;
        field.start_video(i, source)?;
    }
    tokio::spawn(chime(field.audio_input()));
    // A simulated GB28181 camera with 2 channels registers like a real one would.
    let sip = running
        .sip_addr
        .context("the demo's GB28181 SIP socket is missing")?;
    tokio::spawn(async move {
        if let Err(e) = crate::gb_device::run(crate::gb_device::Args::demo(sip, 2)).await {
            eprintln!("demo GB28181 camera: {e:#}");
        }
    });
    println!(
        "\nfieldlink demo is running.\n\
         \n  server        http://{http}  (admin API token: {ADMIN_TOKEN})\
         \n  signalling    {ws}\
         \n  field device  {PROJECT}/{FIELD}: {STREAMS} test-pattern video streams (640x360, 25 fps),\
         \n                reports \"tick N\" every second, echoes control data back\
         \n  GB28181       SIP on {sip}; a simulated camera {PROJECT}/34020000001320000001 with 2 channels\
         \n                (a field device like the other: watch its channels as streams 0 and 1)\
         \n  operators     {PROJECT}/op1 and {PROJECT}/op2, password \"{OPERATOR_PW}\"\
         \n\nIn another terminal, operate it (type a line to send it as control data):\
         \n  cargo run --release -p fieldlink -- remote --device-id {PROJECT}/op1 --password {OPERATOR_PW} connect --gwid {PROJECT}/{FIELD}\
         \n\nWatch streams 0 and 1 on receivers 0 and 1 (state changes and a stats line per second):\
         \n  cargo run --release -p fieldlink -- remote --device-id {PROJECT}/op2 --password {OPERATOR_PW} watch --gwid {PROJECT}/{FIELD} --streams 0,1 --conn-fds 0,1\
         \n\nCtrl-C stops the demo.\n",
        http = running.http_addr,
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    let mut running = running;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                // Nobody in session is not an error: the report simply goes to no one.
                let _ = field.send(format!("tick {n}").as_bytes(), Qos::Reliable).await;
            }
            ev = events.recv() => match ev {
                Some(Event::ControlData { from, data, qos }) => {
                    let mut echo = b"echo: ".to_vec();
                    echo.extend_from_slice(&data[..data.len().min(694)]);
                    if let Err(e) = field.send(&echo, qos).await {
                        eprintln!("demo field device: echo to {from} failed: {e}");
                    }
                }
                Some(ev) => tracing::info!(?ev, "demo field device"),
                None => break,
            },
            r = &mut interrupted => { r?; break; }
            _ = running.stop_signal().closed() => break,
        }
    }
    field.close().await;
    running.shutdown().await?;
    Ok(())
}

/// The demo field device's microphone: a 440 Hz chime of 250 ms every second, pushed as
/// external PCM in real time (10 ms frames, 48 kHz mono).
async fn chime(input: fieldlink_sdk::AudioInput) {
    let mut tone = fieldlink_sdk::audio::tone::Tone::new(440.0, 48000, 6000.0);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0u64.. {
        tick.tick().await;
        let mut frame = tone.next_frame();
        if n % 100 >= 25 {
            frame.fill(0);
        }
        if let Err(e) = input.push(48000, 1, &frame) {
            if input.is_closed() {
                return;
            }
            tracing::debug!("demo chime: {e}");
        }
    }
}
