//! The SIP task: one task owns every GB28181 device's state (no locks; SIP messages, hub
//! demand and timers are handled in one order). Dispatches SIP messages (REGISTER to the
//! registrar, MANSCDP MESSAGEs, BYE, responses to our requests), sends queries and
//! retransmits our requests over UDP, and runs the periodic work. Device bookkeeping is
//! in `devices`, calls in `calls`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use fieldlink_gb28181::manscdp::{self, CatalogItem, Manscdp};
use fieldlink_gb28181::registrar::{RegEvent, Registrar};
use fieldlink_gb28181::sdp::MediaMode;
use fieldlink_gb28181::sip::{self, response, Dialog, Message, StartLine};
use fieldlink_gb28181::GbId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::catalog::Gathering;
use super::devices::{GbDevice, CATALOG_QUIET};
use super::{Event, Status};
use crate::hub::{Cmd, HubHandle};
use crate::metrics::{InviteOutcome, Metrics};
use fieldlink_gb28181::pacer::Pacer;

/// An empty catalog is asked for again after this.
const CATALOG_RETRY: Duration = Duration::from_secs(30);
/// How often every device is looked at for catalog retries and subscription renewals.
const DEVICE_SCAN: Duration = Duration::from_secs(5);

pub(super) struct Sip {
    pub(super) status: Status,
    pub(super) socket: UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) platform: GbId,
    pub(super) registrar: Registrar,
    pub(super) log: bool,
    pub(super) project: String,
    pub(super) linger: Duration,
    pub(super) media_ip: IpAddr,
    pub(super) mode: MediaMode,
    pub(super) hub: HubHandle,
    pub(super) metrics: std::sync::Arc<Metrics>,
    pub(super) tx: mpsc::Sender<Event>,
    pub(super) devices: HashMap<GbId, GbDevice>,
    pub(super) sn: u32,
    pub(super) invites: u32,
    /// Open SIP-over-TCP connections by peer address.
    pub(super) tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Our requests over UDP, until answered (retransmissions).
    pub(super) transactions: fieldlink_gb28181::transaction::Transactions,
    /// What was last handed for storing per device (JSON), to store only changes.
    pub(super) saved: HashMap<String, String>,
    /// Views changed since they were last handed to the status writer (newest per device).
    pub(super) unsaved: HashMap<String, String>,
    /// The status writer: one batch at a time; while it is busy, `unsaved` coalesces.
    pub(super) statuses: mpsc::Sender<Vec<(String, String)>>,
    /// Every device's own settings (password HA1, media mode, always on), kept here so
    /// no SIP answer waits on the store; the admin API tells changes (`Event::Settings`).
    pub(super) settings: HashMap<String, crate::store::GbSettings>,
    /// Field-device records to store, written in batches by another task.
    pub(super) records: mpsc::Sender<crate::store::Device>,
    /// Devices whose record was handed to that task in this run.
    pub(super) recorded: std::collections::HashSet<GbId>,
    /// The queries to send (Catalog, DeviceInfo, DeviceStatus), paced.
    pub(super) queries: Pacer<GbId, &'static str>,
    /// The queries in flight by Call-ID, to tell the pacer when each ends, with when
    /// they were sent (over TCP nothing gives up on them: they are dropped after 64·T1).
    pub(super) query_calls: HashMap<String, (GbId, Instant)>,
    /// Known devices (online or not) whose views are kept, at most.
    pub(super) max_known: usize,
    /// When every device is next looked at (see [`DEVICE_SCAN`]).
    pub(super) next_device_scan: Instant,
    /// Devices whose Catalog answer is being gathered (see `Sip::finish_catalogs`).
    pub(super) gathering: std::collections::HashSet<GbId>,
    /// Devices whose admin view is out of date (published at the next tick).
    pub(super) dirty: std::collections::HashSet<GbId>,
    /// Sources of malformed messages, ignored for a while.
    pub(super) guard: fieldlink_gb28181::guard::Guard,
}

