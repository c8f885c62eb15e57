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
    /// Qos for plain-text stdin lines.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Short human-readable lines instead of JSON lines.
    #[arg(long)]
    human: bool,
}

/// The field device's config.json. Keys from the vendor format that later features use
/// are accepted now so existing files load.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // stream and certificate keys are read once video sources exist
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub device_id: String,
    pub projectid: String,
    pub password: String,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub device_streams: Option<u32>,
    #[serde(default)]
    pub cloud_mode: Option<String>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub streams_config: Option<serde_json::Value>,
    /// Server WebSocket URL (fieldlink addition), default ws://127.0.0.1:8080/ws.
    #[serde(default)]
    pub server: Option<String>,
    /// SPEC §5: 1 = grant whatever is requested (default), 0 = the application decides.
    #[serde(default)]
    pub auto_permission: Option<u8>,
}

pub fn load(path: &PathBuf) -> anyhow::Result<FieldConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let c: FieldConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if !matches!(c.auto_permission, None | Some(0) | Some(1)) {
        bail!("{}: auto_permission must be 0 or 1", path.display());
    }
    Ok(c)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = load(&a.config)?;
    let id = DeviceId::new(&c.projectid, &c.device_id).context("projectid/device_id")?;
    let server = a
        .server
        .or(c.server)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let mut cfg = DeviceConfig::new(server, id.clone(), c.password);
    cfg.auto_permission = c.auto_permission.unwrap_or(1) == 1;
    let (dev, mut events) = FieldDevice::connect(cfg)
        .await
        .with_context(|| format!("logging in as {id}"))?;
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
    Ok(())
}
