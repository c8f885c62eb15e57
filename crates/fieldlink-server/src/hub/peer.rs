//! The WebRTC side: one str0m peer connection per device on the hub's one UDP socket
//! (ICE-lite). Accepting offers, routing each datagram to the peer that accepts it,
//! serving timeouts, and polling peers with the shared driving loop
//! ([`fieldlink_rtc::drive`]), then handing their events to `control`, `forward` and
//! `receivers`. Owns the peers; decides nothing about sessions or routing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::media::{MediaData, Mid};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};

use fieldlink_proto::signal::{BondGrant, BondOffer};
use fieldlink_proto::{DeviceId, ErrorCode, Qos, Role};
use fieldlink_rtc::bond;
use fieldlink_rtc::fec::{self, FecStats};
use fieldlink_rtc::{Ended, Polled, Wire};

use super::control::{flush_reliable, LOSSY_BUFFER_LIMIT};
use super::gop::SourceInfo;
use super::receivers::Receiver;
use super::{ConnId, Hub};

/// Batches of at least this many peers are polled on the media threads.
const PARALLEL_FROM: usize = 2;

/// Most video m-lines (streams or receivers) of one peer connection.
const MAX_VIDEO_MLINES: usize = 64;

/// One device's WebRTC peer connection, with what the hub keeps beside it.
pub(super) struct Peer {
    pub(super) rtc: Rtc,
    /// Video m-lines by index: a field's stream ids, or a remote's conn_fds.
    pub(super) video_mids: Vec<Mid>,
    /// Remote: per video m-line, the next RTP sequence number of what is written to it
    /// (the hub writes RTP packets, `forward::write_frame`; it starts at random as RFC
    /// 3550 asks, below 65 536 so the SRTP rollover counter starts at 0).
    pub(super) video_seq: Vec<u64>,
    /// Field: per stream, when a keyframe was asked for and none has come since.
    pub(super) keyframe_asked: Vec<Option<Instant>>,
    /// Field: per stream, its source's state (and last group of pictures, if kept).
    pub(super) sources: Vec<SourceInfo>,
    pub(super) channels: [Option<ChannelId>; 2],
    pub(super) pending_reliable: VecDeque<Vec<u8>>,
    pub(super) next_timeout: Instant,
    /// Remote: per receiver, the last RTCP figures its device reported (`quality`).
    pub(super) egress: Vec<Option<super::quality::Rtcp>>,
    /// The audio lines, if the device offered any.
    pub(super) audio: Option<super::audio::AudioLines>,
    /// Its datagrams to and from the socket (FEC under DTLS/SRTP when both sides speak
    /// it).
    pub(super) wire: Wire,
    /// The FEC figures already added to the metrics.
    pub(super) fec_counted: FecStats,
}

