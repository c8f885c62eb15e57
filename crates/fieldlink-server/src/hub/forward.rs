//! Media forwarding: a field device's (or external source's) frame goes to every receiver
//! that wants its stream, starting on a keyframe, with timestamps rewritten so a receiver's
//! output is continuous across switches. Asks sources for keyframes (once per stream
//! until answered, again after [`KEYFRAME_REQUEST_RETRY`]), and starts receivers of
//! passthrough cameras from the cached group of pictures, paced. Does not change which
//! stream a receiver wants, except to fail one that cannot take the stream's codec.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::PayloadParams;
use str0m::media::{Frequency, KeyframeRequestKind, MediaData};
use str0m::rtp::{AbsCaptureTime, ExtensionValues, RtpWrite};

use fieldlink_media::packetize::packetize;
use fieldlink_media::VideoCodec;
use fieldlink_proto::{DeviceId, Role, StreamState};

use super::gop::CachedFrame;
use super::peer::Peer;
use super::receivers::stream_state;
use super::Arrived;
use super::{ConnId, Hub};

/// A keyframe request still unanswered after this long is sent again; before that, new
/// requests for the same stream wait for the same keyframe.
pub(super) const KEYFRAME_REQUEST_RETRY: Duration = Duration::from_millis(300);
/// How much of a replayed group of pictures is written at once, and how often: about
/// 32 Mbit/s, so a receiver busy decoding does not overflow its socket buffer.
const REPLAY_BYTES: usize = 16 * 1024;
const REPLAY_EVERY: Duration = Duration::from_millis(4);

pub(super) fn codec_of(p: &PayloadParams) -> VideoCodec {
    match p.spec().codec {
        str0m::format::Codec::H265 => VideoCodec::H265,
        _ => VideoCodec::H264,
    }
}

/// Told with `playing` on a stream whose source cannot make keyframes: after a loss
/// that repair cannot fix, the picture waits for the camera's next keyframe.
const PASSTHROUGH_NOTE: &str =
    "camera passthrough: keyframes come only at the camera's own interval (no keyframe on request)";

/// Why a receiver cannot play a stream in `codec`, and what to do about it; `external`:
/// the stream is a GB28181 camera's channel, else a field device's camera in passthrough.
pub(super) fn codec_refused(codec: VideoCodec, external: bool) -> String {
    if external {
        return format!(
            "the camera sends {} and this receiver did not negotiate it: receive with \
             H.265 enabled (SDK h265, CLI --h265), or set the camera's channel to H.264",
            codec.name()
        );
    }
    format!(
        "the stream is {} (a camera in passthrough, protocol \"rtsp_enc\") and this \
         receiver did not negotiate it: set the stream's protocol to \"normal\" to \
         transcode to H.264, or receive with H.265 enabled",
        codec.name()
    )
}

/// Whether receiver `fd` of `peer` negotiated the codec of `params` (a receiver whose
/// media is not set up yet counts as taking it: it is checked again later).
pub(super) fn takes(peer: &mut Peer, fd: usize, params: PayloadParams) -> bool {
    let Some(mid) = peer.video_mids.get(fd).copied() else {
        return true;
    };
    peer.rtc
        .writer(mid)
        .is_none_or(|w| receiver_pt(&w, params).is_some())
}

/// [`takes`] for frames of an external source (no payload parameters, just a codec).
fn takes_external(peer: &mut Peer, fd: usize, codec: VideoCodec) -> bool {
    let Some(mid) = peer.video_mids.get(fd).copied() else {
        return true;
    };
    peer.rtc
        .writer(mid)
        .is_none_or(|w| external_pt(&w, codec).is_some())
}

/// The receiver's payload type for frames with the source's `params`. str0m's
/// `match_params` looks at the server's codec list, not at what this m-line negotiated:
/// a remote that offered no H.265 must not be sent H.265.
pub(super) fn receiver_pt(
    writer: &str0m::media::Writer,
    params: PayloadParams,
) -> Option<str0m::media::Pt> {
    let pt = writer.match_params(params)?;
    writer.payload_params().any(|p| p.pt() == pt).then_some(pt)
}

/// The most bytes of one RTP payload: what str0m's own packetizer allows at its default
/// MTU (the datagram target less the SRTP tag, down to a whole SRTP block), so forwarded
/// packets are the size they were when str0m packetized each receiver's frames.
pub(super) const RTP_PAYLOAD_MAX: usize = {
    const SRTP_TAG: usize = 16;
    let rtp = str0m::DATAGRAM_MTU_TARGET - SRTP_TAG;
    rtp - rtp % 16
};

/// A frame's RTP payloads ([`packetize`]), made once however many receivers take it.
pub(super) fn payloads_of(data: &[u8], codec: VideoCodec) -> Vec<Arc<[u8]>> {
    packetize(codec, data, RTP_PAYLOAD_MAX)
}