/// Queries in flight at once, over all devices (one per device).
pub(super) const QUERIES_IN_FLIGHT: usize = 128;
/// Queries waiting their turn at most (beyond, a device's queries are dropped and logged).
pub(super) const QUERIES_QUEUED: usize = 300_000;
/// A query unanswered this long frees its slot (its retransmissions go on until given up).
pub(super) const QUERY_SLOT: Duration = Duration::from_secs(8);

impl Sip {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
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
                    Some(Event::Settings(id, s, done)) => {
                        self.settings.insert(id, s);
                        let _ = done.send(());
                    }
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

    /// Sends a request; over UDP it is retransmitted until answered.
    pub(super) async fn send_request(&mut self, bytes: &[u8], to: SocketAddr) {
        if !self.tcp.contains_key(&to) {
            self.transactions.sent(bytes, to, Instant::now());
        }
        self.send(bytes, to).await;
    }

    pub(super) async fn send(&self, bytes: &[u8], to: SocketAddr) {
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
    pub(super) fn dialog(&self, user: &str, peer: SocketAddr) -> Dialog {
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

    pub(super) async fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        if self.log {
            tracing::info!(direction = "recv", peer = %from, message = %String::from_utf8_lossy(data), "SIP");
        }
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // CRLF keepalive ping
        }
        if self.guard.ignored(from.ip(), Instant::now()) {
            self.metrics.sip_ignored.inc();
            return; // a source of garbage, for a while
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                // Without parseable headers there is nothing to answer to.
                tracing::debug!(%from, "bad SIP message: {e}");
                if self.guard.bad(from.ip(), Instant::now()) {
                    tracing::warn!(source = %from.ip(), "GB28181: too many malformed SIP messages; ignoring this source for a while");
                }
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
                let ha1 = msg
                    .from_user()
                    .and_then(|u| self.settings.get(u))
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
            "MESSAGE" => {
                let (reply, notified) = self.on_message(&msg, from, now);
                self.send(&reply, from).await;
                if let Some((id, items)) = notified {
                    self.on_catalog_notify(&id, &items).await;
                }
                self.finish_catalogs().await;
                return;
            }
            "NOTIFY" => self.on_notify(&msg, from).await,
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

    pub(super) async fn on_reg_event(&mut self, ev: RegEvent) {
        match ev {
            RegEvent::Online { id, addr } => {
                tracing::info!(device = %id, %addr, "GB28181 device online");
                self.devices.entry(id.clone()).or_default().addr = Some(addr);
                self.publish(&id, true, true);
                for q in ["Catalog", "DeviceInfo", "DeviceStatus"] {
                    self.ask(&id, q);
                }
                self.send_queries().await;
            }
            RegEvent::Offline { id, why } => {
                tracing::info!(device = %id, ?why, "GB28181 device offline");
                if let Some(d) = self.devices.get_mut(&id) {
                    d.calls.values().for_each(|c| c.receiver.abort());
                    d.calls.clear();
                }
                self.publish(&id, false, true);
                self.queries.forget(&id);
                if let Some(mut d) = self.devices.remove(&id) {
                    for (_, call) in d.calls.drain() {
                        call.receiver.abort();
                    }
                    if let Some(conn) = d.conn {
                        let _ = self.hub.send(Cmd::Unregister { conn }).await;
                    }
                }
            }
            RegEvent::Refreshed { id } => {
                // It may have restarted with other channels: asked again (paced; a query
                // already waiting is not queued twice).
                if self.devices.get(&id).is_some_and(|d| d.conn.is_some()) {
                    self.ask(&id, "Catalog");
                    self.send_queries().await;
                }
            }
            // A banned source's every try would flood the log: those are debug only.
            RegEvent::Refused { user, addr, why } if why.starts_with("banned") => {
                tracing::debug!(user, %addr, why, "GB28181 registration refused")
            }
            RegEvent::Refused { user, addr, why } => {
                tracing::warn!(user, %addr, why, "GB28181 registration refused")
            }
        }
    }

    /// Sends a MANSCDP query; a Catalog query starts gathering the answer.
    /// Queues query `cmd` for device `id` (sent by [`Sip::send_queries`], paced).
    pub(super) fn ask(&mut self, id: &GbId, cmd: &'static str) {
        if cmd == "Catalog" {
            // Asked from now on (the retry waits from here, not from the send).
            if let Some(d) = self.devices.get_mut(id) {
                d.catalog_asked = Some(Instant::now());
            }
        }
        if !self.queries.push(id.clone(), cmd) {
            tracing::warn!(device = %id, cmd, "GB28181 query queue full: not asked");
        }
    }

    /// Sends the queued queries the pacer allows now.
    pub(super) async fn send_queries(&mut self) {
        while let Some((id, cmd)) = self.queries.next(Instant::now()) {
            match self.devices.get(&id).and_then(|d| d.addr) {
                Some(addr) => {
                    let call_id = self.query(&id, cmd, addr).await;
                    // Bounded by the pacer: at most QUERIES_IN_FLIGHT plus expired ones
                    // until their transactions end.
                    self.query_calls.insert(call_id, (id, Instant::now()));
                }
                None => self.queries.done(&id),
            }
        }
    }

    /// A query's transaction ended (answered or given up): the next may go.
    pub(super) fn query_ended(&mut self, call_id: &str) {
        if let Some((id, _)) = self.query_calls.remove(call_id) {
            self.queries.done(&id);
        }
    }

    /// Sends query `cmd` now; returns its Call-ID.
    pub(super) async fn query(&mut self, id: &GbId, cmd: &str, addr: SocketAddr) -> String {
        if cmd == "Subscribe" {
            return self.subscribe(id, addr).await;
        }
        self.sn = self.sn.wrapping_add(1);
        let sn = self.sn;
        if cmd == "Catalog" {
            if let Some(d) = self.devices.get_mut(id) {
                self.gathering.insert(id.clone());
                d.catalog = Some(Gathering {
                    sn,
                    items: Vec::new(),
                    until: Instant::now() + CATALOG_QUIET,
                    answered: false,
                });
                d.catalog_asked = Some(Instant::now());
            }
        }
        let body = manscdp::query(cmd, sn, id.as_str());
        let dialog = self.dialog(id.as_str(), addr);
        let r = sip::request(
            "MESSAGE",
            &dialog,
            1,
            &sip::branch(),
            &[],
            Some(("Application/MANSCDP+xml", &body)),
        );
        self.send_request(&r, addr).await;
        dialog.call_id
    }

    /// The MANSCDP body of a request and the registered device it comes from (which is
    /// thereby seen alive); or the answer to send instead: 400 for a body that is not
    /// MANSCDP, 403 for a device that is not registered (real devices then register again).
    pub(super) fn registered_body(
        &mut self,
        msg: &Message,
        from: SocketAddr,
        now: Instant,
    ) -> Result<(GbId, Manscdp), Vec<u8>> {
        let body = Manscdp::parse(&msg.body).map_err(|e| {
            let reason = format!("Bad Request ({e})");
            response(msg, 400, &reason, from, "fl", &[], None)
        })?;
        let id = self.registered_sender(msg, from, Some(&body.device_id), now)?;
        Ok((id, body))
    }

    /// The registered device that sent `msg` (its From user, else `fallback`, e.g. the
    /// body's DeviceID), or the 403 to answer.
    pub(super) fn registered_sender(
        &mut self,
        msg: &Message,
        from: SocketAddr,
        fallback: Option<&str>,
        now: Instant,
    ) -> Result<GbId, Vec<u8>> {
        let id: Option<GbId> = msg
            .from_user()
            .and_then(|u| u.parse().ok())
            .or_else(|| fallback.and_then(|d| d.parse().ok()));
        id.filter(|id| self.registrar.seen(id, from.ip(), now))
            .ok_or_else(|| {
                response(
                    msg,
                    403,
                    "Forbidden (not registered)",
                    from,
                    "fl",
                    &[],
                    None,
                )
            })
    }

    /// MANSCDP from a device: keepalives refresh presence (a device that is not registered
    /// gets 403, which makes real devices register again); Catalog answers are gathered.
    /// Returns the answer, and a Catalog change report's items (to apply).
    pub(super) fn on_message(
        &mut self,
        msg: &Message,
        from: SocketAddr,
        now: Instant,
    ) -> (Vec<u8>, Option<(GbId, Vec<CatalogItem>)>) {
        let (id, body) = match self.registered_body(msg, from, now) {
            Ok(v) => v,
            Err(reply) => return (reply, None),
        };
        if body.root == "Response"
            && matches!(body.cmd_type.as_str(), "DeviceInfo" | "DeviceStatus")
        {
            self.dirty.insert(id.clone());
            if let Some(d) = self.devices.get_mut(&id) {
                for (k, v) in body.fields.iter().take(64) {
                    if d.info.len() < 64 || d.info.contains_key(k) {
                        d.info.insert(k.clone(), v.chars().take(256).collect());
                    }
                }
            }
        }
        let ok = response(msg, 200, "OK", from, "fl", &[], None);
        match (body.root.as_str(), body.cmd_type.as_str()) {
            ("Response", "Catalog") => {
                self.gather_catalog(&id, body, now);
                (ok, None)
            }
            ("Notify", "Catalog") => (ok, Some((id, body.items))),
            _ => (ok, None),
        }
    }

    pub(super) async fn on_tick(&mut self) {
        let now = Instant::now();
        // Scans of every device (retries, subscriptions) run every few seconds, not at
        // every tick: they are the keepalive-time cost of a site with 100 000 devices.
        if self.next_device_scan <= now {
            self.next_device_scan = now + DEVICE_SCAN;
            // A device whose catalog came back empty (or never came) is asked again.
            // Unanswered ones back off: 30 s, 1, 2, 4, 8 min.
            let again: Vec<GbId> = self
                .devices
                .iter()
                .filter(|(_, d)| {
                    let wait = CATALOG_RETRY * 2u32.pow(d.catalog_misses.min(4));
                    d.channels.is_empty()
                        && d.catalog.is_none()
                        && d.addr.is_some()
                        && d.catalog_asked
                            .is_none_or(|t| now.duration_since(t) >= wait)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in again {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.catalog_misses += 1;
                }
                self.ask(&id, "Catalog");
            }
            self.renew_subscriptions();
        }
        let (again, dead) = self.transactions.poll(Instant::now());
        for (bytes, to) in again {
            self.send(&bytes, to).await;
        }
        for key in dead {
            tracing::warn!(call_id = %key.call_id, method = %key.method, "GB28181 request not answered; given up");
            self.metrics.sip_given_up.inc();
            if key.method == "SUBSCRIBE" {
                if let Some((id, _)) = self.query_calls.get(&key.call_id).cloned() {
                    self.subscription_answered(&id, 0, None);
                }
            }
            self.query_ended(&key.call_id);
            if key.method == "INVITE" {
                self.metrics.invite(InviteOutcome::Unanswered);
                self.forget_call(&key.call_id);
            }
        }
        let now = Instant::now();
        let given_up = fieldlink_gb28181::transaction::T1 * 64;
        self.query_calls
            .retain(|_, (_, sent)| now.duration_since(*sent) < given_up);
        self.send_queries().await;
        self.finish_catalogs().await;
        // Views of devices whose calls or answers changed (not every device each tick:
        // at 100 000 devices that would be most of the work).
        let dirty: Vec<GbId> = self.dirty.drain().collect();
        for id in &dirty {
            if self.devices.contains_key(id) {
                self.publish(id, true, false);
            }
        }
        self.hang_up_lingering().await;
        self.hand_over_statuses();
    }

    /// Gives the changed views to the status writer, unless it is still busy with the
    /// last batch (a slow store): then they wait, the newest per device.
    fn hand_over_statuses(&mut self) {
        if self.unsaved.is_empty() {
            return;
        }
        let batch: Vec<(String, String)> = self.unsaved.drain().collect();
        if let Err(mpsc::error::TrySendError::Full(batch)) = self.statuses.try_send(batch) {
            for (k, v) in batch {
                self.unsaved.entry(k).or_insert(v);
            }
        }
    }
}
