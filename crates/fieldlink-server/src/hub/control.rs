//! Control data between field and remote devices (SPEC §4): the server's side of the
//! limits (100 messages/s per sender: lossy ones over it are dropped, reliable ones paced
//! in a bounded queue), the master check for remote senders, and delivery on the target's
//! data channel (qos 0 dropped rather than late, qos 1 queued for the SCTP buffer).
//! External sources get their control data through their outbound queue. Does not touch
//! sessions or media.

use std::collections::VecDeque;
use std::time::Instant;

use str0m::channel::ChannelId;
use str0m::Rtc;

use fieldlink_proto::{ControlFrame, DeviceId, ErrorCode, Qos, Role, ServerMsg};

use super::{ConnId, Hub, Outbound};
use crate::metrics::ControlOutcome;

/// Reliable control messages waiting for one receiver's SCTP buffer.
const MAX_PENDING_RELIABLE: usize = 1024;
/// Above this many buffered bytes a lossy message is dropped rather than delivered late.
pub(super) const LOSSY_BUFFER_LIMIT: usize = 8 * 1024;
/// Reliable control messages of one sender waiting for their turn under the rate limit
/// (10 s at the full rate).
const MAX_PACED: usize = 1000;

impl Hub {
    /// Admits one control message under the sender's rate limit. Lossy messages over the
    /// limit are dropped. Reliable ones are paced: a compliant sender's messages can
    /// arrive in a burst after the network held them back (SCTP retransmission), and must
    /// not be lost, so they wait their turn in a bounded queue; a sender that keeps
    /// exceeding the limit fills it and loses messages (with a warning).
    /// Returns the peers written to (to be polled).
    pub(super) fn on_control(&mut self, from: ConnId, qos: Qos, data: Vec<u8>) -> Vec<ConnId> {
        let now = Instant::now();
        if let Err(e) = ControlFrame::decode(&data) {
            self.metrics.control(qos, ControlOutcome::Refused);
            self.warn(from, e.code(), format!("control data refused: {e}"));
            return Vec::new();
        }
        let Some(sender) = self.clients.get_mut(&from) else {
            return Vec::new();
        };
        let admitted = match qos {
            Qos::Lossy => sender.limiter.try_acquire(now),
            Qos::Reliable if sender.paced.is_empty() && sender.limiter.try_acquire(now) => true,
            Qos::Reliable if sender.paced.len() < MAX_PACED => {
                sender.paced.push_back(data);
                self.paced.insert(from);
                self.metrics.control(qos, ControlOutcome::Paced);
                return Vec::new();
            }
            Qos::Reliable => false,
        };
        if !admitted {
            self.metrics.control(qos, ControlOutcome::RateLimited);
            self.warn(
                from,
                ErrorCode::RateLimited,
                "control data dropped: over 100 messages/s".into(),
            );
            return Vec::new();
        }
        self.route(from, qos, &data)
    }

    /// Releases paced reliable messages whose turn has come.
    pub(super) fn drive_paced(&mut self, now: Instant) -> Vec<ConnId> {
        let senders: Vec<ConnId> = self.paced.iter().copied().collect();
        let mut touched = Vec::new();
        for from in senders {
            while let Some(data) = self.clients.get_mut(&from).and_then(|c| {
                if c.paced.is_empty() || !c.limiter.try_acquire(now) {
                    None
                } else {
                    c.paced.pop_front()
                }
            }) {
                for t in self.route(from, Qos::Reliable, &data) {
                    if !touched.contains(&t) {
                        touched.push(t);
                    }
                }
            }
            if self.clients.get(&from).is_none_or(|c| c.paced.is_empty()) {
                self.paced.remove(&from);
            }
        }
        touched
    }

