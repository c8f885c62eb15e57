//! `fieldlink-bench gb`: GB28181 registrations through a real `fieldlink server` process
//! (pinned to CPU 0) driven by SIPp (pinned to CPU 1): `devices` distinct devices, each
//! REGISTER → 401 → REGISTER with digest → 200, at `rate` calls per second over UDP.
//! Prints registrations completed and failed, SIPp's retransmissions (an answer later
//! than 500 ms), the challenge and digest response times (p50/p99) and the server's CPU
//! time per registration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{cpu_secs, pct, start_server};

/// The SIPp scenario (one registration per call, device id from the injection file).
fn scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp/register_storm.xml")
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

pub async fn gb(devices: u32, rate: u32, again: Option<u32>, bin: PathBuf) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp not found: install Debian's sip-tester (see .ci/run)");
    }
    let server = start_server(
        &bin,
        0,
        &["--sip-listen".to_string(), "127.0.0.1:0".to_string()],
    )
    .await?;
    let sip = server
        .sip
        .clone()
        .context("the server opened no SIP socket")?;
    let pid = server.child.id();
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
    println!("fieldlink-bench gb: server pid {pid} (CPU 0), SIPp (CPU 1), over UDP");
    let r = storm(&sip, pid, &dir, devices, rate, "new").await;
    // The same devices again: known to the platform, online, re-registering.
    let r = match (r, again) {
        (Ok(()), Some(rate)) => storm(&sip, pid, &dir, devices, rate, "known").await,
        (r, _) => r,
    };
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// One SIPp run of `devices` registrations at `rate` per second; prints its figures.
async fn storm(
    sip: &str,
    pid: u32,
    dir: &Path,
    devices: u32,
    rate: u32,
    what: &str,
) -> anyhow::Result<()> {
    // The last run's SIPp files go: only the device list stays.
    for f in std::fs::read_dir(dir)?.flatten() {
        if f.file_name() != "devices.csv" {
            let _ = std::fs::remove_file(f.path());
        }
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    println!("{devices} {what} devices at {rate} REG/s:");
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", "1", "sipp", sip, "-sf"])
        .arg(scenario())
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
    let cpu = cpu_secs(pid) - cpu0;
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
    for (i, name) in ["REGISTER -> 401", "REGISTER with digest -> 200"]
        .iter()
        .enumerate()
    {
        let mut v = rtt[i].clone();
        println!(
            "  {name:<28} {:>6} answers  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms (1 ms resolution)",
            v.len(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99),
            pct(&mut v, 1.0)
        );
    }
    println!(
        "  server CPU {cpu:.2} s over the run + 2 s: {:.3} ms per registration",
        cpu * 1000.0 / ok.max(1) as f64
    );
    Ok(())
}
