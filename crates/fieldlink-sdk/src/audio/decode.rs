//! The decoders a heard line uses: Opus (with in-band FEC and loss concealment), or G.711
//! (a GB28181 camera's PCMA/PCMU, 8 kHz, upsampled to 48 kHz with rubato).

use rubato::{FftFixedInOut, Resampler};

use super::{FRAME, RATE};

/// The codec of a heard line's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Opus,
    Pcma,
    Pcmu,
}

/// G.711's rate, and its samples per 10 ms.
const G711_RATE: u32 = 8000;
const G711_CHUNK: usize = 80;

pub enum LineDecoder {
    Opus(opus::Decoder),
    G711 {
        alaw: bool,
        up: Box<FftFixedInOut<f32>>,
        /// 8 kHz samples waiting for a whole 10 ms chunk.
        pending: Vec<f32>,
    },
}

impl LineDecoder {
    pub fn new(codec: AudioCodec, channels: u16) -> Result<Self, String> {
        Ok(match codec {
            AudioCodec::Opus => {
                let ch = if channels == 2 {
                    opus::Channels::Stereo
                } else {
                    opus::Channels::Mono
                };
                LineDecoder::Opus(opus::Decoder::new(RATE, ch).map_err(|e| e.to_string())?)
            }
            AudioCodec::Pcma | AudioCodec::Pcmu => {
                let up = FftFixedInOut::new(G711_RATE as usize, RATE as usize, G711_CHUNK, 1)
                    .map_err(|e| e.to_string())?;
                LineDecoder::G711 {
                    alaw: codec == AudioCodec::Pcma,
                    up: Box::new(up),
                    pending: Vec::new(),
                }
            }
        })
    }

    pub fn codec(&self) -> AudioCodec {
        match self {
            LineDecoder::Opus(_) => AudioCodec::Opus,
            LineDecoder::G711 { alaw: true, .. } => AudioCodec::Pcma,
            LineDecoder::G711 { alaw: false, .. } => AudioCodec::Pcmu,
        }
    }

    /// How much audio a packet holds, in 48 kHz samples per channel.
    pub fn duration(&self, data: &[u8]) -> Option<usize> {
        match self {
            LineDecoder::Opus(_) => opus::packet::get_nb_samples(data, RATE).ok(),
            LineDecoder::G711 { .. } => Some(data.len() * (RATE / G711_RATE) as usize),
        }
    }

    /// Decodes one packet into `out` (interleaved, `channels`); returns the samples per
    /// channel added, None when the packet is broken.
    pub fn decode(&mut self, data: &[u8], channels: u16, out: &mut Vec<i16>) -> Option<usize> {
        match self {
            LineDecoder::Opus(d) => {
                let ch = usize::from(channels);
                let mut buf = vec![0i16; 6 * FRAME * ch]; // 60 ms, the longest packet
                let n = d.decode(data, &mut buf, false).ok().filter(|&n| n > 0)?;
                out.extend_from_slice(&buf[..n * ch]);
                Some(n)
            }
            LineDecoder::G711 { alaw, up, pending } => {
                let dec = if *alaw {
                    fieldlink_media::g711::alaw_decode
                } else {
                    fieldlink_media::g711::ulaw_decode
                };
                pending.extend(data.iter().map(|&b| f32::from(dec(b))));
                let mut added = 0;
                while pending.len() >= G711_CHUNK {
                    let chunk: Vec<f32> = pending.drain(..G711_CHUNK).collect();
                    let Ok(planes) = up.process(&[chunk], None) else {
                        return None;
                    };
                    for &s in &planes[0] {
                        let v = s.round().clamp(-32768.0, 32767.0) as i16;
                        out.extend(std::iter::repeat_n(v, usize::from(channels)));
                    }
                    added += planes[0].len();
                }
                Some(added)
            }
        }
    }

    /// 10 ms in place of a lost packet: from the next packet's in-band FEC when given and
    /// it has some (Opus), else concealed (Opus PLC; silence for G.711). Returns whether
    /// FEC was used.
    pub fn conceal(&mut self, next: Option<&[u8]>, channels: u16, out: &mut Vec<i16>) -> bool {
        let n = FRAME * usize::from(channels);
        let mut buf = vec![0i16; n];
        let fec = match self {
            LineDecoder::Opus(d) => {
                let fec = next
                    .and_then(|p| d.decode(p, &mut buf, true).ok())
                    .is_some_and(|k| k == FRAME);
                if !fec && d.decode(&[], &mut buf, false).ok() != Some(FRAME) {
                    buf.fill(0);
                }
                fec
            }
            LineDecoder::G711 { .. } => false,
        };
        out.extend_from_slice(&buf);
        fec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_comes_out_at_48_khz_with_its_tone() {
        for (codec, enc) in [
            (
                AudioCodec::Pcma,
                fieldlink_media::g711::alaw_encode as fn(i16) -> u8,
            ),
            (AudioCodec::Pcmu, fieldlink_media::g711::ulaw_encode),
        ] {
            let mut d = LineDecoder::new(codec, 1).unwrap();
            let mut tone = super::super::tone::Tone::new(1000.0, 8000, 10000.0);
            let mut out = Vec::new();
            for _ in 0..50 {
                // 40 ms packets, as cameras send them.
                let pkt: Vec<u8> = (0..4).flat_map(|_| tone.next_frame()).map(enc).collect();
                assert_eq!(d.duration(&pkt), Some(4 * FRAME));
                assert_eq!(d.decode(&pkt, 1, &mut out), Some(4 * FRAME));
            }
            let f = super::super::tone::fit(&out[4800..], 48000, 1000.0);
            assert!(
                (f.hz - 1000.0).abs() < 0.5 && f.snr_db > 30.0,
                "{codec:?} {f:?}"
            );
        }
    }
}
