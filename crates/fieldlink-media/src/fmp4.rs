//! Fragmented MP4 for H.264 recording (ISO/IEC 14496-12 and -15), with an Opus audio
//! track when there is audio ("Encapsulation of Opus in ISO Base Media File Format"),
//! no I/O.
//!
//! A recording is cut into segments; every segment is a complete file on its own
//! (`ftyp` + `moov`, then one `moof`/`mdat` per video frame, and one per ~100 ms of audio)
//! that starts on a keyframe, so each plays by itself and a crash loses at most the frame
//! being written.

use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{decode_nal, BitReader};

use crate::annexb::{h264_nal_type, nal_units};

/// 90 kHz, the RTP clock of video; sample times are in it.
pub const TIMESCALE: u32 = 90_000;
/// Duration given to a frame when the next one never came (25 fps).
const DEFAULT_DURATION: u32 = 3_600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mp4Error {
    #[error("SPS could not be parsed: {0}")]
    BadSps(String),
}

fn bx(typ: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v.extend_from_slice(typ);
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn full(typ: &[u8; 4], version: u8, flags: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut head = flags.to_be_bytes();
    head[0] = version;
    let mut all: Vec<&[u8]> = vec![&head];
    all.extend_from_slice(parts);
    bx(typ, &all)
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn matrix() -> Vec<u8> {
    MATRIX.iter().flat_map(|m| m.to_be_bytes()).collect()
}

/// Width and height from an SPS NAL unit (with its header byte).
pub fn sps_dimensions(sps: &[u8]) -> Result<(u32, u32), Mp4Error> {
    let rbsp = decode_nal(sps).map_err(|e| Mp4Error::BadSps(e.to_string()))?;
    let parsed = SeqParameterSet::from_bits(BitReader::new(&*rbsp))
        .map_err(|e| Mp4Error::BadSps(format!("{e:?}")))?;
    parsed
        .pixel_dimensions()
        .map_err(|e| Mp4Error::BadSps(format!("{e:?}")))
}

/// Audio packets gathered into one fragment (10 ms each: 100 ms).
const AUDIO_PER_FRAGMENT: usize = 10;
/// The audio track's clock: Opus is always 48 kHz.
pub const AUDIO_TIMESCALE: u32 = 48_000;
/// Opus pre-skip declared (libopus's encoder look-ahead at 48 kHz).
const OPUS_PRE_SKIP: u16 = 312;

/// `ftyp` + `moov` for one H.264 track.
pub fn init_segment(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, Mp4Error> {
    init_segment_av(sps, pps, None)
}

/// The Opus audio track's `trak` (track 2), `channels` 1 or 2.
fn opus_trak(channels: u16) -> Vec<u8> {
    let zero4 = [0u8; 4];
    let tkhd = full(
        b"tkhd",
        0,
        3,
        &[
            &zero4,
            &zero4,
            &2u32.to_be_bytes(),
            &zero4,
            &zero4,
            &[0u8; 8],
            &[0u8; 4],
            &[0x01, 0x00, 0, 0], // volume 1.0
            &matrix(),
            &zero4,
            &zero4,
        ],
    );
    let mdhd = full(
        b"mdhd",
        0,
        0,
        &[
            &zero4,
            &zero4,
            &AUDIO_TIMESCALE.to_be_bytes(),
            &zero4,
            &0x55C4u16.to_be_bytes(),
            &[0, 0],
        ],
    );
    let hdlr = full(
        b"hdlr",
        0,
        0,
        &[&zero4, b"soun", &[0u8; 12], b"fieldlink audio\0"],
    );
    let smhd = full(b"smhd", 0, 0, &[&zero4]);
    let dref = full(
        b"dref",
        0,
        0,
        &[&1u32.to_be_bytes(), &full(b"url ", 0, 1, &[])],
    );
    let dinf = bx(b"dinf", &[&dref]);
    let mut dops_body = vec![0, channels as u8];
    dops_body.extend_from_slice(&OPUS_PRE_SKIP.to_be_bytes());
    dops_body.extend_from_slice(&AUDIO_TIMESCALE.to_be_bytes());
    dops_body.extend_from_slice(&0i16.to_be_bytes());
    dops_body.push(0); // channel mapping family 0: mono or stereo
    let dops = bx(b"dOps", &[&dops_body]);
    let opus = bx(
        b"Opus",
        &[
            &[0u8; 6],
            &1u16.to_be_bytes(),
            &[0u8; 8],
            &channels.to_be_bytes(),
            &16u16.to_be_bytes(),
            &[0u8; 4],
            &(AUDIO_TIMESCALE << 16).to_be_bytes(),
            &dops,
        ],
    );
    let stsd = full(b"stsd", 0, 0, &[&1u32.to_be_bytes(), &opus]);
    let empty = |t: &[u8; 4]| full(t, 0, 0, &[&zero4]);
    let stsz = full(b"stsz", 0, 0, &[&zero4, &zero4]);
    let stbl = bx(
        b"stbl",
        &[
            &stsd,
            &empty(b"stts"),
            &empty(b"stsc"),
            &stsz,
            &empty(b"stco"),
        ],
    );
    let minf = bx(b"minf", &[&smhd, &dinf, &stbl]);
    let mdia = bx(b"mdia", &[&mdhd, &hdlr, &minf]);
    bx(b"trak", &[&tkhd, &mdia])
}

/// `ftyp` + `moov` for an H.264 track and, with `audio_channels`, an Opus track.
pub fn init_segment_av(
    sps: &[u8],
    pps: &[u8],
    audio_channels: Option<u16>,
) -> Result<Vec<u8>, Mp4Error> {
    let (w, h) = sps_dimensions(sps)?;
    if sps.len() < 4 {
        return Err(Mp4Error::BadSps("too short".into()));
    }
    let ftyp = bx(
        b"ftyp",
        &[
            b"isom",
            &0x200u32.to_be_bytes(),
            b"isom",
            b"iso6",
            b"avc1",
            b"mp41",
        ],
    );
    let zero4 = [0u8; 4];
    let mvhd = full(
        b"mvhd",
        0,
        0,
        &[
            &zero4,
            &zero4,
            &1000u32.to_be_bytes(),
            &zero4,
            &0x0001_0000u32.to_be_bytes(),
            &0x0100u16.to_be_bytes(),
            &[0u8; 10],
            &matrix(),
            &[0u8; 24],
            &(if audio_channels.is_some() { 3u32 } else { 2 }).to_be_bytes(),
        ],
    );
    let tkhd = full(
        b"tkhd",
        0,
        3,
        &[
            &zero4,
            &zero4,
            &1u32.to_be_bytes(),
            &zero4,
            &zero4,
            &[0u8; 8],
            &[0u8; 4],
            &[0u8; 4],
            &matrix(),
            &(w << 16).to_be_bytes(),
            &(h << 16).to_be_bytes(),
        ],
    );
    let mdhd = full(
        b"mdhd",
        0,
        0,
        &[
            &zero4,
            &zero4,
            &TIMESCALE.to_be_bytes(),
            &zero4,
            &0x55C4u16.to_be_bytes(),
            &[0, 0],
        ],
    );
    let hdlr = full(
        b"hdlr",
        0,
        0,
        &[&zero4, b"vide", &[0u8; 12], b"fieldlink video\0"],
    );
    let vmhd = full(b"vmhd", 0, 1, &[&[0u8; 8]]);
    let dref = full(
        b"dref",
        0,
        0,
        &[&1u32.to_be_bytes(), &full(b"url ", 0, 1, &[])],
    );
    let dinf = bx(b"dinf", &[&dref]);
    let mut avcc_body = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    avcc_body.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc_body.extend_from_slice(sps);
    avcc_body.push(1);
    avcc_body.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc_body.extend_from_slice(pps);
    let avcc = bx(b"avcC", &[&avcc_body]);
    let mut compressor = [0u8; 32];
    compressor[0] = 9;
    compressor[1..10].copy_from_slice(b"fieldlink");
    let avc1 = bx(
        b"avc1",
        &[
            &[0u8; 6],
            &1u16.to_be_bytes(),
            &[0u8; 16],
            &(w as u16).to_be_bytes(),
            &(h as u16).to_be_bytes(),
            &0x0048_0000u32.to_be_bytes(),
            &0x0048_0000u32.to_be_bytes(),
            &zero4,
            &1u16.to_be_bytes(),
            &compressor,
            &0x0018u16.to_be_bytes(),
            &0xFFFFu16.to_be_bytes(),
            &avcc,
        ],
    );
    let stsd = full(b"stsd", 0, 0, &[&1u32.to_be_bytes(), &avc1]);
    let empty = |t: &[u8; 4]| full(t, 0, 0, &[&zero4]);
    let stsz = full(b"stsz", 0, 0, &[&zero4, &zero4]);
    let stbl = bx(
        b"stbl",
        &[
            &stsd,
            &empty(b"stts"),
            &empty(b"stsc"),
            &stsz,
            &empty(b"stco"),
        ],
    );
    let minf = bx(b"minf", &[&vmhd, &dinf, &stbl]);
    let mdia = bx(b"mdia", &[&mdhd, &hdlr, &minf]);
    let trak = bx(b"trak", &[&tkhd, &mdia]);
    let trex = full(
        b"trex",
        0,
        0,
        &[
            &1u32.to_be_bytes(),
            &1u32.to_be_bytes(),
            &zero4,
            &zero4,
            &zero4,
        ],
    );
    let moov = match audio_channels {
        None => bx(b"moov", &[&mvhd, &trak, &bx(b"mvex", &[&trex])]),
        Some(ch) => {
            let trex2 = full(
                b"trex",
                0,
                0,
                &[
                    &2u32.to_be_bytes(),
                    &1u32.to_be_bytes(),
                    &zero4,
                    &zero4,
                    &zero4,
                ],
            );
            let mvex = bx(b"mvex", &[&trex, &trex2]);
            bx(b"moov", &[&mvhd, &trak, &opus_trak(ch), &mvex])
        }
    };
    let mut out = ftyp;
    out.extend(moov);
    Ok(out)
}

/// Annex-B access unit to length-prefixed NAL units (access unit delimiters dropped).
pub fn annexb_to_avcc(au: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(au.len() + 16);
    for n in nal_units(au) {
        if h264_nal_type(n) == Some(9) {
            continue;
        }
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
    }
    out
}

/// One `moof` + `mdat` holding one frame.
pub fn fragment(
    sequence: u32,
    decode_time: u64,
    duration: u32,
    keyframe: bool,
    avcc: &[u8],
) -> Vec<u8> {
    let mfhd = full(b"mfhd", 0, 0, &[&sequence.to_be_bytes()]);
    let tfhd = full(b"tfhd", 0, 0x02_0000, &[&1u32.to_be_bytes()]);
    let tfdt = full(b"tfdt", 1, 0, &[&decode_time.to_be_bytes()]);
    let flags: u32 = if keyframe { 0x0200_0000 } else { 0x0101_0000 };
    // trun: data offset, duration, size, flags present. The data offset is patched below.
    let trun_len = 8 + 4 + 4 + 4 + 12;
    let moof_len = 8 + mfhd.len() + 8 + tfhd.len() + tfdt.len() + trun_len;
    let data_offset = (moof_len + 8) as u32;
    let trun = full(
        b"trun",
        0,
        0x0701,
        &[
            &1u32.to_be_bytes(),
            &data_offset.to_be_bytes(),
            &duration.to_be_bytes(),
            &(avcc.len() as u32).to_be_bytes(),
            &flags.to_be_bytes(),
        ],
    );
    let traf = bx(b"traf", &[&tfhd, &tfdt, &trun]);
    let mut out = bx(b"moof", &[&mfhd, &traf]);
    debug_assert_eq!(out.len(), moof_len);
    out.extend(bx(b"mdat", &[avcc]));
    out
}

/// One `moof` + `mdat` holding audio packets of track 2: (duration in 48 kHz, data).
pub fn audio_fragment(sequence: u32, decode_time: u64, packets: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mfhd = full(b"mfhd", 0, 0, &[&sequence.to_be_bytes()]);
    let tfhd = full(b"tfhd", 0, 0x02_0000, &[&2u32.to_be_bytes()]);
    let tfdt = full(b"tfdt", 1, 0, &[&decode_time.to_be_bytes()]);
    // trun: data offset, then duration and size per sample.
    let mut body: Vec<u8> = Vec::with_capacity(8 + packets.len() * 8);
    body.extend_from_slice(&(packets.len() as u32).to_be_bytes());
    let trun_len = 12 + 4 + 4 + packets.len() * 8;
    let moof_len = 8 + mfhd.len() + 8 + tfhd.len() + tfdt.len() + trun_len;
    body.extend_from_slice(&((moof_len + 8) as u32).to_be_bytes());
    for (d, p) in packets {
        body.extend_from_slice(&d.to_be_bytes());
        body.extend_from_slice(&(p.len() as u32).to_be_bytes());
    }
    let trun = full(b"trun", 0, 0x0301, &[&body]);
    let traf = bx(b"traf", &[&tfhd, &tfdt, &trun]);
    let mut out = bx(b"moof", &[&mfhd, &traf]);
    debug_assert_eq!(out.len(), moof_len);
    let data: Vec<u8> = packets
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    out.extend(bx(b"mdat", &[&data]));
    out
}

/// What the recorder must do with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentOut {
    /// Start segment `index` (1, 2, ...) with these bytes.
    Open { index: u32, bytes: Vec<u8> },
    /// Append to the open segment.
    Append(Vec<u8>),
    /// The open segment is complete, `duration` in 90 kHz ticks.
    Close { index: u32, duration: u64 },
}

/// Cuts a stream of access units into fMP4 segments of at least `target` ticks, each
/// starting on a keyframe (so a segment is within one GOP of the target).
#[derive(Debug)]
pub struct Segmenter {
    target: u64,
    params: crate::ParamSets,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// The frame waiting for its successor (which gives its duration).
    pending: Option<(Vec<u8>, u64, bool)>,
    open: Option<(u32, u64)>,
    index: u32,
    sequence: u32,
    decode_time: u64,
    /// Audio: its channels once a packet came; whether the open segment has the track;
    /// packets waiting for their fragment; the open segment's audio time (48 kHz).
    audio_channels: Option<u16>,
    audio_in_segment: bool,
    audio_pending: Vec<(u32, Vec<u8>)>,
    audio_time: u64,
}

impl Segmenter {
    pub fn new(target_ticks: u64) -> Segmenter {
        Segmenter {
            target: target_ticks.max(1),
            params: Default::default(),
            sps: None,
            pps: None,
            pending: None,
            open: None,
            index: 0,
            sequence: 0,
            decode_time: 0,
            audio_channels: None,
            audio_in_segment: false,
            audio_pending: Vec::new(),
            audio_time: 0,
        }
    }

    /// Feeds one Opus packet (`duration` in 48 kHz samples, `channels` from its TOC).
    /// A segment has an audio track when audio had come before it opened.
    pub fn push_audio(&mut self, packet: &[u8], duration: u32, channels: u16) -> Vec<SegmentOut> {
        self.audio_channels.get_or_insert(channels.clamp(1, 2));
        let mut out = Vec::new();
        if self.open.is_some() && self.audio_in_segment {
            self.audio_pending.push((duration, packet.to_vec()));
            if self.audio_pending.len() >= AUDIO_PER_FRAGMENT {
                self.flush_audio(&mut out);
            }
        }
        out
    }

    fn flush_audio(&mut self, out: &mut Vec<SegmentOut>) {
        if self.audio_pending.is_empty() || self.open.is_none() {
            self.audio_pending.clear();
            return;
        }
        self.sequence += 1;
        let packets = std::mem::take(&mut self.audio_pending);
        let d: u64 = packets.iter().map(|(d, _)| u64::from(*d)).sum();
        out.push(SegmentOut::Append(audio_fragment(
            self.sequence,
            self.audio_time,
            &packets,
        )));
        self.audio_time += d;
    }

    /// Feeds one Annex-B access unit with its 90 kHz time.
    pub fn push(&mut self, au: &[u8], time: u64) -> Vec<SegmentOut> {
        let au = self.params.complete(au);
        for n in nal_units(&au) {
            match h264_nal_type(n) {
                Some(7) => self.sps = Some(n.to_vec()),
                Some(8) => self.pps = Some(n.to_vec()),
                _ => {}
            }
        }
        let keyframe = crate::is_h264_keyframe(&au);
        let mut out = Vec::new();
        if let Some((prev, prev_time, prev_key)) = self.pending.take() {
            let d = time.wrapping_sub(prev_time);
            let duration = if d == 0 || d > u64::from(TIMESCALE) * 10 {
                u64::from(DEFAULT_DURATION)
            } else {
                d
            };
            self.emit(&prev, duration as u32, prev_key, &mut out);
        }
        self.pending = Some((au, time, keyframe));
        out
    }

    /// Writes the last frame and closes the open segment.
    pub fn finish(&mut self) -> Vec<SegmentOut> {
        let mut out = Vec::new();
        if let Some((prev, _, key)) = self.pending.take() {
            self.emit(&prev, DEFAULT_DURATION, key, &mut out);
        }
        self.flush_audio(&mut out);
        if let Some((index, start)) = self.open.take() {
            out.push(SegmentOut::Close {
                index,
                duration: self.decode_time - start,
            });
        }
        out
    }

    fn emit(&mut self, au: &[u8], duration: u32, keyframe: bool, out: &mut Vec<SegmentOut>) {
        if keyframe {
            let due = self
                .open
                .is_some_and(|(_, start)| self.decode_time - start >= self.target);
            if due {
                self.flush_audio(out);
                if let Some((index, start)) = self.open.take() {
                    out.push(SegmentOut::Close {
                        index,
                        duration: self.decode_time - start,
                    });
                }
            }
            if self.open.is_none() {
                let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                    return;
                };
                let Ok(init) = init_segment_av(sps, pps, self.audio_channels) else {
                    return;
                };
                self.audio_in_segment = self.audio_channels.is_some();
                self.audio_pending.clear();
                self.audio_time = 0;
                self.index += 1;
                self.open = Some((self.index, self.decode_time));
                out.push(SegmentOut::Open {
                    index: self.index,
                    bytes: init,
                });
            }
        }
        if self.open.is_none() {
            return; // waiting for a keyframe to start on
        }
        self.sequence += 1;
        // Each segment's timeline starts at 0, so it plays on its own from its first frame.
        let start = self.open.map_or(0, |(_, s)| s);
        out.push(SegmentOut::Append(fragment(
            self.sequence,
            self.decode_time - start,
            duration,
            keyframe,
            &annexb_to_avcc(au),
        )));
        self.decode_time += u64::from(duration);
    }
}
