//! The device's one WebRTC peer connection to the server (str0m, full ICE, the device
//! offers): two data channels, one per qos, and a video m-line per stream or receiver.
//! Thin I/O around str0m's sans-IO `Rtc`, driven by the loop shared with the server
//! ([`fieldlink_rtc::drive`]); this file keeps only the device's own event handling.

use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;

use fieldlink_rtc::Wire;
use str0m::bwe::{Bitrate, BweKind};
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::rtp::{AbsCaptureTime, Extension};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};
use tokio::net::UdpSocket;

use fieldlink_media::VideoCodec;
use fieldlink_proto::{ErrorCode, Qos};
use fieldlink_rtc::{Ended, Polled, EXT_ABS_CAPTURE_TIME};

use crate::{Result, SdkError};

mod pacing;

pub(crate) enum PeerEvent {
    /// Both data channels are open.
    Ready,
    Data(Qos, Vec<u8>),
    /// Remote: a video frame on receiver `index`.
    Frame {
        index: usize,
        codec: VideoCodec,
        data: Vec<u8>,
        rtp_time: u64,
        capture: Option<SystemTime>,
        /// False when packets before this frame were lost for good.
        contiguous: bool,
    },
    /// Audio on line `line` (one heard party), 48 kHz RTP time.
    Audio {
        line: usize,
        codec: crate::audio::AudioCodec,
        rtp_time: u64,
        data: Vec<u8>,
    },
    /// Field: the server asks stream `index` for a keyframe.
    KeyframeRequest(usize),
    /// Field: the send-side bandwidth estimate (TWCC), bits per second.
    Estimate(u64),
    /// Field: send statistics of stream `index` (once a second, from receiver reports).
    EgressStats {
        index: usize,
        loss: Option<f32>,
        rtt: Option<Duration>,
    },
    /// Remote: receive statistics of receiver `index` (once a second).
    Stats {
        index: usize,
        loss: Option<f32>,
        rtt: Option<Duration>,
        nacks: u64,
        packets: u64,
    },
    Dead(String),
}

/// Receive buffer the peer's UDP socket asks for.
const RECV_BUFFER: usize = 2 << 20;

/// Field: where the bandwidth estimate starts, per video stream (bit/s). libWebRTC's
/// default: the estimator's first probes (3× and 6× it) find a faster link within a
/// second, while a narrow one is not flooded at the start. (800 kbit/s with its probes
/// overflowed a 400 kbit/s uplink so that the first keyframe never got through.)
pub(crate) const INITIAL_BPS: u64 = 300_000;
/// Field: the rate the estimator probes towards, per video stream (bit/s).
pub(crate) const DESIRED_BPS: u64 = 800_000;

/// The video m-lines that send: all of a field device's, none of a remote's.
fn sent(sends_video: bool, video_mids: &[Mid]) -> &[Mid] {
    if sends_video {
        video_mids
    } else {
        &[]
    }
}

pub(crate) struct Peer {
    rtc: Rtc,
    pub socket: UdpSocket,
    /// SPEC §9: the sockets of the other `network_bind` addresses (path 1, 2, ...; path 0
    /// is `socket`), and the mode asked for. Empty: one path, no bond.
    paths: Vec<UdpSocket>,
    bond_mode: Option<fieldlink_proto::bond::Mode>,
    /// Bytes carried and sent per path at the last [`Peer::path_figures`].
    shares_since: (u64, Vec<u64>),
    local: SocketAddr,
    channels: [Option<ChannelId>; 2],
    pending: Option<SdpPendingOffer>,
    pub next_timeout: Instant,
    /// Datagrams to and from the socket (FEC when the server agreed).
    wire: Wire,
    ready: bool,
    /// Video m-lines: a field device's streams (sendonly) or a remote's receivers (recvonly).
    video_mids: Vec<Mid>,
    /// The m-lines send (a field device).
    sends_video: bool,
    /// Audio m-lines (Opus): the first also sends when the device does.
    audio_mids: Vec<Mid>,
    /// Per receiver: H.265 parameter sets str0m handed over on their own (an aggregation
    /// packet before the picture's fragments ends its "frame"), with their RTP time, to
    /// go before the picture they belong to.
    h265_head: Vec<Option<(u64, Vec<u8>)>>,
    /// Sees every datagram (`DeviceConfig::packet_observer`).
    pub observer: Option<crate::PacketObserver>,
    /// Field: whether video goes through str0m's pacer now ([`Peer::pace_for`]).
    paced: Option<bool>,
    /// Field: when a queue was last seen on the path ([`pacing::PACE_AFTER_QUEUE`]).
    queued: Option<Instant>,
}

