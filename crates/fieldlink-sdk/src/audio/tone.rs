//! Test tones: the demo field device's signal, and the measures the tests and the audio
//! benchmark take of what arrives (frequency, signal-to-noise ratio, gaps).

use std::f64::consts::PI;

/// A sine tone, generated 10 ms at a time, phase-continuous.
#[derive(Debug, Clone)]
pub struct Tone {
    pub hz: f64,
    pub rate: u32,
    pub amplitude: f64,
    sample: u64,
}

impl Tone {
    pub fn new(hz: f64, rate: u32, amplitude: f64) -> Self {
        Tone {
            hz,
            rate,
            amplitude,
            sample: 0,
        }
    }

    /// The next 10 ms, mono.
    pub fn next_frame(&mut self) -> Vec<i16> {
        let n = (self.rate / 100) as u64;
        let out = (self.sample..self.sample + n)
            .map(|i| {
                let t = i as f64 / f64::from(self.rate);
                (self.amplitude * (2.0 * PI * self.hz * t).sin()) as i16
            })
            .collect();
        self.sample += n;
        out
    }
}

/// A sine fitted to a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub hz: f64,
    pub amplitude: f64,
    /// Power of the fitted sine over the power of what is left, dB.
    pub snr_db: f64,
}

/// Least-squares fit of `a·cos + b·sin + c` at `hz`: (fitted power, residual power).
fn powers(x: &[f64], rate: f64, hz: f64) -> (f64, f64, f64) {
    let w = 2.0 * PI * hz / rate;
    // Normal equations of the three basis functions.
    let (mut cc, mut ss, mut cs, mut c1, mut s1) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut xc, mut xs, mut x1) = (0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        cc += c * c;
        ss += s * s;
        cs += c * s;
        c1 += c;
        s1 += s;
        xc += v * c;
        xs += v * s;
        x1 += v;
    }
    let n = x.len() as f64;
    let m = [[cc, cs, c1], [cs, ss, s1], [c1, s1, n]];
    let Some([a, b, k]) = solve3(m, [xc, xs, x1]) else {
        return (0.0, f64::MAX, 0.0);
    };
    let (mut fit, mut res) = (0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        let f = a * c + b * s;
        fit += f * f;
        let r = v - f - k;
        res += r * r;
    }
    (fit, res, (a * a + b * b).sqrt())
}

fn solve3(m: [[f64; 3]; 3], y: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(m);
    if d.abs() < 1e-12 {
        return None;
    }
    let mut out = [0.0; 3];
    for (col, o) in out.iter_mut().enumerate() {
        let mut mc = m;
        for row in 0..3 {
            mc[row][col] = y[row];
        }
        *o = det(mc) / d;
    }
    Some(out)
}

/// Fits a sine near `near_hz` (within ±20 Hz) to mono `samples` at `rate`.
pub fn fit(samples: &[i16], rate: u32, near_hz: f64) -> Fit {
    let x: Vec<f64> = samples.iter().map(|&s| f64::from(s)).collect();
    let r = f64::from(rate);
    let best = |from: f64, to: f64, step: f64| {
        let mut best = (from, f64::MIN);
        let mut f = from;
        while f <= to {
            let (fit, _, _) = powers(&x, r, f);
            if fit > best.1 {
                best = (f, fit);
            }
            f += step;
        }
        best.0
    };
    let coarse = best(near_hz - 20.0, near_hz + 20.0, 0.5);
    let hz = best(coarse - 0.5, coarse + 0.5, 0.02);
    let (fit, res, amplitude) = powers(&x, r, hz);
    Fit {
        hz,
        amplitude,
        snr_db: 10.0 * (fit / res.max(1e-9)).log10(),
    }
}

/// The longest run of samples whose magnitude stays under `threshold`, in samples.
pub fn longest_gap(samples: &[i16], threshold: i16) -> usize {
    let mut best = 0;
    let mut run = 0;
    for &s in samples {
        if s.unsigned_abs() < threshold.unsigned_abs() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_tone_is_measured_exactly_and_noise_lowers_the_snr() {
        let mut t = Tone::new(1003.0, 48000, 10000.0);
        let x: Vec<i16> = (0..50).flat_map(|_| t.next_frame()).collect();
        let f = fit(&x, 48000, 1000.0);
        assert!((f.hz - 1003.0).abs() < 0.05, "{f:?}");
        assert!(f.snr_db > 60.0, "{f:?}");
        let noisy: Vec<i16> = x
            .iter()
            .enumerate()
            .map(|(i, &s)| s.saturating_add(if i % 2 == 0 { 1000 } else { -1000 }))
            .collect();
        let g = fit(&noisy, 48000, 1000.0);
        assert!((g.snr_db - 17.0).abs() < 1.0, "{g:?}");
    }

    #[test]
    fn gaps_are_runs_of_near_silence() {
        let mut x = vec![5000i16; 100];
        x[10..40].fill(3);
        x[50..55].fill(0);
        assert_eq!(longest_gap(&x, 200), 30);
    }

    #[test]
    fn opus_keeps_a_tone_above_30_db() {
        let mut cap = super::super::capture::Capture::new();
        let mut jb =
            super::super::jitter::JitterBuffer::new(super::super::decode::AudioCodec::Opus, 1)
                .unwrap();
        let mut t = Tone::new(1000.0, 48000, 10000.0);
        let t0 = std::time::Instant::now();
        let mut out = Vec::new();
        for k in 0..100u64 {
            let p = cap.push(48000, 1, &t.next_frame()).unwrap();
            let now = t0 + std::time::Duration::from_millis(10 * k);
            jb.push(p.rtp_time, p.data, now);
            out.extend(jb.pull(now).unwrap_or_default());
        }
        // Past the codec's start-up.
        let f = fit(&out[4800..], 48000, 1000.0);
        assert!((f.hz - 1000.0).abs() < 1.0, "{f:?}");
        assert!(f.snr_db >= 30.0, "{f:?}");
    }
}