/// What polling one peer hands back to the hub, to act on once the peer is released.
pub(super) enum PeerEvent {
    Open(ChannelId, String),
    Data(ChannelId, Vec<u8>),
    Media(Box<MediaData>),
    /// A remote's receiver asks for a keyframe.
    Keyframe(Mid),
    /// A remote's receiver reported (RTCP) on what it gets.
    Egress(Mid, super::quality::Rtcp),
    Dead(&'static str),
}

impl Peer {
    /// Writes queued reliable control messages while the SCTP buffer takes them.
    pub(super) fn flush_reliable(&mut self) {
        let reliable = self.channels[Qos::Reliable as usize];
        flush_reliable(&mut self.rtc, reliable, &mut self.pending_reliable);
    }
}

impl Hub {
    pub(super) fn accept_offer(
        &mut self,
        conn: ConnId,
        sdp: &str,
        video_mids: &[String],
        audio: super::AudioOffer,
        fec: bool,
        bond: Option<BondOffer>,
    ) -> Result<(String, Option<BondGrant>), (ErrorCode, String)> {
        let bond_mode = match &bond {
            None => None,
            Some(b) if (2..=bond::MAX_PATHS as u8).contains(&b.paths) => {
                Some(bond::Mode::from_number(b.mode).ok_or((
                    ErrorCode::BadRequest,
                    format!("media_trans_mode must be 1, 2 or 3, got {}", b.mode),
                ))?)
            }
            Some(b) => {
                return Err((
                    ErrorCode::BadRequest,
                    format!("a bond has 2..={} paths, not {}", bond::MAX_PATHS, b.paths),
                ))
            }
        };
        if video_mids.len() > MAX_VIDEO_MLINES {
            return Err((
                ErrorCode::BadRequest,
                format!("at most {MAX_VIDEO_MLINES} video streams"),
            ));
        }
        if audio.mids.iter().any(|m| video_mids.contains(m)) {
            return Err((
                ErrorCode::BadRequest,
                "an m-line cannot be both a video and an audio line".to_string(),
            ));
        }
        let audio = super::audio::AudioLines::from_offer(audio)?;
        let client = self
            .clients
            .get_mut(&conn)
            .ok_or((ErrorCode::NotLoggedIn, "not logged in".to_string()))?;
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| (ErrorCode::BadRequest, format!("bad SDP offer: {e}")))?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(true)
            // H.265 reaches remotes that negotiate it (cameras in passthrough).
            .enable_h265(true)
            // Opus with in-band FEC, forwarded as it comes: the receiving device's jitter
            // buffer reorders (str0m would hold packets back after a loss).
            .enable_opus(true, false)
            // G.711 from GB28181 cameras, as they send it.
            .enable_pcma(true, false)
            .enable_pcmu(true, false)
            .set_reordering_size_audio(0)
            .set_extension_map(extensions(client.info.role))
            // Receivers' RTCP figures feed their quality scores.
            .set_stats_interval(Some(std::time::Duration::from_secs(1)))
            .build(now);
        let cand = Candidate::host(self.candidate_addr, "udp")
            .map_err(|e| (ErrorCode::Internal, format!("candidate: {e}")))?;
        rtc.add_local_candidate(cand);
        let answer = catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer)))
            .map_err(|_| {
                (
                    ErrorCode::BadRequest,
                    "SDP offer could not be handled".to_string(),
                )
            })?
            .map_err(|e| (ErrorCode::BadRequest, format!("SDP offer refused: {e}")))?;
        // A new offer replaces the previous peer connection (media reconnect).
        let mids: Vec<Mid> = video_mids.iter().map(|m| Mid::from(m.as_str())).collect();
        let (packets, age) = fieldlink_media::RTX_CACHE;
        for mid in &mids {
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(*mid, None) {
                tx.set_rtx_cache(packets, age, Some(fieldlink_media::RTX_RATIO_CAP));
            }
        }
        self.peers.insert(conn);
        self.timers.schedule(conn, now);
        let mut wire = Wire::new(fec);
        let mut grant = None;
        self.by_bond.retain(|_, c| *c != conn);
        if let Some(mode) = bond_mode {
            let mut session = rand::random::<u32>();
            while session == 0 || self.by_bond.contains_key(&session) {
                session = rand::random();
            }
            let key: [u8; bond::KEY_LEN] = rand::random();
            let b = bond::Bond::server(session, key, mode, rand::random(), now);
            wire = wire.with_bond(fieldlink_rtc::BondLink::server(b));
            self.by_bond.insert(session, conn);
            grant = Some(BondGrant {
                session,
                key: key.iter().map(|b| format!("{b:02x}")).collect(),
                addr: self.candidate_addr,
            });
        }
        client.peer = Some(Box::new(Peer {
            rtc,
            egress: vec![None; mids.len()],
            audio,
            keyframe_asked: vec![None; mids.len()],
            sources: mids.iter().map(|_| SourceInfo::default()).collect(),
            video_seq: mids
                .iter()
                .map(|_| u64::from(rand::random::<u16>()))
                .collect(),
            video_mids: mids,
            channels: [None, None],
            pending_reliable: VecDeque::new(),
            next_timeout: now,
            wire,
            fec_counted: FecStats::default(),
        }));
        self.by_addr.retain(|_, c| *c != conn);
        let n = video_mids.len();
        match client.info.role {
            Role::Remote => {
                // A new peer connection starts every receiver on a keyframe again.
                client.receivers.resize(n, Receiver::default());
                for r in &mut client.receivers {
                    r.live = false;
                    r.backlog.clear();
                }
                let wanted: Vec<(DeviceId, u32)> = client
                    .receivers
                    .iter()
                    .filter_map(|r| r.want.clone())
                    .collect();
                for (f, s) in wanted {
                    self.ask_keyframe(&f, s);
                }
            }
            Role::Field => {
                let device = client.info.device.clone();
                self.field_video_ready(&device);
            }
        }
        Ok((answer.to_sdp_string(), grant))
    }

    pub(super) fn on_udp(&mut self, data: &[u8], source: SocketAddr) {
        if data.first() == Some(&fec::MAGIC) {
            return self.on_fec_udp(data, source);
        }
        if data.first() == Some(&bond::wire::MAGIC) {
            return self.on_bond_udp(data, source);
        }
        let Some(input) =
            fieldlink_rtc::udp_input(Instant::now(), data, source, self.candidate_addr)
        else {
            return;
        };
        let conn = match self.by_addr.get(&source) {
            Some(c) if self.peer_accepts(*c, &input) => Some(*c),
            _ => {
                let found = self
                    .clients
                    .iter()
                    .find(|(_, c)| c.peer.as_ref().is_some_and(|p| p.rtc.accepts(&input)))
                    .map(|(id, _)| *id);
                if let Some(c) = found {
                    self.by_addr.insert(source, c);
                }
                found
            }
        };
        let Some(conn) = conn else {
            return;
        };
        if let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
            fieldlink_rtc::handle_input(&mut peer.rtc, input);
        }
        self.poll(conn);
    }

    /// An FEC datagram: from a peer whose address ICE (never wrapped) already told.
    fn on_fec_udp(&mut self, data: &[u8], source: SocketAddr) {
        let Some(conn) = self.by_addr.get(&source).copied() else {
            return;
        };
        let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
            return;
        };
        let now = Instant::now();
        peer.wire.receive(
            &mut peer.rtc,
            now,
            data,
            source,
            self.candidate_addr,
            None,
            |_| {},
        );
        self.poll(conn);
    }

    /// A bond datagram: its session says whose; the bond admits or knows its address.
    fn on_bond_udp(&mut self, data: &[u8], source: SocketAddr) {
        let Some(conn) = bond::wire::session_of(data).and_then(|s| self.by_bond.get(&s).copied())
        else {
            return;
        };
        let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
            return;
        };
        let socket = &self.socket;
        peer.wire.receive(
            &mut peer.rtc,
            Instant::now(),
            data,
            source,
            self.candidate_addr,
            None,
            |r| {
                let _ = socket.try_send_to(r, source);
            },
        );
        self.poll(conn);
    }

    /// Adds what each peer's FEC did since the last call to the metrics.
    pub(super) fn count_fec(&mut self) {
        for c in self.clients.values_mut() {
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            let Some(now) = peer.wire.fec_stats() else {
                continue;
            };
            let was = std::mem::replace(&mut peer.fec_counted, now);
            let m = &self.metrics;
            m.fec_parity_sent
                .inc_by(now.parity_sent.saturating_sub(was.parity_sent));
            m.fec_recovered
                .inc_by(now.recovered.saturating_sub(was.recovered));
            m.fec_unrecovered
                .inc_by(now.unrecovered.saturating_sub(was.unrecovered));
        }
    }

    pub(super) fn peer_accepts(&self, conn: ConnId, input: &Input) -> bool {
        self.clients
            .get(&conn)
            .and_then(|c| c.peer.as_ref())
            .is_some_and(|p| p.rtc.accepts(input))
    }

    pub(super) fn drive_timeouts(&mut self) {
        let now = Instant::now();
        let paced = self.drive_paced(now);
        self.poll_all(paced);
        let due = self.timers.due(now);
        for conn in &due {
            if let Some(peer) = self.clients.get_mut(conn).and_then(|c| c.peer.as_mut()) {
                fieldlink_rtc::handle_input(&mut peer.rtc, Input::Timeout(now));
            }
        }
        self.poll_all(due);
    }

    /// Drains one peer's output: sends datagrams, then handles its events (which may write
    /// to other peers, which are then polled in turn).
    pub(super) fn poll(&mut self, first: ConnId) {
        self.poll_all(vec![first]);
    }

    /// Drains the output of several peers, then handles their events in order; the peers
    /// these write to (a frame's receivers) are the next batch. A batch of two or more is
    /// polled on the media threads at once: polling (packetizing, encrypting, sending) is
    /// the costly part of forwarding and touches nothing but its own peer, while every
    /// event is still handled here, one after another, so the hub's state keeps one owner
    /// and one order.
    pub(super) fn poll_all(&mut self, mut batch: Vec<ConnId>) {
        let mut polls = 0;
        while !batch.is_empty() {
            polls += batch.len();
            if polls > 10_000 {
                tracing::error!("poll loop did not settle");
                break;
            }
            let mut next = Vec::new();
            for (conn, events) in self.poll_batch(&batch) {
                if let Some(p) = self.clients.get(&conn).and_then(|c| c.peer.as_ref()) {
                    self.timers.schedule(conn, p.next_timeout);
                }
                for ev in events {
                    self.on_peer_event(conn, ev, &mut next);
                }
            }
            batch = next;
        }
    }

    /// Polls each peer of `batch` (on the media threads when there are several), returning
    /// their events in the batch's order.
    fn poll_batch(&mut self, batch: &[ConnId]) -> Vec<(ConnId, Vec<PeerEvent>)> {
        let Some(pool) = self.pool.as_ref().filter(|_| batch.len() >= PARALLEL_FROM) else {
            return batch.iter().map(|c| (*c, self.poll_one(*c))).collect();
        };
        // The peers leave their clients for the fork-join and are back before any other
        // hub code runs.
        let mut taken: Vec<(ConnId, Box<Peer>)> = batch
            .iter()
            .filter_map(|c| Some((*c, self.clients.get_mut(c)?.peer.take()?)))
            .collect();
        let (socket, out) = (&self.socket, &self.out);
        let events: Vec<Vec<PeerEvent>> = pool.install(|| {
            use rayon::prelude::*;
            taken
                .par_iter_mut()
                .map(|(_, p)| poll_peer(p, socket, out))
                .collect()
        });
        taken
            .into_iter()
            .zip(events)
            .map(|((conn, peer), events)| {
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.peer = Some(peer);
                }
                (conn, events)
            })
            .collect()
    }

    /// Acts on one event of peer `conn`; peers it writes to are added to `next`.
    fn on_peer_event(&mut self, conn: ConnId, ev: PeerEvent, next: &mut Vec<ConnId>) {
        match ev {
            PeerEvent::Open(cid, label) => {
                if let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
                    if let Some(q) = Qos::from_label(&label) {
                        peer.channels[q as usize] = Some(cid);
                    }
                }
            }
            PeerEvent::Data(cid, data) => {
                let qos = self
                    .clients
                    .get(&conn)
                    .and_then(|c| c.peer.as_ref())
                    .and_then(|p| p.channels.iter().position(|c| *c == Some(cid)));
                let Some(qos) = qos.map(|i| if i == 0 { Qos::Lossy } else { Qos::Reliable }) else {
                    return;
                };
                for target in self.on_control(conn, qos, data) {
                    if !next.contains(&target) {
                        next.push(target);
                    }
                }
            }
            PeerEvent::Media(d) => {
                let targets = if self.is_audio(conn, d.mid) {
                    self.on_audio(conn, d)
                } else {
                    self.on_media(conn, d)
                };
                for target in targets {
                    if !next.contains(&target) {
                        next.push(target);
                    }
                }
            }
            PeerEvent::Egress(mid, rtcp) => {
                if let Some(p) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
                    if let Some(i) = p.video_mids.iter().position(|m| *m == mid) {
                        // A second without a receiver report keeps the last figures.
                        let last = p.egress[i].unwrap_or_default();
                        p.egress[i] = Some(super::quality::Rtcp {
                            loss_pct: rtcp.loss_pct.or(last.loss_pct),
                            rtt_ms: rtcp.rtt_ms.or(last.rtt_ms),
                            jitter_ms: rtcp.jitter_ms.or(last.jitter_ms),
                            ..rtcp
                        });
                        // The stream's counters only grow (a new stream starts
                        // a new peer, whose first figures are all new).
                        self.metrics
                            .packets_forwarded
                            .inc_by(rtcp.packets.saturating_sub(last.packets));
                        self.metrics
                            .nacks_received
                            .inc_by(rtcp.nacks.saturating_sub(last.nacks));
                    }
                }
            }
            PeerEvent::Keyframe(mid) => {
                let want = self.clients.get(&conn).and_then(|c| {
                    let fd = c.peer.as_ref()?.video_mids.iter().position(|m| *m == mid)?;
                    c.receivers.get(fd)?.want.clone()
                });
                if let Some((f, s)) = want {
                    self.ask_keyframe(&f, s);
                }
            }
            PeerEvent::Dead(why) => {
                if let Some(c) = self.clients.get_mut(&conn) {
                    tracing::info!(device = %c.info.device, why, "media connection closed");
                    c.peer = None;
                }
                self.peers.remove(&conn);
                self.timers.remove(conn);
                self.by_addr.retain(|_, c| *c != conn);
                self.by_bond.retain(|_, c| *c != conn);
                self.warn(
                    conn,
                    ErrorCode::MediaNotReady,
                    format!("media connection closed: {why}"),
                );
            }
        }
    }

    /// Runs the shared driving loop on one peer ([`poll_peer`]).
    pub(super) fn poll_one(&mut self, conn: ConnId) -> Vec<PeerEvent> {
        let (socket, out) = (&self.socket, &self.out);
        match self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) {
            Some(peer) => poll_peer(peer, socket, out),
            None => Vec::new(),
        }
    }
}

