//! The GB28181 platform (SPEC §10): a thin I/O shell over `fieldlink_gb28181`'s sans-IO
//! parts (registrar, SIP messages, transactions, MANSCDP, SDP, RTP).
//!
//! - REGISTER goes to the registrar; MANSCDP keepalives mark devices alive; the
//!   registrar's clock takes silent devices offline.
//! - A device that comes online is asked for its Catalog. Once the answer is complete,
//!   the device becomes a field device of the configured project: its channels are its
//!   streams.
//! - When receivers want a channel (hub demand), the platform sends an INVITE and
//!   receives PS over RTP. The demuxed H.264/H.265 frames feed the hub like any field stream.
//!   When the last receiver has been gone for `linger`, it sends BYE.
//!
//! SIP over UDP (answers go to the source address and port, RFC 3581) and TCP on the same
//! port; media over UDP, TCP passive or TCP active (`media_mode`).
//!
//! The modules: `sip` (the one SIP task: its state, message dispatch, queries and
//! keepalives), `catalog` (catalog answers, subscriptions and changes), `devices` (device
//! presence, the admin view, the field-device bridge into the hub, PTZ), `calls` (live-video dialogs: INVITE, ACK, BYE, demand and linger),
//! `media` (RTP in, PS demux, frames to the hub), `tcp` (SIP over TCP: accept and framing).
//! This file: the admin API's handle and view types, the task's events, and `start`.

mod calls;
mod catalog;
mod devices;
mod media;
mod sip;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fieldlink_gb28181::registrar::{Registrar, RegistrarConfig};
use fieldlink_gb28181::sdp::MediaMode;
use fieldlink_gb28181::GbId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::Gb28181Config;
use crate::hub::HubHandle;
use crate::store::Store;
use sip::Sip;
use tcp::accept_tcp;

/// A GB28181 device as the admin API shows it (and as it is stored, so it survives a
/// restart: known devices are listed offline until they register again).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GbDeviceView {
    pub id: String,
    /// The field device it appears as, once its catalog is in.
    pub field_id: Option<String>,
    pub online: bool,
    pub addr: Option<String>,
    /// `UDP` or `TCP` (its SIP transport).
    pub transport: String,
    pub channels: Vec<ChannelView>,
    /// What the device answered to DeviceInfo and DeviceStatus (Manufacturer, Model,
    /// Firmware, Online, Status...).
    pub info: std::collections::BTreeMap<String, String>,
    /// Its channels are pulled regardless of viewers.
    pub always_on: bool,
    /// When it last came online or went offline (ms since the epoch).
    pub changed_ms: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelView {
    pub id: String,
    pub name: String,
    pub status: String,
    /// A call is up for it now (the device accepted the INVITE).
    pub playing: bool,
}

/// Every known device's view by id, written by the SIP task, read by the admin API.
type Status = std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, GbDeviceView>>>;

/// The admin API's view of the platform.
#[derive(Clone)]
pub struct GbHandle {
    status: Status,
    realm: String,
    tx: mpsc::Sender<Event>,
}

impl std::fmt::Debug for GbHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbHandle")
            .field("realm", &self.realm)
            .finish()
    }
}

