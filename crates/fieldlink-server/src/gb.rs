//! The GB28181 platform's SIP socket (thin I/O shell over `fieldlink_gb28181`): REGISTER
//! goes to the registrar, MANSCDP keepalives mark devices alive, and the registrar's clock
//! takes silent devices offline. UDP only so far; answers go to the source address and
//! port (RFC 3581).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use fieldlink_gb28181::registrar::{RegEvent, Registrar, RegistrarConfig};
use fieldlink_gb28181::sip::{response, Message, StartLine};
use fieldlink_gb28181::{GbId, Manscdp};
use tokio::net::UdpSocket;

use crate::config::Gb28181Config;

/// Binds the SIP socket and starts serving; returns the bound address.
pub async fn start(cfg: &Gb28181Config, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind(addr).await?;
    let local = socket.local_addr()?;
    let realm = cfg.platform_id.get(..10).unwrap_or(&cfg.platform_id);
    let mut rc = RegistrarConfig::new(realm, &cfg.password);
    rc.keepalive_period = Duration::from_secs(cfg.keepalive_period_secs.max(1));
    rc.keepalive_misses = cfg.keepalive_misses.max(1);
    let sip = Sip {
        socket,
        registrar: Registrar::new(rc),
        log: cfg.log_sip,
    };
    tokio::spawn(sip.run());
    tracing::info!(%local, "GB28181 SIP listening (UDP)");
    Ok(local)
}

struct Sip {
    socket: UdpSocket,
    registrar: Registrar,
    log: bool,
}

impl Sip {
    async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let deadline = self
                .registrar
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let data = buf[..n].to_vec();
                        self.on_datagram(&data, from).await;
                    }
                    Err(e) => tracing::debug!("SIP receive: {e}"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            for ev in self.registrar.poll(Instant::now()) {
                report(&ev);
            }
        }
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if self.log {
            tracing::info!(direction = "send", peer = %to, message = %String::from_utf8_lossy(bytes), "SIP");
        }
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::debug!(%to, "SIP send: {e}");
        }
    }

    async fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        if self.log {
            tracing::info!(direction = "recv", peer = %from, message = %String::from_utf8_lossy(data), "SIP");
        }
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // CRLF keepalive ping
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                // Without parseable headers there is nothing to answer to.
                tracing::debug!(%from, "bad SIP message: {e}");
                return;
            }
        };
        let StartLine::Request { method, .. } = &msg.start else {
            return; // responses to our requests: none sent yet
        };
        let now = Instant::now();
        let reply = match method.as_str() {
            "REGISTER" => {
                let (reply, ev) =
                    self.registrar
                        .on_register(&msg, from, now, SystemTime::now(), None);
                if let Some(ev) = ev {
                    report(&ev);
                }
                reply
            }
            "MESSAGE" => self.on_message(&msg, from, now),
            "ACK" => return,
            _ => response(&msg, 501, "Not Implemented", from, "fl", &[], None),
        };
        self.send(&reply, from).await;
    }

    /// MANSCDP over MESSAGE: keepalives refresh presence; a device that is not registered
    /// is told so (403), which makes real devices register again.
    fn on_message(&mut self, msg: &Message, from: SocketAddr, now: Instant) -> Vec<u8> {
        let body = match Manscdp::parse(&msg.body) {
            Ok(b) => b,
            Err(e) => {
                return response(
                    msg,
                    400,
                    &format!("Bad Request ({e})"),
                    from,
                    "fl",
                    &[],
                    None,
                )
            }
        };
        let id: Option<GbId> = body
            .device_id
            .parse()
            .ok()
            .or_else(|| msg.from_user().and_then(|u| u.parse().ok()));
        let known = id
            .as_ref()
            .is_some_and(|id| self.registrar.seen(id, from.ip(), now));
        if !known {
            return response(
                msg,
                403,
                "Forbidden (not registered)",
                from,
                "fl",
                &[],
                None,
            );
        }
        response(msg, 200, "OK", from, "fl", &[], None)
    }
}

fn report(ev: &RegEvent) {
    match ev {
        RegEvent::Online { id, addr } => {
            tracing::info!(device = %id, %addr, "GB28181 device online")
        }
        RegEvent::Offline { id, why } => {
            tracing::info!(device = %id, ?why, "GB28181 device offline")
        }
        RegEvent::Refused { user, addr, why } => {
            tracing::warn!(user, %addr, why, "GB28181 registration refused")
        }
    }
}
