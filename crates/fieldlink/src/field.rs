//! `fieldlink field --config config.json`: a field device on the command line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use fieldlink_sdk::{DeviceConfig, DeviceId, ErrorCode, FieldDevice, Qos, SdkError};
use serde::Deserialize;

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

/// The field device's config.json. Keys from the vendor format that later features use
/// are accepted now so existing files load.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub device_id: String,
    pub projectid: String,
    pub password: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted from vendor files; nothing shows it yet
    pub device_name: Option<String>,
    #[serde(default)]
    pub device_streams: Option<u32>,
    #[serde(default)]
    pub cloud_mode: Option<String>,
    /// wss:// only: PEM the server's certificate must chain to (relative to this file).
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub streams_config: Vec<StreamConfig>,
    /// Server WebSocket URL (fieldlink addition), default ws://127.0.0.1:8080/ws.
    #[serde(default)]
    pub server: Option<String>,
    /// SPEC §5: 1 = grant whatever is requested (default), 0 = the application decides.
    #[serde(default)]
    pub auto_permission: Option<u8>,
    /// SPEC §3 voice: capture and send (default 1), receive and play (default 0),
    /// send PCM the application pushes (default 0), the ALSA devices or "outside".
    #[serde(default)]
    pub audio_enable: Option<u8>,
    #[serde(default)]
    pub audio_receive: Option<u8>,
    #[serde(default)]
    pub audio_external: Option<u8>,
    #[serde(default)]
    pub audio_play: Option<String>,
    #[serde(default)]
    pub audio_record: Option<String>,
}

impl FieldConfig {
    /// The SPEC §3 settings: its defaults, then what the config says.
    pub fn audio(&self) -> fieldlink_sdk::audio::AudioConfig {
        use fieldlink_sdk::audio::{AudioConfig, Playback};
        let mut a = AudioConfig::spec_default(fieldlink_sdk::Role::Field);
        if let Some(v) = self.audio_enable {
            a.enable = v == 1;
        }
        if let Some(v) = self.audio_receive {
            a.receive = v == 1;
        }
        a.external = self.audio_external == Some(1);
        a.record = self.audio_record.clone();
        a.play = self.audio_play.as_deref().map(|p| match p {
            "outside" => Playback::Outside,
            d => Playback::Device(d.to_string()),
        });
        a
    }
}

/// One video stream (SPEC §7 `streams_config[i]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    #[serde(default)]
    pub fps: Option<f64>,
    /// Target bitrate, kbit/s.
    #[serde(default)]
    pub bps: Option<u32>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// For rtsp:// cameras: `rtsp_enc` (passthrough: the camera's H.264/H.265 as is) or
    /// `normal` (transcode to H.264 at this stream's size, fps and bitrate; the default).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The camera's own size (informative: the stream's width/height are what is sent).
    #[serde(default)]
    #[allow(dead_code)]
    pub width: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    pub height: Option<u32>,
    /// fieldlink's reading of the vendor field: the RTSP transport, 1 = TCP (default),
    /// 0 = UDP.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// `test://pattern` (default), `file:///path/to/stream.h264` (Annex-B, looped), or
    /// `rtsp://[user:password@]host[:port]/path`.
    pub url: String,
    /// RTSP credentials, instead of (or overriding) those in the URL.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// The source of stream `i`, from its config (a test pattern when nothing is said).