/// Writes one frame, as its RTP `payloads`, to receiver `fd` of `peer` at `out_t` (90 kHz);
/// false if it could not (no such m-line, media not set up, not a codec the receiver
/// negotiated, or nothing to write). `source`: a WebRTC source's parameters; without them
/// the frame is an external source's in `codec`.
///
/// The payloads are shared by every receiver of the frame (packetizing once per frame, not
/// once per receiver, was the largest user-space cost of forwarding); each receiver's
/// stream numbers them in its own sequence ([`Peer::video_seq`]).
pub(super) fn write_frame(
    peer: &mut Peer,
    fd: usize,
    payloads: &[Arc<[u8]>],
    out_t: u64,
    source: Option<&(PayloadParams, Instant, Option<AbsCaptureTime>)>,
    codec: VideoCodec,
) -> bool {
    let Some(mid) = peer.video_mids.get(fd).copied() else {
        return false;
    };
    let pt = {
        let Some(writer) = peer.rtc.writer(mid) else {
            return false;
        };
        match source {
            Some((params, _, _)) => receiver_pt(&writer, *params),
            None => external_pt(&writer, codec),
        }
    };
    let (Some(pt), Some(seq)) = (pt, peer.video_seq.get_mut(fd)) else {
        return false;
    };
    if payloads.is_empty() {
        return false;
    }
    let (arrived, capture) = match source {
        Some((_, at, act)) => (*at, *act),
        None => (Instant::now(), None),
    };
    let mut api = peer.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    // RTP time is the low 32 bits of the 90 kHz output time.
    let time = out_t as u32;
    let last = payloads.len() - 1;
    for (i, p) in payloads.iter().enumerate() {
        let mut w = RtpWrite::new(pt, (*seq).into(), time, arrived, p.clone())
            .marker(i == last)
            .nackable(true);
        if i == 0 {
            // The capture time goes with a frame's first packet, as str0m's packetizer
            // puts it.
            if let Some(act) = capture {
                w = w.ext_vals(ExtensionValues {
                    abs_capture_time: Some(act),
                    ..Default::default()
                });
            }
        }
        tx.write_rtp(w);
        *seq += 1;
    }
    true
}

/// The receiver's own payload type for `codec` (H.264: packetization mode 1 preferred),
/// for frames from sources that are not WebRTC peers.
pub(super) fn external_pt(
    writer: &str0m::media::Writer,
    codec: VideoCodec,
) -> Option<str0m::media::Pt> {
    let codec = match codec {
        VideoCodec::H264 => str0m::format::Codec::H264,
        VideoCodec::H265 => str0m::format::Codec::H265,
    };
    let of_codec = || writer.payload_params().filter(|p| p.spec().codec == codec);
    of_codec()
        .find(|p| p.spec().format.packetization_mode == Some(1))
        .or_else(|| of_codec().next())
        .map(|p| p.pt())
}

/// A frame's codec and whether it is a keyframe, found once per frame (a NAL scan).
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameKind {
    pub codec: VideoCodec,
    pub keyframe: bool,
}

impl FrameKind {
    pub fn of(codec: VideoCodec, data: &[u8]) -> FrameKind {
        FrameKind {
            codec,
            keyframe: codec.is_keyframe(data),
        }
    }
}

impl Hub {
    /// Receivers still waiting for a keyframe ask again: a PLI can be lost on the way, and
    /// `ask_keyframe` spaces the requests by `KEYFRAME_REQUEST_RETRY`.
    pub(super) fn retry_keyframes(&mut self) {
        let now = Instant::now();
        if self.keyframe_rescan.is_some_and(|t| t > now) {
            return;
        }
        let mut waiting: Vec<(DeviceId, u32)> = self
            .remotes
            .iter()
            .filter_map(|c| self.clients.get(c))
            .flat_map(|c| c.receivers.iter())
            .filter(|r| !r.live)
            .filter_map(|r| r.want.clone())
            .collect();
        waiting.sort();
        waiting.dedup();
        self.keyframe_rescan = (!waiting.is_empty()).then(|| now + KEYFRAME_REQUEST_RETRY / 3);
        for (f, s) in waiting {
            self.ask_keyframe(&f, s);
        }
    }

