//! The GB28181 platform's SIP side (thin I/O shell over `fieldlink_gb28181`).
//!
//! - REGISTER goes to the registrar; MANSCDP keepalives mark devices alive; the
//!   registrar's clock takes silent devices offline.
//! - A device that comes online is asked for its Catalog. Once the answer is complete,
//!   the device becomes a field device of the configured project: its channels are its
//!   streams.
//! - When receivers want a channel (hub demand), the platform sends an INVITE and
//!   receives PS over RTP/UDP. The demuxed H.264 frames feed the hub like any field
//!   stream. When the last receiver has been gone for `linger`, it sends BYE.
//!
//! SIP over UDP only so far (answers go to the source address and port, RFC 3581); media
//! over UDP, TCP passive or TCP active (`media_mode`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use fieldlink_gb28181::manscdp::{self, CatalogItem, Manscdp};
use fieldlink_gb28181::registrar::{RegEvent, Registrar, RegistrarConfig};
use fieldlink_gb28181::rtp::{Reorder, RtpPacket};
use fieldlink_gb28181::sdp::{self, MediaMode};
use fieldlink_gb28181::sip::{self, response, Dialog, Message, StartLine};
use fieldlink_gb28181::GbId;
use fieldlink_proto::{DeviceId, Role};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::Gb28181Config;
use crate::hub::{ClientInfo, Cmd, ConnId, HubHandle, Outbound};
use crate::store::{self, Project, Security, Store};

/// A channel that sends nothing for this long is hung up.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
/// A Catalog answer that stops short of `SumNum` is taken as it is after this.
const CATALOG_QUIET: Duration = Duration::from_secs(3);
/// An empty catalog is asked for again after this.
const CATALOG_RETRY: Duration = Duration::from_secs(30);
/// Channels per device, at most.
const MAX_CHANNELS: usize = 256;

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

/// The admin API's view of the platform.
#[derive(Clone)]
pub struct GbHandle {
    status: std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, GbDeviceView>>>,
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
}

/// Binds the SIP socket and starts serving; returns the bound address.
pub async fn start(
    cfg: &Gb28181Config,
    addr: SocketAddr,
    hub: HubHandle,
    store: Store,
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
    // Devices known from before: listed offline until they register again.
    let mut known = std::collections::BTreeMap::new();
    for json in store.gb_statuses(100_000).await.unwrap_or_default() {
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
        store,
        tx,
        devices: HashMap::new(),
        sn: 0,
        invites: 0,
        tcp: HashMap::new(),
        transactions: Default::default(),
        saved: HashMap::new(),
    };
    tokio::spawn(accept_tcp(tcp, sip.tx.clone()));
    tokio::spawn(sip.run(rx));
    tracing::info!(%local, "GB28181 SIP listening (UDP and TCP)");
    Ok((local, handle))
}

