//! Audio test helpers: tone WAV files, and what a received tone must be.

use std::path::Path;

use fieldlink_sdk::audio::tone::{fit, longest_gap, Fit, Tone};

/// Writes `secs` of a `hz` tone (amplitude 10000) as a 16-bit WAV, the same signal on
/// every channel. Whole cycles per second, so the looped file has no seam.
pub fn write_tone(path: &Path, rate: u32, channels: u16, hz: f64, secs: u32) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut t = Tone::new(hz, rate, 10000.0);
    for _ in 0..secs * 100 {
        for s in t.next_frame() {
            for _ in 0..channels {
                w.write_sample(s).unwrap();
            }
        }
    }
    w.finalize().unwrap();
}

/// The samples of a received WAV, checked to be 48 kHz mono s16.
pub fn read_wav(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (48000, 1, 16)
    );
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// What arrived: a tone near `hz` (± 5 Hz), measured over 3 s from 1 s after it began
/// (past the codec's and the jitter buffer's start-up), with an SNR of at least `snr_db`,
/// and no silence over 60 ms in the 4 s from its start.
pub fn assert_tone(what: &str, samples: &[i16], hz: f64, snr_db: f64) -> Fit {
    assert_tone_gaps(what, samples, hz, snr_db, 60)
}

/// [`assert_tone`] with silences of up to `max_gap_ms` allowed.
pub fn assert_tone_gaps(
    what: &str,
    samples: &[i16],
    hz: f64,
    snr_db: f64,
    max_gap_ms: usize,
) -> Fit {
    let start = samples
        .iter()
        .position(|s| s.unsigned_abs() > 3000)
        .unwrap_or_else(|| panic!("{what}: no tone at all"));
    let end = start + 4 * 48000;
    assert!(
        samples.len() >= end,
        "{what}: the tone began at {} ms of {} ms",
        start / 48,
        samples.len() / 48
    );
    let f = fit(&samples[start + 48000..end], 48000, hz);
    // The SNR a listener hears: the median over 100 ms windows. One fit over seconds
    // also counts each concealed glitch of a starved 2-core machine (a few windows)
    // as noise; the gap check below still catches silence.
    let local = median_snr_db(&samples[start + 48000..end], hz);
    let gap = longest_gap(&samples[start..end], 300);
    eprintln!(
        "{what}: {f:?}, median SNR of 100 ms windows {local:.1} dB, longest gap {} ms",
        gap / 48
    );
    assert!((f.hz - hz).abs() <= 5.0, "{what}: {f:?}");
    assert!(local >= snr_db, "{what}: median SNR {local:.1} dB, {f:?}");
    assert!(gap <= max_gap_ms * 48, "{what}: a gap of {} ms", gap / 48);
    f
}

/// The median SNR of 100 ms windows of `samples` fitted near `hz`: what a listener hears
/// locally, whatever a source's clock drift or the phase jump of a looped file does to
/// one fit over seconds.
pub fn median_snr_db(samples: &[i16], hz: f64) -> f64 {
    let mut snr: Vec<f64> = samples
        .chunks_exact(4800)
        .map(|w| fit(w, 48000, hz).snr_db)
        .collect();
    snr.sort_by(f64::total_cmp);
    snr.get(snr.len() / 2).copied().unwrap_or(f64::MIN)
}
