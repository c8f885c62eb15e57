//! `fieldlink-bench gb`: GB28181 registrations through a real `fieldlink server` process
//! (pinned to CPU 0) driven by SIPp (pinned to CPU 1): `devices` distinct devices, each
//! REGISTER → 401 → REGISTER with digest → 200, at `rate` calls per second over UDP; the
//! platform's queries after each registration are answered 200 by SIPp's out-of-call
//! scenario. The same load then goes to kamailio (a registrar with users in memory and
//! `pv_www_authenticate`, `kamailio/registrar.cfg`), also on CPU 0. Prints registrations
//! completed and failed, SIPp's retransmissions (an answer later than 500 ms), the
//! challenge and digest response times (p50/p99), each server's CPU time per
//! registration, and the ratio. `--keepalive N` then runs [`crate::gb_load`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{cpu_secs, pct, start_server};

/// The SIPp scenario (one registration per call, device id from the injection file).
fn scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp/register_storm.xml")
}

/// SIPp's out-of-call scenario: every request from the platform is answered 200.
fn answers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp/answer_queries.xml")
}

/// The file SIPp wrote into `dir` whose name ends with `suffix` (it names them after the
/// scenario and its pid).
fn sipp_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
}

/// SIPp's last statistics row (`-trace_stat`), by column name.
fn last_stats(dir: &Path) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let file = sipp_file(dir, "_.csv").context("SIPp wrote no statistics file")?;
    let text = std::fs::read_to_string(&file)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines
        .next()
        .context("empty statistics")?
        .split(';')
        .collect();
    let last: Vec<&str> = lines
        .next_back()
        .context("no statistics row")?
        .split(';')
        .collect();
    Ok(head
        .iter()
        .zip(last)
        .map(|(h, v)| (h.to_string(), v.to_string()))
        .collect())
}

/// Response times (µs, at SIPp's 1 ms resolution) per rtd number from SIPp's `-trace_rtt` file.
fn response_times(dir: &Path) -> anyhow::Result<[Vec<u64>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    if let Some(p) = sipp_file(dir, "_rtt.csv") {
        // Date_ms;response_time_ms;rtd_no (SIPp counts whole milliseconds)
        for line in std::fs::read_to_string(&p)?.lines().skip(1) {
            let f: Vec<&str> = line.split(';').collect();
            let (Some(ms), Some(no)) = (
                f.get(1).and_then(|v| v.trim().parse::<f64>().ok()),
                f.get(2).and_then(|v| v.trim().parse::<usize>().ok()),
            ) else {
                continue;
            };
            if let Some(v) = out.get_mut(no.wrapping_sub(1)) {
                v.push((ms * 1000.0) as u64);
            }
        }
    }
    Ok(out)
}

/// A registrar under test: where it listens and how much CPU it has used.
struct Peer {
    name: &'static str,
    sip: String,
    /// Its main process; the CPU of its children counts too (kamailio forks workers).
    pid: u32,
}

