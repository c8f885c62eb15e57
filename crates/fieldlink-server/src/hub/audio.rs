//! Audio forwarding (SPEC §3): what a field device says goes to every remote in session
//! with it that takes audio; what a remote says goes to the field devices it is in
//! session with that take audio. No remote hears another remote. Packets are forwarded
//! as they come (no decoding here).
//!
//! A GB28181 camera's channel audio (G.711, from its PS) goes as PCMA/PCMU to the remotes
//! whose receivers play that channel and that negotiated it.
//!
//! A receiving device offers a few audio lines; each carries one party at a time (its
//! own RTP stream, so the device keeps one decoder per party and mixes). A party keeps its
//! line while it talks; a line silent for [`LINE_IDLE`] may carry someone else. When
//! every line carries another party, the packet is counted as unrouted.

use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Frequency, MediaData, MediaTime, Mid};

use fieldlink_proto::{DeviceId, ErrorCode, Role, ServerMsg};

use super::{AudioOffer, ConnId, Hub};

/// Most audio lines of one peer connection.
const MAX_AUDIO_LINES: usize = 8;
/// A line silent this long may be given to another party.
const LINE_IDLE: Duration = Duration::from_secs(1);

/// One device's audio lines and who is heard on each.
#[derive(Debug)]
pub(super) struct AudioLines {
    pub(super) mids: Vec<Mid>,
    /// The device sends on the first line.
    pub(super) send: bool,
    /// The device takes audio on its lines.
    pub(super) receive: bool,
    /// Per line: the party it carries and when it last did.
    heard: Vec<Option<(Party, Instant)>>,
}

/// Who is heard on a line: a device, or one channel of an external source (a camera).
type Party = (DeviceId, Option<u32>);

impl AudioLines {
    pub(super) fn from_offer(o: AudioOffer) -> Result<Option<AudioLines>, (ErrorCode, String)> {
        if o.mids.is_empty() {
            return Ok(None);
        }
        if o.mids.len() > MAX_AUDIO_LINES {
            return Err((
                ErrorCode::BadRequest,
                format!("at most {MAX_AUDIO_LINES} audio lines"),
            ));
        }
        Ok(Some(AudioLines {
            heard: vec![None; o.mids.len()],
            mids: o.mids.iter().map(|m| Mid::from(m.as_str())).collect(),
            send: o.send,
            receive: o.receive,
        }))
    }

    /// The line for `from`: the one it already has, else one that is free or idle; and
    /// whether it was just given to `from`.
    fn line_for(&mut self, from: &Party, now: Instant) -> Option<(usize, bool)> {
        if let Some(i) = self
            .heard
            .iter()
            .position(|h| h.as_ref().is_some_and(|(d, _)| d == from))
        {
            self.heard[i] = Some((from.clone(), now));
            return Some((i, false));
        }
        let i = self.heard.iter().position(|h| {
            h.as_ref()
                .is_none_or(|(_, t)| now.saturating_duration_since(*t) >= LINE_IDLE)
        })?;
        self.heard[i] = Some((from.clone(), now));
        Some((i, true))
    }

    /// Who line `i` carries, as told to the device.
    fn told(i: usize, party: &Party) -> ServerMsg {
        ServerMsg::AudioLine {
            line: i as u32,
            gwid: party.0.clone(),
            stream_id: party.1,
        }
    }
}

impl Hub {
    /// Whether `mid` is one of the audio lines of `conn`'s peer.
    pub(super) fn is_audio(&self, conn: ConnId, mid: Mid) -> bool {
        self.clients
            .get(&conn)
            .and_then(|c| c.peer.as_ref()?.audio.as_ref())
            .is_some_and(|a| a.mids.contains(&mid))
    }

    /// Who hears what `from` says: the other side of each of its sessions, where it
    /// takes audio.
    fn listeners(&self, from: ConnId) -> Vec<ConnId> {
        let Some(c) = self.clients.get(&from) else {
            return Vec::new();
        };
        let parties: Vec<&DeviceId> = match c.info.role {
            Role::Field => self
                .fields
                .get(&c.info.device)
                .map(|fc| fc.members().iter().collect())
                .unwrap_or_default(),
            Role::Remote => c.sessions.iter().collect(),
        };
        parties
            .into_iter()
            .filter_map(|d| self.by_device.get(d).copied())
            .filter(|conn| *conn != from)
            .collect()
    }