/// The audio m-lines a device offers: `send` on the first, `receive` on all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AudioLines {
    pub send: bool,
    pub receive: bool,
}

impl AudioLines {
    fn count(self) -> usize {
        match (self.send, self.receive) {
            (_, true) => crate::audio::AUDIO_LINES,
            (true, false) => 1,
            (false, false) => 0,
        }
    }
}

/// What [`Peer::new`] offers: the SDP and the mids of its video and audio m-lines.
pub(crate) struct Offer {
    /// Several paths (SPEC §9): the bond asked for.
    pub bond: Option<fieldlink_proto::signal::BondOffer>,
    pub sdp: String,
    pub video_mids: Vec<String>,
    pub audio_mids: Vec<String>,
}

impl Peer {
    /// Binds a UDP socket on `ip` and makes the SDP offer, with `videos` video m-lines
    /// (`send`: sendonly streams of a field device, else recvonly receivers of a remote).
    /// Returns the offer and the video mids in order. A field device offers H.264 and
    /// H.265 (cameras in passthrough); a remote offers H.265 only with `h265`.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        ip: IpAddr,
        network_bind: &[IpAddr],
        mode: fieldlink_proto::bond::Mode,
        videos: u32,
        send: bool,
        h265: bool,
        audio: AudioLines,
    ) -> Result<(Peer, Offer)> {
        // SPEC §9: the first `network_bind` address is str0m's; every further one is a
        // path of the bond. None: the address the signalling connection uses.
        let socket = bind_udp(
            network_bind.first().copied().unwrap_or(ip),
            !network_bind.is_empty(),
        )
        .await?;
        let mut paths = Vec::new();
        for a in network_bind
            .iter()
            .skip(1)
            .take(fieldlink_proto::bond::MAX_PATHS - 1)
        {
            paths.push(bind_udp(*a, true).await?);
        }
        let bond = (!paths.is_empty()).then(|| fieldlink_proto::signal::BondOffer {
            paths: paths.len() as u8 + 1,
            mode: mode as u8,
        });
        let local = socket
            .local_addr()
            .map_err(|e| SdkError::new(ErrorCode::MediaNotReady, e.to_string()))?;
        let now = Instant::now();
        // Faster consent checks than the defaults (3 s max RTO, 9 retransmits, ~20 s):
        // an operator should learn of a dead media path in about 5 s.
        let mut config = Rtc::builder();
        config.set_max_stun_rto(Duration::from_secs(1));
        config.set_max_stun_retransmits(6);
        let mut rtc = config
            .clear_codecs()
            .enable_h264(true)
            .enable_h265(send || h265)
            .enable_opus(audio.count() > 0, false)
            // GB28181 cameras' audio reaches receivers as G.711.
            .enable_pcma(audio.receive, false)
            .enable_pcmu(audio.receive, false)
            // The jitter buffer reorders; str0m would hold packets back after a loss.
            .set_reordering_size_audio(0)
            .set_extension(EXT_ABS_CAPTURE_TIME, Extension::AbsoluteCaptureTime)
            .set_stats_interval((videos > 0).then_some(Duration::from_secs(1)));
        if send && videos > 0 {
            // Congestion control for what this device sends: TWCC feedback from the server
            // drives the estimate that the sources follow.
            rtc = rtc.enable_bwe(Some(Bitrate::bps(u64::from(videos) * INITIAL_BPS)));
        }
        let mut rtc = rtc.build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| {
            SdkError::new(ErrorCode::MediaNotReady, format!("candidate {local}: {e}"))
        })?;
        rtc.add_local_candidate(cand);
        let mut api = rtc.sdp_api();
        for qos in [Qos::Lossy, Qos::Reliable] {
            let (ordered, reliability) = match qos {
                Qos::Lossy => (false, Reliability::MaxRetransmits { retransmits: 0 }),
                Qos::Reliable => (true, Reliability::Reliable),
            };
            api.add_channel_with_config(ChannelConfig {
                label: qos.label().to_string(),
                ordered,
                reliability,
                ..Default::default()
            });
        }
        let dir = if send {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let video_mids: Vec<Mid> = (0..videos)
            .map(|i| {
                api.add_media(
                    MediaKind::Video,
                    dir,
                    Some(format!("fieldlink-{i}")),
                    Some(format!("video-{i}")),
                    None,
                )
            })
            .collect();
        let audio_mids: Vec<Mid> = (0..audio.count())
            .map(|i| {
                let dir = match (i == 0 && audio.send, audio.receive) {
                    (true, true) => Direction::SendRecv,
                    (true, false) => Direction::SendOnly,
                    _ => Direction::RecvOnly,
                };
                api.add_media(
                    MediaKind::Audio,
                    dir,
                    Some("fieldlink-audio".into()),
                    Some(format!("audio-{i}")),
                    None,
                )
            })
            .collect();
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| SdkError::new(ErrorCode::Internal, "no SDP changes to offer"))?;
        Ok((
            Peer {
                rtc,
                socket,
                bond_mode: bond.is_some().then_some(mode),
                paths,
                shares_since: (0, Vec::new()),
                local,
                channels: [None, None],
                pending: Some(pending),
                next_timeout: now,
                wire: Wire::new(false),
                ready: false,
                video_mids: video_mids.clone(),
                sends_video: send,
                h265_head: vec![None; video_mids.len()],
                observer: None,
                audio_mids: audio_mids.clone(),
                paced: None,
                queued: None,
            },
            Offer {
                bond,
                sdp: offer.to_sdp_string(),
                video_mids: video_mids.iter().map(|m| m.to_string()).collect(),
                audio_mids: audio_mids.iter().map(|m| m.to_string()).collect(),
            },
        ))
    }

    /// Takes the server's answer; `fec`: the server agreed to wrap datagrams in FEC;
    /// `bond`: it carries the connection over this device's paths.
    pub fn accept_answer(
        &mut self,
        sdp: &str,
        fec: bool,
        bond: Option<fieldlink_proto::signal::BondGrant>,
    ) -> Result<()> {
        self.wire = Wire::new(fec);
        match (bond, self.bond_mode) {
            (Some(g), Some(mode)) => {
                use fieldlink_proto::bond::Bond;
                let key = unhex_key(&g.key).ok_or_else(|| {
                    SdkError::new(
                        ErrorCode::BadRequest,
                        "the server's bond key is not 64 hex digits",
                    )
                })?;
                let ids: Vec<u8> = (0..=self.paths.len() as u8).collect();
                let b = Bond::device(g.session, key, mode, &ids, Instant::now());
                let mut link = fieldlink_rtc::BondLink::device(b, g.addr);
                let (mut audio, mut repair) = (Vec::new(), Vec::new());
                for p in self.rtc.codec_config().params() {
                    if matches!(p.spec().codec, Codec::Opus | Codec::PCMA | Codec::PCMU) {
                        audio.push(*p.pt());
                    }
                    repair.extend(p.resend().map(|r| *r));
                }
                link.set_payload_types(audio, repair);
                self.wire = Wire::new(fec).with_bond(link);
            }
            (None, Some(_)) => tracing::warn!(
                "the server did not agree to carry media over several paths: using the first only"
            ),
            _ => {}
        }
        let answer = SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| SdkError::new(ErrorCode::BadRequest, format!("bad SDP answer: {e}")))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| SdkError::new(ErrorCode::Internal, "answer without offer"))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| {
                SdkError::new(ErrorCode::BadRequest, format!("SDP answer refused: {e}"))
            })?;
        let (packets, age) = fieldlink_media::RTX_CACHE;
        for mid in sent(self.sends_video, &self.video_mids) {
            if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                tx.set_rtx_cache(packets, age, Some(fieldlink_media::RTX_RATIO_CAP));
            }
        }
        self.paced = None;
        // At the start the sources are held at the estimator's starting point.
        self.pace_for(true);
        Ok(())
    }

    /// Each path's figures, with its share of the bytes sent since the last call.
    pub fn path_figures(&mut self) -> Option<Vec<crate::PathFigures>> {
        let stats = self.wire.bond()?.bond.stats();
        let locals: Vec<IpAddr> = std::iter::once(&self.socket)
            .chain(&self.paths)
            .filter_map(|s| s.local_addr().ok().map(|a| a.ip()))
            .collect();
        let carried = stats
            .carried_bytes
            .saturating_sub(self.shares_since.0)
            .max(1);
        let mut figures: Vec<crate::PathFigures> = stats
            .paths
            .iter()
            .map(|p| {
                let before = self
                    .shares_since
                    .1
                    .get(usize::from(p.id))
                    .copied()
                    .unwrap_or(0);
                crate::PathFigures {
                    local: locals
                        .get(usize::from(p.id))
                        .copied()
                        .unwrap_or(self.local.ip()),
                    stats: *p,
                    share: p.sent_bytes.saturating_sub(before) as f64 / carried as f64,
                }
            })
            .collect();
        // In path order: the bond lists paths as they were admitted, either may be first
        // (a test that read the list by position once watched the wrong path).
        figures.sort_by_key(|f| f.stats.id);
        let mut sent = vec![0; locals.len()];
        for p in &stats.paths {
            if let Some(s) = sent.get_mut(usize::from(p.id)) {
                *s = p.sent_bytes;
            }
        }
        self.shares_since = (stats.carried_bytes, sent);
        Some(figures)
    }

    /// One datagram from the socket of `path` (0: the first).
    pub fn handle_datagram(&mut self, data: &[u8], source: SocketAddr, path: u8) {
        if let Some(o) = &self.observer {
            if let Some(d) = fieldlink_rtc::fec::carried(data) {
                (o.0)(crate::PacketDirection::Received, d);
            }
        }
        let Peer {
            rtc,
            wire,
            socket,
            paths,
            local,
            ..
        } = self;
        wire.receive(rtc, Instant::now(), data, source, *local, Some(path), |r| {
            let s = if path == 0 {
                &*socket
            } else {
                &paths[usize::from(path) - 1]
            };
            let _ = s.try_send_to(r, source);
        });
    }

    /// The next datagram on any of the device's sockets: its length, source and path.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u8)> {
        if self.paths.is_empty() {
            let (n, src) = self.socket.recv_from(buf).await?;
            return Ok((n, src, 0));
        }
        std::future::poll_fn(|cx| {
            for (i, s) in std::iter::once(&self.socket).chain(&self.paths).enumerate() {
                let mut rb = tokio::io::ReadBuf::new(buf);
                if let std::task::Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                    return std::task::Poll::Ready(r.map(|src| (rb.filled().len(), src, i as u8)));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    pub fn handle_timeout(&mut self) {
        fieldlink_rtc::handle_input(&mut self.rtc, Input::Timeout(Instant::now()));
    }

    /// Writes one control frame. Lossy frames that do not fit are dropped (never late);
    /// a reliable frame that does not fit is an error for the caller.
    pub fn write(&mut self, qos: Qos, frame: &[u8]) -> Result<()> {
        let cid = self.channels[qos as usize].ok_or(ErrorCode::MediaNotReady)?;
        let mut ch = self.rtc.channel(cid).ok_or(ErrorCode::MediaNotReady)?;
        match ch.write(true, frame) {
            Ok(true) => Ok(()),
            Ok(false) if qos == Qos::Lossy => Ok(()),
            Ok(false) => Err(SdkError::new(
                ErrorCode::Congested,
                "reliable send buffer full",
            )),
            Err(e) => Err(SdkError::new(ErrorCode::MediaNotReady, e.to_string())),
        }
    }

    /// Field: tells the estimator the range it may probe in (bits per second).
    pub fn set_bitrate_range(&mut self, min_bps: u64, desired_bps: u64) {
        self.rtc
            .bwe()
            .set_bitrate(Bitrate::bps(min_bps), Bitrate::bps(desired_bps));
    }

    /// Field: a keyframe is being written: what video goes out in the next 20 ms counts
    /// as its packets for the bond (unpaced they all leave in this round; paced, the
    /// rest goes as video).
    pub fn keyframe_sent(&mut self) {
        self.wire
            .keyframe_until(Instant::now() + Duration::from_millis(20));
    }

    /// Field: sends one encoded frame on stream `index` (frames that cannot be sent are
    /// dropped: video never waits).
    pub fn write_video(
        &mut self,
        index: usize,
        codec: VideoCodec,
        data: &[u8],
        rtp_time: u64,
        capture: SystemTime,
    ) -> Result<()> {
        let mid = *self
            .video_mids
            .get(index)
            .ok_or(ErrorCode::StreamOutOfRange)?;
        let writer = self.rtc.writer(mid).ok_or(ErrorCode::MediaNotReady)?;
        let want = match codec {
            VideoCodec::H264 => Codec::H264,
            VideoCodec::H265 => Codec::H265,
        };
        let of_codec = || writer.payload_params().filter(|p| p.spec().codec == want);
        let pt = of_codec()
            .find(|p| want != Codec::H264 || p.spec().format.packetization_mode == Some(1))
            .or_else(|| of_codec().next())
            .map(|p| p.pt())
            .ok_or_else(|| {
                SdkError::new(
                    ErrorCode::MediaNotReady,
                    format!("no {} payload type negotiated", codec.name()),
                )
            })?;
        writer
            .abs_capture_time(AbsCaptureTime {
                capture_time: capture,
                clock_offset: None,
            })
            .write(
                pt,
                Instant::now(),
                MediaTime::from_90khz(rtp_time),
                data.to_vec(),
            )
            .map_err(|e| SdkError::new(ErrorCode::MediaNotReady, e.to_string()))
    }

    /// Sends one Opus packet (10 ms) on the first audio line; a packet that cannot be
    /// sent is dropped (audio never waits).
    pub fn write_audio(&mut self, rtp_time: u64, data: Vec<u8>) -> Result<()> {
        let mid = *self.audio_mids.first().ok_or(ErrorCode::AudioOff)?;
        let writer = self.rtc.writer(mid).ok_or(ErrorCode::MediaNotReady)?;
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .ok_or_else(|| SdkError::new(ErrorCode::MediaNotReady, "no Opus negotiated"))?;
        writer
            .write(
                pt,
                Instant::now(),
                MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
                data,
            )
            .map_err(|e| SdkError::new(ErrorCode::MediaNotReady, e.to_string()))
    }

    /// Remote: asks the server for a keyframe on receiver `index` (after a loss).
    pub fn request_keyframe(&mut self, index: usize) {
        if let Some(mid) = self.video_mids.get(index).copied() {
            if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    /// Runs the shared driving loop: sends datagrams, returns the events this device acts
    /// on, updates `next_timeout`.
    pub fn poll(&mut self) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        let Peer {
            rtc,
            socket,
            paths,
            channels,
            ready,
            video_mids,
            audio_mids,
            next_timeout,
            h265_head,
            observer,
            wire,
            ..
        } = self;
        let polled = fieldlink_rtc::drive_wire(
            rtc,
            wire,
            |data, dest, path| {
                if let Some(o) = observer {
                    if let Some(d) = fieldlink_rtc::fec::carried(data) {
                        (o.0)(crate::PacketDirection::Sent, d);
                    }
                }
                let s = match path {
                    Some(p @ 1..) => paths.get(usize::from(p) - 1).unwrap_or(socket),
                    _ => &*socket,
                };
                let _ = s.try_send_to(data, dest);
            },
            |rtc, e| {
                match e {
                    Event::ChannelOpen(cid, label) => {
                        if let Some(q) = Qos::from_label(&label) {
                            channels[q as usize] = Some(cid);
                        }
                        if !*ready && channels.iter().all(Option::is_some) {
                            *ready = true;
                            events.push(PeerEvent::Ready);
                        }
                    }
                    Event::ChannelData(d) => {
                        if let Some(i) = channels.iter().position(|c| *c == Some(d.id)) {
                            let q = if i == 0 { Qos::Lossy } else { Qos::Reliable };
                            events.push(PeerEvent::Data(q, d.data));
                        }
                    }
                    Event::MediaData(d) if audio_mids.contains(&d.mid) => {
                        let codec = match d.params.spec().codec {
                            Codec::Opus => Some(crate::audio::AudioCodec::Opus),
                            Codec::PCMA => Some(crate::audio::AudioCodec::Pcma),
                            Codec::PCMU => Some(crate::audio::AudioCodec::Pcmu),
                            _ => None,
                        };
                        let line = audio_mids.iter().position(|m| *m == d.mid);
                        if let (Some(line), Some(codec)) = (line, codec) {
                            events.push(PeerEvent::Audio {
                                line,
                                codec,
                                rtp_time: d.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer(),
                                data: d.data.to_vec(),
                            });
                        }
                    }
                    Event::MediaData(d) => {
                        if let Some(index) = video_mids.iter().position(|m| *m == d.mid) {
                            let codec = match d.params.spec().codec {
                                Codec::H265 => VideoCodec::H265,
                                _ => VideoCodec::H264,
                            };
                            let rtp_time = d.time.rebase(Frequency::NINETY_KHZ).numer();
                            let mut data = d.data.to_vec();
                            if codec == VideoCodec::H265 {
                                let Some(head) = h265_head.get_mut(index) else {
                                    return ControlFlow::Continue(());
                                };
                                if !fieldlink_media::annexb::h265_has_picture(&data)
                                    && data.len() <= 64 * 1024
                                {
                                    *head = Some((rtp_time, data));
                                    return ControlFlow::Continue(());
                                }
                                if let Some((t, mut ps)) = head.take() {
                                    if t == rtp_time {
                                        ps.append(&mut data);
                                        data = ps;
                                    }
                                }
                            }
                            events.push(PeerEvent::Frame {
                                index,
                                codec,
                                data,
                                rtp_time,
                                capture: d.ext_vals.abs_capture_time.map(|a| a.capture_time),
                                contiguous: d.contiguous,
                            });
                        }
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        events.push(PeerEvent::Estimate(estimate.as_u64()));
                    }
                    Event::MediaIngressStats(st) => {
                        if let Some(index) = video_mids.iter().position(|m| *m == st.mid) {
                            events.push(PeerEvent::Stats {
                                index,
                                loss: st.loss,
                                rtt: st.rtt,
                                nacks: st.nacks,
                                packets: st.packets,
                            });
                        }
                    }
                    Event::MediaEgressStats(st) => {
                        if let Some(index) = video_mids.iter().position(|m| *m == st.mid) {
                            events.push(PeerEvent::EgressStats {
                                index,
                                loss: st.loss,
                                rtt: st.rtt,
                            });
                        }
                    }
                    Event::KeyframeRequest(r) => {
                        if let Some(index) = video_mids.iter().position(|m| *m == r.mid) {
                            events.push(PeerEvent::KeyframeRequest(index));
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        events.push(PeerEvent::Dead("media connection lost (ICE)".into()));
                        rtc.disconnect();
                        return ControlFlow::Break(());
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            },
        );
        match polled {
            Polled::Timeout(t) => *next_timeout = t,
            Polled::Stopped => {}
            Polled::Ended(Ended::Closed) => {
                events.push(PeerEvent::Dead("media connection closed".into()))
            }
            Polled::Ended(Ended::Error(e)) => {
                events.push(PeerEvent::Dead(format!("WebRTC error: {e}")))
            }
            Polled::Ended(Ended::Panic) => events.push(PeerEvent::Dead("WebRTC panic".into())),
        }
        events
    }
}

/// A UDP socket on `ip` (any port), with the receive buffer the peer wants. `chosen`: the
/// address comes from `network_bind`, and a failure says what to check.
async fn bind_udp(ip: IpAddr, chosen: bool) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.map_err(|e| {
        let why = match (chosen, e.kind()) {
            (true, std::io::ErrorKind::AddrNotAvailable) => format!(
                "network_bind {ip}: the address is not on any interface of this machine ({e})"
            ),
            (true, std::io::ErrorKind::PermissionDenied) => format!(
                "network_bind {ip}: binding is not permitted ({e}); the process needs \
                 CAP_NET_BIND_SERVICE (or CAP_NET_RAW where a security policy asks for it)"
            ),
            (true, _) => format!("network_bind {ip}: cannot bind a UDP socket: {e}"),
            (false, _) => format!("bind UDP on {ip}: {e}"),
        };
        SdkError::new(ErrorCode::MediaNotReady, why)
    })?;
    // Two keyframes with their parity at 30 % loss arrive as a burst of 200+ datagrams:
    // more than the default ~200 KiB receive buffer holds if the task is late to read
    // (the kernel caps this at twice net.core.rmem_max).
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!("UDP receive buffer: {e}");
    }
    Ok(socket)
}

/// A 32-byte key from 64 hex digits.
fn unhex_key(s: &str) -> Option<[u8; fieldlink_proto::bond::KEY_LEN]> {
    let mut key = [0; fieldlink_proto::bond::KEY_LEN];
    if s.len() != key.len() * 2 {
        return None;
    }
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}
