//! `fieldlink-bench gb --keepalive N`: N GB28181 devices on one `fieldlink server` (pinned
//! to CPU 0), made by this load generator (CPU 1): spread over up to 1 000 UDP source
//! ports, each device registers at `rate` per second with a real digest (REGISTER → 401 →
//! REGISTER → 200), answers the platform's queries (a one-channel Catalog, 200 to
//! everything else, SUBSCRIBE included) and sends a MANSCDP keepalive every 60 s. Once all
//! are in and the queries have settled, it measures for `secs`: the server's CPU share of
//! one core and its RSS, keepalives answered (and their p99), and any 403 ("not
//! registered": a false offline).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fieldlink_gb28181::digest::register_authorization;
use fieldlink_gb28181::manscdp::{self, CatalogItem, Manscdp};
use fieldlink_gb28181::sip::{self, Dialog, Message, StartLine};
use tokio::net::UdpSocket;

use crate::{cpu_secs, pct, start_server};

const REALM: &str = "3402000000";
const PASSWORD: &str = "12345678";
const KEEPALIVE: Duration = Duration::from_secs(60);
/// A REGISTER not answered within this is sent again.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    keepalives: AtomicU64,
    keepalives_ok: AtomicU64,
    keepalives_403: AtomicU64,
    answered_queries: AtomicU64,
    /// Keepalive answer times, µs (while measuring).
    latencies: Mutex<Vec<u64>>,
    measuring: std::sync::atomic::AtomicBool,
}

struct Device {
    id: String,
    start: Instant,
    register: Dialog,
    cseq: u32,
    /// When the last REGISTER went (None before the first).
    sent: Option<Instant>,
    registered: bool,
    next_keepalive: Instant,
    sn: u32,
}

