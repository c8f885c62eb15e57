//! GB28181 devices as the platform knows them: what each one is (address, catalog,
//! channels, DeviceInfo/DeviceStatus answers, calls), the admin API's view of it (stored so
//! it survives a restart), and the bridge that makes a device with a complete catalog a
//! field device in the hub (its channels are the streams; hub demand and PTZ control data
//! come back to the SIP task). Sends no SIP itself except the PTZ `DeviceControl`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fieldlink_gb28181::manscdp::{self, CatalogItem};
use fieldlink_gb28181::sip;
use fieldlink_gb28181::GbId;
use fieldlink_proto::{DeviceId, Role};
use tokio::sync::mpsc;

use super::calls::Call;
use super::sip::Sip;
use super::{ChannelView, Event, GbDeviceView};
use crate::hub::{ClientInfo, ConnId, Outbound};
use crate::store::{self, now_ms};

/// A Catalog answer that stops short of `SumNum` is taken as it is after this.
pub(super) const CATALOG_QUIET: Duration = Duration::from_secs(3);
/// Channels per device, at most.
pub(super) const MAX_CHANNELS: usize = 256;

/// One GB28181 device as the SIP task keeps it.
#[derive(Default)]
pub(super) struct GbDevice {
    pub(super) addr: Option<SocketAddr>,
    /// The Catalog answer being gathered.
    pub(super) catalog: Option<super::catalog::Gathering>,
    /// When the Catalog was last asked for (an empty answer is asked again later).
    pub(super) catalog_asked: Option<Instant>,
    /// Catalog queries in a row that got no answer (each retry waits twice as long).
    pub(super) catalog_misses: u32,
    /// Its channels by stream index (slots stay put; see `fieldlink_gb28181::catalog`).
    pub(super) channels: Vec<CatalogItem>,
    /// Its Catalog subscription: until when it holds (renewed before), or refused.
    pub(super) subscription: super::catalog::Subscription,
    /// As a field device in the hub.
    pub(super) conn: Option<ConnId>,
    /// DeviceInfo and DeviceStatus answers.
    pub(super) info: std::collections::BTreeMap<String, String>,
    /// What receivers want (hub demand).
    pub(super) wanted: Vec<u32>,
    /// Pull every channel regardless of demand (per-device setting).
    pub(super) always_on: bool,
    pub(super) calls: HashMap<u32, Call>,
}

