//! What `fieldlink field` and `fieldlink remote` share: events printed as JSON lines (or
//! short human lines), and commands read from stdin.

use fieldlink_sdk::{DeviceId, ErrorCode, Event, Events, Permission, Qos, SdkError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("hex needs an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                .map_err(|_| format!("bad hex {s:?}"))
        })
        .collect()
}

/// A path from a config file, relative to that file's directory unless absolute.
pub fn relative_to(config: &std::path::Path, p: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(p);
    match config.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Says so when a certificate is given for a plain-text server URL (it verifies nothing).
pub fn warn_plain(cfg: &fieldlink_sdk::DeviceConfig) {
    if let (Some(ca), true) = (&cfg.server_ca, cfg.server.starts_with("ws://")) {
        eprintln!(
            "warning: certificate {} is not used: {} is plain ws://, so the server is not \
             verified and the password crosses the network in clear (use wss://)",
            ca.display(),
            cfg.server
        );
    }
}

/// One event as a JSON object (`{"event": ..., ...}`).
pub fn event_json(ev: &Event) -> Value {
    match ev {
        Event::ControlData { from, data, qos } => json!({
            "event": "control_data", "from": from, "qos": *qos as u8, "len": data.len(),
            "text": std::str::from_utf8(data).ok(), "hex": hex(data),
        }),
        Event::Permission {
            field_id,
            self_permission,
            master_id,
        } => json!({
            "event": "permission", "field_id": field_id, "self_permission": *self_permission as u8, "master_id": master_id,
        }),
        Event::PermissionRequest { remote_id, level } => {
            json!({"event": "permission_request", "remote_id": remote_id, "level": *level as u8})
        }
        Event::MasterChanged { master_id } => {
            json!({"event": "master_changed", "master_id": master_id})
        }
        Event::RemoteJoined { remote_id } => {
            json!({"event": "remote_joined", "remote_id": remote_id})
        }
        Event::RemoteLeft { remote_id } => json!({"event": "remote_left", "remote_id": remote_id}),
        Event::Presence { field_id, online } => {
            json!({"event": "presence", "field_id": field_id, "online": online})
        }
        Event::Warning { code, message } => {
            json!({"event": "warning", "code": code.code(), "name": code.name(), "message": message})
        }
        Event::Disconnected { reason } => json!({"event": "disconnected", "reason": reason}),
        Event::Reconnected => json!({"event": "reconnected"}),
        Event::ReconnectFailed { code, message } => {
            json!({"event": "reconnect_failed", "code": code.code(), "name": code.name(), "message": message})
        }
        Event::Lagged { dropped } => json!({"event": "lagged", "dropped": dropped}),
        Event::StreamState {
            conn_fd,
            gwid,
            stream_id,
            state,
            reason,
        } => json!({
            "event": "stream_state", "conn_fd": conn_fd, "gwid": gwid, "stream_id": stream_id,
            "state": state, "reason": reason,
        }),
        Event::ReceiverStats {
            conn_fd,
            loss_pct,
            rtt_ms,
            nacks,
            packets,
            frames,
            decoded,
            dropped,
        } => json!({
            "event": "receiver_stats", "conn_fd": conn_fd, "loss_pct": loss_pct, "rtt_ms": rtt_ms,
            "nacks": nacks, "packets": packets, "frames": frames, "decoded": decoded,
            "dropped": dropped,
        }),
        Event::BitrateEstimate { kbps } => json!({"event": "bitrate_estimate", "kbps": kbps}),
        Event::Quality(q) => {
            let mut v = serde_json::to_value(q).unwrap_or_default();
            v["event"] = json!("quality");
            v
        }
        Event::Diagnosis { gwid, kind, report } => {
            json!({"event": "diagnosis", "gwid": gwid, "type": kind, "report": report})
        }
        Event::SourceState {
            stream_id,
            ok,
            reason,
        } => json!({"event": "source_state", "stream_id": stream_id, "ok": ok, "reason": reason}),
        Event::Frame(f) => json!({
            "event": "frame", "conn_fd": f.conn_fd, "stream": f.stream.as_ref().map(|(g, s)| json!([g, s])),
            "codec": f.codec.name(), "keyframe": f.keyframe, "len": f.data.len(),
            "latency_ms": latency_ms(f),
        }),
        Event::MixedAudio(m) => json!({
            "event": "mixed_audio", "index": m.index, "channels": m.channels,
        }),
        Event::AudioLine {
            line,
            gwid,
            stream_id,
        } => json!({
            "event": "audio_line", "line": line, "gwid": gwid, "stream_id": stream_id,
        }),
        Event::Paths(paths) => json!({
            "event": "paths",
            "paths": paths.iter().map(|p| p.measure()).collect::<Vec<_>>(),
        }),
        Event::AudioStats(lines) => json!({
            "event": "audio_stats",
            "lines": lines.iter().map(|l| json!({
                "line": l.line, "playing": l.playing, "target_ms": l.target_ms,
                "received": l.counts.received, "late": l.counts.late, "fec": l.counts.fec,
                "concealed": l.counts.concealed, "stretched": l.counts.stretched,
                "dropped": l.counts.dropped,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// Capture-to-arrival time of a frame (the field's and this host's clocks).
pub fn latency_ms(f: &fieldlink_sdk::VideoFrame) -> Option<f64> {
    let c = f.capture?;
    f.received
        .duration_since(c)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

pub fn error_json(e: &SdkError) -> Value {
    json!({"event": "error", "code": e.code.code(), "name": e.code.name(), "message": e.message})
}

/// Writes one line to stdout. When whoever reads it has gone (a closed pipe), there is
/// nobody left to tell: the program ends quietly rather than panicking.
fn out_line(line: std::fmt::Arguments) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Prints one line: the JSON, or a short human form.
pub fn print(json_out: bool, v: &Value) {
    if json_out {
        out_line(format_args!("{v}"));
        return;
    }
    let kind = v["event"].as_str().unwrap_or("?");
    let mut rest = v.clone();
    if let Some(o) = rest.as_object_mut() {
        o.remove("event");
        if o.get("text").is_some_and(|t| !t.is_null()) {
            o.remove("hex");
        }
    }
    out_line(format_args!("{kind:<18} {rest}"));
}

/// A command line read from stdin. Plain text (not starting with `{`) means "send it".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Send this UTF-8 text.
    pub send: Option<String>,
    /// Send these bytes, as hex.
    pub send_hex: Option<String>,
    pub qos: Option<u8>,
    /// Remote: target field device (default: the session's).
    pub gwid: Option<DeviceId>,
    /// Remote: ask for a level (1 master, 0 release).
    pub request_permission: Option<u8>,
    /// Field: set a remote's level.
    pub set_permission: Option<SetPermission>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPermission {
    pub remote_id: DeviceId,
    pub level: u8,
}

pub enum Action {
    Send {
        gwid: Option<DeviceId>,
        data: Vec<u8>,
        qos: Qos,
    },
    Request(Permission),
    Set(DeviceId, Permission),
}

pub fn level(v: u8) -> Result<Permission, String> {
    Permission::try_from(v)
}

/// Parses one stdin line into an action.
pub fn parse_line(line: &str, default_qos: Qos) -> Result<Option<Action>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    if !line.trim_start().starts_with('{') {
        return Ok(Some(Action::Send {
            gwid: None,
            data: line.as_bytes().to_vec(),
            qos: default_qos,
        }));
    }
    let c: Command = serde_json::from_str(line).map_err(|e| format!("bad command: {e}"))?;
    let qos = match c.qos {
        Some(q) => Qos::try_from(q)?,
        None => default_qos,
    };
    if let Some(t) = c.send {
        return Ok(Some(Action::Send {
            gwid: c.gwid,
            data: t.into_bytes(),
            qos,
        }));
    }
    if let Some(h) = c.send_hex {
        return Ok(Some(Action::Send {
            gwid: c.gwid,
            data: unhex(&h)?,
            qos,
        }));
    }
    if let Some(l) = c.request_permission {
        return Ok(Some(Action::Request(level(l)?)));
    }
    if let Some(s) = c.set_permission {
        return Ok(Some(Action::Set(s.remote_id, level(s.level)?)));
    }
    Err("command needs one of send, send_hex, request_permission, set_permission".into())
}

/// The interactive loop of `field` and `remote connect`: prints every event, turns each
/// stdin line into an action for `act`, prints failures; ends on Ctrl-C, at `until`, or
/// when the device closes. End of stdin only stops reading.
pub async fn console(
    events: &mut Events,
    json: bool,
    default_qos: Qos,
    until: Option<tokio::time::Instant>,
    mut audio_out: Option<&mut crate::audio_files::WavOut>,
    mut act: impl AsyncFnMut(Action) -> Result<(), SdkError>,
) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let stop = async {
        match until {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    // One future for the whole loop: a fresh one per turn would miss a signal that
    // arrives between turns (and events come 100 a second with audio).
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                // 100 a second: written, not printed.
                Some(Event::MixedAudio(m)) => {
                    if let Some(w) = audio_out.as_deref_mut() {
                        w.write(&m);
                    }
                }
                Some(ev) => print(json, &event_json(&ev)),
                None => break,
            },
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    let r = match parse_line(&l, default_qos) {
                        Ok(Some(a)) => act(a).await,
                        Ok(None) => continue,
                        Err(e) => Err(SdkError::new(ErrorCode::BadRequest, e)),
                    };
                    if let Err(e) = r {
                        print(json, &error_json(&e));
                    }
                }
                _ => stdin_open = false,
            },
            _ = &mut stop => break,
            _ = &mut interrupted => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert!(matches!(
            parse_line("hello\n", Qos::Reliable),
            Ok(Some(Action::Send {
                qos: Qos::Reliable,
                ..
            }))
        ));
        assert!(
            matches!(parse_line(r#"{"send_hex":"0aff","qos":0}"#, Qos::Reliable), Ok(Some(Action::Send { qos: Qos::Lossy, ref data, .. })) if data == &[10, 255])
        );
        assert!(matches!(
            parse_line(r#"{"request_permission":1}"#, Qos::Reliable),
            Ok(Some(Action::Request(Permission::Master)))
        ));
        assert!(parse_line(r#"{"request_permission":2}"#, Qos::Reliable).is_err());
        assert!(parse_line(r#"{"send_hex":"0"}"#, Qos::Reliable).is_err());
        assert!(parse_line(r#"{"bogus":1}"#, Qos::Reliable).is_err());
        assert!(matches!(parse_line("  ", Qos::Reliable), Ok(None)));
    }
}
