//! Session diagnostics (SPEC §6): starting a diagnosis for a remote and the field device
//! it watches, collecting what both sides measured over the window, and joining it into
//! the report the remote gets. The devices measure (SDK and browser alike); the checks
//! and causes are derived here, in one place (`fieldlink_proto::diag`), with what only
//! the hub knows (who is connected, the modes). Touches no media and no session state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fieldlink_proto::diag::{
    field_part, path_report, remote_part, FieldMeasure, FieldSide, PathMeasure, RemoteMeasure,
    RemoteSide, Report, StreamReport, DIAG_GRACE_MS, DIAG_WINDOW_MS, MAX_PATHS, OK,
};
use fieldlink_proto::{DeviceId, ErrorCode, Role, ServerMsg};

use super::{Arrived, ConnId, Hub};

/// Most diagnoses running at once on the server (each is small; this bounds the table).
pub(super) const MAX_DIAGS: usize = 1024;

/// One running diagnosis.
pub(super) struct Diag {
    id: u64,
    /// The remote that asked.
    remote: ConnId,
    field: DeviceId,
    /// The remote's receivers connected to the field's streams at the start:
    /// (conn_fd, stream_id).
    pairs: Vec<(u32, u32)>,
    /// When the measures are due at the latest.
    due: Instant,
    field_measures: Option<Vec<FieldMeasure>>,
    /// The field device's network paths (several: `network_bind`), from its measure.
    field_paths: Vec<PathMeasure>,
    remote_measures: Option<Vec<RemoteMeasure>>,
    /// A source outside WebRTC (a GB28181 camera) has no SDK to measure with: the hub
    /// measures what arrived from it, from here.
    external_from: Option<(Instant, Vec<(u32, Arrived)>)>,
}

