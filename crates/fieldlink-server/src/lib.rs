//! The fieldlink server (the library behind `fieldlink server`): WebSocket signalling and login (`ws`, `login`), the
//! hub that owns every online device, operation session, control permission and WebRTC
//! peer connection on one UDP port (`hub`: an SFU on str0m, ICE-lite, forwarding video and
//! relaying control data), the GB/T 28181 platform whose cameras become field devices
//! (`gb`), the store (SQLite or PostgreSQL, `store`), and the admin HTTP API with the web
//! console (`api`, `web`).

pub mod api;
pub mod config;
pub mod gb;
pub mod hub;
pub mod login;
pub mod metrics;
pub mod permission;
pub mod store;
pub mod tls;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

pub use config::Config;
use hub::HubHandle;
use login::Throttles;
use store::Store;

/// Shared by the HTTP handlers.
pub struct AppState {
    pub store: Store,
    pub hub: HubHandle,
    /// The GB28181 platform, when SIP is on.
    pub gb: Option<gb::GbHandle>,
    pub throttles: Mutex<Throttles>,
    pub admin_token: String,
    pub metrics: Arc<metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error("cannot open database {0}: {1}")]
    Store(String, store::StoreError),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("TLS needs both a certificate and a key ([tls] cert and key, or --tls-cert and --tls-key); only the {0} is set")]
    TlsHalf(&'static str),
}

/// A server that is bound and running.
pub struct Running {
    pub http_addr: SocketAddr,
    /// Whether `http_addr` speaks HTTPS/WSS.
    pub tls: bool,
    pub udp_addr: SocketAddr,
    /// The GB28181 SIP socket, when enabled.
    pub sip_addr: Option<SocketAddr>,
    /// The metrics-only address, when configured.
    pub metrics_addr: Option<SocketAddr>,
    pub admin_token: String,
    pub database_url: String,
    /// The store, for in-process tools (the demo seeds it).
    pub store: Store,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Stops accepting, lets the hub and the audit writer finish, closes the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let Running { shutdown, task, .. } = self;
        let _ = shutdown.send(());
        task.await.unwrap_or(Ok(()))
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.unwrap_or(Ok(()))
    }

    pub fn stop_signal(&mut self) -> &mut tokio::sync::oneshot::Sender<()> {
        &mut self.shutdown
    }
}

fn random_token() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Binds everything and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    // Checked first: a bad certificate must not leave a half-started server behind.
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        (None, None) => None,
        (Some(_), None) => return Err(ServerError::TlsHalf("certificate")),
        (None, Some(_)) => return Err(ServerError::TlsHalf("key")),
    };
    let url = config.database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ServerError::DataDir(config.data_dir.clone(), e))?;
    }
    let store = Store::open(&url)
        .await
        .map_err(|e| ServerError::Store(redact(&url), e))?;
    let udp = bind_media_socket(config.webrtc.udp_listen).map_err(|source| ServerError::Bind {
        what: "WebRTC UDP",
        addr: config.webrtc.udp_listen,
        source,
    })?;
    let udp_addr = udp.local_addr().map_err(ServerError::Serve)?;
    let candidate = config.webrtc.public_addr.unwrap_or(udp_addr);
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            what: "HTTP",
            addr: config.listen,
            source,
        })?;
    let http_addr = tcp.local_addr().map_err(ServerError::Serve)?;
    let metrics_tcp = match config.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "metrics HTTP",
                    addr: a,
                    source,
                })?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_tcp {
        Some(l) => Some(l.local_addr().map_err(ServerError::Serve)?),
        None => None,
    };

    let (audit_tx, mut audit_rx) = mpsc::channel::<hub::AuditRecord>(10_000);
    let audit_store = store.clone();
    let audit_task = tokio::spawn(async move {
        while let Some((project, entry)) = audit_rx.recv().await {
            if let Err(e) = audit_store.append_audit(&project, &entry).await {
                tracing::error!("writing audit log: {e}");
            }
        }
    });
    let metrics = Arc::new(metrics::Metrics::new());
    let (hub, hub_task) = hub::spawn(
        udp,
        candidate,
        config.webrtc.media_threads(),
        config.webrtc.fec,
        audit_tx,
        metrics.clone(),
    );
    let hub_stop = hub.clone();
    let gb_hub = hub.clone();
    let gb_store = store.clone();

    let (sip_addr, gb) = match config.gb28181.sip_listen {
        Some(a) => {
            let (addr, handle) = gb::start(&config.gb28181, a, gb_hub, gb_store, metrics.clone())
                .await
                .map_err(|source| ServerError::Bind {
                    what: "GB28181 SIP",
                    addr: a,
                    source,
                })?;
            (Some(addr), Some(handle))
        }
        None => (None, None),
    };
    let admin_token = if config.admin_token.is_empty() {
        random_token()
    } else {
        config.admin_token.clone()
    };
    let state_store = store.clone();
    let state = Arc::new(AppState {
        store: store.clone(),
        hub,
        gb,
        throttles: Throttles::new(&config.login),
        admin_token: admin_token.clone(),
        metrics,
    });
    for (what, addr) in [
        ("listen", Some(http_addr)),
        ("metrics_listen", metrics_addr),
    ] {
        if let Some(w) = addr.and_then(|a| plain_text_warning(what, a, tls.is_some())) {
            tracing::warn!("{w}");
        }
    }
    let metrics_task = match metrics_tcp {
        Some(l) => {
            let app = axum::Router::new()
                .route("/metrics", axum::routing::get(api::open_metrics))
                .with_state(state.clone());
            let serving = serve(l, tls.clone(), app, std::future::pending())?;
            Some(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!("metrics address: {e}");
                }
            }))
        }
        None => None,
    };
    let app = api::router()
        .merge(web::router())
        .route("/ws", axum::routing::get(ws::handler))
        .with_state(state);
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let on_tls = tls.is_some();
    let serving = serve(tcp, tls, app, async move {
        let _ = stop.await;
    })?;
    let task = tokio::spawn(async move {
        let served = serving.await;
        if let Some(t) = metrics_task {
            t.abort();
        }
        // The hub closes every device connection and stops; the audit queue drains; then
        // the store closes.
        let _ = hub_stop.send(hub::Cmd::Shutdown).await;
        let _ = hub_task.await;
        let _ = audit_task.await;
        store.close().await;
        tracing::info!("server stopped");
        served.map_err(ServerError::Serve)
    });
    tracing::info!(%http_addr, tls = on_tls, %udp_addr, %candidate, "fieldlink server listening");
    Ok(Running {
        http_addr,
        tls: on_tls,
        udp_addr,
        sip_addr,
        metrics_addr,
        admin_token,
        database_url: redact(&url),
        store: state_store,
        shutdown,
        task,
    })
}