pub fn source_for(
    i: u32,
    sc: Option<&StreamConfig>,
) -> anyhow::Result<Box<dyn fieldlink_sdk::VideoSource>> {
    use fieldlink_sdk::video::{AnnexBFile, TestPattern, TestPatternConfig};
    if let Some(p) = sc.and_then(|c| c.protocol.as_deref()) {
        if !matches!(p, "rtsp_enc" | "normal") {
            bail!("streams_config[{i}].protocol: {p:?} is neither \"rtsp_enc\" nor \"normal\"");
        }
    }
    let d = TestPatternConfig::default();
    let fps = sc.and_then(|c| c.fps).unwrap_or(d.fps);
    let url = sc
        .and_then(|c| c.cameras.first())
        .map_or("test://pattern", |c| c.url.as_str());
    // What the SDK encodes (test pattern, transcoded camera) at this stream's settings.
    let cfg = TestPatternConfig {
        width: sc.and_then(|c| c.width).unwrap_or(d.width),
        height: sc.and_then(|c| c.height).unwrap_or(d.height),
        fps,
        kbps: sc.and_then(|c| c.bps).unwrap_or(d.kbps),
        gop: (fps * 2.0).round() as u32,
    };
    if url == "test://pattern" {
        return Ok(Box::new(
            TestPattern::new(i, cfg).with_context(|| format!("streams_config[{i}]"))?,
        ));
    }
    if let Some(path) = url.strip_prefix("file://") {
        let f = AnnexBFile::open(std::path::Path::new(path), fps)
            .with_context(|| format!("streams_config[{i}].cameras[0].url"))?;
        return Ok(Box::new(f));
    }
    if url.starts_with("rtsp://") {
        use fieldlink_sdk::camera::{Passthrough, RtspCameraConfig, RtspTransport};
        use fieldlink_sdk::transcode::Transcode;
        let cam = sc.and_then(|c| c.cameras.first());
        let rtsp = RtspCameraConfig {
            url: url.to_string(),
            username: cam.and_then(|c| c.username.clone()),
            password: cam.and_then(|c| c.password.clone()),
            transport: match cam.and_then(|c| c.protocol) {
                Some(0) => RtspTransport::Udp,
                _ => RtspTransport::Tcp,
            },
        };
        let at = || format!("streams_config[{i}].cameras[0]");
        if sc.and_then(|c| c.protocol.as_deref()) == Some("rtsp_enc") {
            return Ok(Box::new(Passthrough::start(&rtsp, fps).with_context(at)?));
        }
        return Ok(Box::new(Transcode::start(&rtsp, cfg).with_context(at)?));
    }
    bail!(
        "streams_config[{i}].cameras[0].url: unknown source {url:?} (test://pattern, file://PATH, rtsp://...)"
    )
}

pub fn load(path: &PathBuf) -> anyhow::Result<FieldConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let c: FieldConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(n) = c.device_streams {
        if !c.streams_config.is_empty() && c.streams_config.len() != n as usize {
            bail!(
                "{}: device_streams is {n} but streams_config has {} entries",
                path.display(),
                c.streams_config.len()
            );
        }
        if n > 16 {
            bail!("{}: device_streams must be 0..=16", path.display());
        }
    }
    if let Some(i) = c.streams_config.iter().position(|s| s.cameras.len() > 1) {
        bail!(
            "{}: streams_config[{i}].cameras has {} cameras, but a stream has one source \
             (cameras[0]); give each camera its own stream",
            path.display(),
            c.streams_config[i].cameras.len()
        );
    }
    for (k, v) in [
        ("auto_permission", c.auto_permission),
        ("audio_enable", c.audio_enable),
        ("audio_receive", c.audio_receive),
        ("audio_external", c.audio_external),
    ] {
        if !matches!(v, None | Some(0) | Some(1)) {
            bail!("{}: {k} must be 0 or 1", path.display());
        }
    }
    Ok(c)
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
    let c = load(&a.config)?;
    let id = DeviceId::new(&c.projectid, &c.device_id).context("projectid/device_id")?;
    let server = a
        .server
        .or(c.server.clone())
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let mut cfg = DeviceConfig::new(server, id.clone(), c.password.clone());
    cfg.server_ca = a.ca.clone().or_else(|| {
        c.certificate
            .as_deref()
            .map(|p| crate::device_io::relative_to(&a.config, p))
    });
    crate::device_io::warn_plain(&cfg);
    cfg.auto_permission = c.auto_permission.unwrap_or(1) == 1;
    if let Some(m) = &c.cloud_mode {
        cfg.mode = m.clone();
    }
    let streams = c.device_streams.unwrap_or(c.streams_config.len() as u32);
    cfg.streams = streams;
    cfg.audio = c.audio();
    a.audio.apply(&mut cfg.audio);
    let wav_in = a
        .audio
        .audio_in
        .as_deref()
        .map(crate::audio_files::WavIn::open)
        .transpose()?;
    let mut wav_out = crate::audio_files::wav_out(&a.audio, &cfg.audio)?;
    let sources = (0..streams)
        .map(|i| source_for(i, c.streams_config.get(i as usize)))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