/// The RTP header extensions a peer of `role` may negotiate: str0m's standard map and
/// abs-capture-time, less transport-wide sequence numbers towards a remote. Those exist
/// for congestion feedback, and only a field device's estimator uses it; the hub has none,
/// so a remote's feedback on the video it receives (~19 datagrams a second per receiver,
/// each a round of the hub's loop and a decryption; `fieldlink-bench sfu`) was work for
/// nothing, and each packet to it carried the extension (3 bytes and padding).
fn extensions(role: Role) -> ExtensionMap {
    let mut map = ExtensionMap::empty();
    for (id, ext) in [
        (1, Extension::AudioLevel),
        (2, Extension::AbsoluteSendTime),
        (3, Extension::TransportSequenceNumber),
        (4, Extension::RtpMid),
        (10, Extension::RtpStreamId),
        (11, Extension::RepairedRtpStreamId),
        (13, Extension::VideoOrientation),
        (
            fieldlink_rtc::EXT_ABS_CAPTURE_TIME,
            Extension::AbsoluteCaptureTime,
        ),
    ] {
        if ext != Extension::TransportSequenceNumber || role == Role::Field {
            map.set(id, ext);
        }
    }
    map
}

/// Runs the shared driving loop on one peer: datagrams out on the hub's socket, the
/// events the hub acts on collected for [`Hub::poll_all`]. Touches nothing but the peer
/// (and the socket, which any thread may send on), so peers can be polled in parallel.
fn poll_peer(
    peer: &mut Peer,
    socket: &tokio::net::UdpSocket,
    out: &super::udp_out::UdpOut,
) -> Vec<PeerEvent> {
    let mut events = Vec::new();
    let mut batch = out.batch(socket);
    peer.flush_reliable();
    let reliable = peer.channels[Qos::Reliable as usize];
    let pending = &mut peer.pending_reliable;
    let polled = fieldlink_rtc::drive_wire(
        &mut peer.rtc,
        &mut peer.wire,
        |data, dest, _path| batch.push(data, dest),
        |rtc, e| {
            match e {
                Event::ChannelOpen(cid, label) => {
                    if let Some(mut ch) = rtc.channel(cid) {
                        ch.set_buffered_amount_low_threshold(LOSSY_BUFFER_LIMIT / 2);
                    }
                    events.push(PeerEvent::Open(cid, label));
                }
                Event::ChannelData(d) => events.push(PeerEvent::Data(d.id, d.data)),
                Event::MediaData(d) => events.push(PeerEvent::Media(Box::new(d))),
                Event::KeyframeRequest(r) => events.push(PeerEvent::Keyframe(r.mid)),
                Event::MediaEgressStats(s) => {
                    let rtcp = super::quality::Rtcp {
                        loss_pct: s.loss.map(|l| f64::from(l) * 100.0),
                        rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                        // RFC 3550 jitter, in the 90 kHz video clock.
                        jitter_ms: s.remote.map(|r| f64::from(r.jitter) / 90.0),
                        packets: s.packets,
                        nacks: s.nacks,
                    };
                    events.push(PeerEvent::Egress(s.mid, rtcp));
                }
                Event::ChannelBufferedAmountLow(_) => flush_reliable(rtc, reliable, pending),
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    rtc.disconnect();
                }
                _ => {}
            }
            ControlFlow::Continue(())
        },
    );
    batch.flush();
    match polled {
        Polled::Timeout(t) => peer.next_timeout = t,
        Polled::Stopped => {}
        Polled::Ended(Ended::Closed) => events.push(PeerEvent::Dead("peer connection ended")),
        Polled::Ended(Ended::Error(_)) => events.push(PeerEvent::Dead("WebRTC error")),
        Polled::Ended(Ended::Panic) => events.push(PeerEvent::Dead("WebRTC panic")),
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::{Direction, MediaKind};

    /// The answer str0m makes to a device's offer (video and audio lines, Chrome's
    /// extension ids) when the hub's side has the extensions of `role`.
    fn answer_to_a(role: Role) -> String {
        let now = Instant::now();
        let mut device = Rtc::builder().build(now);
        let mut change = device.sdp_api();
        change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, _) = change.apply().expect("an offer");
        let mut hub = Rtc::builder()
            .set_ice_lite(true)
            .set_extension_map(extensions(role))
            .build(now);
        hub.sdp_api()
            .accept_offer(offer)
            .expect("accepted")
            .to_sdp_string()
    }

    #[test]
    fn only_a_field_device_gets_transport_wide_sequence_numbers() {
        const TWCC: &str = "transport-wide-cc-extensions";
        let field = answer_to_a(Role::Field);
        let remote = answer_to_a(Role::Remote);
        assert!(field.contains(TWCC), "{field}");
        assert!(!remote.contains(TWCC), "{remote}");
        // The rest is negotiated for both (the mid, which demultiplexes the lines).
        for sdp in [&field, &remote] {
            assert!(sdp.contains("urn:ietf:params:rtp-hdrext:sdes:mid"), "{sdp}");
        }
    }
}
