//! Voice intercom (SPEC §3): Opus on one audio track per device, sent from external PCM
//! the application pushes, and the audio of every party heard mixed into one 48 kHz
//! stream handed to the application.
//!
//! - `capture`: external PCM in (checked, resampled to 48 kHz, Opus-encoded per 10 ms);
//! - `jitter`: per heard party, an adaptive jitter buffer, pulled every 10 ms, over
//! - `decode`: Opus (loss concealment, in-band FEC) or G.711 from GB28181 cameras;
//! - `mix`: the parties' 10 ms frames summed into one.
//!
//! All three are pure (bytes and sample counts in and out, no clock of their own); the
//! connection task drives them.

#[cfg(feature = "alsa")]
pub(crate) mod alsa_dev;
pub(crate) mod capture;
pub(crate) mod decode;
pub(crate) mod jitter;
pub(crate) mod mix;
pub mod tone;

use fieldlink_proto::ErrorCode;

use crate::SdkError;

/// The one sample rate on the wire and of the mixed output.
pub const RATE: u32 = 48_000;
/// Samples per channel in one 10 ms frame at [`RATE`].
pub const FRAME: usize = 480;
/// Sample rates external PCM may have (SPEC §3).
pub const EXTERNAL_RATES: [u32; 6] = [8000, 16000, 24000, 32000, 44100, 48000];
/// Most channels in one external PCM frame (more are downmixed to stereo anyway).
pub const MAX_CHANNELS: u16 = 8;
/// Audio m-lines a receiving device offers: one party heard per line, so this many
/// parties can talk to it at once (the first line also carries what it sends).
pub const AUDIO_LINES: usize = 4;
/// Opus bitrate sent, bits per second (per channel pair: stereo gets the same).
pub const OPUS_BITRATE: i32 = 48_000;

/// What `audio_play` names: nothing (off), an ALSA device, or `"outside"`: the
/// application gets the mixed audio ([`crate::Event::MixedAudio`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playback {
    Outside,
    Device(String),
}

/// A device's audio settings (SPEC §3 config keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    /// `audio_enable`: capture and send.
    pub enable: bool,
    /// `audio_receive`: receive and play.
    pub receive: bool,
    /// `audio_external`: what is sent is PCM the application pushes
    /// (`FieldDevice::push_audio` / `RemoteDevice::push_audio`).
    pub external: bool,
    /// `audio_record`: the ALSA capture device, as written (`hw:0,3,0`, `default`...).
    pub record: Option<String>,
    /// `audio_play`.
    pub play: Option<Playback>,
    /// Channels of the mixed output (1 or 2).
    pub play_channels: u16,
}

impl AudioConfig {
    /// Audio off in both directions.
    pub fn off() -> Self {
        AudioConfig {
            enable: false,
            receive: false,
            external: false,
            record: None,
            play: None,
            play_channels: 1,
        }
    }

    /// The SPEC's defaults for a role: only the uplink is on (a field device sends, a
    /// remote receives), on the default ALSA devices.
    pub fn spec_default(role: fieldlink_proto::Role) -> Self {
        let field = role == fieldlink_proto::Role::Field;
        AudioConfig {
            enable: field,
            receive: !field,
            ..AudioConfig::off()
        }
    }

    /// Whether the device sends audio: external PCM, or (built with ALSA) a capture
    /// device.
    pub fn sends(&self) -> bool {
        self.enable && (self.external || cfg!(feature = "alsa"))
    }

    /// Whether the device receives audio: handed to the application, or (built with
    /// ALSA) played on a device.
    pub fn receives(&self) -> bool {
        self.receive && (self.play == Some(Playback::Outside) || cfg!(feature = "alsa"))
    }

    /// The ALSA device to capture from, if any (`audio_record`, default "default").
    pub fn capture_device(&self) -> Option<&str> {
        (self.enable && !self.external).then(|| self.record.as_deref().unwrap_or("default"))
    }

    /// The ALSA device to play on, if any (`audio_play`, default "default").
    pub fn playback_device(&self) -> Option<&str> {
        if !self.receive {
            return None;
        }
        match &self.play {
            Some(Playback::Outside) => None,
            Some(Playback::Device(d)) => Some(d),
            None => Some("default"),
        }
    }