impl Peer {
    fn cpu(&self) -> f64 {
        cpu_secs(self.pid) + children(self.pid).into_iter().map(cpu_secs).sum::<f64>()
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit(')').next()?.split_whitespace().nth(1)?.to_string();
                    after.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// One storm's figures.
#[derive(Clone, Copy)]
struct Figures {
    ok: u64,
    failed: u64,
    retrans: u64,
    /// p99 of the challenge and of the digest answer, ms.
    p99: [f64; 2],
    cpu_ms_per_reg: f64,
}

/// Runs the storms against fieldlink and then kamailio (unless `no_kamailio`), and
/// prints each and the comparison.
pub async fn gb(
    devices: u32,
    rate: u32,
    again: Option<u32>,
    no_kamailio: bool,
    bad_input: bool,
    bin: PathBuf,
) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp not found: install Debian's sip-tester (see .ci/run)");
    }
    let dir = std::env::temp_dir().join(format!("fieldlink-bench-gb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut csv = String::from("SEQUENTIAL\n");
    for i in 0..devices {
        // field1 carries SIPp's authentication keyword (it cannot take a field inside).
        let id = format!("340200000013{i:08}");
        csv.push_str(&format!(
            "{id};[authentication username={id} password=12345678]\n"
        ));
    }
    std::fs::write(dir.join("devices.csv"), csv)?;
    let r = compare(&dir, devices, rate, again, no_kamailio, bad_input, &bin).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn compare(
    dir: &Path,
    devices: u32,
    rate: u32,
    again: Option<u32>,
    no_kamailio: bool,
    bad_input: bool,
    bin: &Path,
) -> anyhow::Result<()> {
    // This process (the bad input's senders) shares CPU 1 with SIPp; CPU 0 is the server's.
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .output();
    let server = start_server(
        &bin.to_path_buf(),
        0,
        &["--sip-listen".to_string(), "127.0.0.1:0".to_string()],
    )
    .await?;
    let ours = Peer {
        name: "fieldlink",
        sip: server
            .sip
            .clone()
            .context("the server opened no SIP socket")?,
        pid: server.child.id(),
    };
    println!(
        "fieldlink-bench gb: fieldlink (pid {}, CPU 0), SIPp (CPU 1), over UDP",
        ours.pid
    );
    let mut rows: Vec<(&str, u32, Figures, Option<Figures>)> = Vec::new();
    let new = storm(&ours, dir, devices, rate, "new").await?;
    let known = match again {
        Some(r) => Some((r, storm(&ours, dir, devices, r, "known").await?)),
        None => None,
    };
    // The devices are known now: they register again while bad input floods the server.
    let bad = if bad_input {
        let r = again.unwrap_or(rate);
        let attack = crate::gb_bad::BadInput::start(ours.sip.parse()?).await?;
        let f = storm(&ours, dir, devices, r, "known").await;
        println!("  {}", attack.stop().await);
        Some((r, f?))
    } else {
        None
    };
    drop(server);
    let kam = if no_kamailio {
        None
    } else {
        match Kamailio::start(dir).await {
            Ok(k) => {
                println!("kamailio (pid {}, CPU 0), the same load:", k.peer.pid);
                let n = storm(&k.peer, dir, devices, rate, "new").await?;
                let a = match again {
                    Some(r) => Some(storm(&k.peer, dir, devices, r, "known").await?),
                    None => None,
                };
                Some((n, a))
            }
            Err(e) => {
                println!("kamailio not run: {e:#}");
                None
            }
        }
    };
    rows.push(("new", rate, new, kam.map(|k| k.0)));
    if let Some((r, f)) = known {
        rows.push(("known", r, f, kam.and_then(|k| k.1)));
    }
    println!();
    println!("| load | server | registered | retransmissions | 401 p99 | 200 p99 | CPU per registration | fieldlink ÷ kamailio |");
    println!("|---|---|---|---|---|---|---|---|");
    for (what, rate, f, k) in rows {
        let load = format!("{devices} {what} devices at {rate} REG/s");
        let line = |name: &str, f: &Figures, ratio: &str| {
            println!(
                "| {load} | {name} | {} of {devices} ({} failed) | {} | {:.0} ms | {:.0} ms | {:.3} ms | {ratio} |",
                f.ok, f.failed, f.retrans, f.p99[0], f.p99[1], f.cpu_ms_per_reg
            )
        };
        match k {
            Some(k) => {
                let ratio = format!("{:.2} ×", f.cpu_ms_per_reg / k.cpu_ms_per_reg.max(1e-9));
                line("fieldlink", &f, &ratio);
                line("kamailio", &k, "");
            }
            None => line("fieldlink", &f, "(no kamailio)"),
        }
    }
    if let Some((r, f)) = bad {
        println!(
            "| {devices} known devices at {r} REG/s + bad input | fieldlink | {} of {devices} ({} failed) | {} | {:.0} ms | {:.0} ms | {:.3} ms | (its CPU includes the bad input's) |",
            f.ok, f.failed, f.retrans, f.p99[0], f.p99[1], f.cpu_ms_per_reg
        );
        // The same storm without the bad input, to compare p99 with.
        let clean = known
            .filter(|(k, _)| *k == r)
            .map(|(_, k)| k)
            .unwrap_or(new);
        println!();
        println!(
            "with bad input, digest answer p99 {:.0} ms against {:.0} ms without ({:.0} ms challenge against {:.0} ms)",
            f.p99[1], clean.p99[1], f.p99[0], clean.p99[0]
        );
    }
    Ok(())
}

/// kamailio 5.6 from Debian (`apt-get install kamailio`) with `kamailio/registrar.cfg`,
/// pinned to CPU 0, killed when dropped.
struct Kamailio {
    peer: Peer,
    child: std::process::Child,
}

impl Kamailio {
    async fn start(dir: &Path) -> anyhow::Result<Kamailio> {
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kamailio/registrar.cfg");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("udp:127.0.0.1:{port}");
        let child = Command::new("taskset")
            .args(["-c", "0", "kamailio", "-DD", "-E", "-f"])
            .arg(&cfg)
            .args(["-l", &listen, "-w"])
            .arg(dir)
            .args(["-Y", &dir.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting kamailio (Debian package kamailio; see .ci/run)")?;
        let k = Kamailio {
            peer: Peer {
                name: "kamailio",
                sip: format!("127.0.0.1:{port}"),
                pid: child.id(),
            },
            child,
        };
        // Ready when a REGISTER is challenged.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(200)))?;
        let me = probe.local_addr()?;
        let register = format!(
            "REGISTER sip:3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe\r\nFrom: <sip:34020000001300000000@3402000000>;tag=p\r\nTo: <sip:34020000001300000000@3402000000>\r\nCall-ID: probe@{me}\r\nCSeq: 1 REGISTER\r\nContact: <sip:p@{me}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
        );
        let mut buf = [0u8; 4096];
        for _ in 0..50 {
            probe.send_to(register.as_bytes(), &k.peer.sip)?;
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 401") {
                    return Ok(k);
                }
            }
        }
        bail!("kamailio did not answer a REGISTER on {}", k.peer.sip)
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets kamailio stop its workers; any still there after 2 s are killed
        // (they are found before the main process goes: then they would be init's).
        let workers = children(self.peer.pid);
        let _ = Command::new("kill").arg(self.peer.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in workers {
            if Path::new(&format!("/proc/{p}")).exists() {
                let _ = Command::new("kill")
                    .args(["-9", &p.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// One SIPp run of `devices` registrations at `rate` per second against `peer`; prints
/// and returns its figures.
async fn storm(
    peer: &Peer,
    dir: &Path,
    devices: u32,
    rate: u32,
    what: &str,
) -> anyhow::Result<Figures> {
    // The last run's SIPp files go: only the device list stays.
    for f in std::fs::read_dir(dir)?.flatten() {
        if f.file_name() != "devices.csv" && f.path().is_file() {
            let _ = std::fs::remove_file(f.path());
        }
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    println!("{} — {devices} {what} devices at {rate} REG/s:", peer.name);
    // Children counted before and after: kamailio's workers live for the whole run.
    let cpu0 = peer.cpu();
    let t0 = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", "1", "sipp", &peer.sip, "-sf"])
        .arg(scenario())
        .arg("-oocsf")
        .arg(answers())
        .args(["-inf", "devices.csv", "-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args(["-m", &devices.to_string()])
        .args(["-nostdin", "-timeout", "120", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1"])
        .args(["-max_socket", "1024"])
        .current_dir(dir)
        .output()
        .context("running sipp")?;
    let wall = t0.elapsed();
    // Queries the platform sends after each registration keep it busy a little longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = peer.cpu() - cpu0;
    let stats = last_stats(dir);
    let rtt = response_times(dir)?;
    let stats = stats.with_context(|| {
        format!(
            "sipp exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let num = |k: &str| {
        stats
            .get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ok = num("SuccessfulCall(C)");
    let failed = num("FailedCall(C)");
    let retrans = num("Retransmissions(C)");
    println!(
        "  registered {ok} of {devices}, failed {failed}, SIPp retransmissions {retrans}, SIPp ran {:.1} s",
        wall.as_secs_f64()
    );
    let mut p99 = [0.0; 2];
    for (i, name) in ["REGISTER -> 401", "REGISTER with digest -> 200"]
        .iter()
        .enumerate()
    {
        let mut v = rtt[i].clone();
        p99[i] = pct(&mut v, 0.99);
        println!(
            "  {name:<28} {:>6} answers  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms (1 ms resolution)",
            v.len(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99),
            pct(&mut v, 1.0)
        );
    }
    let cpu_ms_per_reg = cpu * 1000.0 / ok.max(1) as f64;
    println!("  server CPU {cpu:.2} s over the run + 2 s: {cpu_ms_per_reg:.3} ms per registration");
    Ok(Figures {
        ok,
        failed,
        retrans,
        p99,
        cpu_ms_per_reg,
    })
}