impl Hub {
    /// Starts a diagnosis of `gwid` for remote `conn`; fails at once without a connection.
    pub(super) fn diagnose(&mut self, conn: ConnId, gwid: &DeviceId) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        if !client.sessions.contains(gwid) {
            return Err(ErrorCode::NotInSession);
        }
        let field_conn = *self.by_device.get(gwid).ok_or(ErrorCode::FieldOffline)?;
        let pairs: Vec<(u32, u32)> = client
            .receivers
            .iter()
            .enumerate()
            .filter_map(|(fd, r)| match &r.want {
                Some((f, s)) if f == gwid => Some((fd as u32, *s)),
                _ => None,
            })
            .collect();
        if pairs.is_empty() {
            return Err(ErrorCode::NotConnected);
        }
        if self
            .diags
            .iter()
            .any(|d| d.remote == conn && &d.field == gwid)
        {
            return Err(ErrorCode::DiagBusy);
        }
        if self.diags.len() >= MAX_DIAGS {
            return Err(ErrorCode::Congested);
        }
        self.next_diag += 1;
        let id = self.next_diag;
        let mut stream_ids: Vec<u32> = pairs.iter().map(|(_, s)| *s).collect();
        stream_ids.sort_unstable();
        stream_ids.dedup();
        let window = Duration::from_millis(u64::from(DIAG_WINDOW_MS));
        let grace = Duration::from_millis(u64::from(DIAG_GRACE_MS));
        let external_from = self
            .clients
            .get(&field_conn)
            .filter(|c| c.external.is_some())
            .map(|c| {
                let at = |s: u32| c.frames_in.get(s as usize).copied().unwrap_or_default();
                (
                    Instant::now(),
                    stream_ids.iter().map(|s| (*s, at(*s))).collect(),
                )
            });
        self.diags.push(Diag {
            id,
            remote: conn,
            field: gwid.clone(),
            pairs: pairs.clone(),
            due: Instant::now() + window + grace,
            field_measures: None,
            field_paths: Vec::new(),
            remote_measures: None,
            external_from,
        });
        tracing::info!(field = %gwid, diag = id, "diagnosis started");
        let start = |stream_ids: Vec<u32>, conn_fds: Vec<u32>| ServerMsg::DiagStart {
            diag: id,
            gwid: gwid.clone(),
            window_ms: DIAG_WINDOW_MS,
            stream_ids,
            conn_fds,
        };
        let external = self
            .clients
            .get(&field_conn)
            .is_some_and(|c| c.external.is_some());
        if !external {
            self.send(field_conn, start(stream_ids, Vec::new()));
        }
        self.send(
            conn,
            start(Vec::new(), pairs.iter().map(|(fd, _)| *fd).collect()),
        );
        Ok(())
    }

    /// A device's measurement for diagnosis `id`. Measures of streams or receivers outside
    /// the diagnosis are ignored.
    pub(super) fn diag_report(
        &mut self,
        conn: ConnId,
        id: u64,
        field: Vec<FieldMeasure>,
        remote: Vec<RemoteMeasure>,
        paths: Vec<PathMeasure>,
    ) -> Result<(), ErrorCode> {
        let field_conn = |d: &Diag| self.by_device.get(&d.field).copied();
        let i = self
            .diags
            .iter()
            .position(|d| d.id == id && (d.remote == conn || field_conn(d) == Some(conn)))
            .ok_or(ErrorCode::NotFound)?;
        let d = &mut self.diags[i];
        if d.remote == conn {
            let mut measures: Vec<RemoteMeasure> = remote
                .into_iter()
                .filter(|p| d.pairs.iter().any(|(fd, _)| *fd == p.conn_fd))
                .collect();
            measures.dedup_by_key(|p| p.conn_fd);
            d.remote_measures = Some(measures);
        } else {
            let mut measures: Vec<FieldMeasure> = field
                .into_iter()
                .filter(|p| d.pairs.iter().any(|(_, s)| *s == p.stream_id))
                .map(FieldMeasure::bounded)
                .collect();
            measures.dedup_by_key(|p| p.stream_id);
            d.field_measures = Some(measures);
            d.field_paths = paths.into_iter().take(MAX_PATHS).collect();
        }
        let external = field_conn(d)
            .and_then(|c| self.clients.get(&c))
            .is_some_and(|c| c.external.is_some());
        if d.remote_measures.is_some() && (d.field_measures.is_some() || external) {
            let d = self.diags.swap_remove(i);
            self.finish_diag(d, None);
        }
        Ok(())
    }

    /// Ends the diagnoses whose measures are overdue.
    pub(super) fn diags_due(&mut self, now: Instant) {
        while let Some(i) = self.diags.iter().position(|d| d.due <= now) {
            let d = self.diags.swap_remove(i);
            self.finish_diag(d, None);
        }
    }

    /// When the next diagnosis is overdue, if any runs.
    pub(super) fn next_diag_due(&self) -> Option<Instant> {
        self.diags.iter().map(|d| d.due).min()
    }

    /// The field device went offline: its diagnoses end now. A remote that went away
    /// has nobody to tell.
    pub(super) fn diags_end_for(&mut self, device: &DeviceId, conn: ConnId, role: Role) {
        let mut i = 0;
        while i < self.diags.len() {
            let d = &self.diags[i];
            let hit = match role {
                Role::Field => &d.field == device,
                Role::Remote => d.remote == conn,
            };
            if !hit {
                i += 1;
                continue;
            }
            let d = self.diags.swap_remove(i);
            if role == Role::Field {
                let why = format!("field device {device} went offline during the diagnosis");
                self.finish_diag(d, Some((ErrorCode::FieldOffline, why)));
            }
        }
    }

    /// What arrived from an external source's streams since the diagnosis started.
    fn external_measures(&self, d: &Diag) -> Option<Vec<FieldMeasure>> {
        let (since, start) = d.external_from.as_ref()?;
        let c = self
            .by_device
            .get(&d.field)
            .and_then(|c| self.clients.get(c))?;
        let seconds = since.elapsed().as_secs_f64();
        Some(
            start
                .iter()
                .map(|(s, a)| {
                    let now = c.frames_in.get(*s as usize).copied().unwrap_or_default();
                    let frames = now.frames.saturating_sub(a.frames);
                    FieldMeasure {
                        stream_id: *s,
                        seconds,
                        frames_in: frames,
                        frames_out: frames,
                        bytes: now.bytes.saturating_sub(a.bytes),
                        ..Default::default()
                    }
                })
                .collect(),
        )
    }

    /// Derives both sides' checks, joins them and tells the remote. `failed`: why the diagnosis could not finish.
    fn finish_diag(&mut self, mut d: Diag, failed: Option<(ErrorCode, String)>) {
        if d.field_measures.is_none() {
            d.field_measures = self.external_measures(&d);
        }
        let field_client = self
            .by_device
            .get(&d.field)
            .and_then(|c| self.clients.get(c));
        let remote_client = self.clients.get(&d.remote);
        let external = field_client.is_some_and(|c| c.external.is_some());
        let failed = failed.or_else(|| {
            if field_client.is_none() {
                Some((
                    ErrorCode::FieldOffline,
                    format!("field device {} is offline", d.field),
                ))
            } else if d.field_measures.is_none() && !external {
                Some((
                    ErrorCode::Timeout,
                    "the field device sent no measurement in time".into(),
                ))
            } else if d.remote_measures.is_none() {
                Some((
                    ErrorCode::Timeout,
                    "this device sent no measurement in time".into(),
                ))
            } else {
                None
            }
        });
        let connected = |c: Option<&super::Client>, who: &str| -> (String, String) {
            match c {
                None => (format!("{who} offline"), format!("{who} offline")),
                Some(c) if c.external.is_some() => (OK.into(), OK.into()),
                Some(c) => (
                    OK.into(),
                    match &c.peer {
                        Some(p) if p.rtc.is_connected() => OK.into(),
                        Some(_) => format!("{who}'s media connection (WebRTC) is not established"),
                        None => format!("{who} has not set up its media connection"),
                    },
                ),
            }
        };
        let (f_sig, f_media) = connected(field_client, "field device");
        let (r_sig, r_media) = connected(remote_client, "remote device");
        let remote_mode = match (remote_client, field_client) {
            (Some(r), Some(f)) if r.info.mode == f.info.mode => OK.into(),
            (Some(r), Some(f)) => format!(
                "mode mismatch: this device is \"{}\", the field device \"{}\"",
                r.info.mode, f.info.mode
            ),
            _ => "unknown: a device is offline".into(),
        };
        let field_measures_by_stream: BTreeMap<u32, FieldMeasure> = d
            .field_measures
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.stream_id, p))
            .collect();
        let remote_measures_by_fd: BTreeMap<u32, RemoteMeasure> = d
            .remote_measures
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.conn_fd, p))
            .collect();
        let result = d
            .pairs
            .iter()
            .map(|(fd, s)| StreamReport {
                stream_id: *s,
                conn_fd: *fd,
                field: field_measures_by_stream.get(s).map(|m| FieldSide {
                    signal_connect: f_sig.clone(),
                    media_connect: f_media.clone(),
                    part: field_part(m),
                }),
                remote: remote_measures_by_fd.get(fd).map(|m| RemoteSide {
                    signal_connect: r_sig.clone(),
                    media_connect: r_media.clone(),
                    part: remote_part(m, Some((&d.field, *s))),
                }),
            })
            .collect();
        let diag_error = match (&failed, external) {
            (Some((_, why)), _) => why.clone(),
            (None, true) => "ok (a GB28181 device: its side is what reached the server)".into(),
            (None, false) => OK.into(),
        };
        let kind = failed.as_ref().map_or(1, |(code, _)| code.code());
        tracing::info!(field = %d.field, diag = d.id, kind, "diagnosis finished");
        let report = Report {
            remote_mqtt_connect: OK.into(),
            diag_error,
            device_id: d.field.to_string(),
            remote_mode,
            result,
            field_paths: d.field_paths.into_iter().map(path_report).collect(),
        };
        self.send(
            d.remote,
            ServerMsg::DiagResult {
                gwid: d.field,
                kind,
                report: Box::new(report),
            },
        );
    }
}
