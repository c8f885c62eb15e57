//! A device's catalog over time: gathering a Catalog answer (it may span several
//! MESSAGEs), making a device with a complete first catalog a field device, and keeping
//! its channel list current after that — a Catalog subscription (SUBSCRIBE, renewed; the
//! NOTIFYs it brings) and a fresh Catalog query on every re-REGISTER. Changes act at once:
//! a new channel is a stream receivers may play, a deleted one ends its receivers with a
//! reason and is hung up. The list logic itself is `fieldlink_gb28181::catalog` (pure).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fieldlink_gb28181::catalog::{self, Change};
use fieldlink_gb28181::manscdp::{self, CatalogItem, Manscdp};
use fieldlink_gb28181::sip::{self, response, Message};
use fieldlink_gb28181::GbId;

use super::devices::{CATALOG_QUIET, MAX_CHANNELS};
use super::sip::Sip;
use crate::hub::Cmd;

/// A Catalog answer being gathered.
pub(super) struct Gathering {
    /// The query's SN (pieces of other answers are not this one's).
    pub(super) sn: u32,
    pub(super) items: Vec<CatalogItem>,
    /// When to stop waiting for more pieces.
    pub(super) until: Instant,
    /// Some piece came (an unanswered refresh changes nothing).
    pub(super) answered: bool,
}

/// A device's Catalog subscription.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Subscription {
    /// None yet (or it ended): asked for once the device has a catalog.
    #[default]
    None,
    /// SUBSCRIBE queued or sent.
    Asked,
    /// Accepted until then.
    Until(Instant),
    /// Refused or never answered: the device does not do subscriptions (its channel
    /// list is still refreshed at each re-REGISTER).
    Refused,
}

/// How long a subscription is asked for, seconds.
const SUBSCRIBE_EXPIRES: u32 = 3600;
/// A subscription is renewed when this much of it is left.
const SUBSCRIPTION_RENEW: Duration = Duration::from_secs(300);

impl Sip {
    /// One piece of a Catalog answer from device `id`.
    pub(super) fn gather_catalog(&mut self, id: &GbId, body: Manscdp, now: Instant) {
        let Some(g) = self.devices.get_mut(id).and_then(|d| d.catalog.as_mut()) else {
            return;
        };
        if g.sn != body.sn {
            return;
        }
        g.answered = true;
        for it in body.items {
            if g.items.len() < MAX_CHANNELS && !g.items.iter().any(|i| i.device_id == it.device_id)
            {
                g.items.push(it);
            }
        }
        let sum = body.sum_num.map_or(g.items.len(), |s| s as usize);
        g.until = if g.items.len() >= sum.min(MAX_CHANNELS) {
            now // complete
        } else {
            now + CATALOG_QUIET
        };
    }

    /// Catalogs that are complete (or went quiet): a device's first answer makes it a
    /// field device; a later one replaces its channel list (changes applied).
    pub(super) async fn finish_catalogs(&mut self) {
        let now = Instant::now();
        // Only the devices gathering an answer (called after every MESSAGE: with 100 000
        // devices, a scan of them all each time would be most of the platform's work).
        let devices = &self.devices;
        self.gathering
            .retain(|id| devices.get(id).is_some_and(|d| d.catalog.is_some()));
        let done: Vec<GbId> = self
            .gathering
            .iter()
            .filter(|id| {
                devices
                    .get(*id)
                    .and_then(|d| d.catalog.as_ref())
                    .is_some_and(|g| g.until <= now)
            })
            .cloned()
            .collect();
        for id in done {
            let Some(d) = self.devices.get_mut(&id) else {
                continue;
            };
            let Some(g) = d.catalog.take() else {
                continue;
            };
            // Unanswered: nothing changes (a device with no catalog yet is asked again
            // after a while, see `Sip::on_tick`, and is no field device until it answers).
            if !g.answered {
                continue;
            }
            d.catalog_misses = 0;
            if d.conn.is_some() {
                let changes = catalog::refresh(&mut d.channels, &g.items, MAX_CHANNELS);
                self.apply_changes(&id, changes).await;
                continue;
            }
            d.channels = g.items;
            let n = d.channels.len() as u32;
            let name = d
                .channels
                .first()
                .map(|c| format!("GB28181 {} ({})", id, c.name))
                .unwrap_or_else(|| format!("GB28181 {id}"));
            tracing::info!(device = %id, channels = n, "GB28181 catalog");
            let conn = match self.as_field(&id, &name).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(device = %id, "GB28181 device cannot join the hub: {e}");
                    continue;
                }
            };
            if let Some(d) = self.devices.get_mut(&id) {
                d.conn = Some(conn);
                // Subscribed at once (renewals come from the periodic scan).
                d.subscription = Subscription::Asked;
            }
            self.ask(&id, "Subscribe");
            let _ = self.hub.send(Cmd::External { conn, streams: n }).await;
            let always_on = self.settings.get(id.as_str()).is_some_and(|s| s.always_on);
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