impl Sip {
    /// Updates the admin API's view of device `id` (`online: false` keeps it listed), and
    /// stores it when it changed.
    pub(super) fn publish(&mut self, id: &GbId, online: bool, changed: bool) {
        let d = self.devices.get(id);
        let addr = d.and_then(|d| d.addr);
        let mut view = GbDeviceView {
            id: id.to_string(),
            field_id: d
                .filter(|d| d.conn.is_some())
                .map(|_| format!("{}/{}", self.project, id)),
            online,
            addr: addr.map(|a| a.to_string()),
            transport: if addr.is_some_and(|a| self.tcp.contains_key(&a)) {
                "TCP".into()
            } else {
                "UDP".into()
            },
            channels: d
                .map(|d| {
                    d.channels
                        .iter()
                        .enumerate()
                        .map(|(i, c)| ChannelView {
                            id: c.device_id.clone(),
                            name: c.name.clone(),
                            status: c.status.clone(),
                            playing: d
                                .calls
                                .get(&(i as u32))
                                .is_some_and(|c| c.dialog.remote_tag.is_some()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            info: d.map(|d| d.info.clone()).unwrap_or_default(),
            always_on: d.is_some_and(|d| d.always_on),
            changed_ms: now_ms(),
        };
        if let Ok(mut m) = self.status.write() {
            let keep = m.get(id.as_str()).map(|v| v.changed_ms);
            if let (false, Some(t)) = (changed, keep) {
                view.changed_ms = t;
            }
            if m.len() < self.max_known || m.contains_key(id.as_str()) {
                m.insert(id.to_string(), view.clone());
            }
        }
        // Stored in batches by another task, only when something changed (ticks
        // republish often); until then the newest view per device waits here.
        if let Ok(json) = serde_json::to_string(&view) {
            let changed = self.saved.get(id.as_str()) != Some(&json);
            let room = self.saved.len() < self.max_known || self.saved.contains_key(id.as_str());
            if changed && room {
                self.saved.insert(id.to_string(), json.clone());
                self.unsaved.insert(id.to_string(), json);
            }
        }
    }

    /// Makes the device a field device of the project (stored, online in the hub), and
    /// passes the hub's demand for its channels to this task.
    pub(super) async fn as_field(&mut self, id: &GbId, name: &str) -> Result<ConnId, String> {
        if !self.recorded.contains(id) {
            // Stored off this task (the project exists since `start`). It never logs
            // in over WebSocket: no password, and so no hashing either.
            let record = store::Device {
                project_id: self.project.clone(),
                device_id: id.as_str().to_string(),
                kind: Role::Field,
                name: name.to_string(),
                password: fieldlink_auth::NO_PASSWORD.into(),
                key_password_only: false,
                auto_registered: true,
                created_ms: now_ms(),
            };
            match self.records.try_send(record) {
                Ok(()) => {
                    self.recorded.insert(id.clone());
                }
                // Tried again when it next registers; it plays meanwhile.
                Err(_) => tracing::warn!(device = %id, "device records queue full: not stored yet"),
            }
        }
        let device = DeviceId::new(&self.project, id.as_str()).map_err(|e| e.to_string())?;
        let (out, mut out_rx) = mpsc::channel(64);
        let conn = self
            .hub
            .register(
                ClientInfo {
                    device,
                    role: Role::Field,
                    auto_permission: true,
                    sees_all_fields: false,
                    mode: "public".into(),
                },
                out,
            )
            .await
            .map_err(|c| format!("{c:?}"))?;
        let (tx, gb) = (self.tx.clone(), id.clone());
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                match o {
                    Outbound::Wanted(s) => {
                        if tx.send(Event::Wanted(gb.clone(), s)).await.is_err() {
                            return;
                        }
                    }
                    Outbound::Control(c) => match ptz_of(&c.1) {
                        Some((ch, ptz)) => {
                            if tx.send(Event::Ptz(gb.clone(), ch, ptz)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            tracing::debug!(from = %c.0, "control data for a GB28181 camera is not a PTZ command")
                        }
                    },
                    Outbound::Close(..) => return,
                    Outbound::Msg(_) => {} // sessions, permission: nothing to do for a camera
                }
            }
        });
        Ok(conn)
    }

    /// Sends a PTZ `DeviceControl` for channel `ch` of device `id`.
    pub(super) async fn ptz(&mut self, id: &GbId, ch: u32, ptz: fieldlink_gb28181::ptz::Ptz) {
        let Some(d) = self.devices.get(id) else {
            return;
        };
        let (Some(addr), Some(channel)) = (d.addr, d.channels.get(ch as usize)) else {
            return;
        };
        let channel = channel.device_id.clone();
        self.sn = self.sn.wrapping_add(1);
        let body = manscdp::ptz_control(self.sn, &channel, &ptz.hex());
        let r = sip::request(
            "MESSAGE",
            &self.dialog(&channel, addr),
            1,
            &sip::branch(),
            &[],
            Some(("Application/MANSCDP+xml", &body)),
        );
        tracing::info!(device = %id, channel = %channel, cmd = %ptz.hex(), "GB28181 PTZ");
        self.send_request(&r, addr).await;
    }
}

/// A master remote's PTZ command for a GB28181 camera, as control data:
/// `{"ptz": "left", "speed": 128, "channel": 0}` (speed default 128, channel default 0).
fn ptz_of(payload: &[u8]) -> Option<(u32, fieldlink_gb28181::ptz::Ptz)> {
    #[derive(serde::Deserialize)]
    struct Cmd {
        ptz: String,
        #[serde(default = "half")]
        speed: u8,
        #[serde(default)]
        channel: u32,
    }
    fn half() -> u8 {
        128
    }
    let c: Cmd = serde_json::from_slice(payload).ok()?;
    Some((
        c.channel,
        fieldlink_gb28181::ptz::Ptz::named(&c.ptz, c.speed)?,
    ))
}
