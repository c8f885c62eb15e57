//! External PCM in: each 10 ms frame is checked, downmixed to mono or stereo, resampled
//! to 48 kHz (rubato, FFT-based, fixed 10 ms chunks in and out) and Opus-encoded into one
//! 10 ms packet (in-band FEC on: a lost packet is rebuilt from the next one).

use fieldlink_proto::ErrorCode;
use rubato::{FftFixedInOut, Resampler};

use super::{check_frame, FRAME, OPUS_BITRATE, RATE};
use crate::SdkError;

/// Loss the encoder protects against with in-band FEC, percent (it spends bits on the
/// redundancy in proportion).
const EXPECTED_LOSS_PCT: i32 = 10;

/// One encoded 10 ms packet, with its 48 kHz RTP time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub rtp_time: u64,
    pub data: Vec<u8>,
}

pub struct Capture {
    /// Channels sent (1 or 2) and the encoder for them.
    encoder: Option<(u16, opus::Encoder)>,
    /// The resampler for the current input rate and channel count, if not 48 kHz.
    resampler: Option<(u32, u16, FftFixedInOut<f32>)>,
    rtp_time: u64,
}

fn internal(e: impl std::fmt::Display) -> SdkError {
    SdkError::new(ErrorCode::Internal, format!("audio: {e}"))
}

/// Interleaved `pcm` of `channels` channels to `out` channels (1 or 2), planar f32:
/// more than two are averaged into left (even) and right (odd).
fn downmix(pcm: &[i16], channels: u16, out: u16) -> Vec<Vec<f32>> {
    let ch = usize::from(channels);
    let frames = pcm.len() / ch;
    let mut planes = vec![vec![0f32; frames]; usize::from(out)];
    for (i, frame) in pcm.chunks_exact(ch).enumerate() {
        if out == 1 {
            let sum: f32 = frame.iter().map(|&s| f32::from(s)).sum();
            planes[0][i] = sum / ch as f32;
        } else {
            for (p, plane) in planes.iter_mut().enumerate() {
                let mine: Vec<f32> = frame
                    .iter()
                    .skip(p)
                    .step_by(2)
                    .map(|&s| f32::from(s))
                    .collect();
                plane[i] = mine.iter().sum::<f32>() / mine.len().max(1) as f32;
            }
        }
    }
    planes
}

impl Capture {
    pub fn new() -> Self {
        Capture {
            encoder: None,
            resampler: None,
            rtp_time: 0,
        }
    }

    /// Takes one external frame (`pcm` interleaved s16, 10 ms at `rate`), returns its
    /// packet. A frame that is not exactly 10 ms at a listed rate is an error and nothing
    /// of it is sent.
    pub fn push(&mut self, rate: u32, channels: u16, pcm: &[i16]) -> Result<Packet, SdkError> {
        check_frame(rate, channels, pcm.len())?;
        let out = channels.min(2);
        let mut planes = downmix(pcm, channels, out);
        if rate != RATE {
            let fits = matches!(&self.resampler, Some((r, c, _)) if *r == rate && *c == out);
            if !fits {
                let chunk = (rate / 100) as usize;
                let r = FftFixedInOut::new(rate as usize, RATE as usize, chunk, usize::from(out))
                    .map_err(internal)?;
                if r.input_frames_next() != chunk || r.output_frames_next() != FRAME {
                    return Err(internal(format!(
                        "resampler for {rate} Hz takes {} frames, not {chunk}",
                        r.input_frames_next()
                    )));
                }
                self.resampler = Some((rate, out, r));
            }
            if let Some((_, _, r)) = &mut self.resampler {
                planes = r.process(&planes, None).map_err(internal)?;
            }
        }
        let mut interleaved = Vec::with_capacity(FRAME * usize::from(out));
        for i in 0..FRAME {
            for p in &planes {
                let s = p.get(i).copied().unwrap_or(0.0);
                interleaved.push(s.round().clamp(-32768.0, 32767.0) as i16);
            }
        }
        if !matches!(&self.encoder, Some((c, _)) if *c == out) {
            self.encoder = Some((out, new_encoder(out)?));
        }
        let Some((_, enc)) = &mut self.encoder else {
            return Err(internal("no encoder"));
        };
        let data = enc.encode_vec(&interleaved, 1500).map_err(internal)?;
        let p = Packet {
            rtp_time: self.rtp_time,
            data,
        };
        self.rtp_time += FRAME as u64;
        Ok(p)
    }
}

fn new_encoder(channels: u16) -> Result<opus::Encoder, SdkError> {
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut e = opus::Encoder::new(RATE, ch, opus::Application::Voip).map_err(internal)?;
    e.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
        .map_err(internal)?;
    e.set_inband_fec(true).map_err(internal)?;
    e.set_packet_loss_perc(EXPECTED_LOSS_PCT)
        .map_err(internal)?;
    Ok(e)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` samples of a `hz` tone at `rate`, amplitude `amp`, starting at sample `from`.
    pub fn tone(hz: f64, rate: u32, from: usize, n: usize, amp: f64) -> Vec<i16> {
        (from..from + n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (amp * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn every_listed_rate_makes_one_10_ms_packet_per_frame() {
        for rate in super::super::EXTERNAL_RATES {
            for ch in [1u16, 2, 3] {
                let mut c = Capture::new();
                let n = (rate / 100) as usize;
                for k in 0..5 {
                    let mono = tone(1000.0, rate, k * n, n, 8000.0);
                    let pcm: Vec<i16> = mono
                        .iter()
                        .flat_map(|&s| std::iter::repeat_n(s, usize::from(ch)))
                        .collect();
                    let p = c.push(rate, ch, &pcm).unwrap();
                    assert_eq!(p.rtp_time, (k * FRAME) as u64);
                    assert_eq!(
                        opus::packet::get_nb_samples(&p.data, RATE).unwrap(),
                        FRAME,
                        "{rate} Hz, {ch} ch"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_frame_is_refused_and_nothing_is_sent() {
        let mut c = Capture::new();
        let e = c.push(48000, 1, &[0; 479]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadAudioFrame);
        // The stream's clock did not move for it.
        assert_eq!(c.push(48000, 1, &[0; 480]).unwrap().rtp_time, 0);
    }
}
