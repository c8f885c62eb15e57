//! `fieldlink server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use fieldlink_server::Config;

#[derive(ClapArgs)]
pub struct Args {
    /// TOML configuration file (see docs/configuration.md). Flags and FIELDLINK_* variables override it.
    #[arg(long, short, env = "FIELDLINK_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP API and WebSocket signalling address.
    #[arg(long, env = "FIELDLINK_LISTEN")]
    listen: Option<SocketAddr>,
    /// The one UDP address for all WebRTC peer connections.
    #[arg(long, env = "FIELDLINK_UDP_LISTEN")]
    udp_listen: Option<SocketAddr>,
    /// Address to advertise in ICE candidates (behind NAT or a relay).
    #[arg(long, env = "FIELDLINK_PUBLIC_ADDR")]
    public_addr: Option<SocketAddr>,
    /// Threads that write a frame to its receivers in parallel (0 = one per core, at most
    /// 8; 1 = all on the hub's task).
    #[arg(long, env = "FIELDLINK_MEDIA_THREADS")]
    media_threads: Option<usize>,
    /// Forward error correction for SDK peers that offer it (true/false; default true).
    #[arg(long, env = "FIELDLINK_FEC", value_name = "BOOL")]
    fec: Option<bool>,
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "FIELDLINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://... or postgres://user:pass@host/db (default: SQLite in the data directory).
    #[arg(long, env = "FIELDLINK_DATABASE_URL")]
    database_url: Option<String>,
    /// Bearer token for the admin API (default: random, printed at start).
    #[arg(long, env = "FIELDLINK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Also serve GET /metrics here, without the admin token (e.g. 127.0.0.1:9464).
    #[arg(long, env = "FIELDLINK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// GB28181 platform: SIP over UDP on this address (e.g. 0.0.0.0:5060; default off).
    #[arg(long, env = "FIELDLINK_SIP_LISTEN")]
    sip_listen: Option<SocketAddr>,
    /// GB28181: seconds between device keepalives.
    #[arg(long, env = "FIELDLINK_SIP_KEEPALIVE_SECS")]
    sip_keepalive_secs: Option<u64>,
    /// GB28181: log every SIP message sent and received, whole.
    #[arg(long, env = "FIELDLINK_LOG_SIP")]
    log_sip: bool,
    /// PEM certificate chain (server certificate first): the API, the console and /ws are
    /// then served over HTTPS/WSS only. Needs --tls-key.
    #[arg(long, env = "FIELDLINK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FIELDLINK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub fn config(a: &Args) -> anyhow::Result<Config> {
    let mut c = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.listen {
        c.listen = v;
    }
    if let Some(v) = a.udp_listen {
        c.webrtc.udp_listen = v;
    }
    if let Some(v) = a.public_addr {
        c.webrtc.public_addr = Some(v);
    }
    if let Some(v) = a.media_threads {
        c.webrtc.media_threads = v;
    }
    if let Some(v) = a.fec {
        c.webrtc.fec = v;
    }
    if let Some(v) = &a.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &a.database_url {
        c.database_url = v.clone();
    }
    if let Some(v) = &a.admin_token {
        c.admin_token = v.clone();
    }
    if let Some(v) = a.sip_listen {
        c.gb28181.sip_listen = Some(v);
    }
    if let Some(v) = a.metrics_listen {
        c.metrics_listen = Some(v);
    }
    if let Some(v) = a.sip_keepalive_secs {
        c.gb28181.keepalive_period_secs = v.max(1);
    }
    c.gb28181.log_sip |= a.log_sip;
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        c.tls.cert = Some(cert.clone());
        c.tls.key = Some(key.clone());
    }
    Ok(c)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = config(&a)?;
    let token_given = !c.admin_token.is_empty();
    let running = fieldlink_server::start(c)
        .await
        .context("starting the server")?;
    let (http, ws) = if running.tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // One machine-readable line on stdout, for scripts and tests.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "http": running.http_addr.to_string(),
            "ws": format!("{ws}://{}/ws", running.http_addr),
            "tls": running.tls,
            "udp": running.udp_addr.to_string(),
            "sip": running.sip_addr.map(|a| a.to_string()),
            "metrics": running.metrics_addr.map(|a| a.to_string()),
            "database": running.database_url,
            "admin_token": if token_given { None } else { Some(running.admin_token.clone()) },
        })
    );
    eprintln!(
        "fieldlink server on {http}://{} (WebSocket {ws}://{}/ws, WebRTC udp {})",
        running.http_addr, running.http_addr, running.udp_addr
    );
    if !token_given {
        eprintln!(
            "admin token (random, set --admin-token to fix it): {}",
            running.admin_token
        );
    }
    let mut running = running;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; }
        _ = terminate() => {}
        _ = running.stop_signal().closed() => {}
    }
    eprintln!("shutting down...");
    running.shutdown().await.context("shutting down")?;
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    } else {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await;
}
