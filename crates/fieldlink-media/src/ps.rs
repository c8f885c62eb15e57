//! MPEG-2 Program Stream (ISO/IEC 13818-1) as GB28181 carries it over RTP: a muxer for the
//! simulated device and a tolerant, bounded demuxer for real ones. No I/O.
//!
//! One access unit is muxed as: pack header (`00 00 01 BA`), on keyframes a system header
//! (`BB`) and program stream map (`BC`), then PES packets (`E0` video / `C0` audio) of at
//! most 65 535 bytes each, the first with the PTS.

/// Stream types in the program stream map (SPEC §10).
pub mod stream_type {
    pub const H264: u8 = 0x1B;
    pub const H265: u8 = 0x24;
    pub const AAC: u8 = 0x0F;
    pub const G711A: u8 = 0x90;
    pub const G711U: u8 = 0x91;
}

const VIDEO_ID: u8 = 0xE0;
const AUDIO_ID: u8 = 0xC0;
/// Largest PES payload per packet (the 16-bit length also covers 8 header bytes).
const MAX_PES_PAYLOAD: usize = 65_535 - 8;
/// Largest access unit the demuxer assembles.
pub const MAX_AU: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsError {
    #[error("access unit larger than 4 MiB")]
    TooLarge,
}

fn pts_bytes(marker: u8, pts: u64) -> [u8; 5] {
    let p = pts & 0x1_FFFF_FFFF;
    [
        (marker << 4) | (((p >> 30) as u8 & 0x07) << 1) | 1,
        (p >> 22) as u8,
        ((((p >> 15) & 0x7F) as u8) << 1) | 1,
        (p >> 7) as u8,
        (((p & 0x7F) as u8) << 1) | 1,
    ]
}

/// A PTS/DTS field starts with `001x` or `0011`/`0010` and has its marker bit set.
fn pts_start(b: Option<&u8>) -> bool {
    b.is_some_and(|b| matches!(b >> 4, 2 | 3) && b & 1 == 1)
}

/// A PES header's flags (the PTS/DTS byte), header data length, and where its optional
/// fields start. Standard: `00 00 01 id len16 10xxxxxx flags hlen`. Some devices (the
/// `gb28181-rs` crate) leave the first flags byte out: `00 00 01 id len16 flags hlen`;
/// that form is taken when it shows a well-formed PTS and the standard reading shows none.
fn pes_header(p: &[u8]) -> Option<(u8, u8, usize)> {
    let (b6, b7, b8) = (*p.get(6)?, *p.get(7)?, *p.get(8)?);
    let standard_pts = b7 & 0x80 != 0 && pts_start(p.get(9));
    let shifted_pts = b6 & 0x80 != 0 && b6 & 0x3F == 0 && pts_start(p.get(8));
    if shifted_pts && !standard_pts {
        Some((b6, b7, 8))
    } else {
        Some((b7, b8, 9))
    }
}

