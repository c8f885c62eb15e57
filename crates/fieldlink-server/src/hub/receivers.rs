//! A remote device's receivers (`conn_fd`s): which stream each one wants (watch, switch,
//! unwatch), the stream states they are told (connecting, playing, failed, disconnected,
//! with a reason), and the demand told to external sources (GB28181 channels). Does not
//! write media: `forward` does, from what is recorded here.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use fieldlink_proto::{DeviceId, ErrorCode, Role, ServerMsg, StreamState};

use super::forward::KEYFRAME_REQUEST_RETRY;
use super::gop::CachedFrame;
use super::{ConnId, Hub, Outbound};

/// One receiver of a remote device: which stream it wants, and the timestamp rewrite
/// that keeps its output continuous across switches.
#[derive(Debug, Clone, Default)]
pub(super) struct Receiver {
    pub(super) want: Option<(DeviceId, u32)>,
    /// A keyframe of `want` has been forwarded since it was set.
    pub(super) live: bool,
    /// Added (wrapping) to the source's 90 kHz time.
    pub(super) offset: u64,
    pub(super) last_out: Option<u64>,
    /// Frames (with their output time) still to write, oldest first: a start from a
    /// cached group of pictures goes out at [`REPLAY_BYTES`] per [`REPLAY_EVERY`] (a
    /// whole group at once overflows socket buffers), and live frames queue behind it.
    pub(super) backlog: VecDeque<(CachedFrame, u64)>,
    /// Frames written to it (all streams), for its quality score.
    pub(super) sent: u64,
    /// Where its last quality interval started (`quality`).
    pub(super) quality_mark: Option<super::quality::Mark>,
}

