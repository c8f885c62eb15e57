//! Recording received streams to fragmented MP4 segments (SPEC §2 `record_config`).

use std::io::Write;
use std::path::{Path, PathBuf};

use fieldlink_media::fmp4::{SegmentOut, Segmenter, TIMESCALE};
use serde::Deserialize;

use crate::{ErrorCode, SdkError};

/// The remote device's global recording configuration: applies to every connected stream
/// unless `connect_streams` gives a `record_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSettings {
    pub dir: PathBuf,
    /// Segment length, seconds.
    pub segment_secs: u32,
}

/// SPEC §2 per-connect `record_config`:
/// `{"file_names":[{"file":"test","duration":15},{"file":"test01","duration":15}]}`, one
/// entry per connected stream, in order; `file` is the base name, `duration` the segment
/// length in seconds. Segments are written as `<file>_0001.mp4`, `<file>_0002.mp4`, ...
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    pub file_names: Vec<FileName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileName {
    pub file: String,
    pub duration: u32,
}

impl RecordConfig {
    pub fn parse(json: &str) -> Result<RecordConfig, SdkError> {
        let c: RecordConfig = serde_json::from_str(json)
            .map_err(|e| SdkError::new(ErrorCode::BadRequest, format!("record_config: {e}")))?;
        for (i, f) in c.file_names.iter().enumerate() {
            check_base(&f.file).map_err(|m| {
                SdkError::new(
                    ErrorCode::BadRequest,
                    format!("record_config.file_names[{i}].file: {m}"),
                )
            })?;
            if !(1..=3600).contains(&f.duration) {
                return Err(SdkError::new(
                    ErrorCode::BadRequest,
                    format!("record_config.file_names[{i}].duration must be 1..=3600 s"),
                ));
            }
        }
        Ok(c)
    }
}

fn check_base(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err("1..=100 characters of A-Z a-z 0-9 _ - . (not starting with a dot)")
    }
}

/// Where and how one receiver records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `gwid#stream`: a new stream on the receiver starts a new recording.
    pub source: String,
    pub dir: PathBuf,
    pub base: String,
    pub segment_secs: u32,
}

/// The recorder of one receiver: segmenter plus the open file.
pub(crate) struct Recorder {
    pub target: Target,
    seg: Segmenter,
    file: Option<std::fs::File>,
}

impl Recorder {
    pub fn new(target: Target) -> Recorder {
        let seg = Segmenter::new(u64::from(target.segment_secs) * u64::from(TIMESCALE));
        Recorder {
            target,
            seg,
            file: None,
        }
    }

    fn path(&self, index: u32) -> PathBuf {
        self.target
            .dir
            .join(format!("{}_{index:04}.mp4", self.target.base))
    }

    fn apply(&mut self, outs: Vec<SegmentOut>) -> Result<(), SdkError> {
        let io = |p: &Path, e: std::io::Error| {
            SdkError::new(
                ErrorCode::Internal,
                format!("recording {}: {e}", p.display()),
            )
        };
        for o in outs {
            match o {
                SegmentOut::Open { index, bytes } => {
                    let p = self.path(index);
                    std::fs::create_dir_all(&self.target.dir)
                        .map_err(|e| io(&self.target.dir, e))?;
                    let mut f = std::fs::File::create(&p).map_err(|e| io(&p, e))?;
                    f.write_all(&bytes).map_err(|e| io(&p, e))?;
                    self.file = Some(f);
                }
                SegmentOut::Append(bytes) => {
                    if let Some(f) = self.file.as_mut() {
                        f.write_all(&bytes).map_err(|e| {
                            SdkError::new(ErrorCode::Internal, format!("recording: {e}"))
                        })?;
                    }
                }
                SegmentOut::Close { .. } => {
                    if let Some(f) = self.file.take() {
                        f.sync_all().map_err(|e| {
                            SdkError::new(ErrorCode::Internal, format!("recording: {e}"))
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn push(&mut self, au: &[u8], rtp_time: u64) -> Result<(), SdkError> {
        let outs = self.seg.push(au, rtp_time);
        self.apply(outs)
    }

    /// One Opus packet of the field device's audio, recorded next to the video.
    pub fn push_audio(&mut self, packet: &[u8]) -> Result<(), SdkError> {
        let (Ok(n), Ok(ch)) = (
            opus::packet::get_nb_samples(packet, crate::audio::RATE),
            opus::packet::get_nb_channels(packet),
        ) else {
            return Ok(()); // not a packet a player could decode either
        };
        let ch = if ch == opus::Channels::Stereo { 2 } else { 1 };
        let outs = self.seg.push_audio(packet, n as u32, ch);
        self.apply(outs)
    }

    pub fn finish(&mut self) -> Result<(), SdkError> {
        let outs = self.seg.finish();
        self.apply(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_refuses_bad_names() {
        let c = RecordConfig::parse(
            r#"{"file_names":[{"file":"test","duration":15},{"file":"test01","duration":15}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.file_names[1],
            FileName {
                file: "test01".into(),
                duration: 15
            }
        );
        for bad in [
            r#"{"file_names":[{"file":"../x","duration":15}]}"#,
            r#"{"file_names":[{"file":"","duration":15}]}"#,
            r#"{"file_names":[{"file":"a","duration":0}]}"#,
            r#"{"file_names":[{"file":"a"}]}"#,
            r#"{"files":[]}"#,
        ] {
            assert!(RecordConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