impl GbHandle {
    pub fn devices(&self) -> Vec<GbDeviceView> {
        self.status
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The digest realm (for storing a device's HA1).
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The admin API stored `id`'s own settings: the SIP task uses them for every SIP
    /// message after this returns.
    pub async fn settings_changed(&self, id: &GbId, s: crate::store::GbSettings) {
        let (done, applied) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Event::Settings(id.to_string(), s, done))
            .await
            .is_ok()
        {
            let _ = applied.await;
        }
    }

    /// Sends a PTZ command to channel `channel` (index) of an online device.
    pub async fn ptz(
        &self,
        id: &GbId,
        channel: u32,
        ptz: fieldlink_gb28181::ptz::Ptz,
    ) -> Result<(), String> {
        let known = self
            .status
            .read()
            .map(|m| {
                m.get(id.as_str())
                    .is_some_and(|d| d.online && (channel as usize) < d.channels.len())
            })
            .unwrap_or(false);
        if !known {
            return Err(format!("{id} is not online or has no channel {channel}"));
        }
        self.tx
            .send(Event::Ptz(id.clone(), channel, ptz))
            .await
            .map_err(|_| "the GB28181 platform stopped".to_string())
    }
}

/// What the SIP task hears from the rest of the server.
enum Event {
    /// A SIP client connected over TCP: what to write to it goes here.
    TcpOpen(SocketAddr, mpsc::Sender<Vec<u8>>),
    /// One whole SIP message read from a TCP connection.
    TcpIn(SocketAddr, Vec<u8>),
    TcpClosed(SocketAddr),
    /// The hub's demand for a device's channels.
    Wanted(GbId, Vec<u32>),
    /// A channel's media stopped.
    MediaGone(GbId, u32),
    /// Move a channel's camera (admin API, or the master remote's control data).
    Ptz(GbId, u32, fieldlink_gb28181::ptz::Ptz),
    /// The admin API stored a device's own settings; answered once they apply.
    Settings(
        String,
        crate::store::GbSettings,
        tokio::sync::oneshot::Sender<()>,
    ),
}

/// Most device records waiting to be stored.
const RECORDS_QUEUE: usize = 65_536;
/// Most device records stored in one transaction.
const RECORDS_BATCH: usize = 1_000;

/// Stores the admin views of GB28181 devices, a batch (one transaction) at a time; a
/// failing store is retried with the same batch (the SIP task coalesces newer views
/// meanwhile and never waits).
async fn write_statuses(store: Store, mut rx: mpsc::Receiver<Vec<(String, String)>>) {
    while let Some(batch) = rx.recv().await {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = store.save_gb_statuses(&batch).await {
            tracing::warn!(
                "storing {} GB28181 device states: {e}; retrying",
                batch.len()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// Creates the project GB28181 devices join, unless it exists; false if the store failed.
async fn ensure_project(store: &Store, project: &str) -> bool {
    match store.project(project).await {
        Ok(Some(_)) => true,
        Ok(None) => {
            let p = crate::store::Project {
                id: project.to_string(),
                name: "GB28181 devices".into(),
                security: crate::store::Security::default(),
                created_ms: crate::store::now_ms(),
            };
            match store.create_project(&p).await {
                // Made meanwhile through the admin API: as good.
                Ok(()) | Err(crate::store::StoreError::Conflict) => true,
                Err(e) => {
                    tracing::error!("creating project {project}: {e}");
                    false
                }
            }
        }
        Err(e) => {
            tracing::error!("reading project {project}: {e}");
            false
        }
    }
}

/// Stores the field-device records of new GB28181 devices in batches, off the SIP task,
/// creating their project first if needed; a failing store is retried (the queue holds
/// meanwhile; the SIP task never waits).
async fn write_records(
    store: Store,
    project: String,
    mut rx: mpsc::Receiver<crate::store::Device>,
) {
    let mut batch = Vec::with_capacity(RECORDS_BATCH);
    let mut project_ready = false;
    while rx.recv_many(&mut batch, RECORDS_BATCH).await > 0 {
        let mut delay = Duration::from_millis(200);
        loop {
            if !project_ready {
                project_ready = ensure_project(&store, &project).await;
            }
            if project_ready {
                match store.create_devices_missing(&batch).await {
                    Ok(n) => {
                        tracing::debug!(
                            created = n,
                            of = batch.len(),
                            "GB28181 device records stored"
                        );
                        break;
                    }
                    Err(e) => tracing::error!(
                        "storing {} GB28181 device records: {e}; retrying",
                        batch.len()
                    ),
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        batch.clear();
    }
}

/// Binds the SIP socket and starts serving; returns the bound address.
pub async fn start(
    cfg: &Gb28181Config,
    addr: SocketAddr,
    hub: HubHandle,
    store: Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> std::io::Result<(SocketAddr, GbHandle)> {
    let socket = UdpSocket::bind(addr).await?;
    let local = socket.local_addr()?;
    // SIP over TCP on the same port (large messages, devices that prefer it).
    let tcp = tokio::net::TcpListener::bind(local).await?;
    let platform: GbId = cfg.platform_id.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("gb28181.platform_id: {e}"),
        )
    })?;
    let mut rc = RegistrarConfig::new(platform.domain(), &cfg.password);
    rc.keepalive_period = Duration::from_secs(cfg.keepalive_period_secs.max(1));
    rc.keepalive_misses = cfg.keepalive_misses.max(1);
    rc.max_devices = cfg.max_devices.max(1);
    let (rc_keepalive, rc_misses) = (rc.keepalive_period, rc.keepalive_misses);
    let max_known = rc.max_devices.saturating_mul(2);
    let media_ip = cfg.media_ip.unwrap_or(if local.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        local.ip()
    });
    let mode = MediaMode::parse(&cfg.media_mode).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "gb28181.media_mode {:?}: udp, tcp-passive or tcp-active",
                cfg.media_mode
            ),
        )
    })?;
    let (tx, rx) = mpsc::channel(1024);
    let settings = store
        .gb_devices(10_000_000)
        .await
        .map_err(std::io::Error::other)?
        .into_iter()
        .collect();
    let (records, records_rx) = mpsc::channel(RECORDS_QUEUE);
    let (statuses, statuses_rx) = mpsc::channel(1);
    tokio::spawn(write_statuses(store.clone(), statuses_rx));
    tokio::spawn(write_records(
        store.clone(),
        cfg.project.clone(),
        records_rx,
    ));
    // Devices known from before: listed offline until they register again.
    let mut known = std::collections::BTreeMap::new();
    let limit = i64::try_from(max_known).unwrap_or(i64::MAX);
    for json in store.gb_statuses(limit).await.unwrap_or_default() {
        if let Ok(mut v) = serde_json::from_str::<GbDeviceView>(&json) {
            v.online = false;
            v.channels.iter_mut().for_each(|c| c.playing = false);
            known.insert(v.id.clone(), v);
        }
    }
    let handle = GbHandle {
        status: std::sync::Arc::new(std::sync::RwLock::new(known)),
        realm: platform.domain().to_string(),
        tx: tx.clone(),
    };
    let sip = Sip {
        status: handle.status.clone(),
        socket,
        local,
        platform,
        registrar: Registrar::new(rc),
        log: cfg.log_sip,
        project: cfg.project.clone(),
        linger: Duration::from_secs(cfg.linger_secs),
        media_ip,
        mode,
        hub,
        metrics,
        tx,
        devices: HashMap::new(),
        sn: 0,
        invites: 0,
        tcp: HashMap::new(),
        transactions: Default::default(),
        saved: HashMap::new(),
        unsaved: HashMap::new(),
        statuses,
        settings,
        records,
        recorded: Default::default(),
        queries: fieldlink_gb28181::pacer::Pacer::new(
            sip::QUERIES_IN_FLIGHT,
            sip::QUERIES_QUEUED,
            sip::QUERY_SLOT,
        ),
        query_calls: HashMap::new(),
        guard: fieldlink_gb28181::guard::Guard::new(Default::default()),
        dirty: Default::default(),
        gathering: Default::default(),
        next_device_scan: std::time::Instant::now(),
        max_known,
    };
    // Silent past the keepalive timeout: the device is offline anyway.
    let idle = rc_keepalive * (rc_misses + 1);
    tokio::spawn(accept_tcp(tcp, sip.tx.clone(), idle));
    tokio::spawn(sip.run(rx));
    tracing::info!(%local, "GB28181 SIP listening (UDP and TCP)");
    Ok((local, handle))
}