    /// A Catalog `Notify` from device `id` (in a NOTIFY of its subscription, or in a
    /// MESSAGE, as some devices send it).
    pub(super) async fn on_catalog_notify(&mut self, id: &GbId, items: &[CatalogItem]) {
        let Some(d) = self.devices.get_mut(id).filter(|d| d.conn.is_some()) else {
            return; // no catalog yet: the coming answer has it all
        };
        let changes = catalog::notify(&mut d.channels, items, MAX_CHANNELS);
        self.apply_changes(id, changes).await;
    }

    /// Acts on channel list changes: the hub learns the new stream count, receivers of a
    /// deleted channel end with the reason and its call is hung up.
    async fn apply_changes(&mut self, id: &GbId, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let Some(d) = self.devices.get(id) else {
            return;
        };
        tracing::info!(device = %id, ?changes, "GB28181 catalog changed");
        let n = d.channels.len() as u32;
        let removed: Vec<(u32, String)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Removed(i) => d.channels.get(*i).map(|c| {
                    let what = match c.name.as_str() {
                        "" => c.device_id.clone(),
                        name => format!("{} ({name})", c.device_id),
                    };
                    (*i as u32, what)
                }),
                _ => None,
            })
            .collect();
        if let Some(conn) = d.conn {
            if changes.iter().any(|c| matches!(c, Change::Added(_))) {
                let _ = self.hub.send(Cmd::External { conn, streams: n }).await;
            }
            for (ch, what) in removed {
                let reason = format!("channel {what} was removed from the device's catalog");
                let cmd = Cmd::ExternalFailed {
                    conn,
                    stream: ch,
                    reason,
                };
                let _ = self.hub.send(cmd).await;
                self.hang_up(id, ch).await;
            }
        }
        self.apply_demand(id).await;
        self.publish(id, true, true);
    }

    /// A NOTIFY from a device: a Catalog change report is applied; answered 200 (403 for
    /// a device that is not registered, 400 for a body that is not MANSCDP). A NOTIFY
    /// without a body (RFC 6665 allows one, e.g. only ending the subscription) is
    /// answered 200 once its sender is known to be registered.
    pub(super) async fn on_notify(&mut self, msg: &Message, from: SocketAddr) -> Vec<u8> {
        if msg.body.iter().all(u8::is_ascii_whitespace) {
            let id = match self.registered_sender(msg, from, None, Instant::now()) {
                Ok(id) => id,
                Err(reply) => return reply,
            };
            self.subscription_state(msg, &id);
            return response(msg, 200, "OK", from, "fl", &[], None);
        }
        let (id, body) = match self.registered_body(msg, from, Instant::now()) {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        self.subscription_state(msg, &id);
        if body.cmd_type == "Catalog" {
            self.on_catalog_notify(&id, &body.items).await;
        }
        response(msg, 200, "OK", from, "fl", &[], None)
    }

    /// A NOTIFY saying the subscription is over: it is asked for again.
    fn subscription_state(&mut self, msg: &Message, id: &GbId) {
        if msg
            .header("subscription-state")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"))
        {
            if let Some(d) = self.devices.get_mut(id) {
                tracing::debug!(device = %id, "catalog subscription ended by the device");
                d.subscription = Subscription::None;
            }
        }
    }

    /// Sends a Catalog SUBSCRIBE to device `id`; returns its Call-ID.
    pub(super) async fn subscribe(&mut self, id: &GbId, addr: SocketAddr) -> String {
        self.sn = self.sn.wrapping_add(1);
        let body = manscdp::query("Catalog", self.sn, id.as_str());
        let dialog = self.dialog(id.as_str(), addr);
        let contact = format!("<sip:{}@{}>", self.platform, self.local);
        let r = sip::request(
            "SUBSCRIBE",
            &dialog,
            1,
            &sip::branch(),
            &[
                ("Event", format!("Catalog;id={}", self.sn)),
                ("Expires", SUBSCRIBE_EXPIRES.to_string()),
                ("Contact", contact),
            ],
            Some(("Application/MANSCDP+xml", &body)),
        );
        self.send_request(&r, addr).await;
        dialog.call_id
    }

    /// The answer to our SUBSCRIBE (`code` 0: never answered).
    pub(super) fn subscription_answered(&mut self, id: &GbId, code: u16, expires: Option<u32>) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        d.subscription = if (200..300).contains(&code) {
            let secs = expires.unwrap_or(SUBSCRIBE_EXPIRES).clamp(60, 86_400);
            Subscription::Until(Instant::now() + Duration::from_secs(u64::from(secs)))
        } else {
            tracing::info!(device = %id, code, "GB28181 catalog subscription refused");
            Subscription::Refused
        };
    }

    /// Devices with a catalog and no subscription, or one about to end, are subscribed
    /// (paced like the queries).
    pub(super) fn renew_subscriptions(&mut self) {
        let now = Instant::now();
        let due: Vec<GbId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.conn.is_some() && d.addr.is_some())
            .filter(|(_, d)| match d.subscription {
                Subscription::None => true,
                Subscription::Until(t) => t.saturating_duration_since(now) <= SUBSCRIPTION_RENEW,
                Subscription::Asked | Subscription::Refused => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(d) = self.devices.get_mut(&id) {
                d.subscription = Subscription::Asked;
            }
            self.ask(&id, "Subscribe");
        }
    }
}