    /// Asks a field device's stream for a keyframe, unless one is already on its way.
    pub(super) fn ask_keyframe(&mut self, field: &DeviceId, stream: u32) {
        let Some(conn) = self.by_device.get(field).copied() else {
            return;
        };
        let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
            return;
        };
        let i = stream as usize;
        if peer.sources.get(i).is_some_and(|s| !s.keyframe_on_request) {
            return; // it cannot make one (new receivers start from its cached group)
        }
        let (Some(mid), Some(asked)) = (
            peer.video_mids.get(i).copied(),
            peer.keyframe_asked.get_mut(i),
        ) else {
            return;
        };
        let now = Instant::now();
        if asked.is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_RETRY) {
            return;
        }
        if asked.is_some() {
            tracing::debug!(%field, stream, "keyframe request repeated");
        }
        if let Some(mut w) = peer.rtc.writer(mid) {
            if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                *asked = Some(now);
                self.metrics.keyframe_requests.inc();
                if !self.dirty.contains(&conn) {
                    self.dirty.push(conn);
                }
            }
        }
    }

    /// A frame from a field device's WebRTC peer: answers its keyframe request, if any,
    /// keeps it for new receivers if its source cannot make keyframes, and forwards it.
    pub(super) fn on_media(&mut self, from: ConnId, d: Box<MediaData>) -> Vec<ConnId> {
        let Some((field, stream)) = self.clients.get(&from).and_then(|c| {
            if c.info.role != Role::Field {
                return None;
            }
            let s = c
                .peer
                .as_ref()?
                .video_mids
                .iter()
                .position(|m| *m == d.mid)?;
            Some((c.info.device.clone(), s as u32))
        }) else {
            return Vec::new();
        };
        let kind = FrameKind::of(codec_of(&d.params), &d.data);
        let keyframe = kind.keyframe;
        let in_t = d.time.rebase(Frequency::NINETY_KHZ).numer();
        if let Some(peer) = self.clients.get_mut(&from).and_then(|c| c.peer.as_mut()) {
            let i = stream as usize;
            if keyframe {
                // The request, if any, is answered.
                if let Some(a) = peer.keyframe_asked.get_mut(i) {
                    *a = None;
                }
            }
            if let Some(src) = peer.sources.get_mut(i).filter(|s| !s.keyframe_on_request) {
                src.gop.push(
                    keyframe,
                    CachedFrame {
                        data: d.data.clone(),
                        in_t,
                        params: d.params,
                    },
                );
            }
        }
        let source = Some((d.params, d.network_time, d.ext_vals.abs_capture_time));
        self.forward(&field, stream, &d.data, in_t, source, kind)
    }

    /// Forwards one frame of a field device's stream to every receiver that wants it. A
    /// receiver starts on a keyframe; its timestamps continue from what it played before.
    /// `source`: the WebRTC source's payload parameters, arrival time and capture time
    /// (external sources have none: the receiver's own payload type for `codec` is used).
    pub(super) fn forward(
        &mut self,
        field: &DeviceId,
        stream: u32,
        data: &Arc<[u8]>,
        in_t: u64,
        source: Option<(PayloadParams, Instant, Option<AbsCaptureTime>)>,
        kind: FrameKind,
    ) -> Vec<ConnId> {
        let FrameKind { codec, keyframe } = kind;
        let members: Vec<ConnId> = self
            .fields
            .get(field)
            .map(|fc| {
                fc.members()
                    .iter()
                    .filter_map(|m| self.by_device.get(m).copied())
                    .collect()
            })
            .unwrap_or_default();
        let want = Some((field.clone(), stream));
        let passthrough = self
            .by_device
            .get(field)
            .and_then(|c| self.clients.get(c))
            .and_then(|c| c.peer.as_ref())
            .and_then(|p| p.sources.get(stream as usize))
            .is_some_and(|s| !s.keyframe_on_request);
        let note = passthrough.then_some(PASSTHROUGH_NOTE);
        if let Some(c) = self
            .by_device
            .get(field)
            .and_then(|c| self.clients.get_mut(c))
        {
            let i = stream as usize;
            if c.frames_in.len() <= i && i < super::quality::MAX_COUNTED_STREAMS {
                c.frames_in.resize(i + 1, Arrived::default());
            }
            if let Some(n) = c.frames_in.get_mut(i) {
                n.frames += 1;
                n.bytes += data.len() as u64;
            }
        }
        let mut written = Vec::new();
        let mut msgs = Vec::new();
        let mut payloads = None;
        for conn in members {
            let Some(c) = self.clients.get_mut(&conn) else {
                continue;
            };
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if r.want != want {
                    continue;
                }
                // Every receiver takes H.264; an external source's H.265 is checked.
                let negotiated = match &source {
                    Some((params, _, _)) => takes(peer, fd, *params),
                    None => codec == VideoCodec::H264 || takes_external(peer, fd, codec),
                };
                if !negotiated {
                    // The receiver did not negotiate the stream's codec: it fails once,
                    // with what to do about it.
                    r.want = None;
                    r.live = false;
                    r.backlog.clear();
                    let why = codec_refused(codec, source.is_none());
                    let m = stream_state(
                        fd as u32,
                        field.clone(),
                        stream,
                        StreamState::Failed,
                        Some(&why),
                    );
                    msgs.push((conn, m));
                    continue;
                }
                if !r.live {
                    if !keyframe {
                        continue;
                    }
                    r.live = true;
                    // Continue one frame interval after the last output, whatever the source.
                    r.offset = r
                        .last_out
                        .map_or(0, |l| l.wrapping_add(3000).wrapping_sub(in_t));
                    msgs.push((
                        conn,
                        stream_state(fd as u32, field.clone(), stream, StreamState::Playing, note),
                    ));
                }
                let out_t = in_t.wrapping_add(r.offset) & 0xFFFF_FFFF_FFFF;
                r.last_out = Some(out_t);
                if !r.backlog.is_empty() {
                    if r.backlog.len() >= 2 * super::gop::MAX_GOP_FRAMES {
                        // It does not drain (the receiver's writer is gone?): start over
                        // at the next keyframe rather than grow.
                        r.backlog.clear();
                        r.live = false;
                        continue;
                    }
                    if let Some((params, _, _)) = &source {
                        let f = CachedFrame {
                            data: data.clone(),
                            in_t,
                            params: *params,
                        };
                        r.backlog.push_back((f, out_t));
                    }
                    continue;
                }
                let payloads = payloads.get_or_insert_with(|| payloads_of(data, codec));
                if write_frame(peer, fd, payloads, out_t, source.as_ref(), codec) {
                    r.sent += 1;
                    self.metrics.frames_forwarded.inc();
                    self.metrics.bytes_forwarded.inc_by(data.len() as u64);
                    if !written.contains(&conn) {
                        written.push(conn);
                    }
                }
            }
        }
        for (conn, m) in msgs {
            self.send(conn, m);
        }
        written
    }

    /// Starts receiver `fd` of `conn` at once from the cached frames of a stream whose
    /// source cannot make keyframes (a camera in passthrough). The cached frames go out
    /// back to back, one 90 kHz tick apart, so a player shows the newest at once instead
    /// of replaying the group at its pace; live frames continue after them.
    pub(super) fn start_from_gop(
        &mut self,
        conn: ConnId,
        fd: usize,
        field: &DeviceId,
        stream: u32,
    ) {
        let frames: Vec<CachedFrame> = match self
            .by_device
            .get(field)
            .and_then(|f| self.clients.get(f))
            .and_then(|c| c.peer.as_ref())
            .and_then(|p| p.sources.get(stream as usize))
        {
            Some(src) if !src.keyframe_on_request => src.gop.frames().to_vec(),
            _ => return,
        };
        let Some(last) = frames.last() else {
            return;
        };
        let last_in = last.in_t;
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let (Some(peer), Some(r)) = (c.peer.as_mut(), c.receivers.get_mut(fd)) else {
            return;
        };
        if !takes(peer, fd, last.params) {
            return; // not this receiver's codec: the next frame fails it
        }
        let base = r.last_out.map_or(0, |l| l.wrapping_add(3000));
        let mut out_t = base;
        r.backlog.clear();
        for (i, f) in frames.into_iter().enumerate() {
            out_t = base.wrapping_add(i as u64) & 0xFFFF_FFFF_FFFF;
            r.backlog.push_back((f, out_t));
        }
        r.live = true;
        r.last_out = Some(out_t);
        r.offset = out_t.wrapping_sub(last_in);
        let m = stream_state(
            fd as u32,
            field.clone(),
            stream,
            StreamState::Playing,
            Some(PASSTHROUGH_NOTE),
        );
        self.send(conn, m);
        self.replay_due = Some(Instant::now());
    }

    /// Writes the next part of every receiver's backlog (see [`Receiver::backlog`]).
    pub(super) fn drain_backlogs(&mut self) {
        let now = Instant::now();
        if self.replay_due.is_none_or(|t| t > now) {
            return;
        }
        self.replay_due = None;
        for (conn, c) in self.clients.iter_mut() {
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                let mut budget = REPLAY_BYTES;
                while budget > 0 {
                    let Some((f, out_t)) = r.backlog.pop_front() else {
                        break;
                    };
                    budget = budget.saturating_sub(f.data.len());
                    let codec = codec_of(&f.params);
                    if write_frame(
                        peer,
                        fd,
                        &payloads_of(&f.data, codec),
                        out_t,
                        Some(&(f.params, now, None)),
                        codec,
                    ) {
                        r.sent += 1;
                        self.metrics.frames_forwarded.inc();
                        self.metrics.bytes_forwarded.inc_by(f.data.len() as u64);
                    }
                    if !self.dirty.contains(conn) {
                        self.dirty.push(*conn);
                    }
                }
                if !r.backlog.is_empty() {
                    self.replay_due = Some(now + REPLAY_EVERY);
                }
            }
        }
    }
}