/// What to say at start when an address other hosts can reach speaks plain HTTP.
fn plain_text_warning(what: &str, addr: SocketAddr, tls: bool) -> Option<String> {
    (!tls && !addr.ip().is_loopback()).then(|| {
        format!(
            "{what} {addr} is reachable from other hosts and speaks plain HTTP: passwords, \
             session codes and tokens cross the network in clear. Set [tls] cert and key \
             (--tls-cert/--tls-key), or put a TLS-terminating proxy in front \
             (docs/security.md)"
        )
    })
}

/// Serves `app` on `tcp`, over TLS when a config is given, until `stop` completes.
fn serve(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<futures_util::future::BoxFuture<'static, std::io::Result<()>>, ServerError> {
    use futures_util::FutureExt;
    use std::future::IntoFuture;
    let make = app.into_make_service_with_connect_info::<tls::ClientAddr>();
    Ok(match tls {
        Some(config) => {
            let l = tls::TlsListener::new(tcp, config).map_err(ServerError::Serve)?;
            axum::serve(l, make)
                .with_graceful_shutdown(stop)
                .into_future()
                .boxed()
        }
        None => axum::serve(tcp, make)
            .with_graceful_shutdown(stop)
            .into_future()
            .boxed(),
    })
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Socket buffers asked for the WebRTC socket (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`). The hub forwards a keyframe to every receiver before
/// it reads the socket again: with hundreds of receivers that takes tens of ms, and the
/// default buffer (~200 KB) then overflows, dropping the source's own packets (found by
/// `fieldlink-bench sfu`: 6 % of datagrams in lost at 200 receivers, repaired by NACK at
/// the cost of 80+ ms of delay).
pub const MEDIA_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the WebRTC socket with [`MEDIA_SOCKET_BUFFER`] (or what the kernel allows).
fn bind_media_socket(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, r) in [
        ("receive", s.set_recv_buffer_size(MEDIA_SOCKET_BUFFER)),
        ("send", s.set_send_buffer_size(MEDIA_SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            tracing::warn!("WebRTC socket {what} buffer: {e}");
        }
    }
    let got = s.recv_buffer_size().unwrap_or(0);
    if got < MEDIA_SOCKET_BUFFER {
        tracing::info!(
            "WebRTC socket receive buffer {} KiB (asked {} KiB; raise net.core.rmem_max for many receivers)",
            got / 1024,
            MEDIA_SOCKET_BUFFER / 1024
        );
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_beyond_loopback_is_warned_about() {
        let lan = "192.0.2.7:8080".parse().unwrap();
        let w = super::plain_text_warning("listen", lan, false).expect("a warning");
        assert!(
            w.contains("192.0.2.7:8080") && w.contains("--tls-cert"),
            "{w}"
        );
        assert!(super::plain_text_warning("listen", lan, true).is_none());
        let local = "127.0.0.1:8080".parse().unwrap();
        assert!(super::plain_text_warning("listen", local, false).is_none());
        let any = "0.0.0.0:8080".parse().unwrap();
        assert!(super::plain_text_warning("listen", any, false).is_some());
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
