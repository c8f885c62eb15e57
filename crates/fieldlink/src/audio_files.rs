//! `--audio-in FILE.wav` / `--audio-out FILE.wav` of `field` and `remote connect|watch`:
//! a WAV file fed as external PCM in real time (looped), and the mixed audio received
//! written as a 48 kHz s16le WAV (the header finalised on exit, Ctrl-C included).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use fieldlink_sdk::audio::{AudioConfig, MixedAudio, Playback, EXTERNAL_RATES, RATE};
use fieldlink_sdk::{AudioInput, ErrorCode};

#[derive(ClapArgs, Debug, Clone, Default)]
pub struct AudioArgs {
    /// Send this WAV file as the device's audio (16-bit PCM, mono or stereo, at 8000,
    /// 16000, 24000, 32000, 44100 or 48000 Hz), in real time and looped. Turns on
    /// audio_enable and audio_external for this run.
    #[arg(long, value_name = "FILE.wav")]
    pub audio_in: Option<PathBuf>,
    /// Write the mixed audio received to this WAV file (48 kHz, s16le). Turns on
    /// audio_receive with audio_play "outside" for this run.
    #[arg(long, value_name = "FILE.wav")]
    pub audio_out: Option<PathBuf>,
}

impl AudioArgs {
    /// What the flags imply on top of the config's audio settings.
    pub fn apply(&self, a: &mut AudioConfig) {
        if self.audio_in.is_some() {
            a.enable = true;
            a.external = true;
        }
        if self.audio_out.is_some() {
            a.receive = true;
            a.play = Some(Playback::Outside);
        }
    }
}

/// A WAV file loaded for sending: interleaved samples, looped 10 ms at a time.
pub struct WavIn {
    rate: u32,
    channels: u16,
    samples: Vec<i16>,
}

impl WavIn {
    pub fn open(path: &Path) -> anyhow::Result<WavIn> {
        let r = hound::WavReader::open(path)
            .with_context(|| format!("--audio-in {}", path.display()))?;
        let spec = r.spec();
        if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
            bail!(
                "--audio-in {}: {}-bit {:?} samples; 16-bit PCM is needed",
                path.display(),
                spec.bits_per_sample,
                spec.sample_format
            );
        }
        if !EXTERNAL_RATES.contains(&spec.sample_rate) {
            bail!(
                "--audio-in {}: {} Hz is not one of {EXTERNAL_RATES:?}",
                path.display(),
                spec.sample_rate
            );
        }
        if !(1..=2).contains(&spec.channels) {
            bail!(
                "--audio-in {}: {} channels; mono or stereo is needed",
                path.display(),
                spec.channels
            );
        }
        let samples = r
            .into_samples::<i16>()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--audio-in {}", path.display()))?;
        let frame = (spec.sample_rate / 100) as usize * usize::from(spec.channels);
        if samples.len() < frame {
            bail!("--audio-in {}: shorter than 10 ms", path.display());
        }
        Ok(WavIn {
            rate: spec.sample_rate,
            channels: spec.channels,
            samples,
        })
    }

    /// Pushes the file 10 ms at a time, in real time, looped, until the device closes
    /// or refuses the audio for good.
    pub async fn feed(self, input: AudioInput) {
        let frame = (self.rate / 100) as usize * usize::from(self.channels);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut pos = 0;
        loop {
            tick.tick().await;
            // Looped: a frame may wrap around the end of the file.
            let f: Vec<i16> = (0..frame)
                .map(|i| self.samples[(pos + i) % self.samples.len()])
                .collect();
            pos = (pos + frame) % self.samples.len();
            match input.push(self.rate, self.channels, &f) {
                Ok(()) => {}
                // Not connected right now, or briefly behind: the next frame goes on.
                Err(e) if matches!(e.code, ErrorCode::Disconnected | ErrorCode::Congested) => {
                    tracing::debug!("audio frame not sent: {e}");
                    if e.code == ErrorCode::Disconnected && input.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("--audio-in stopped: {e}");
                    return;
                }
            }
        }
    }
}

/// The mixed audio received, written as it comes.
pub struct WavOut {
    path: PathBuf,
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    channels: u16,
}

impl WavOut {
    pub fn create(path: &Path, channels: u16) -> anyhow::Result<WavOut> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec)
            .with_context(|| format!("--audio-out {}", path.display()))?;
        Ok(WavOut {
            path: path.to_path_buf(),
            writer: Some(writer),
            channels,
        })
    }

    pub fn write(&mut self, m: &MixedAudio) {
        let Some(w) = &mut self.writer else {
            return;
        };
        if m.channels != self.channels {
            return;
        }
        for &s in &m.samples {
            if let Err(e) = w.write_sample(s) {
                tracing::error!("--audio-out {}: {e}", self.path.display());
                self.writer = None;
                return;
            }
        }
    }

    /// Writes the header's lengths; also done on drop, where errors cannot be told.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.writer.take() {
            w.finalize()
                .with_context(|| format!("--audio-out {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for WavOut {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!("{e:#}");
        }
    }
}

/// The `--audio-out` writer, if asked for.
pub fn wav_out(args: &AudioArgs, cfg: &AudioConfig) -> anyhow::Result<Option<WavOut>> {
    args.audio_out
        .as_deref()
        .map(|p| WavOut::create(p, cfg.play_channels))
        .transpose()
}