/// One UDP source port and its devices.
async fn port(
    server: SocketAddr,
    mut devices: Vec<Device>,
    c: Arc<Counters>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let me = socket.local_addr()?;
    for d in &mut devices {
        d.register.via = me;
        d.register.local_uri = format!("sip:{}@{REALM}", d.id);
    }
    let by_call: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.register.call_id.clone(), i))
        .collect();
    let by_id: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let mut keepalives: HashMap<String, Instant> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(m) = Message::parse(&buf[..n]) else { continue };
                match &m.start {
                    StartLine::Response { code, .. } => {
                        let call = m.header("call-id").unwrap_or_default();
                        if let Some(sent) = keepalives.remove(call) {
                            if *code == 200 {
                                c.keepalives_ok.fetch_add(1, Ordering::Relaxed);
                                if c.measuring.load(Ordering::Relaxed) {
                                    if let Ok(mut l) = c.latencies.lock() {
                                        l.push(sent.elapsed().as_micros() as u64);
                                    }
                                }
                            } else if *code == 403 {
                                c.keepalives_403.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        let Some(&i) = by_call.get(call) else { continue };
                        let d = &mut devices[i];
                        match code {
                            401 => {
                                let h = m.header("www-authenticate").unwrap_or_default();
                                let nonce = sip::challenge_param(h, "nonce").unwrap_or_default().to_string();
                                let uri = d.register.remote_uri.clone();
                                let auth = register_authorization(&d.id, REALM, PASSWORD, &uri, &nonce);
                                send_register(&socket, server, d, Some(auth)).await;
                            }
                            200 if !d.registered => {
                                d.registered = true;
                                d.next_keepalive = Instant::now() + KEEPALIVE;
                                c.registered.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    StartLine::Request { method, .. } => {
                        let ok = sip::response(&m, 200, "OK", from, &sip::new_tag(), &[], None);
                        let _ = socket.send_to(&ok, from).await;
                        c.answered_queries.fetch_add(1, Ordering::Relaxed);
                        if method != "MESSAGE" {
                            continue;
                        }
                        let Ok(q) = Manscdp::parse(&m.body) else { continue };
                        let Some(&i) = by_id.get(&q.device_id) else { continue };
                        if q.cmd_type == "Catalog" {
                            let d = &devices[i];
                            let item = CatalogItem {
                                device_id: format!("{}131{}", REALM, &d.id[13..]),
                                name: "cam".into(),
                                status: "ON".into(),
                                parent_id: d.id.clone(),
                                ..Default::default()
                            };
                            let body = manscdp::catalog_response(q.sn, &d.id, 1, &[item]);
                            let r = message(d, me, &body);
                            let _ = socket.send_to(&r, server).await;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for d in devices.iter_mut() {
                    if !d.registered {
                        if now >= d.start && d.sent.is_none_or(|t| now.duration_since(t) >= RETRY) {
                            send_register(&socket, server, d, None).await;
                        }
                        continue;
                    }
                    if now >= d.next_keepalive {
                        d.next_keepalive += KEEPALIVE;
                        d.sn += 1;
                        let body = manscdp::keepalive(d.sn, &d.id);
                        let r = message(d, me, &body);
                        if let Ok(m) = Message::parse(&r) {
                            keepalives.insert(m.header("call-id").unwrap_or_default().to_string(), now);
                        }
                        let _ = socket.send_to(&r, server).await;
                        c.keepalives.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Unanswered keepalives are forgotten after a minute.
                keepalives.retain(|_, t| now.duration_since(*t) < KEEPALIVE);
            }
        }
    }
    Ok(())
}

async fn send_register(
    socket: &UdpSocket,
    server: SocketAddr,
    d: &mut Device,
    auth: Option<String>,
) {
    d.cseq += 1;
    d.sent = Some(Instant::now());
    let mut extra = vec![
        ("Contact", format!("<sip:{}@{}>", d.id, d.register.via)),
        ("Expires", "86400".to_string()),
    ];
    if let Some(a) = auth {
        extra.push(("Authorization", a));
    }
    let r = sip::request(
        "REGISTER",
        &d.register,
        d.cseq,
        &sip::branch(),
        &extra,
        None,
    );
    let _ = socket.send_to(&r, server).await;
}

/// A MESSAGE from device `d` to the platform, in a dialog of its own.
fn message(d: &Device, me: SocketAddr, body: &[u8]) -> Vec<u8> {
    let dialog = Dialog {
        call_id: sip::new_call_id(me.ip()),
        local_tag: sip::new_tag(),
        ..d.register.clone()
    };
    sip::request(
        "MESSAGE",
        &dialog,
        1,
        &sip::branch(),
        &[],
        Some(("Application/MANSCDP+xml", body)),
    )
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn keepalive(devices: u32, rate: u32, secs: u64, bin: PathBuf) -> anyhow::Result<()> {
    let server = start_server(
        &bin,
        0,
        &["--sip-listen".to_string(), "127.0.0.1:0".to_string()],
    )
    .await?;
    let sip: SocketAddr = server
        .sip
        .as_deref()
        .context("the server opened no SIP socket")?
        .parse()?;
    let pid = server.child.id();
    // The load generator on the other core.
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .output();
    let ports = devices.clamp(1, 1000);
    println!(
        "fieldlink-bench gb --keepalive: {devices} devices over {ports} UDP ports, registering at {rate}/s; server pid {pid} (CPU 0)"
    );
    let c = Arc::new(Counters::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut groups: Vec<Vec<Device>> = (0..ports).map(|_| Vec::new()).collect();
    for i in 0..devices {
        let id = format!("3402000000132{i:07}");
        let register = Dialog {
            remote_uri: format!("sip:34020000002000000001@{REALM}"),
            local_uri: String::new(),
            local_tag: sip::new_tag(),
            remote_tag: None,
            call_id: format!("reg-{i}@bench"),
            via: SocketAddr::from(([127, 0, 0, 1], 0)),
            transport: "UDP",
        };
        groups[(i % ports) as usize].push(Device {
            id,
            start: t0 + Duration::from_secs_f64(f64::from(i) / f64::from(rate.max(1))),
            register,
            cseq: 0,
            sent: None,
            registered: false,
            next_keepalive: t0,
            sn: 0,
        });
    }
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|g| tokio::spawn(port(sip, g, c.clone(), stop.clone())))
        .collect();
    let rss0 = rss_mib(pid);
    // Registration, with progress.
    let deadline = Instant::now() + Duration::from_secs(u64::from(devices / rate.max(1)) + 120);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let n = c.registered.load(Ordering::Relaxed);
        println!(
            "  {:>4.0} s: {n} registered, {} queries answered, server RSS {:.0} MiB",
            t0.elapsed().as_secs_f64(),
            c.answered_queries.load(Ordering::Relaxed),
            rss_mib(pid)
        );
        if n >= u64::from(devices) || Instant::now() > deadline {
            break;
        }
    }
    let reg_secs = t0.elapsed().as_secs_f64();
    let registered = c.registered.load(Ordering::Relaxed);
    // The platform's queries (three each, a SUBSCRIBE once the catalog is in) settle.
    let mut last = u64::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let q = c.answered_queries.load(Ordering::Relaxed);
        if q == last {
            break;
        }
        last = q;
    }
    println!(
        "  registered {registered} of {devices} in {reg_secs:.0} s; {} platform requests answered; measuring {secs} s of keepalives",
        c.answered_queries.load(Ordering::Relaxed)
    );
    let (k0, ok0, f0) = (
        c.keepalives.load(Ordering::Relaxed),
        c.keepalives_ok.load(Ordering::Relaxed),
        c.keepalives_403.load(Ordering::Relaxed),
    );
    c.measuring.store(true, Ordering::Relaxed);
    let cpu0 = cpu_secs(pid);
    let m0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let wall = m0.elapsed().as_secs_f64();
    c.measuring.store(false, Ordering::Relaxed);
    // Answers to the last keepalives arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_mib(pid);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let sent = c.keepalives.load(Ordering::Relaxed) - k0;
    let ok = c.keepalives_ok.load(Ordering::Relaxed) - ok0;
    let refused = c.keepalives_403.load(Ordering::Relaxed) - f0;
    let mut lat = c.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    println!();
    println!("| devices | registered | server RSS | server CPU (keepalives) | keepalives sent / answered 200 / 403 | keepalive answer p50 / p99 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {devices} | {registered} | {rss:.0} MiB (was {rss0:.0} MiB idle) | {:.1} % of one core over {wall:.0} s | {sent} / {ok} / {refused} | {:.2} / {:.2} ms |",
        cpu * 100.0 / wall,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    Ok(())
}