/// One live channel: the dialog and the task receiving its media.
struct Call {
    dialog: Dialog,
    cseq: u32,
    receiver: tokio::task::JoinHandle<()>,
    /// Since when nobody wants it (BYE after the linger).
    unwanted_since: Option<Instant>,
    /// TCP active: where to connect, once the device's answer says.
    dial: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

#[derive(Default)]
struct GbDevice {
    addr: Option<SocketAddr>,
    /// The Catalog being gathered: its SN, items so far, and when to stop waiting.
    catalog: Option<(u32, Vec<CatalogItem>, Instant)>,
    /// When the Catalog was last asked for (an empty answer is asked again later).
    catalog_asked: Option<Instant>,
    channels: Vec<CatalogItem>,
    /// As a field device in the hub.
    conn: Option<ConnId>,
    /// DeviceInfo and DeviceStatus answers.
    info: std::collections::BTreeMap<String, String>,
    /// What receivers want (hub demand).
    wanted: Vec<u32>,
    /// Pull every channel regardless of demand (per-device setting).
    always_on: bool,
    calls: HashMap<u32, Call>,
}

struct Sip {
    status: std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, GbDeviceView>>>,
    socket: UdpSocket,
    local: SocketAddr,
    platform: GbId,
    registrar: Registrar,
    log: bool,
    project: String,
    linger: Duration,
    media_ip: IpAddr,
    mode: MediaMode,
    hub: HubHandle,
    store: Store,
    tx: mpsc::Sender<Event>,
    devices: HashMap<GbId, GbDevice>,
    sn: u32,
    invites: u32,
    /// Open SIP-over-TCP connections by peer address.
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Our requests over UDP, until answered (retransmissions).
    transactions: fieldlink_gb28181::transaction::Transactions,
    /// What was last stored per device (JSON), to store only changes.
    saved: HashMap<String, String>,
}

impl Sip {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let deadline = self
                .registrar
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let data = buf[..n].to_vec();
                        self.on_datagram(&data, from).await;
                    }
                    Err(e) => tracing::debug!("SIP receive: {e}"),
                },
                ev = rx.recv() => match ev {
                    Some(Event::TcpOpen(peer, w)) => {
                        self.tcp.insert(peer, w);
                    }
                    Some(Event::TcpIn(peer, data)) => self.on_datagram(&data, peer).await,
                    Some(Event::TcpClosed(peer)) => {
                        self.tcp.remove(&peer);
                    }
                    Some(Event::Wanted(id, streams)) => self.on_wanted(&id, &streams).await,
                    Some(Event::Ptz(id, ch, ptz)) => self.ptz(&id, ch, ptz).await,
                    Some(Event::MediaGone(id, ch)) => {
                        tracing::warn!(device = %id, channel = ch, "GB28181 media stopped; hanging up");
                        self.hang_up(&id, ch).await;
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = tick.tick() => self.on_tick().await,
            }
            for ev in self.registrar.poll(Instant::now()) {
                self.on_reg_event(ev).await;
            }
        }
    }

    /// Updates the admin API's view of device `id` (`online: false` keeps it listed), and
    /// stores it when it changed.
    fn publish(&mut self, id: &GbId, online: bool, changed: bool) {
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
            if m.len() < 100_000 || m.contains_key(id.as_str()) {
                m.insert(id.to_string(), view.clone());
            }
        }
        // Stored in the background, only when something changed (ticks republish often).
        if let Ok(json) = serde_json::to_string(&view) {
            if self.saved.get(id.as_str()) != Some(&json) {
                if self.saved.len() < 100_000 {
                    self.saved.insert(id.to_string(), json.clone());
                }
                let (store, key) = (self.store.clone(), id.to_string());
                tokio::spawn(async move {
                    if let Err(e) = store.save_gb_status(&key, &json).await {
                        tracing::warn!(device = %key, "storing GB28181 state: {e}");
                    }
                });
            }
        }
    }

    /// Sends a request; over UDP it is retransmitted until answered.
    async fn send_request(&mut self, bytes: &[u8], to: SocketAddr) {
        if !self.tcp.contains_key(&to) {
            self.transactions.sent(bytes, to, Instant::now());
        }
        self.send(bytes, to).await;
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if self.log {
            tracing::info!(direction = "send", peer = %to, message = %String::from_utf8_lossy(bytes), "SIP");
        }
        if let Some(w) = self.tcp.get(&to) {
            // A full queue means a stuck connection: drop the message, as UDP loss would.
            if w.try_send(bytes.to_vec()).is_err() {
                tracing::debug!(%to, "SIP over TCP: connection stuck or closed");
            }
            return;
        }
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::debug!(%to, "SIP send: {e}");
        }
    }

    /// A new dialog with `user`, whose messages go to `peer` (UDP or its TCP connection).
    fn dialog(&self, user: &str, peer: SocketAddr) -> Dialog {
        let domain = self.platform.domain();
        let transport = if self.tcp.contains_key(&peer) {
            "TCP"
        } else {
            "UDP"
        };
        Dialog {
            remote_uri: format!("sip:{user}@{domain}"),
            local_uri: format!("sip:{}@{domain}", self.platform),
            local_tag: sip::new_tag(),
            remote_tag: None,
            call_id: sip::new_call_id(self.local.ip()),
            via: self.local,
            transport,
        }
    }

    async fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        if self.log {
            tracing::info!(direction = "recv", peer = %from, message = %String::from_utf8_lossy(data), "SIP");
        }
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // CRLF keepalive ping
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                // Without parseable headers there is nothing to answer to.
                tracing::debug!(%from, "bad SIP message: {e}");
                return;
            }
        };
        let method = match &msg.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { code, .. } => {
                let code = *code;
                self.on_response(&msg, code, from).await;
                return;
            }
        };
        let now = Instant::now();
        let reply = match method.as_str() {
            "REGISTER" => {
                // The device's own password, if the admin API set one.
                let own = match msg.from_user() {
                    Some(u) => self.store.gb_device(u).await.ok().flatten(),
                    None => None,
                };
                let ha1 = own
                    .as_ref()
                    .map(|s| s.ha1.as_str())
                    .filter(|h| !h.is_empty());
                let (reply, ev) =
                    self.registrar
                        .on_register(&msg, from, now, SystemTime::now(), ha1);
                self.send(&reply, from).await;
                if let Some(ev) = ev {
                    self.on_reg_event(ev).await;
                }
                return;
            }
            "MESSAGE" => self.on_message(&msg, from, now),
            "BYE" => {
                self.on_bye(&msg);
                response(&msg, 200, "OK", from, "fl", &[], None)
            }
            "ACK" => return,
            _ => response(&msg, 501, "Not Implemented", from, "fl", &[], None),
        };
        self.send(&reply, from).await;
        self.finish_catalogs().await;
    }

    async fn on_reg_event(&mut self, ev: RegEvent) {
        match ev {
            RegEvent::Online { id, addr } => {
                tracing::info!(device = %id, %addr, "GB28181 device online");
                self.devices.entry(id.clone()).or_default().addr = Some(addr);
                self.publish(&id, true, true);
                self.query(&id, "Catalog", addr).await;
                self.query(&id, "DeviceInfo", addr).await;
                self.query(&id, "DeviceStatus", addr).await;
            }
            RegEvent::Offline { id, why } => {
                tracing::info!(device = %id, ?why, "GB28181 device offline");
                if let Some(d) = self.devices.get_mut(&id) {
                    d.calls.values().for_each(|c| c.receiver.abort());
                    d.calls.clear();
                }
                self.publish(&id, false, true);
                if let Some(mut d) = self.devices.remove(&id) {
                    for (_, call) in d.calls.drain() {
                        call.receiver.abort();
                    }
                    if let Some(conn) = d.conn {
                        let _ = self.hub.send(Cmd::Unregister { conn }).await;
                    }
                }
            }
            RegEvent::Refused { user, addr, why } => {
                tracing::warn!(user, %addr, why, "GB28181 registration refused")
            }
        }
    }

    /// Sends a MANSCDP query; a Catalog query starts gathering the answer.
    async fn query(&mut self, id: &GbId, cmd: &str, addr: SocketAddr) {
        self.sn = self.sn.wrapping_add(1);
        let sn = self.sn;
        if cmd == "Catalog" {
            if let Some(d) = self.devices.get_mut(id) {
                d.catalog = Some((sn, Vec::new(), Instant::now() + CATALOG_QUIET));
                d.catalog_asked = Some(Instant::now());
            }
        }
        let body = manscdp::query(cmd, sn, id.as_str());
        let r = sip::request(
            "MESSAGE",
            &self.dialog(id.as_str(), addr),
            1,
            &sip::branch(),
            &[],
            Some(("Application/MANSCDP+xml", &body)),
        );
        self.send_request(&r, addr).await;
    }

    /// MANSCDP from a device: keepalives refresh presence (a device that is not registered
    /// gets 403, which makes real devices register again); Catalog answers are gathered.
    fn on_message(&mut self, msg: &Message, from: SocketAddr, now: Instant) -> Vec<u8> {
        let body = match Manscdp::parse(&msg.body) {
            Ok(b) => b,
            Err(e) => {
                return response(
                    msg,
                    400,
                    &format!("Bad Request ({e})"),
                    from,
                    "fl",
                    &[],
                    None,
                )
            }
        };
        let id: Option<GbId> = msg
            .from_user()
            .and_then(|u| u.parse().ok())
            .or_else(|| body.device_id.parse().ok());
        let known = id
            .as_ref()
            .is_some_and(|id| self.registrar.seen(id, from.ip(), now));
        let Some(id) = id.filter(|_| known) else {
            return response(
                msg,
                403,
                "Forbidden (not registered)",
                from,
                "fl",
                &[],
                None,
            );
        };
        if body.root == "Response"
            && matches!(body.cmd_type.as_str(), "DeviceInfo" | "DeviceStatus")
        {
            if let Some(d) = self.devices.get_mut(&id) {
                for (k, v) in body.fields.iter().take(64) {
                    if d.info.len() < 64 || d.info.contains_key(k) {
                        d.info.insert(k.clone(), v.chars().take(256).collect());
                    }
                }
            }
        }
        if body.root == "Response" && body.cmd_type == "Catalog" {
            if let Some(d) = self.devices.get_mut(&id) {
                if let Some((sn, items, deadline)) = d.catalog.as_mut() {
                    if *sn == body.sn {
                        for it in body.items {
                            if items.len() < MAX_CHANNELS
                                && !items.iter().any(|i| i.device_id == it.device_id)
                            {
                                items.push(it);
                            }
                        }
                        let sum = body.sum_num.map_or(items.len(), |s| s as usize);
                        if items.len() >= sum.min(MAX_CHANNELS) {
                            *deadline = now; // complete
                        } else {
                            *deadline = now + CATALOG_QUIET;
                        }
                    }
                }
            }
        }
        response(msg, 200, "OK", from, "fl", &[], None)
    }

    /// Catalogs that are complete (or went quiet) make their devices field devices.
    async fn finish_catalogs(&mut self) {
        let now = Instant::now();
        let done: Vec<GbId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.catalog.as_ref().is_some_and(|(_, _, t)| *t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            let Some(d) = self.devices.get_mut(&id) else {
                continue;
            };
            let Some((_, items, _)) = d.catalog.take() else {
                continue;
            };
            d.channels = items;
            let n = d.channels.len() as u32;
            let name = d
                .channels
                .first()
                .map(|c| format!("GB28181 {} ({})", id, c.name))
                .unwrap_or_else(|| format!("GB28181 {id}"));
            tracing::info!(device = %id, channels = n, "GB28181 catalog");
            if d.conn.is_none() {
                match self.as_field(&id, &name).await {
                    Ok(conn) => {
                        if let Some(d) = self.devices.get_mut(&id) {
                            d.conn = Some(conn);
                        }
                    }
                    Err(e) => {
                        tracing::error!(device = %id, "GB28181 device cannot join the hub: {e}");
                        continue;
                    }
                }
            }
            if let Some(conn) = self.devices.get(&id).and_then(|d| d.conn) {
                let _ = self.hub.send(Cmd::External { conn, streams: n }).await;
            }
            let always_on = self
                .store
                .gb_device(id.as_str())
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.always_on);
            if let Some(d) = self.devices.get_mut(&id) {
                d.always_on = always_on;
            }
            if always_on {
                tracing::info!(device = %id, "GB28181 always on: pulling every channel");
                self.apply_demand(&id).await;
            }
            self.publish(&id, true, false);
        }
    }

    /// Makes the device a field device of the project (stored, online in the hub), and
    /// passes the hub's demand for its channels to this task.
    async fn as_field(&self, id: &GbId, name: &str) -> Result<ConnId, String> {
        let store = &self.store;
        if store
            .project(&self.project)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            store
                .create_project(&Project {
                    id: self.project.clone(),
                    name: "GB28181 devices".into(),
                    security: Security::default(),
                    created_ms: now_ms(),
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        if store
            .device(&self.project, id.as_str())
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            // It never logs in over WebSocket: an unguessable password.
            let pw = format!("{:032x}", rand::random::<u128>());
            store
                .create_device(&store::Device {
                    project_id: self.project.clone(),
                    device_id: id.as_str().to_string(),
                    kind: Role::Field,
                    name: name.to_string(),
                    password: fieldlink_auth::hash_password(&pw),
                    key_password_only: false,
                    auto_registered: true,
                    created_ms: now_ms(),
                })
                .await
                .map_err(|e| e.to_string())?;
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
                    Outbound::Control { from, payload } => match ptz_of(&payload) {
                        Some((ch, ptz)) => {
                            if tx.send(Event::Ptz(gb.clone(), ch, ptz)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            tracing::debug!(%from, "control data for a GB28181 camera is not a PTZ command")
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
    async fn ptz(&mut self, id: &GbId, ch: u32, ptz: fieldlink_gb28181::ptz::Ptz) {
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

    /// The hub's demand changed.
    async fn on_wanted(&mut self, id: &GbId, wanted: &[u32]) {
        if let Some(d) = self.devices.get_mut(id) {
            d.wanted = wanted.to_vec();
        }
        self.apply_demand(id).await;
    }

    /// Starts wanted channels (by receivers, or all when always on); marks the others
    /// for BYE after the linger.
    async fn apply_demand(&mut self, id: &GbId) {
        let now = Instant::now();
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        let wanted: Vec<u32> = if d.always_on {
            (0..d.channels.len() as u32).collect()
        } else {
            d.wanted.clone()
        };
        let wanted = &wanted[..];
        for (ch, call) in d.calls.iter_mut() {
            if wanted.contains(ch) {
                call.unwanted_since = None;
            } else if call.unwanted_since.is_none() {
                call.unwanted_since = Some(now);
            }
        }
        let start: Vec<u32> = wanted
            .iter()
            .copied()
            .filter(|ch| !d.calls.contains_key(ch))
            .collect();
        for ch in start {
            if let Err(e) = self.invite(id, ch).await {
                tracing::warn!(device = %id, channel = ch, "GB28181 INVITE not sent: {e}");
            }
        }
    }

    async fn invite(&mut self, id: &GbId, ch: u32) -> Result<(), String> {
        let d = self.devices.get(id).ok_or("device gone")?;
        let addr = d.addr.ok_or("no address")?;
        let conn = d.conn.ok_or("not in the hub")?;
        let channel = d
            .channels
            .get(ch as usize)
            .ok_or("no such channel")?
            .device_id
            .clone();
        let own = self.store.gb_device(id.as_str()).await.ok().flatten();
        let mode = own
            .and_then(|s| MediaMode::parse(&s.media_mode))
            .unwrap_or(self.mode);
        let (media, port, dial) = match mode {
            MediaMode::Udp => {
                let u = UdpSocket::bind(SocketAddr::new(self.media_ip, 0))
                    .await
                    .map_err(|e| e.to_string())?;
                let port = u.local_addr().map_err(|e| e.to_string())?.port();
                (MediaIn::Udp(u), port, None)
            }
            MediaMode::TcpPassive => {
                let l = tokio::net::TcpListener::bind(SocketAddr::new(self.media_ip, 0))
                    .await
                    .map_err(|e| e.to_string())?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                (MediaIn::Listen(l), port, None)
            }
            MediaMode::TcpActive => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // Port 9 (discard) by convention: we connect, we do not listen.
                (MediaIn::Dial(rx), 9, Some(tx))
            }
        };
        self.invites = self.invites.wrapping_add(1);
        let ssrc = fieldlink_gb28181::ssrc::ssrc(false, &self.platform, self.invites);
        let offer = sdp::play_offer(self.platform.as_str(), self.media_ip, port, mode, &ssrc);
        let dialog = self.dialog(&channel, addr);
        let r = sip::request(
            "INVITE",
            &dialog,
            1,
            &sip::branch(),
            &[
                ("Subject", format!("{channel}:{ssrc},{}:0", self.platform)),
                ("Contact", format!("<sip:{}@{}>", self.platform, self.local)),
            ],
            Some(("APPLICATION/SDP", offer.as_bytes())),
        );
        self.send_request(&r, addr).await;
        tracing::info!(device = %id, channel = %channel, port, ssrc, "GB28181 INVITE");
        let receiver = tokio::spawn(receive(
            media,
            self.hub.clone(),
            conn,
            ch,
            self.tx.clone(),
            id.clone(),
        ));
        if let Some(d) = self.devices.get_mut(id) {
            d.calls.insert(
                ch,
                Call {
                    dialog,
                    cseq: 1,
                    receiver,
                    unwanted_since: None,
                    dial,
                },
            );
        }
        Ok(())
    }

    /// Responses to our requests: INVITE 200 gets its ACK; a refused INVITE ends the call.
    async fn on_response(&mut self, msg: &Message, code: u16, from: SocketAddr) {
        self.transactions.answered(msg);
        if msg.cseq().map(|(_, m)| m) != Some("INVITE") {
            return;
        }
        let call_id = msg.header("call-id").unwrap_or_default();
        let found = self.devices.iter_mut().find_map(|(id, d)| {
            d.calls
                .iter_mut()
                .find(|(_, c)| c.dialog.call_id == call_id)
                .map(|(ch, c)| (id.clone(), *ch, c))
        });
        let Some((id, ch, call)) = found else {
            return;
        };
        if (200..300).contains(&code) {
            call.dialog.remote_tag = msg.header("to").and_then(sip::tag).map(str::to_string);
            if let Some(dial) = call.dial.take() {
                let answer = sdp::media(&String::from_utf8_lossy(&msg.body));
                if let Some(a) = answer {
                    let _ = dial.send(SocketAddr::new(a.ip.unwrap_or(from.ip()), a.port));
                }
            }
            let ack = sip::request("ACK", &call.dialog, call.cseq, &sip::branch(), &[], None);
            self.send(&ack, from).await;
        } else if code >= 300 {
            tracing::warn!(device = %id, channel = ch, code, "GB28181 INVITE refused");
            self.forget_call(call_id);
        }
    }

    /// The device hung up a channel.
    fn on_bye(&mut self, msg: &Message) {
        let call_id = msg.header("call-id").unwrap_or_default().to_string();
        self.forget_call(&call_id);
    }

    /// Drops the call with this Call-ID, if any, and stops receiving its media (it ended
    /// without us: the device hung up, or never answered).
    fn forget_call(&mut self, call_id: &str) {
        for d in self.devices.values_mut() {
            d.calls.retain(|_, c| {
                let gone = c.dialog.call_id == call_id;
                if gone {
                    c.receiver.abort();
                }
                !gone
            });
        }
    }

    /// Ends a channel's call: BYE to the device, stop receiving.
    async fn hang_up(&mut self, id: &GbId, ch: u32) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        let Some(mut call) = d.calls.remove(&ch) else {
            return;
        };
        call.receiver.abort();
        call.cseq += 1;
        let addr = d.addr;
        if call.dialog.remote_tag.is_some() {
            let bye = sip::request("BYE", &call.dialog, call.cseq, &sip::branch(), &[], None);
            if let Some(a) = addr {
                self.send_request(&bye, a).await;
                tracing::info!(device = %id, channel = ch, "GB28181 BYE");
            }
        }
    }

    async fn on_tick(&mut self) {
        // A device whose catalog came back empty (or never came) is asked again.
        let now = Instant::now();
        let again: Vec<(GbId, SocketAddr)> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.channels.is_empty()
                    && d.catalog.is_none()
                    && d.catalog_asked
                        .is_none_or(|t| now.duration_since(t) >= CATALOG_RETRY)
            })
            .filter_map(|(id, d)| Some((id.clone(), d.addr?)))
            .collect();
        for (id, addr) in again {
            self.query(&id, "Catalog", addr).await;
        }
        let (again, dead) = self.transactions.poll(Instant::now());
        for (bytes, to) in again {
            self.send(&bytes, to).await;
        }
        for key in dead {
            tracing::warn!(call_id = %key.call_id, method = %key.method, "GB28181 request not answered; given up");
            if key.method == "INVITE" {
                self.forget_call(&key.call_id);
            }
        }
        self.finish_catalogs().await;
        let ids: Vec<GbId> = self.devices.keys().cloned().collect();
        for id in &ids {
            self.publish(id, true, false);
        }
        let now = Instant::now();
        let linger = self.linger;
        let due: Vec<(GbId, u32)> = self
            .devices
            .iter()
            .flat_map(|(id, d)| {
                d.calls
                    .iter()
                    .filter(|(_, c)| {
                        c.unwanted_since
                            .is_some_and(|t| now.duration_since(t) >= linger)
                    })
                    .map(|(ch, _)| (id.clone(), *ch))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, ch) in due {
            self.hang_up(&id, ch).await;
        }
    }
}

/// Accepts SIP-over-TCP connections; each one's messages go to the SIP task whole.
async fn accept_tcp(listener: tokio::net::TcpListener, tx: mpsc::Sender<Event>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const MAX_CONNECTIONS: usize = 4096;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: the device retries or falls back to UDP
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (tx, open) = (tx.clone(), open.clone());
        tokio::spawn(async move {
            serve_tcp(stream, peer, &tx).await;
            let _ = tx.send(Event::TcpClosed(peer)).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_tcp(stream: tokio::net::TcpStream, peer: SocketAddr, tx: &mpsc::Sender<Event>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(64);
    if tx.send(Event::TcpOpen(peer, wtx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = wrx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            // Keepalive CRLFs between messages.
            let skip = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            buf.drain(..skip);
            match sip::frame_len(&buf) {
                Ok(Some(len)) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if tx.send(Event::TcpIn(peer, msg)).await.is_err() {
                        writer.abort();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, "SIP over TCP: {e}; closing");
                    writer.abort();
                    return;
                }
            }
        }
    }
    writer.abort();
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where a channel's RTP comes from.
enum MediaIn {
    Udp(UdpSocket),
    /// TCP passive: the device connects to us.
    Listen(tokio::net::TcpListener),
    /// TCP active: we connect to the device (address from its SDP answer).
    Dial(tokio::sync::oneshot::Receiver<SocketAddr>),
}

/// RTP packets -> reordered PS payloads -> H.264 access units -> the hub.
struct Pipeline {
    hub: HubHandle,
    conn: ConnId,
    stream: u32,
    reorder: Reorder,
    demux: fieldlink_media::ps::Demuxer,
    packets: u64,
    frames: u64,
    /// The stream's codec was refused (reported once).
    refused: bool,
}

impl Pipeline {
    /// Returns false when the hub is gone.
    async fn packet(&mut self, data: &[u8]) -> bool {
        let Ok(pkt) = RtpPacket::parse(data) else {
            tracing::debug!(len = data.len(), "GB28181 media: not RTP");
            return true;
        };
        self.packets += 1;
        if self.packets == 1 {
            tracing::debug!(
                ssrc = pkt.ssrc,
                pt = pkt.payload_type,
                "GB28181 media: first RTP packet"
            );
        }
        let ts = u64::from(pkt.timestamp);
        for payload in self.reorder.push(pkt.seq, pkt.payload.to_vec()) {
            let frames = match self.demux.push(&payload) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("GB28181 PS: {e}");
                    continue;
                }
            };
            for f in frames.into_iter().filter(|f| f.video) {
                self.frames += 1;
                if self.frames == 1 {
                    tracing::debug!(stream_type = f.stream_type, len = f.data.len(), head = ?&f.data[..f.data.len().min(8)], "GB28181 media: first frame");
                }
                if f.stream_type != 0x1B && f.stream_type != 0 {
                    // H.265 (0x24) and others: the SFU forwards H.264 only so far. Say so
                    // once; the receivers fail and the call ends after the linger.
                    if !self.refused {
                        self.refused = true;
                        let codec = match f.stream_type {
                            0x24 => "H.265".to_string(),
                            t => format!("stream type 0x{t:02X}"),
                        };
                        let reason = format!(
                            "the camera sends {codec}; receivers get H.264 only (set the camera's channel to H.264)"
                        );
                        tracing::warn!(stream = self.stream, "GB28181: {reason}");
                        let cmd = Cmd::ExternalFailed {
                            conn: self.conn,
                            stream: self.stream,
                            reason,
                        };
                        if self.hub.send(cmd).await.is_err() {
                            return false;
                        }
                    }
                    continue;
                }
                let cmd = Cmd::ExternalFrame {
                    conn: self.conn,
                    stream: self.stream,
                    data: f.data,
                    rtp_time: f.pts.unwrap_or(ts),
                };
                if self.hub.send(cmd).await.is_err() {
                    return false;
                }
            }
        }
        true
    }
}

/// Receives one channel's RTP/PS (UDP, or RFC 4571 over TCP), demuxes H.264 access units
/// and hands them to the hub as stream `stream` of field client `conn`.
async fn receive(
    media: MediaIn,
    hub: HubHandle,
    conn: ConnId,
    stream: u32,
    tx: mpsc::Sender<Event>,
    id: GbId,
) {
    let mut p = Pipeline {
        hub,
        conn,
        stream,
        reorder: Reorder::new(64),
        demux: fieldlink_media::ps::Demuxer::new(),
        packets: 0,
        frames: 0,
        refused: false,
    };
    let gone = |tx: mpsc::Sender<Event>, id: GbId| async move {
        let _ = tx.send(Event::MediaGone(id, stream)).await;
    };
    let mut tcp = match media {
        MediaIn::Udp(socket) => {
            let mut buf = vec![0u8; 65_536];
            loop {
                match tokio::time::timeout(MEDIA_TIMEOUT, socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        if !p.packet(&buf[..n]).await {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!("GB28181 media receive: {e}"),
                    Err(_) => return gone(tx, id).await,
                }
            }
        }
        MediaIn::Listen(l) => match tokio::time::timeout(MEDIA_TIMEOUT, l.accept()).await {
            Ok(Ok((s, _))) => s,
            _ => return gone(tx, id).await,
        },
        MediaIn::Dial(addr) => {
            let Ok(Ok(addr)) = tokio::time::timeout(MEDIA_TIMEOUT, addr).await else {
                return gone(tx, id).await;
            };
            match tokio::time::timeout(MEDIA_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                _ => return gone(tx, id).await,
            }
        }
    };
    use tokio::io::AsyncReadExt;
    let mut framer = fieldlink_gb28181::rtp::TcpFramer::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match tokio::time::timeout(MEDIA_TIMEOUT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return gone(tx, id).await,
            Ok(Ok(n)) => n,
        };
        let packets = match framer.push(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("GB28181 TCP media: {e}");
                return gone(tx, id).await;
            }
        };
        for pkt in packets {
            if !p.packet(&pkt).await {
                return;
            }
        }
    }
}
