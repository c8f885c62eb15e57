//! Live-video calls, one per wanted channel: hub demand (or "always on") starts an INVITE
//! with a media receiver ready (UDP, TCP passive or TCP active), the device's 200 gets its
//! ACK, a refused or unanswered INVITE or the device's BYE ends the call, and a channel
//! nobody has wanted for the linger time gets our BYE. The media itself is `media`'s.

use std::net::SocketAddr;
use std::time::Instant;

use fieldlink_gb28181::sdp::{self, MediaMode};
use fieldlink_gb28181::sip::{self, Dialog, Message};
use fieldlink_gb28181::GbId;
use tokio::net::UdpSocket;

use super::media::{receive, MediaIn};
use super::sip::Sip;
use crate::metrics::InviteOutcome;

/// One live channel: the dialog and the task receiving its media.
pub(super) struct Call {
    pub(super) dialog: Dialog,
    pub(super) cseq: u32,
    pub(super) receiver: tokio::task::JoinHandle<()>,
    /// Since when nobody wants it (BYE after the linger).
    pub(super) unwanted_since: Option<Instant>,
    /// TCP active: where to connect, once the device's answer says.
    pub(super) dial: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

impl Sip {
    /// The hub's demand changed.
    pub(super) async fn on_wanted(&mut self, id: &GbId, wanted: &[u32]) {
        if let Some(d) = self.devices.get_mut(id) {
            d.wanted = wanted.to_vec();
        }
        self.apply_demand(id).await;
    }

    /// Starts wanted channels (by receivers, or all when always on); marks the others
    /// for BYE after the linger.
    pub(super) async fn apply_demand(&mut self, id: &GbId) {
        let now = Instant::now();
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        // A deleted channel is not called, whoever wants it.
        let present = |ch: &u32| {
            d.channels
                .get(*ch as usize)
                .is_some_and(fieldlink_gb28181::catalog::present)
        };
        let wanted: Vec<u32> = if d.always_on {
            (0..d.channels.len() as u32).filter(present).collect()
        } else {
            d.wanted.iter().copied().filter(present).collect()
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

    pub(super) async fn invite(&mut self, id: &GbId, ch: u32) -> Result<(), String> {
        let d = self.devices.get(id).ok_or("device gone")?;
        let addr = d.addr.ok_or("no address")?;
        let conn = d.conn.ok_or("not in the hub")?;
        let channel = d
            .channels
            .get(ch as usize)
            .ok_or("no such channel")?
            .device_id
            .clone();
        let mode = self
            .settings
            .get(id.as_str())
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
        self.metrics.invite(InviteOutcome::Sent);
        let to = super::media::Target {
            hub: self.hub.clone(),
            conn,
            stream: ch,
            metrics: self.metrics.clone(),
            invited: Instant::now(),
        };
        let receiver = tokio::spawn(receive(media, to, self.tx.clone(), id.clone()));
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
    pub(super) async fn on_response(&mut self, msg: &Message, code: u16, from: SocketAddr) {
        if self.transactions.answered(msg) {
            self.metrics.sip_answered.inc();
        }
        if msg.cseq().map(|(_, m)| m) == Some("SUBSCRIBE") && code >= 200 {
            if let Some(call_id) = msg.header("call-id") {
                if let Some((id, _)) = self.query_calls.get(call_id).cloned() {
                    self.subscription_answered(&id, code, msg.expires());
                }
                self.query_ended(call_id);
            }
            self.send_queries().await;
            return;
        }
        if msg.cseq().map(|(_, m)| m) == Some("MESSAGE") {
            if let Some(call_id) = msg.header("call-id") {
                self.query_ended(call_id);
            }
            self.send_queries().await;
            return;
        }
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
            if call.dialog.remote_tag.is_none() {
                self.metrics.invite(InviteOutcome::Accepted); // not its retransmissions
            }
            call.dialog.remote_tag = msg.header("to").and_then(sip::tag).map(str::to_string);
            self.dirty.insert(id.clone());
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
            self.metrics.invite(InviteOutcome::Refused);
            self.forget_call(call_id);
        }
    }

    /// The device hung up a channel.
    pub(super) fn on_bye(&mut self, msg: &Message) {
        let call_id = msg.header("call-id").unwrap_or_default().to_string();
        self.forget_call(&call_id);
    }

    /// Drops the call with this Call-ID, if any, and stops receiving its media (it ended
    /// without us: the device hung up, or never answered).
    pub(super) fn forget_call(&mut self, call_id: &str) {
        for (id, d) in self.devices.iter_mut() {
            d.calls.retain(|_, c| {
                let gone = c.dialog.call_id == call_id;
                if gone {
                    c.receiver.abort();
                    self.dirty.insert(id.clone());
                }
                !gone
            });
        }
    }

    /// Ends a channel's call: BYE to the device, stop receiving.
    pub(super) async fn hang_up(&mut self, id: &GbId, ch: u32) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        let Some(mut call) = d.calls.remove(&ch) else {
            return;
        };
        self.dirty.insert(id.clone());
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

    /// Calls nobody has wanted for the linger time are hung up.
    pub(super) async fn hang_up_lingering(&mut self) {
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