impl Hub {
    /// SPEC §2 connect: routes `stream_ids[i]` of `gwid` to receiver `conn_fds[i]`.
    pub(super) fn watch(
        &mut self,
        conn: ConnId,
        gwid: &DeviceId,
        stream_ids: &[u32],
        conn_fds: &[u32],
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        if stream_ids.len() != conn_fds.len() || stream_ids.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        if conn_fds
            .iter()
            .any(|fd| *fd as usize >= client.receivers.len())
        {
            return Err(ErrorCode::ConnFdOutOfRange);
        }
        // The stream count is known while the field device is online.
        let streams = self.stream_count(gwid);
        if let Some(n) = streams {
            if n == 0 {
                return Err(ErrorCode::NoVideo);
            }
            if stream_ids.iter().any(|s| *s as usize >= n) {
                return Err(ErrorCode::StreamOutOfRange);
            }
        }
        self.connect(conn, gwid)?;
        // Streams whose source (a camera) does not work now, and why.
        let failed: HashMap<u32, String> = self
            .by_device
            .get(gwid)
            .and_then(|f| self.clients.get(f))
            .and_then(|c| c.peer.as_ref())
            .map(|p| {
                p.sources
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as u32, s.failed.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut msgs = Vec::new();
        let mut started = Vec::new();
        if let Some(client) = self.clients.get_mut(&conn) {
            for (s, fd) in stream_ids.iter().zip(conn_fds) {
                let r = &mut client.receivers[*fd as usize];
                let new = Some((gwid.clone(), *s));
                if r.want == new && r.live {
                    continue;
                }
                if let Some((of, os)) = r.want.take() {
                    msgs.push(stream_state(
                        *fd,
                        of,
                        os,
                        StreamState::Disconnected,
                        Some("another stream was connected"),
                    ));
                }
                r.want = new;
                r.live = false;
                r.backlog.clear();
                let (state, why) = match (streams, failed.get(s)) {
                    (None, _) => (StreamState::Failed, Some("field device offline")),
                    (Some(_), Some(why)) => (StreamState::Failed, Some(why.as_str())),
                    (Some(_), None) => (StreamState::Connecting, None),
                };
                if state == StreamState::Connecting {
                    started.push((*fd as usize, *s));
                }
                msgs.push(stream_state(*fd, gwid.clone(), *s, state, why));
            }
        }
        for m in msgs {
            self.send(conn, m);
        }
        for (fd, s) in started {
            self.start_from_gop(conn, fd, gwid, s);
        }
        for s in stream_ids {
            self.ask_keyframe(gwid, *s);
        }
        self.keyframe_rescan = Some(Instant::now() + KEYFRAME_REQUEST_RETRY / 3);
        Ok(())
    }

    /// SPEC §2 disconnect / disconnect_all (`None`).
    pub(super) fn unwatch(
        &mut self,
        conn: ConnId,
        conn_fds: Option<&[u32]>,
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        let all: Vec<u32> = (0..client.receivers.len() as u32).collect();
        let fds = conn_fds.unwrap_or(&all);
        if fds.iter().any(|fd| *fd as usize >= client.receivers.len()) {
            return Err(ErrorCode::ConnFdOutOfRange);
        }
        let mut msgs = Vec::new();
        for fd in fds {
            let r = &mut client.receivers[*fd as usize];
            if let Some((f, s)) = r.want.take() {
                r.live = false;
                r.backlog.clear();
                msgs.push(stream_state(*fd, f, s, StreamState::Disconnected, None));
            }
        }
        for m in msgs {
            self.send(conn, m);
        }
        Ok(())
    }

    /// Receivers of one stream fail, and stop wanting it (it cannot play).
    pub(super) fn fail_stream(&mut self, field: &DeviceId, stream: u32, why: &str) {
        let want = Some((field.clone(), stream));
        let mut out = Vec::new();
        // Receivers belong to remote clients only.
        let remotes: Vec<ConnId> = self.remotes.iter().copied().collect();
        for conn in &remotes {
            let Some(c) = self.clients.get_mut(conn) else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if r.want == want {
                    r.want = None;
                    r.live = false;
                    r.backlog.clear();
                    out.push((
                        *conn,
                        stream_state(
                            fd as u32,
                            field.clone(),
                            stream,
                            StreamState::Failed,
                            Some(why),
                        ),
                    ));
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// Tells every receiver watching `field` (only its `stream`, if given) a new state
    /// (field offline / back, a source failed / works again).
    pub(super) fn set_watchers(
        &mut self,
        field: &DeviceId,
        stream: Option<u32>,
        state: StreamState,
        why: Option<&str>,
    ) {
        let mut out = Vec::new();
        // Receivers belong to remote clients only.
        let remotes: Vec<ConnId> = self.remotes.iter().copied().collect();
        for conn in &remotes {
            let Some(c) = self.clients.get_mut(conn) else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                if let Some((f, s)) = &r.want {
                    if f == field && stream.is_none_or(|x| x == *s) {
                        r.live = false;
                        r.backlog.clear();
                        out.push((*conn, stream_state(fd as u32, f.clone(), *s, state, why)));
                    }
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// How many streams an online field device has: its video m-lines, or an external
    /// source's channels.
    pub(super) fn stream_count(&self, field: &DeviceId) -> Option<usize> {
        let c = self
            .by_device
            .get(field)
            .and_then(|c| self.clients.get(c))?;
        match (&c.external, &c.peer) {
            (Some((n, _)), _) => Some(*n as usize),
            (None, Some(p)) => Some(p.video_mids.len()),
            (None, None) => None,
        }
    }

    /// A field device's video m-lines are known: receivers waiting for it connect.
    pub(super) fn field_video_ready(&mut self, field: &DeviceId) {
        let n = self.stream_count(field).unwrap_or(0);
        let mut out = Vec::new();
        // Receivers belong to remote clients only.
        let remotes: Vec<ConnId> = self.remotes.iter().copied().collect();
        for conn in &remotes {
            let Some(c) = self.clients.get_mut(conn) else {
                continue;
            };
            for (fd, r) in c.receivers.iter_mut().enumerate() {
                let Some((f, s)) = r.want.clone() else {
                    continue;
                };
                if &f != field {
                    continue;
                }
                r.live = false;
                r.backlog.clear();
                if (s as usize) < n {
                    out.push((
                        *conn,
                        stream_state(fd as u32, f, s, StreamState::Connecting, None),
                    ));
                } else {
                    r.want = None;
                    out.push((
                        *conn,
                        stream_state(
                            fd as u32,
                            f,
                            s,
                            StreamState::Disconnected,
                            Some("stream id out of range for this field device"),
                        ),
                    ));
                }
            }
        }
        for (conn, m) in out {
            self.send(conn, m);
        }
    }

    /// `ClientMsg::SourceState` from a field device: receivers of a failed stream are
    /// told why, and resume when it works again.
    pub(super) fn source_state(
        &mut self,
        conn: ConnId,
        stream: u32,
        ok: bool,
        reason: Option<String>,
        keyframe_on_request: bool,
    ) -> Result<(), ErrorCode> {
        let c = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        let field = c.info.device.clone();
        let src = c
            .peer
            .as_mut()
            .ok_or(ErrorCode::MediaNotReady)?
            .sources
            .get_mut(stream as usize)
            .ok_or(ErrorCode::StreamOutOfRange)?;
        src.keyframe_on_request = keyframe_on_request;
        if keyframe_on_request {
            src.gop.clear();
        }
        let was_failed = src.failed.is_some();
        src.failed = if ok {
            None
        } else {
            Some(reason.unwrap_or_else(|| "video source failed".into()))
        };
        if let Some(why) = src.failed.clone() {
            src.gop.clear();
            tracing::info!(%field, stream, "source failed: {why}");
            self.set_watchers(&field, Some(stream), StreamState::Failed, Some(&why));
        } else if was_failed {
            tracing::info!(%field, stream, "source works again");
            self.set_watchers(&field, Some(stream), StreamState::Connecting, None);
            self.ask_keyframe(&field, stream);
        }
        Ok(())
    }

    /// Tells each external source which of its streams receivers want, when that changed.
    pub(super) fn update_demand(&mut self) {
        // Receivers belong to remotes; only field devices wanted now or before are visited.
        let mut wanted: HashMap<DeviceId, Vec<u32>> = HashMap::new();
        for c in self.remotes.iter().filter_map(|c| self.clients.get(c)) {
            for (f, s) in c.receivers.iter().filter_map(|r| r.want.as_ref()) {
                wanted.entry(f.clone()).or_default().push(*s);
            }
        }
        for v in wanted.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        let before = std::mem::take(&mut self.demand);
        let fields: std::collections::HashSet<&DeviceId> =
            wanted.keys().chain(before.keys()).collect();
        for f in fields {
            let Some(c) = self.by_device.get(f).and_then(|c| self.clients.get_mut(c)) else {
                continue;
            };
            let Some((_, told)) = c.external.as_mut() else {
                continue;
            };
            let now = wanted.get(f).cloned().unwrap_or_default();
            if *told != now {
                *told = now.clone();
                let _ = c.out.try_send(Outbound::Wanted(now));
            }
        }
        self.demand = wanted;
    }
}

pub(super) fn stream_state(
    conn_fd: u32,
    gwid: DeviceId,
    stream_id: u32,
    state: StreamState,
    reason: Option<&str>,
) -> ServerMsg {
    ServerMsg::StreamState {
        conn_fd,
        gwid,
        stream_id,
        state,
        reason: reason.map(str::to_string),
    }
}