    /// An audio packet from `from`: written to the line that carries `from` on every
    /// listener. Returns the peers written to.
    pub(super) fn on_audio(&mut self, from: ConnId, d: Box<MediaData>) -> Vec<ConnId> {
        let Some(me) = self.clients.get(&from).and_then(|c| {
            let a = c.peer.as_ref()?.audio.as_ref()?;
            (a.send && a.mids.first() == Some(&d.mid)).then(|| (c.info.device.clone(), None))
        }) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut written = Vec::new();
        let mut told = Vec::new();
        for conn in self.listeners(from) {
            let Some(peer) = self.clients.get_mut(&conn).and_then(|c| c.peer.as_mut()) else {
                continue;
            };
            let Some(lines) = peer.audio.as_mut().filter(|a| a.receive) else {
                continue;
            };
            let Some((i, new)) = lines.line_for(&me, now) else {
                self.metrics.audio_packets_unrouted.inc();
                continue;
            };
            if new {
                told.push((conn, AudioLines::told(i, &me)));
            }
            let mid = lines.mids[i];
            let Some(writer) = peer.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(d.params) else {
                continue;
            };
            if writer
                .write(pt, d.network_time, d.time, d.data.clone())
                .is_ok()
            {
                self.metrics.audio_packets_forwarded.inc();
                written.push(conn);
            }
        }
        for (conn, m) in told {
            self.send(conn, m);
        }
        written
    }

    /// A G.711 frame of an external source's channel (`rtp_time` 90 kHz): to every
    /// remote whose receiver plays that channel and whose audio lines take the codec.
    pub(super) fn on_external_audio(
        &mut self,
        conn: ConnId,
        stream: u32,
        alaw: bool,
        data: Vec<u8>,
        rtp_time: u64,
    ) -> Vec<ConnId> {
        let Some(field) = self
            .clients
            .get(&conn)
            .filter(|c| c.external.as_ref().is_some_and(|(n, _)| stream < *n))
            .map(|c| c.info.device.clone())
        else {
            return Vec::new();
        };
        let members: Vec<ConnId> = self
            .fields
            .get(&field)
            .map(|fc| {
                fc.members()
                    .iter()
                    .filter_map(|m| self.by_device.get(m).copied())
                    .collect()
            })
            .unwrap_or_default();
        let want = Some((field.clone(), stream));
        let party = (field, Some(stream));
        let codec = if alaw { Codec::PCMA } else { Codec::PCMU };
        let time = MediaTime::new(rtp_time * 8000 / 90_000, Frequency::EIGHT_KHZ);
        let now = Instant::now();
        let data: std::sync::Arc<[u8]> = data.into();
        let mut written = Vec::new();
        let mut told = Vec::new();
        for conn in members {
            let Some(c) = self.clients.get_mut(&conn) else {
                continue;
            };
            if !c.receivers.iter().any(|r| r.want == want) {
                continue;
            }
            let Some(peer) = c.peer.as_mut() else {
                continue;
            };
            let Some(lines) = peer.audio.as_mut().filter(|a| a.receive) else {
                continue;
            };
            let Some((i, new)) = lines.line_for(&party, now) else {
                self.metrics.audio_packets_unrouted.inc();
                continue;
            };
            if new {
                told.push((conn, AudioLines::told(i, &party)));
            }
            let Some(writer) = peer.rtc.writer(lines.mids[i]) else {
                continue;
            };
            let Some(pt) = writer
                .payload_params()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
            else {
                continue; // this receiver did not negotiate G.711
            };
            if writer.write(pt, now, time, data.clone()).is_ok() {
                self.metrics.audio_packets_forwarded.inc();
                written.push(conn);
            }
        }
        for (conn, m) in told {
            self.send(conn, m);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_keeps_its_line_and_idle_lines_are_reused() {
        let mut l = AudioLines::from_offer(AudioOffer {
            mids: vec!["a0".into(), "a1".into()],
            send: false,
            receive: true,
        })
        .unwrap()
        .unwrap();
        let party = |s: &str| (s.parse::<DeviceId>().unwrap(), None);
        let (x, y, z) = (party("p/x"), party("p/y"), party("p/z"));
        let t = Instant::now();
        assert_eq!(l.line_for(&x, t), Some((0, true)));
        assert_eq!(l.line_for(&y, t), Some((1, true)));
        assert_eq!(l.line_for(&x, t), Some((0, false)));
        // Both lines busy: z is not heard until one falls silent.
        assert_eq!(l.line_for(&z, t + Duration::from_millis(500)), None);
        assert_eq!(
            l.line_for(&x, t + Duration::from_millis(900)),
            Some((0, false))
        );
        assert_eq!(l.line_for(&z, t + LINE_IDLE), Some((1, true)));
    }

    #[test]
    fn too_many_lines_are_refused() {
        let o = AudioOffer {
            mids: (0..9).map(|i| format!("a{i}")).collect(),
            send: true,
            receive: true,
        };
        assert_eq!(
            AudioLines::from_offer(o).unwrap_err().0,
            ErrorCode::BadRequest
        );
    }
}