fn read_pts(b: &[u8]) -> Option<u64> {
    if b.len() < 5 {
        return None;
    }
    Some(
        (u64::from(b[0] >> 1 & 0x07) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

fn pack_header(scr: u64) -> Vec<u8> {
    let s = scr & 0x1_FFFF_FFFF;
    let mux_rate: u32 = 6106; // units of 50 bytes/s: about 2.4 Mbit/s, informative only
    let mut v = vec![0, 0, 1, 0xBA];
    v.push(0x44 | (((s >> 30) as u8 & 0x07) << 3) | ((s >> 28) as u8 & 0x03));
    v.push((s >> 20) as u8);
    v.push(((((s >> 15) & 0x1F) as u8) << 3) | 0x04 | ((s >> 13) as u8 & 0x03));
    v.push((s >> 5) as u8);
    v.push((((s & 0x1F) as u8) << 3) | 0x04); // SCR extension 0
    v.push(0x01);
    v.push((mux_rate >> 14) as u8);
    v.push((mux_rate >> 6) as u8);
    v.push(((mux_rate as u8 & 0x3F) << 2) | 0x03);
    v.push(0xF8); // no stuffing
    v
}

fn system_header(has_audio: bool) -> Vec<u8> {
    let rate_bound: u32 = 6106;
    let mut body = vec![
        0x80 | ((rate_bound >> 15) as u8 & 0x7F),
        (rate_bound >> 7) as u8,
        ((rate_bound as u8 & 0x7F) << 1) | 1,
        u8::from(has_audio) << 2, // audio_bound, fixed 0, CSPS 0
        0xE1,                     // audio/video lock, marker, video_bound 1
        0xFF,                     // packet rate restriction, reserved
    ];
    // P-STD buffer bounds: video 1024 × 400 bytes, audio 128 × 32 bytes.
    body.extend_from_slice(&[VIDEO_ID, 0xE0 | 0x20 | 0x01, 0x90]);
    if has_audio {
        body.extend_from_slice(&[AUDIO_ID, 0xC0, 0x20]);
    }
    let mut v = vec![0, 0, 1, 0xBB];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend(body);
    v
}

/// CRC-32/MPEG-2, as the program stream map ends with.
fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn program_stream_map(video_type: u8, audio_type: Option<u8>) -> Vec<u8> {
    let mut es = vec![video_type, VIDEO_ID, 0, 0];
    if let Some(a) = audio_type {
        es.extend_from_slice(&[a, AUDIO_ID, 0, 0]);
    }
    let mut body = vec![0xE0, 0xFF, 0, 0];
    body.extend_from_slice(&(es.len() as u16).to_be_bytes());
    body.extend(es);
    let len = (body.len() + 4) as u16;
    let mut v = vec![0, 0, 1, 0xBC];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend(body);
    let crc = crc32_mpeg(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

fn pes(stream_id: u8, pts: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let header_len = if pts.is_some() { 5 } else { 0 };
    let len = 3 + header_len + payload.len();
    let mut v = vec![0, 0, 1, stream_id];
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v.push(0x80);
    v.push(if pts.is_some() { 0x80 } else { 0 });
    v.push(header_len as u8);
    if let Some(p) = pts {
        v.extend_from_slice(&pts_bytes(0x2, p));
    }
    v.extend_from_slice(payload);
    v
}

/// Muxes one video access unit (Annex-B) with its 90 kHz PTS.
pub fn mux_video(au: &[u8], pts: u64, keyframe: bool, video_type: u8) -> Vec<u8> {
    mux_video_with_audio(au, pts, keyframe, video_type, None)
}

/// [`mux_video`] for a stream that also carries audio of `audio_type` (e.g.
/// [`stream_type::G711A`]): keyframes announce both in the system header and the map.
pub fn mux_video_with_audio(
    au: &[u8],
    pts: u64,
    keyframe: bool,
    video_type: u8,
    audio_type: Option<u8>,
) -> Vec<u8> {
    let mut out = pack_header(pts);
    if keyframe {
        out.extend(system_header(audio_type.is_some()));
        out.extend(program_stream_map(video_type, audio_type));
    }
    for (i, chunk) in au.chunks(MAX_PES_PAYLOAD).enumerate() {
        out.extend(pes(VIDEO_ID, (i == 0).then_some(pts), chunk));
    }
    out
}

/// Muxes one audio frame (e.g. 40 ms of G.711) in a pack of its own, with its 90 kHz PTS.
pub fn mux_audio(frame: &[u8], pts: u64) -> Vec<u8> {
    let mut out = pack_header(pts);
    for (i, chunk) in frame.chunks(MAX_PES_PAYLOAD).enumerate() {
        out.extend(pes(AUDIO_ID, (i == 0).then_some(pts), chunk));
    }
    out
}

/// A demuxed elementary-stream unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsFrame {
    /// From the program stream map (0 if none was seen yet: assume H.264).
    pub stream_type: u8,
    pub video: bool,
    pub pts: Option<u64>,
    pub data: Vec<u8>,
}

/// Streaming demuxer: feed whole RTP payloads or any chunks of the program stream; frames
/// come out when the next frame's PES (with a new PTS) or pack header begins. Unknown
/// packets are skipped by their length; garbage is skipped to the next start code.
#[derive(Debug, Default)]
pub struct Demuxer {
    buf: Vec<u8>,
    video_type: u8,
    audio_type: u8,
    current: Option<EsFrame>,
}

impl Demuxer {
    pub fn new() -> Demuxer {
        Demuxer::default()
    }

    /// The video stream type announced by the last program stream map.
    pub fn video_type(&self) -> u8 {
        self.video_type
    }

    pub fn push(&mut self, data: &[u8]) -> Result<Vec<EsFrame>, PsError> {
        if self.buf.len() + data.len() > MAX_AU * 2 {
            self.buf.clear();
            self.current = None;
            return Err(PsError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            // Find the next start code.
            let Some(off) = self.buf[pos..].windows(3).position(|w| w == [0, 0, 1]) else {
                pos = self.buf.len().saturating_sub(2);
                break;
            };
            let at = pos + off;
            let Some(&id) = self.buf.get(at + 3) else {
                pos = at;
                break;
            };
            let need = match id {
                0xBA => {
                    // Pack header: 14 bytes plus stuffing.
                    let Some(&b) = self.buf.get(at + 13) else {
                        pos = at;
                        break;
                    };
                    14 + usize::from(b & 0x07)
                }
                0xB9 => 4,
                0xBB..=0xFF => {
                    let (Some(&h), Some(&l)) = (self.buf.get(at + 4), self.buf.get(at + 5)) else {
                        pos = at;
                        break;
                    };
                    6 + usize::from(u16::from_be_bytes([h, l]))
                }
                _ => {
                    // Not a system start code: payload bytes of a broken stream; skip.
                    pos = at + 3;
                    continue;
                }
            };
            if self.buf.len() < at + need {
                pos = at;
                break;
            }
            let packet = self.buf[at..at + need].to_vec();
            pos = at + need;
            match id {
                0xBC => self.on_psm(&packet),
                0xC0..=0xEF => self.on_pes(&packet, id >= 0xE0, &mut out)?,
                _ => {}
            }
        }
        self.buf.drain(..pos.min(self.buf.len()));
        Ok(out)
    }

    /// Emits what is assembled (end of stream, or the caller knows the frame is complete,
    /// e.g. from the RTP marker bit).
    pub fn flush(&mut self) -> Option<EsFrame> {
        self.current.take().filter(|f| !f.data.is_empty())
    }

    fn on_psm(&mut self, p: &[u8]) {
        // 00 00 01 BC len(2) flags(2) info_len(2) info es_map_len(2) entries... crc(4)
        let Some(info_len) = p
            .get(8..10)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return;
        };
        let map_at = 10 + info_len;
        let Some(map_len) = p
            .get(map_at..map_at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return;
        };
        let mut i = map_at + 2;
        let end = (map_at + 2 + map_len).min(p.len().saturating_sub(4));
        while i + 4 <= end {
            let (t, id) = (p[i], p[i + 1]);
            let l = usize::from(u16::from_be_bytes([p[i + 2], p[i + 3]]));
            if (0xE0..=0xEF).contains(&id) {
                self.video_type = t;
            } else if (0xC0..=0xDF).contains(&id) {
                self.audio_type = t;
            }
            i += 4 + l;
        }
    }

    fn on_pes(&mut self, p: &[u8], video: bool, out: &mut Vec<EsFrame>) -> Result<(), PsError> {
        let Some((flags, hlen, opt_at)) = pes_header(p) else {
            return Ok(());
        };
        let payload_at = opt_at + usize::from(hlen);
        if payload_at > p.len() {
            return Ok(());
        }
        let pts = if flags & 0x80 != 0 {
            read_pts(&p[opt_at..])
        } else {
            None
        };
        let payload = &p[payload_at..];
        let same = self
            .current
            .as_ref()
            .is_some_and(|c| c.video == video && (pts.is_none() || pts == c.pts));
        if !same {
            if let Some(done) = self.current.take().filter(|f| !f.data.is_empty()) {
                out.push(done);
            }
            self.current = Some(EsFrame {
                stream_type: if video {
                    self.video_type
                } else {
                    self.audio_type
                },
                video,
                pts,
                data: Vec::new(),
            });
        }
        if let Some(c) = self.current.as_mut() {
            if c.data.len() + payload.len() > MAX_AU {
                self.current = None;
                return Err(PsError::TooLarge);
            }
            c.data.extend_from_slice(payload);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn au(n: usize, key: bool) -> Vec<u8> {
        let mut v = if key {
            vec![
                0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65,
            ]
        } else {
            vec![0, 0, 0, 1, 0x41]
        };
        v.extend((0..n).map(|i| (i % 251) as u8 | 1));
        v
    }

    #[test]
    fn pes_without_the_first_flags_byte_is_read_too() {
        // 00 00 01 E0 len | C0 (PTS+DTS) 0A | PTS=3600 | DTS=3600 | payload
        let pts = [0x31, 0x00, 0x01, 0x1C, 0x21];
        let dts = [0x11, 0x00, 0x01, 0x1C, 0x21];
        let payload = [0, 0, 0, 1, 0x65, 0xAA];
        let mut p = vec![0, 0, 1, 0xE0, 0, 0, 0xC0, 0x0A];
        p.extend_from_slice(&pts);
        p.extend_from_slice(&dts);
        p.extend_from_slice(&payload);
        let len = (p.len() - 6) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(pes_header(&p), Some((0xC0, 0x0A, 8)));
        assert_eq!(read_pts(&p[8..]), Some(3600));
        // The standard form is read as before.
        let mut q = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 0x0A];
        q.extend_from_slice(&pts);
        q.extend_from_slice(&dts);
        assert_eq!(pes_header(&q), Some((0xC0, 0x0A, 9)));
        let r = [0u8, 0, 1, 0xE0, 0, 3, 0x80, 0x00, 0x00];
        assert_eq!(pes_header(&r), Some((0x00, 0x00, 9)));
    }

    #[test]
    fn pts_round_trip() {
        for p in [0u64, 1, 90_000, 0x1_FFFF_FFFF, 123_456_789] {
            assert_eq!(read_pts(&pts_bytes(2, p)), Some(p));
        }
    }

    #[test]
    fn mux_then_demux_gives_the_same_access_units() {
        let frames = [
            (au(1000, true), 0u64),
            (au(300, false), 3600),
            (au(200_000, false), 7200),
            (au(50, true), 10_800),
        ];
        let mut stream = Vec::new();
        for (a, pts) in &frames {
            stream.extend(mux_video(a, *pts, a[4] == 0x67, stream_type::H264));
        }
        // Fed in odd-sized chunks, as RTP payloads would arrive.
        let mut d = Demuxer::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(1357) {
            got.extend(d.push(chunk).unwrap());
        }
        got.extend(d.flush());
        assert_eq!(got.len(), 4);
        for ((a, pts), f) in frames.iter().zip(&got) {
            assert_eq!(f.pts, Some(*pts));
            assert_eq!(&f.data, a);
            assert!(f.video);
            assert_eq!(f.stream_type, stream_type::H264);
        }
        assert_eq!(d.video_type(), stream_type::H264);
    }

    #[test]
    fn garbage_between_packets_is_skipped() {
        let mut stream = vec![0xde, 0xad, 0, 0, 1, 0x17, 0xbe, 0xef];
        stream.extend(mux_video(&au(100, true), 90, true, stream_type::H265));
        stream.extend(mux_video(&au(10, false), 180, false, stream_type::H265));
        let mut d = Demuxer::new();
        let mut got = d.push(&stream).unwrap();
        got.extend(d.flush());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].stream_type, stream_type::H265);
    }

    proptest! {
        #[test]
        fn demux_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut d = Demuxer::new();
            for c in &chunks {
                let _ = d.push(c);
            }
            let _ = d.flush();
        }

        #[test]
        fn demux_never_panics_on_start_codes(body in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xBAu8), Just(0xE0u8), Just(0xBCu8), any::<u8>()], 0..400)) {
            let mut d = Demuxer::new();
            let _ = d.push(&body);
            let _ = d.flush();
        }
    }
}
