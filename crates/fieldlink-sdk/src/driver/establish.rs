//! Connecting: log in over the WebSocket, offer the peer connection, and wait until both
//! data channels are open.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::{Connector, MaybeTlsStream};

use fieldlink_proto::{ClientMsg, ErrorCode, Role, ServerMsg, PROTOCOL_VERSION};

use super::{parse, server_error, to_msg, Connection};
use crate::peer::{AudioLines, Peer, PeerEvent};
use crate::{DeviceConfig, Result, SdkError, REQUEST_TIMEOUT};

/// Opens the signalling WebSocket: `ws://` as is, `wss://` verified (see [`crate::tls`]).
async fn open_websocket(cfg: &DeviceConfig) -> Result<super::Ws> {
    let url = url::Url::parse(&cfg.server).map_err(|e| {
        SdkError::new(
            ErrorCode::BadRequest,
            format!("server URL {:?}: {e}", cfg.server),
        )
    })?;
    let host = url.host_str().unwrap_or_default().to_string();
    let connector = match url.scheme() {
        "wss" => Some(Connector::Rustls(crate::tls::client_config(
            cfg.server_ca.as_deref(),
        )?)),
        "ws" => None,
        other => {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                format!(
                    "server URL {:?}: scheme {other}: is not ws:// or wss://",
                    cfg.server
                ),
            ))
        }
    };
    let opened = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(&cfg.server, None, true, connector),
    )
    .await
    .map_err(|_| {
        SdkError::new(
            ErrorCode::Disconnected,
            format!("{}: no answer in time", cfg.server),
        )
    })?;
    match opened {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(match crate::tls::explain(&host, &e) {
            Some(why) => SdkError::new(ErrorCode::TlsFailed, format!("{}: {why}", cfg.server)),
            None => SdkError::new(ErrorCode::Disconnected, format!("{}: {e}", cfg.server)),
        }),
    }
}

/// Logs in, offers, and waits until both data channels are open.
pub(super) async fn establish(role: Role, cfg: &DeviceConfig) -> Result<Connection> {
    let lost = |e: &dyn std::fmt::Display| {
        SdkError::new(ErrorCode::Disconnected, format!("{}: {e}", cfg.server))
    };
    let mut ws = open_websocket(cfg).await?;
    let local_ip = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.local_addr(),
        MaybeTlsStream::Rustls(s) => s.get_ref().0.local_addr(),
        _ => Err(std::io::Error::other("unexpected stream kind")),
    }
    .map_err(|e| lost(&e))?
    .ip();
    let login = ClientMsg::Login {
        req: Some(0),
        version: PROTOCOL_VERSION,
        device_id: cfg.device_id.clone(),
        password: cfg.password.clone(),
        role,
        auto_permission: cfg.auto_permission,
        mode: cfg.mode.clone(),
    };
    ws.send(to_msg(&login)).await.map_err(|e| lost(&e))?;
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    // Login answer.
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| SdkError::from(ErrorCode::Timeout))?;
        match m.and_then(|m| m.ok()).and_then(parse) {
            Some(Ok(ServerMsg::LoginOk { .. })) => break,
            Some(Ok(e @ ServerMsg::Error { req: Some(0), .. })) => return Err(server_error(e)),
            Some(Ok(other)) => early.push(other),
            Some(Err(())) => {}
            None => {
                return Err(SdkError::new(
                    ErrorCode::Disconnected,
                    "server closed the connection during login",
                ))
            }
        }
    }
    let audio = AudioLines {
        send: cfg.audio.sends(),
        receive: cfg.audio.receives(),
    };
    let (mut peer, offer) = Peer::new(
        local_ip,
        &cfg.network_bind,
        cfg.media_trans_mode,
        cfg.streams,
        role == Role::Field,
        cfg.h265,
        audio,
    )
    .await?;
    peer.observer = cfg.packet_observer.clone();
    ws.send(to_msg(&ClientMsg::Offer {
        req: Some(1),
        sdp: offer.sdp,
        video_mids: offer.video_mids,
        audio_mids: offer.audio_mids,
        audio_send: audio.send,
        audio_receive: audio.receive,
        fec: true,
        bond: offer.bond,
    }))
    .await
    .map_err(|e| lost(&e))?;
    let mut answered = false;
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            m = ws.next() => match m.and_then(|m| m.ok()).and_then(parse) {
                Some(Ok(ServerMsg::Answer { sdp, fec, bond, .. })) => { peer.accept_answer(&sdp, fec, bond)?; answered = true; }
                Some(Ok(e @ ServerMsg::Error { req: Some(1), .. })) => return Err(server_error(e)),
                Some(Ok(other)) => early.push(other),
                Some(Err(())) => {}
                None => return Err(SdkError::new(ErrorCode::Disconnected, "server closed the connection")),
            },
            r = peer.recv(&mut buf) => {
                if let Ok((n, src, path)) = r { peer.handle_datagram(&buf[..n], src, path); }
            }
            _ = tokio::time::sleep_until(peer.next_timeout.into()) => peer.handle_timeout(),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SdkError::new(ErrorCode::MediaNotReady, "media connection not established in time"));
            }
        }
        if answered {
            for ev in peer.poll() {
                match ev {
                    PeerEvent::Ready => {
                        if role == Role::Field && cfg.streams > 0 {
                            let n = u64::from(cfg.streams);
                            peer.set_bitrate_range(100_000 * n, crate::peer::DESIRED_BPS * n);
                        }
                        return Ok(Connection { ws, peer, early });
                    }
                    PeerEvent::Dead(why) => {
                        return Err(SdkError::new(ErrorCode::MediaNotReady, why))
                    }
                    PeerEvent::Data(..)
                    | PeerEvent::Audio { .. }
                    | PeerEvent::Frame { .. }
                    | PeerEvent::KeyframeRequest(_)
                    | PeerEvent::Stats { .. }
                    | PeerEvent::EgressStats { .. }
                    | PeerEvent::Estimate(_) => {}
                }
            }
        }
    }
}
