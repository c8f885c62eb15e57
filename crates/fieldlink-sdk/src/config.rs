//! A device's `config.json` (SPEC §7 shape plus fieldlink keys): what `fieldlink field
//! --config` and the C API read. One struct for both roles; keys of the other role are an
//! error, so a field file and a remote file cannot be mixed up silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::audio::{AudioConfig, Playback};
use crate::{DeviceConfig, DeviceId, ErrorCode, Role, SdkError, VideoSource};

/// The server a config without `server` logs in to.
pub const DEFAULT_SERVER: &str = "ws://127.0.0.1:8080/ws";
/// Receivers of a remote device whose config does not say (`max_streams`).
pub const DEFAULT_MAX_STREAMS: u32 = 4;

fn bad(msg: impl Into<String>) -> SdkError {
    SdkError::new(ErrorCode::BadRequest, msg)
}

/// The keys of a device's config.json. Keys from the vendor format that nothing uses yet
/// are accepted so existing files load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    pub device_id: String,
    pub projectid: String,
    pub password: String,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub cloud_mode: Option<String>,
    /// wss:// only: PEM the server's certificate must chain to (relative to the file).
    #[serde(default)]
    pub certificate: Option<String>,
    /// Server WebSocket URL (fieldlink), default [`DEFAULT_SERVER`].
    #[serde(default)]
    pub server: Option<String>,
    /// SPEC §5: 1 = automatic (default), 0 = the application decides / asks.
    #[serde(default)]
    pub auto_permission: Option<u8>,
    /// SPEC §3 voice.
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
    /// SPEC §9: local addresses media goes out from (two or more: all of them).
    #[serde(default)]
    pub network_bind: Vec<String>,
    /// SPEC §9: 1 redundant, 2 balanced (default), 3 aggregate.
    #[serde(default)]
    pub media_trans_mode: Option<u8>,
    /// Field: number of video streams (0..=16).
    #[serde(default)]
    pub device_streams: Option<u32>,
    #[serde(default)]
    pub streams_config: Vec<StreamConfig>,
    /// Remote: receivers, conn_fd 0..max_streams-1 (default [`DEFAULT_MAX_STREAMS`]).
    #[serde(default)]
    pub max_streams: Option<u32>,
    /// Remote (fieldlink): 1 = decode received video to I420 (internal rendering needs it).
    #[serde(default)]
    pub decode: Option<u8>,
    /// Remote (fieldlink): 1 = also negotiate H.265 (cameras in passthrough).
    #[serde(default)]
    pub h265: Option<u8>,
    /// Remote (fieldlink): record every connected stream into this directory (SPEC §2
    /// global recording configuration), in segments of `record_segment_secs` (default 60).
    #[serde(default)]
    pub record_dir: Option<String>,
    #[serde(default)]
    pub record_segment_secs: Option<u32>,
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
    /// For rtsp:// cameras: `rtsp_enc` (passthrough) or `normal` (transcode; the default).
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
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// fieldlink's reading of the vendor field: the RTSP transport, 1 = TCP (default),
    /// 0 = UDP.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// `test://pattern` (default), `file:///path/to/stream.h264` or `rtsp://...`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl DeviceFile {
    /// Reads and checks `path` for `role`.
    pub fn load(path: &Path, role: Role) -> Result<DeviceFile, SdkError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
        DeviceFile::parse(&text, role)
            .map_err(|e| bad(format!("{}: {}", path.display(), e.message)))
    }

    /// Parses and checks a config given as JSON text.
    pub fn parse(text: &str, role: Role) -> Result<DeviceFile, SdkError> {
        let c: DeviceFile = serde_json::from_str(text).map_err(|e| bad(format!("{e}")))?;
        c.check(role)?;
        Ok(c)
    }

    fn check(&self, role: Role) -> Result<(), SdkError> {
        let other_role: &[(&str, bool)] = match role {
            Role::Field => &[
                ("max_streams", self.max_streams.is_some()),
                ("decode", self.decode.is_some()),
                ("h265", self.h265.is_some()),
                ("record_dir", self.record_dir.is_some()),
                ("record_segment_secs", self.record_segment_secs.is_some()),
            ],
            Role::Remote => &[
                ("device_streams", self.device_streams.is_some()),
                ("streams_config", !self.streams_config.is_empty()),
            ],
        };
        if let Some((k, _)) = other_role.iter().find(|(_, set)| *set) {
            return Err(bad(format!(
                "{k} is a key of the other device role (this is a {} device's config)",
                role_name(role)
            )));
        }
        if let Some(n) = self.device_streams {
            if n > 16 {
                return Err(bad("device_streams must be 0..=16"));
            }
            if !self.streams_config.is_empty() && self.streams_config.len() != n as usize {
                return Err(bad(format!(
                    "device_streams is {n} but streams_config has {} entries",
                    self.streams_config.len()
                )));
            }
        }
        if let Some(i) = self.streams_config.iter().position(|s| s.cameras.len() > 1) {
            return Err(bad(format!(
                "streams_config[{i}].cameras has {} cameras, but a stream has one source \
                 (cameras[0]); give each camera its own stream",
                self.streams_config[i].cameras.len()
            )));
        }
        for a in &self.network_bind {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(format!("network_bind: {a:?} is not an IP address")));
            }
        }
        if self.network_bind.len() > fieldlink_proto::bond::MAX_PATHS {
            return Err(bad(format!(
                "network_bind: at most {} addresses",
                fieldlink_proto::bond::MAX_PATHS
            )));
        }
        if self.media_trans_mode.is_some_and(|m| !(1..=3).contains(&m)) {
            return Err(bad("media_trans_mode must be 1, 2 or 3"));
        }
        if self.max_streams.is_some_and(|n| n > 64) {
            return Err(bad("max_streams must be 0..=64"));
        }
        for (k, v) in [
            ("auto_permission", self.auto_permission),
            ("audio_enable", self.audio_enable),
            ("audio_receive", self.audio_receive),
            ("audio_external", self.audio_external),
            ("decode", self.decode),
            ("h265", self.h265),
        ] {
            if !matches!(v, None | Some(0) | Some(1)) {
                return Err(bad(format!("{k} must be 0 or 1")));
            }
        }
        Ok(())
    }

    /// `projectid/device_id`.
    pub fn id(&self) -> Result<DeviceId, SdkError> {
        DeviceId::new(&self.projectid, &self.device_id)
            .map_err(|e| bad(format!("projectid/device_id: {e}")))
    }

    /// Video streams of a field device.
    pub fn streams(&self) -> u32 {
        self.device_streams
            .unwrap_or(self.streams_config.len() as u32)
    }

    /// The SPEC §3 settings of `role`: its defaults, then what the file says.
    pub fn audio(&self, role: Role) -> AudioConfig {
        let mut a = AudioConfig::spec_default(role);
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

    /// The SDK's settings for `role`; relative paths (certificate, recordings) are taken
    /// from `dir` (the config file's folder; the working directory for JSON text).
    pub fn device_config(&self, role: Role, dir: &Path) -> Result<DeviceConfig, SdkError> {
        let server = self.server.clone().unwrap_or_else(|| DEFAULT_SERVER.into());
        let mut cfg = DeviceConfig::new(server, self.id()?, self.password.clone());
        cfg.server_ca = self.certificate.as_deref().map(|p| dir.join(p));
        cfg.auto_permission = self.auto_permission.unwrap_or(1) == 1;
        if let Some(m) = &self.cloud_mode {
            cfg.mode = m.clone();
        }
        cfg.audio = self.audio(role);
        cfg.network_bind = self
            .network_bind
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if let Some(m) = self
            .media_trans_mode
            .and_then(fieldlink_proto::bond::Mode::from_number)
        {
            cfg.media_trans_mode = m;
        }
        match role {
            Role::Field => cfg.streams = self.streams(),
            Role::Remote => {
                cfg.streams = self.max_streams.unwrap_or(DEFAULT_MAX_STREAMS);
                cfg.decode = self.decode == Some(1);
                cfg.h265 = self.h265 == Some(1);
                cfg.record = self
                    .record_dir
                    .as_deref()
                    .map(|d| crate::record::RecordSettings {
                        dir: dir.join(d),
                        segment_secs: self.record_segment_secs.unwrap_or(60).max(1),
                    });
            }
        }
        Ok(cfg)
    }

    /// The video source of each of a field device's streams, in order.
    pub fn sources(&self) -> Result<Vec<Box<dyn VideoSource>>, SdkError> {
        (0..self.streams())
            .map(|i| source_for(i, self.streams_config.get(i as usize)))
            .collect()
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Field => "field",
        Role::Remote => "remote",
    }
}