    /// Forwards one admitted control message to its receivers.
    pub(super) fn route(&mut self, from: ConnId, qos: Qos, data: &[u8]) -> Vec<ConnId> {
        let Ok(frame) = ControlFrame::decode(data) else {
            return Vec::new();
        };
        let Some(sender) = self.clients.get(&from) else {
            return Vec::new();
        };
        let me = sender.info.device.clone();
        let fwd = ControlFrame {
            peer: &me.to_string(),
            seq: frame.seq,
            payload: frame.payload,
        }
        .encode();
        let Ok(fwd) = fwd else {
            return Vec::new();
        };
        let targets: Vec<ConnId> = match sender.info.role {
            Role::Field => self
                .fields
                .get(&me)
                .map(|fc| {
                    fc.members()
                        .iter()
                        .filter_map(|m| self.by_device.get(m).copied())
                        .collect()
                })
                .unwrap_or_default(),
            Role::Remote => {
                let Ok(gwid) = frame.peer.parse::<DeviceId>() else {
                    self.metrics.control(qos, ControlOutcome::Refused);
                    self.warn(
                        from,
                        ErrorCode::BadRequest,
                        "control data names no valid field device".into(),
                    );
                    return Vec::new();
                };
                let check = match self.fields.get(&gwid) {
                    Some(fc) if fc.is_member(&me) => {
                        if fc.master() == Some(&me) {
                            self.by_device
                                .get(&gwid)
                                .copied()
                                .ok_or(ErrorCode::FieldOffline)
                        } else {
                            Err(ErrorCode::NotMaster)
                        }
                    }
                    _ => Err(ErrorCode::NotInSession),
                };
                match check {
                    Ok(c) => vec![c],
                    Err(code) => {
                        self.metrics.control(qos, ControlOutcome::Refused);
                        self.warn(
                            from,
                            code,
                            format!("control data for {gwid} dropped: {}", code.describe()),
                        );
                        return Vec::new();
                    }
                }
            }
        };
        let mut written = Vec::new();
        // Receivers a reliable message could not be given to: the sender is told.
        let mut unreachable = Vec::new();
        for t in targets {
            let Some(target) = self.clients.get_mut(&t) else {
                continue;
            };
            if qos == Qos::Lossy && !target.late.entry(me.clone()).or_default().accept(frame.seq) {
                continue;
            }
            if target.external.is_some() {
                // Not a WebRTC peer: the source's own task interprets it (GB28181 PTZ).
                let _ = target.out.try_send(Outbound::Control(Box::new((
                    me.clone(),
                    frame.payload.to_vec(),
                ))));
                self.metrics.control(qos, ControlOutcome::Forwarded);
                continue;
            }
            let Some(peer) = target.peer.as_mut() else {
                // No media connection (being re-established): a lossy message is lost as
                // qos 0 allows; a reliable one must not vanish without a word.
                if qos == Qos::Reliable {
                    unreachable.push(target.info.device.clone());
                }
                continue;
            };
            let Some(cid) = peer.channels[qos as usize] else {
                if qos == Qos::Reliable && peer.pending_reliable.len() < MAX_PENDING_RELIABLE {
                    // The channel is not open yet: queued, written once it opens.
                    peer.pending_reliable.push_back(fwd.clone());
                    self.metrics.control(qos, ControlOutcome::Forwarded);
                    written.push(t);
                } else if qos == Qos::Reliable {
                    unreachable.push(target.info.device.clone());
                }
                continue;
            };
            match qos {
                Qos::Lossy => {
                    if let Some(mut ch) = peer.rtc.channel(cid) {
                        // Congested: drop rather than deliver late.
                        if ch.buffered_amount() <= LOSSY_BUFFER_LIMIT {
                            let _ = ch.write(true, &fwd);
                            self.metrics.control(qos, ControlOutcome::Forwarded);
                        } else {
                            self.metrics.control(qos, ControlOutcome::Congested);
                        }
                    }
                }
                Qos::Reliable => {
                    if peer.pending_reliable.len() >= MAX_PENDING_RELIABLE {
                        tracing::warn!(device = %target.info.device, "reliable control queue full: receiver too slow, message dropped");
                        let _ = target
                            .out
                            .try_send(Outbound::Msg(Box::new(ServerMsg::warning(
                                ErrorCode::Congested,
                                "reliable control data dropped: receiver queue full",
                            ))));
                        self.metrics.control(qos, ControlOutcome::Congested);
                        continue;
                    }
                    peer.pending_reliable.push_back(fwd.clone());
                    peer.flush_reliable();
                    self.metrics.control(qos, ControlOutcome::Forwarded);
                }
            }
            written.push(t);
        }
        for d in unreachable {
            self.metrics.control(qos, ControlOutcome::Refused);
            self.warn(
                from,
                ErrorCode::MediaNotReady,
                format!("reliable control data for {d} dropped: its media connection is not up"),
            );
        }
        written
    }
}

/// Writes queued reliable messages on channel `reliable` while the SCTP buffer accepts
/// them (a function of the parts, so the driving loop's event handler can call it while
/// the loop holds the `Rtc`).
pub(super) fn flush_reliable(
    rtc: &mut Rtc,
    reliable: Option<ChannelId>,
    pending: &mut VecDeque<Vec<u8>>,
) {
    let Some(cid) = reliable else {
        return;
    };
    while let Some(front) = pending.front() {
        let Some(mut ch) = rtc.channel(cid) else {
            return;
        };
        match ch.write(true, front) {
            Ok(true) => {
                pending.pop_front();
            }
            _ => return,
        }
    }
}
