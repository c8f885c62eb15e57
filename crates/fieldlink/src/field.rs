//! `fieldlink field --config config.json`: a field device on the command line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use fieldlink_sdk::config::{base_dir, DeviceFile};
use fieldlink_sdk::{ErrorCode, FieldDevice, Qos, Role, SdkError};

use crate::device_io::{console, print, Action};

#[derive(ClapArgs)]
pub struct Args {
    /// Field device config.json (SPEC §7 shape; see docs/configuration.md).
    #[arg(long, short)]
    config: PathBuf,
    /// Server WebSocket URL (overrides "server" in the config).
    #[arg(long, env = "FIELDLINK_SERVER")]
    server: Option<String>,
    /// wss:// only: PEM of the CA (or the server's own certificate) to verify the server
    /// against, instead of the system's roots (overrides "certificate" in the config).
    #[arg(long, env = "FIELDLINK_CA")]
    ca: Option<PathBuf>,
    /// Qos for plain-text stdin lines.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Short human-readable lines instead of JSON lines.
    #[arg(long)]
    human: bool,
    /// Only validate the config: print every problem with its JSON path (exit 1), or
    /// that it is fine (exit 0). Connects to nothing.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    audio: crate::audio_files::AudioArgs,
}

/// What `--check` asks of the file system and the SDK.
struct Checks<'a>(&'a std::path::Path);

impl fieldlink_proto::field_config::Outside for Checks<'_> {
    fn file(&self, path: &str) -> Option<String> {
        let p = std::path::Path::new(path);
        (!p.is_file()).then(|| format!("{path} is not a readable file"))
    }

    fn certificate(&self, path: &str) -> Option<String> {
        let full = crate::device_io::relative_to(self.0, path);
        (!full.is_file()).then(|| format!("{} is not a readable file", full.display()))
    }

    fn bind(&self, ip: std::net::IpAddr) -> Option<String> {
        std::net::UdpSocket::bind((ip, 0))
            .err()
            .map(|e| match e.kind() {
                std::io::ErrorKind::AddrNotAvailable => {
                    format!("{ip} is not an address of this machine ({e})")
                }
                std::io::ErrorKind::PermissionDenied => format!(
                    "binding {ip} is not permitted ({e}): give the process CAP_NET_BIND_SERVICE \
                 (or CAP_NET_RAW where a security policy asks for it)"
                ),
                _ => format!("cannot bind a UDP socket on {ip}: {e}"),
            })
    }

    fn rtsp(&self, url: &str) -> Option<String> {
        let cam = fieldlink_sdk::camera::RtspCameraConfig {
            url: url.to_string(),
            username: None,
            password: None,
            transport: Default::default(),
        };
        cam.validate().err().map(|e| e.message)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.check {
        let text = std::fs::read_to_string(&a.config)
            .with_context(|| format!("reading {}", a.config.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", a.config.display()))?;
        let problems = fieldlink_proto::field_config::check(&v, &Checks(&a.config));
        for p in &problems {
            println!("{p}");
        }
        if !problems.is_empty() {
            bail!("{}: {} problem(s)", a.config.display(), problems.len());
        }
        println!("{}: OK", a.config.display());
        return Ok(());
    }
    let c = DeviceFile::load(&a.config, Role::Field)?;
    let mut cfg = c.device_config(Role::Field, &base_dir(&a.config))?;
    let id = cfg.device_id.clone();
    if let Some(s) = a.server {
        cfg.server = s;
    }
    if a.ca.is_some() {
        cfg.server_ca = a.ca.clone();
    }
    crate::device_io::warn_plain(&cfg);
    a.audio.apply(&mut cfg.audio);
    let wav_in = a
        .audio
        .audio_in
        .as_deref()
        .map(crate::audio_files::WavIn::open)
        .transpose()?;
    let mut wav_out = crate::audio_files::wav_out(&a.audio, &cfg.audio)?;
    let sources = c.sources()?;
    let (dev, mut events) = FieldDevice::connect(cfg)
        .await
        .with_context(|| format!("logging in as {id}"))?;
    for (i, src) in sources.into_iter().enumerate() {
        dev.start_video(i as u32, src)?;
    }
    if let Some(w) = wav_in {
        tokio::spawn(w.feed(dev.audio_input()));
    }
    let json = !a.human;
    print(
        json,
        &serde_json::json!({"event": "ready", "device_id": id}),
    );
    let default_qos = Qos::try_from(a.qos).map_err(anyhow::Error::msg)?;
    console(
        &mut events,
        json,
        default_qos,
        None,
        wav_out.as_mut(),
        async |action| match action {
            Action::Send { data, qos, .. } => dev.send(&data, qos).await,
            Action::Set(remote, level) => dev.set_operation_permission(&remote, level).await,
            Action::Request(_) => Err(SdkError::new(
                ErrorCode::WrongRoleForCall,
                "a field device sets permission, it does not request it",
            )),
        },
    )
    .await;
    dev.close().await;
    if let Some(w) = &mut wav_out {
        w.finish()?;
    }
    Ok(())
}