/// The folder relative paths of the config file at `path` are taken from.
pub fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The source of stream `i`, from its config (a test pattern when nothing is said).
pub fn source_for(i: u32, sc: Option<&StreamConfig>) -> Result<Box<dyn VideoSource>, SdkError> {
    use crate::video::{AnnexBFile, TestPattern, TestPatternConfig};
    let at = |e: SdkError, what: &str| SdkError::new(e.code, format!("{what}: {}", e.message));
    if let Some(p) = sc.and_then(|c| c.protocol.as_deref()) {
        if !matches!(p, "rtsp_enc" | "normal") {
            return Err(bad(format!(
                "streams_config[{i}].protocol: {p:?} is neither \"rtsp_enc\" nor \"normal\""
            )));
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
        return TestPattern::new(i, cfg)
            .map(|p| Box::new(p) as Box<dyn VideoSource>)
            .map_err(|e| at(e, &format!("streams_config[{i}]")));
    }
    let cam_at = format!("streams_config[{i}].cameras[0]");
    if let Some(path) = url.strip_prefix("file://") {
        return AnnexBFile::open(Path::new(path), fps)
            .map(|f| Box::new(f) as Box<dyn VideoSource>)
            .map_err(|e| at(e, &format!("{cam_at}.url")));
    }
    if url.starts_with("rtsp://") {
        use crate::camera::{Passthrough, RtspCameraConfig, RtspTransport};
        use crate::transcode::Transcode;
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
        if sc.and_then(|c| c.protocol.as_deref()) == Some("rtsp_enc") {
            return Passthrough::start(&rtsp, fps)
                .map(|p| Box::new(p) as Box<dyn VideoSource>)
                .map_err(|e| at(e, &cam_at));
        }
        return Transcode::start(&rtsp, cfg)
            .map(|t| Box::new(t) as Box<dyn VideoSource>)
            .map_err(|e| at(e, &cam_at));
    }
    Err(bad(format!(
        "streams_config[{i}].cameras[0].url: unknown source {url:?} (test://pattern, file://PATH, rtsp://...)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = r#"{"device_id":"dev1","projectid":"proj1","password":"pw",
        "device_streams":1,"streams_config":[{"fps":25,"bps":500,"width":320,"height":240}]}"#;

    #[test]
    fn a_field_file_gives_its_device_config_and_sources() {
        let f = DeviceFile::parse(FIELD, Role::Field).unwrap();
        let cfg = f.device_config(Role::Field, Path::new("/etc/x")).unwrap();
        assert_eq!(cfg.device_id.to_string(), "proj1/dev1");
        assert_eq!(cfg.server, DEFAULT_SERVER);
        assert_eq!(cfg.streams, 1);
        assert!(cfg.auto_permission);
        assert_eq!(f.sources().unwrap().len(), 1);
    }

    #[test]
    fn a_remote_file_reads_its_own_keys_relative_to_its_folder() {
        let f = DeviceFile::parse(
            r#"{"device_id":"op1","projectid":"proj1","password":"pw","max_streams":2,
               "decode":1,"auto_permission":0,"record_dir":"rec","certificate":"ca.pem"}"#,
            Role::Remote,
        )
        .unwrap();
        let cfg = f.device_config(Role::Remote, Path::new("/etc/x")).unwrap();
        assert_eq!(cfg.streams, 2);
        assert!(cfg.decode && !cfg.auto_permission);
        assert_eq!(cfg.record.unwrap().dir, Path::new("/etc/x/rec"));
        assert_eq!(cfg.server_ca.unwrap(), Path::new("/etc/x/ca.pem"));
    }

    #[test]
    fn wrong_files_are_errors_that_say_why() {
        for (text, role, says) in [
            (
                FIELD,
                Role::Remote,
                "device_streams is a key of the other device role",
            ),
            (
                r#"{"device_id":"d","projectid":"p","password":"x","max_streams":2}"#,
                Role::Field,
                "max_streams",
            ),
            (
                r#"{"device_id":"d","projectid":"p","password":"x","auto_permission":2}"#,
                Role::Field,
                "auto_permission must be 0 or 1",
            ),
            (
                r#"{"device_id":"d","projectid":"p","password":"x","oops":1}"#,
                Role::Field,
                "oops",
            ),
            (r#"{"device_id":"d""#, Role::Field, "EOF"),
            (
                r#"{"device_id":"d","projectid":"p","password":"x","device_streams":2,
                   "streams_config":[{}]}"#,
                Role::Field,
                "streams_config has 1",
            ),
        ] {
            let e = DeviceFile::parse(text, role).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(says), "{} lacks {says}", e.message);
        }
    }

    #[test]
    fn an_unknown_source_names_its_place() {
        let sc: StreamConfig = serde_json::from_str(r#"{"cameras":[{"url":"http://x"}]}"#).unwrap();
        let e = source_for(3, Some(&sc)).err().unwrap();
        assert!(
            e.message.starts_with("streams_config[3].cameras[0].url"),
            "{}",
            e.message
        );
    }
}
