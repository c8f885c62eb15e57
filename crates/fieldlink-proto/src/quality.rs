//! Connection quality of one receiver (pure): a level from what the server measured over
//! the last interval. The server scores every playing receiver every
//! [`QUALITY_EVERY_MS`] and tells its remote (`quality` events), so the SDK, the CLI and
//! the browser console all show the same levels.
//!
//! Levels are LiveKit's (excellent, good, poor, lost). The thresholds follow Twilio's
//! network warnings where they exist (loss from 1%, jitter from 30 ms, RTT from 400 ms)
//! and SPEC §6's normal ranges (RTT < 100 ms): see docs/diagnostics.md.

use serde::{Deserialize, Serialize};

/// How often each playing receiver is scored, ms.
pub const QUALITY_EVERY_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Nothing arrives.
    Lost,
    Poor,
    Good,
    Excellent,
}

/// A receiver's score as its remote is told it (`quality` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub conn_fd: u32,
    pub gwid: crate::DeviceId,
    pub stream_id: u32,
    pub level: Quality,
    /// The figures it was scored from (see [`Inputs`]).
    pub fps: f64,
    pub source_fps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// Why it is not excellent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What one receiver got over the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Inputs {
    /// Frames the server forwarded to the receiver, per second.
    pub fps: f64,
    /// Frames its source (the field device's stream) delivered to the server, per second.
    pub source_fps: f64,
    /// From the receiver's RTCP reports: loss (percent), round trip (ms), jitter (ms).
    pub loss_pct: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
}

/// The level, and the reason when it is not excellent.
pub fn score(i: &Inputs) -> (Quality, Option<String>) {
    if i.source_fps < 1.0 {
        return (
            Quality::Lost,
            Some("no frames: the source sends nothing".into()),
        );
    }
    if i.fps <= 0.0 {
        return (Quality::Lost, Some("no frames reach this receiver".into()));
    }
    let loss = i.loss_pct.unwrap_or(0.0);
    let rtt = i.rtt_ms.unwrap_or(0.0);
    let jitter = i.jitter_ms.unwrap_or(0.0);
    // Frames the receiver gets of those its source made (a source slower than its
    // configured rate is the field's problem, not this connection's).
    let ratio = i.fps / i.source_fps;
    let poor = [
        (loss >= 5.0, format!("loss {loss:.1}%")),
        (rtt >= 400.0, format!("round trip {rtt:.0} ms")),
        (jitter >= 100.0, format!("jitter {jitter:.0} ms")),
        (
            ratio < 0.5,
            format!("{:.0} of {:.0} fps arrive", i.fps, i.source_fps),
        ),
    ];
    if let Some((_, why)) = poor.iter().find(|(hit, _)| *hit) {
        return (Quality::Poor, Some(why.clone()));
    }
    let good = [
        (loss >= 1.0, format!("loss {loss:.1}%")),
        (rtt >= 100.0, format!("round trip {rtt:.0} ms")),
        (jitter >= 30.0, format!("jitter {jitter:.0} ms")),
        (
            ratio < 0.8,
            format!("{:.0} of {:.0} fps arrive", i.fps, i.source_fps),
        ),
    ];
    if let Some((_, why)) = good.iter().find(|(hit, _)| *hit) {
        return (Quality::Good, Some(why.clone()));
    }
    (Quality::Excellent, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(fps: f64, loss: f64, rtt: f64, jitter: f64) -> Quality {
        score(&Inputs {
            fps,
            source_fps: 25.0,
            loss_pct: Some(loss),
            rtt_ms: Some(rtt),
            jitter_ms: Some(jitter),
        })
        .0
    }

    #[test]
    fn levels_follow_the_thresholds() {
        assert_eq!(at(25.0, 0.0, 5.0, 2.0), Quality::Excellent);
        assert_eq!(at(25.0, 1.0, 5.0, 2.0), Quality::Good);
        assert_eq!(at(25.0, 0.0, 150.0, 2.0), Quality::Good);
        assert_eq!(at(25.0, 0.0, 5.0, 40.0), Quality::Good);
        assert_eq!(at(18.0, 0.0, 5.0, 2.0), Quality::Good);
        assert_eq!(at(25.0, 6.0, 5.0, 2.0), Quality::Poor);
        assert_eq!(at(25.0, 0.0, 450.0, 2.0), Quality::Poor);
        assert_eq!(at(10.0, 0.0, 5.0, 2.0), Quality::Poor);
        assert_eq!(at(0.0, 0.0, 5.0, 2.0), Quality::Lost);
        // A straggler from a source that stopped is no picture.
        let stopped = Inputs {
            fps: 0.5,
            source_fps: 0.0,
            ..Default::default()
        };
        assert_eq!(score(&stopped).0, Quality::Lost);
        // Unknown RTCP figures do not count against the connection.
        let unknown = score(&Inputs {
            fps: 25.0,
            source_fps: 25.0,
            ..Default::default()
        });
        assert_eq!(unknown, (Quality::Excellent, None));
        let (q, why) = score(&Inputs {
            fps: 10.0,
            source_fps: 25.0,
            loss_pct: Some(6.0),
            ..Default::default()
        });
        assert_eq!((q, why.as_deref()), (Quality::Poor, Some("loss 6.0%")));
        assert!(Quality::Lost < Quality::Poor && Quality::Good < Quality::Excellent);
    }
}