    /// Why a side that is switched on cannot work in this build, if it cannot (told once
    /// as a warning: everything else goes on without audio). Devices that do not open
    /// are told when they fail to.
    pub fn problems(&self) -> Vec<String> {
        if cfg!(feature = "alsa") {
            return Vec::new();
        }
        let mut p = Vec::new();
        if let Some(d) = self.capture_device() {
            p.push(format!(
                "audio_enable is on but nothing is sent: this build has no ALSA (capture \
                 device {d:?}); set audio_external:1 and push PCM"
            ));
        }
        if let Some(d) = self.playback_device() {
            p.push(format!(
                "audio_receive is on but nothing is played: this build has no ALSA (playback \
                 device {d:?}); set audio_play to \"outside\" to get the mixed audio"
            ));
        }
        p
    }
}

/// One captured 10 ms frame: rate, channels, interleaved samples.
pub(crate) type Captured = (u32, u16, Vec<i16>);

/// Capture or playback, for device lists and selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioDirection {
    Capture,
    Playback,
}

impl AudioDirection {
    pub fn name(self) -> &'static str {
        match self {
            AudioDirection::Capture => "capture",
            AudioDirection::Playback => "playback",
        }
    }
}

/// The audio devices there are for `dir` (ALSA PCM names, as `audio_record` /
/// `audio_play` take them); empty in a build without ALSA.
pub fn devices(dir: AudioDirection) -> Vec<String> {
    #[cfg(feature = "alsa")]
    {
        alsa_dev::devices(dir)
    }
    #[cfg(not(feature = "alsa"))]
    {
        let _ = dir;
        Vec::new()
    }
}

/// One 10 ms frame of the mixed audio of every party heard: s16le interleaved, 48 kHz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedAudio {
    pub channels: u16,
    /// `FRAME * channels` samples.
    pub samples: Vec<i16>,
    /// Frames handed out before this one (a gap in the count means frames were lost
    /// because the application did not read events fast enough).
    pub index: u64,
}

pub use decode::AudioCodec;
pub use jitter::JitterStats;
pub use mix::mix;

/// One audio line's playout figures ([`crate::Event::AudioStats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineStats {
    pub line: usize,
    /// A party is being played on it now.
    pub playing: bool,
    /// The playout delay its jitter buffer aims at.
    pub target_ms: u32,
    pub counts: JitterStats,
}

/// Checks one external PCM frame: a supported rate, 1..=[`MAX_CHANNELS`] channels, and
/// exactly 10 ms of samples. Returns the samples per channel.
pub fn check_frame(rate: u32, channels: u16, samples: usize) -> Result<usize, SdkError> {
    if !EXTERNAL_RATES.contains(&rate) {
        return Err(SdkError::new(
            ErrorCode::BadAudioFrame,
            format!("sample rate {rate} Hz is not one of {EXTERNAL_RATES:?}"),
        ));
    }
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(SdkError::new(
            ErrorCode::BadAudioFrame,
            format!("{channels} channels: a frame has 1..={MAX_CHANNELS}"),
        ));
    }
    let per_channel = (rate / 100) as usize;
    let want = per_channel * usize::from(channels);
    if samples != want {
        return Err(SdkError::new(
            ErrorCode::BadAudioFrame,
            format!(
                "{samples} samples: 10 ms at {rate} Hz with {channels} channel(s) is exactly {want}"
            ),
        ));
    }
    Ok(per_channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_must_be_10_ms_at_a_listed_rate() {
        assert_eq!(check_frame(48000, 1, 480).unwrap(), 480);
        assert_eq!(check_frame(44100, 2, 882).unwrap(), 441);
        assert_eq!(check_frame(8000, 1, 80).unwrap(), 80);
        for (rate, ch, n) in [
            (48000, 1, 479),
            (48000, 1, 960),
            (48000, 2, 480),
            (22050, 1, 220),
            (44100, 0, 0),
            (16000, 9, 1440),
        ] {
            let e = check_frame(rate, ch, n).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadAudioFrame, "{rate} {ch} {n}");
        }
    }

    #[test]
    fn only_the_uplink_is_on_by_default_on_the_default_devices() {
        let f = AudioConfig::spec_default(fieldlink_proto::Role::Field);
        let r = AudioConfig::spec_default(fieldlink_proto::Role::Remote);
        assert!(f.enable && !f.receive && r.receive && !r.enable);
        assert_eq!(
            (f.capture_device(), f.playback_device()),
            (Some("default"), None)
        );
        assert_eq!(
            (r.capture_device(), r.playback_device()),
            (None, Some("default"))
        );
        let outside = AudioConfig {
            play: Some(Playback::Outside),
            external: true,
            ..r
        };
        assert_eq!(outside.playback_device(), None);
        // Without ALSA, a device that cannot be used is said, not silently ignored.
        let n = if cfg!(feature = "alsa") { 0 } else { 1 };
        assert_eq!(f.problems().len(), n);
    }
}
