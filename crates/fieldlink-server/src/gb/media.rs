//! One channel's media: RTP in (UDP, or RFC 4571 framing over TCP), reordering, PS demux,
//! and H.264 or H.265 access units (and G.711 audio frames) to the hub as an external
//! source's. A codec the SFU cannot forward fails the channel's receivers once, with the
//! reason (a receiver that did not negotiate H.265 is failed by the hub); silence for
//! [`MEDIA_TIMEOUT`] tells the SIP task to hang up. Knows nothing of SIP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink_gb28181::rtp::{Reorder, RtpPacket};
use fieldlink_gb28181::GbId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::Event;
use crate::hub::{Cmd, ConnId, HubHandle};
use crate::metrics::Metrics;

/// Where a call's frames go: stream `stream` of field client `conn`, and since when the
/// call was asked for (its INVITE), for the time to its first frame.
pub(super) struct Target {
    pub(super) hub: HubHandle,
    pub(super) conn: ConnId,
    pub(super) stream: u32,
    pub(super) metrics: Arc<Metrics>,
    pub(super) invited: Instant,
}

/// A channel that sends nothing for this long is hung up.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a channel's RTP comes from.
pub(super) enum MediaIn {
    Udp(UdpSocket),
    /// TCP passive: the device connects to us.
    Listen(tokio::net::TcpListener),
    /// TCP active: we connect to the device (address from its SDP answer).
    Dial(tokio::sync::oneshot::Receiver<SocketAddr>),
}

/// RTP packets -> reordered PS payloads -> H.264 or H.265 access units -> the hub.
struct Pipeline {
    hub: HubHandle,
    conn: ConnId,
    stream: u32,
    metrics: Arc<Metrics>,
    invited: Instant,
    reorder: Reorder,
    demux: fieldlink_media::ps::Demuxer,
    packets: u64,
    frames: u64,
    /// The stream's codec was refused (reported once).
    refused: bool,
    /// Its audio's codec is not forwarded (logged once).
    audio_refused: bool,
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
            for f in frames {
                if !f.video {
                    if !self.audio(f, ts).await {
                        return false;
                    }
                    continue;
                }
                self.frames += 1;
                if self.frames == 1 {
                    self.metrics
                        .invite_first_frame
                        .observe(self.invited.elapsed().as_secs_f64());
                    tracing::debug!(stream_type = f.stream_type, len = f.data.len(), head = ?&f.data[..f.data.len().min(8)], "GB28181 media: first frame");
                }
                let Some(codec) = video_codec(f.stream_type) else {
                    // A codec the SFU does not carry: say so once; the receivers fail and
                    // the call ends after the linger.
                    if !self.refused {
                        self.refused = true;
                        let reason = format!(
                            "the camera sends stream type 0x{:02X}; receivers get H.264 or H.265 only (set the camera's channel to H.264)",
                            f.stream_type
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
                };
                let cmd = Cmd::ExternalFrame {
                    conn: self.conn,
                    stream: self.stream,
                    codec,
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

    /// A camera's audio frame: G.711 goes to the hub as it is (its receivers negotiate
    /// PCMA/PCMU); other codecs (AAC) are not forwarded, said once in the log.
    async fn audio(&mut self, f: fieldlink_media::ps::EsFrame, ts: u64) -> bool {
        use fieldlink_media::ps::stream_type::{G711A, G711U};
        let alaw = match f.stream_type {
            G711A => true,
            G711U => false,
            t => {
                if !self.audio_refused {
                    self.audio_refused = true;
                    tracing::info!(
                        stream = self.stream,
                        "GB28181: audio of stream type 0x{t:02X} is not forwarded (G.711 only)"
                    );
                }
                return true;
            }
        };
        let cmd = Cmd::ExternalAudio {
            conn: self.conn,
            stream: self.stream,
            alaw,
            data: f.data,
            rtp_time: f.pts.unwrap_or(ts),
        };
        self.hub.send(cmd).await.is_ok()
    }
}

/// The codec of a PS video stream type the SFU carries (a stream with no map yet counts
/// as H.264, the GB28181 default).
fn video_codec(stream_type: u8) -> Option<fieldlink_media::VideoCodec> {
    use fieldlink_media::VideoCodec;
    match stream_type {
        0 | 0x1B => Some(VideoCodec::H264),
        0x24 => Some(VideoCodec::H265),
        _ => None,
    }
}

/// Receives one channel's RTP/PS (UDP, or RFC 4571 over TCP), demuxes H.264 or H.265 access units
/// and hands them to the hub as `to` says.
pub(super) async fn receive(media: MediaIn, to: Target, tx: mpsc::Sender<Event>, id: GbId) {
    let stream = to.stream;
    let mut p = Pipeline {
        hub: to.hub,
        conn: to.conn,
        stream,
        metrics: to.metrics,
        invited: to.invited,
        reorder: Reorder::new(64),
        demux: fieldlink_media::ps::Demuxer::new(),
        packets: 0,
        frames: 0,
        refused: false,
        audio_refused: false,
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
