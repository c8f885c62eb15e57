//! Server configuration: TOML file, then `FIELDLINK_*` environment variables and command-line
//! flags on top (the CLI applies those), then defaults. See docs/configuration.md.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP API, web pages and WebSocket signalling (`/ws`).
    pub listen: SocketAddr,
    /// Where the embedded SQLite database lives.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty = `<data_dir>/fieldlink.db`.
    pub database_url: String,
    /// Bearer token for the admin API; empty = a random one is made and logged at start.
    pub admin_token: String,
    /// A second address serving only `GET /metrics`, without the admin token (for a
    /// Prometheus on a private network). Unset: `/metrics` is on `listen`, behind the token.
    pub metrics_listen: Option<SocketAddr>,
    pub webrtc: WebRtcConfig,
    pub login: LoginConfig,
    pub gb28181: Gb28181Config,
    pub tls: TlsConfig,
}

/// HTTPS/WSS on `listen` (and `metrics_listen`): both files or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key: Option<PathBuf>,
}

/// The GB28181 platform (SPEC §10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gb28181Config {
    /// SIP over UDP; `None` = off (the usual address is `0.0.0.0:5060`).
    pub sip_listen: Option<SocketAddr>,
    /// The platform's 20-digit id; its first 10 digits are the realm.
    pub platform_id: String,
    /// Password of devices that have none of their own.
    pub password: String,
    pub keepalive_period_secs: u64,
    /// Keepalive periods a device may miss before it is offline.
    pub keepalive_misses: u32,
    /// Devices registered at once, at most (beyond: 503). Known devices' views are kept
    /// for twice as many.
    pub max_devices: usize,
    /// Log every SIP message sent and received, whole (direction, peer, time).
    pub log_sip: bool,
    /// Project whose field devices the GB28181 devices become (created if missing).
    pub project: String,
    /// Seconds a channel keeps streaming after its last viewer left (then BYE).
    pub linger_secs: u64,
    /// Address put in INVITE SDP for devices to send media to; default: the SIP address
    /// (127.0.0.1 when that is unspecified).
    pub media_ip: Option<std::net::IpAddr>,
    /// How devices send RTP: `udp`, `tcp-passive` (the platform listens) or `tcp-active`
    /// (the platform connects to the device).
    pub media_mode: String,
}

impl Default for Gb28181Config {
    fn default() -> Self {
        Gb28181Config {
            sip_listen: None,
            platform_id: "34020000002000000001".into(),
            password: "12345678".into(),
            keepalive_period_secs: 60,
            keepalive_misses: 3,
            max_devices: 100_000,
            log_sip: false,
            project: "gb".into(),
            linger_secs: 10,
            media_ip: None,
            media_mode: "udp".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// The one UDP socket every peer connection uses (port 0 = any free port).
    pub udp_listen: SocketAddr,
    /// Address put in the ICE candidate, when clients reach the server through NAT or a
    /// relay; default: the bound address.
    pub public_addr: Option<SocketAddr>,
    /// Threads that write media to many peers at once (a frame's fan-out to its receivers,
    /// encryption included); 0 = one per core, at most [`MAX_MEDIA_THREADS`]; 1 = all on
    /// the hub's own task.
    pub media_threads: usize,
    /// Forward error correction under DTLS/SRTP for peers that offer it (fieldlink's SDK;
    /// not browsers): parity datagrams follow the loss each side reports, none without
    /// loss (docs/architecture.md).
    pub fec: bool,
}

/// Most media threads the automatic setting picks.
pub const MAX_MEDIA_THREADS: usize = 8;

impl WebRtcConfig {
    /// [`WebRtcConfig::media_threads`] with 0 resolved to the cores of this machine.
    pub fn media_threads(&self) -> usize {
        match self.media_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_MEDIA_THREADS),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failed logins of one device id let through before each attempt must wait.
    pub device_free_failures: u32,
    /// The same, for one client address (higher: many devices may share a NAT).
    pub address_free_failures: u32,
    /// First wait after the free failures, doubling per further failure.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("fieldlink-data"),
            database_url: String::new(),
            admin_token: String::new(),
            metrics_listen: None,
            webrtc: WebRtcConfig::default(),
            login: LoginConfig::default(),
            gb28181: Gb28181Config::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            udp_listen: SocketAddr::from(([127, 0, 0, 1], 3478)),
            public_addr: None,
            media_threads: 0,
            fec: true,
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            device_free_failures: 5,
            address_free_failures: 50,
            base_delay_ms: 1000,
            max_delay_ms: 60_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("fieldlink.db").display()
            )
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partial_and_rejects_unknown() {
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.webrtc.udp_listen.port(), 0);
        assert_eq!(c.login.device_free_failures, 5);
        let e = Config::from_toml("lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let c = Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("c.pem")));
        assert!(Config::default()
            .database_url()
            .starts_with("sqlite://fieldlink-data/"));
    }
}
