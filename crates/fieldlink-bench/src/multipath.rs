//! `fieldlink-bench multipath`: issue 15's cases (SPEC §9) on a test host with two links
//! (network namespace, veth pairs, nftables loss, tc tbf rate, the delaying relay), each
//! run twice in one go: with two paths (`network_bind` on both addresses) and with one
//! (the first address only), over the same links with the same loss plan. What changes
//! a link changes path 0 (the one both runs have) unless the case says "both". The runs
//! are `fieldlink_testkit::paths::run_paths`, the ones crates/fieldlink/tests/multipath.rs
//! asserts on; here the figures go into a table with their ratio.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fieldlink_proto::bond::Mode;
use fieldlink_sdk::{DeviceConfig, DeviceId, Event, Events, Permission, RemoteDevice};
use fieldlink_testkit::netns::TestNet;
use fieldlink_testkit::paths::{self, glitches, plain_on_time, Run, Setup};

use crate::{launch, Server};

/// The cases, by the name `--cases` takes.
pub const CASES: [&str; 7] = [
    "cut",
    "loss40",
    "loss20",
    "aggregate",
    "split",
    "balanced",
    "flap",
];

struct Platform {
    server: Server,
    field: DeviceId,
}

impl paths::Platform for Platform {
    type Error = anyhow::Error;

    fn udp(&self) -> String {
        self.server.udp.clone()
    }

    fn field_config(&self) -> DeviceConfig {
        DeviceConfig::new(self.server.ws.clone(), self.field.clone(), "pw")
    }

    async fn remote_playing(&self) -> anyhow::Result<(RemoteDevice, Events)> {
        remote_playing(&self.server.ws, &self.field)
            .await
            .context("the remote")
    }
}

/// Remote `bench/r0` in session with the field device (master) and playing its stream 0.
async fn remote_playing(ws: &str, field: &DeviceId) -> anyhow::Result<(RemoteDevice, Events)> {
    let mut rc = DeviceConfig::new(ws, "bench/r0".parse()?, "pw");
    rc.streams = 1;
    let (r, mut re) = RemoteDevice::connect(rc).await.context("remote login")?;
    r.open_session(field).await?;
    r.connect_streams(field, &[0], &[0]).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut playing = false;
    while !playing || r.permission(field) != Permission::Master {
        match tokio::time::timeout_at(deadline, re.recv()).await {
            Ok(Some(Event::StreamState {
                state: fieldlink_sdk::StreamState::Playing,
                ..
            })) => playing = true,
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the remote's events ended"),
            Err(_) => anyhow::bail!("not playing as master within 10 s (playing: {playing})"),
        }
    }
    Ok((r, re))
}

/// One row of the table: a figure of a case, with two paths and with one.
struct Row {
    case: String,
    figure: &'static str,
    two: Option<f64>,
    /// `None`: not a figure of one path (shares, duplication: there is no bond).
    one: Option<f64>,
    /// Whether more is better (the ratio is then two ÷ one, else one ÷ two).
    more_is_better: bool,
}

impl Row {
    fn ratio(&self) -> String {
        let (Some(two), Some(one)) = (self.two, self.one) else {
            return "-".into();
        };
        let (num, den) = if self.more_is_better {
            (two, one)
        } else {
            (one, two)
        };
        match (num, den) {
            (0.0, 0.0) => "same".into(),
            (_, 0.0) => "inf".into(),
            (n, d) => format!("{:.2}", n / d),
        }
    }
}

/// What a case runs (both paths bound; the one-path run binds the first only).
fn setup(case: &str, secs: u64, cuts: u64, clips: &Clips) -> Setup {
    let base = Setup {
        secs,
        ..Setup::default()
    };
    match case {
        "cut" => Setup {
            mode: Mode::Redundant,
            secs: cuts * 10,
            ..base
        },
        "loss40" | "flap" => Setup {
            mode: if case == "flap" {
                Mode::Aggregate
            } else {
                Mode::Redundant
            },
            secs: if case == "flap" { secs * 2 } else { secs },
            ..base
        },
        "loss20" => Setup {
            mode: Mode::Redundant,
            secs: secs * 2,
            delay_ms: 20,
            settle_loss: [20, 20],
            ..base
        },
        "aggregate" => Setup {
            mode: Mode::Aggregate,
            shape: [Some(3000), Some(3000)],
            file: Some(clips.c5000.clone()),
            ..base
        },
        "split" => Setup {
            mode: Mode::Aggregate,
            shape: [Some(4000), Some(1000)],
            file: Some(clips.c3500.clone()),
            ..base
        },
        _ => Setup {
            mode: Mode::Balanced,
            ..base
        },
    }
}

/// The links' changes at each measured second.
fn plan(case: &str, net: &TestNet, s: u64) {
    match case {
        "cut" => match s % 10 {
            2 => net.set_loss(0, 100),
            7 => net.set_loss(0, 0),
            _ => {}
        },
        "loss40" if s == 0 => net.set_loss(0, 40),
        "balanced" if s == 0 => {
            net.set_loss(0, 5);
            net.set_loss(1, 5);
        }
        "flap" => net.set_loss(0, if s.is_multiple_of(2) { 100 } else { 0 }),
        _ => {}
    }
}

fn describe(case: &str, secs: u64, cuts: u64) -> String {
    match case {
        "cut" => format!("redundant, path 0 cut {cuts} x 5 s"),
        "loss40" => format!("redundant, 40 % loss on path 0, {secs} s"),
        "loss20" => format!("redundant, 20 % loss on both, 40 ms RTT, {} s", secs * 2),
        "aggregate" => format!("aggregate, 5 Mbit/s clip, 3 + 3 Mbit/s, {secs} s"),
        "split" => format!("aggregate, 3.5 Mbit/s clip, 4 + 1 Mbit/s, {secs} s"),
        "balanced" => format!("balanced, 5 % loss on both, {secs} s"),
        _ => format!("aggregate, path 0 flapping 1 s / 1 s, {} s", secs * 2),
    }
}

/// The case's figures of one run.
fn figures(case: &str, r: &Run, secs: u64) -> Vec<(&'static str, Option<f64>, bool)> {
    let control_lost = Some(f64::from(r.sent.saturating_sub(r.got)));
    let on_time_pct = |budget_ms| {
        let (on, all) = r.seen.on_time(Duration::from_millis(budget_ms));
        Some(on as f64 * 100.0 / all.max(1) as f64)
    };
    // With one path there is no bond, and no path figures.
    let bonded = !r.log.measured_shares().is_empty();
    match case {
        "cut" | "loss40" => vec![
            ("frames lost", Some(r.seen.lost() as f64), false),
            ("control messages lost", control_lost, false),
            (
                "longest frame gap, ms",
                Some(r.seen.longest_gap().as_secs_f64() * 1000.0),
                false,
            ),
        ],
        "loss20" => vec![
            ("% frames within 150 ms", on_time_pct(150), true),
            ("control messages lost", control_lost, false),
        ],
        "aggregate" => vec![(
            "% frames within 150 ms",
            Some(plain_on_time(&r.seen, secs) * 100.0),
            true,
        )],
        "split" => {
            let shares = r.log.measured_shares();
            let mean =
                |i: usize| shares.iter().map(|s| s[i]).sum::<f64>() / shares.len().max(1) as f64;
            let (a, b) = (mean(0), mean(1));
            vec![
                (
                    "path 0's share (capacity: 0.80)",
                    bonded.then(|| a / (a + b).max(1e-9)),
                    true,
                ),
                (
                    "% frames within 150 ms",
                    Some(plain_on_time(&r.seen, secs) * 100.0),
                    true,
                ),
            ]
        }
        "balanced" => vec![
            ("control messages lost", control_lost, false),
            (
                "bytes sent per byte",
                bonded.then(|| r.log.mean_sent_per_byte()),
                false,
            ),
        ],
        _ => vec![("visible glitches", Some(glitches(&r.seen) as f64), false)],
    }
}

struct Clips {
    c5000: PathBuf,
    c3500: PathBuf,
}

pub async fn multipath(
    secs: u64,
    cuts: u64,
    cases: Vec<String>,
    bin: PathBuf,
) -> anyhow::Result<()> {
    for c in &cases {
        anyhow::ensure!(
            CASES.contains(&c.as_str()),
            "unknown case {c:?}: the cases are {}",
            CASES.join(", ")
        );
    }
    // Namespaces need root: say so before any work.
    drop(TestNet::try_create().map_err(|e| {
        anyhow::anyhow!(
            "cannot make a test network namespace (run as root, with iproute2 and nftables): {e}"
        )
    })?);
    let dir = std::env::temp_dir().join(format!("fieldlink-bench-clips-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clip = |kbps| {
        paths::clip(&dir, kbps).with_context(|| format!("making a {kbps} kbit/s clip needs ffmpeg"))
    };
    let clips = Clips {
        c5000: clip(5000)?,
        c3500: clip(3500)?,
    };
    // Timing, not CPU, is measured: nothing pinned (as in the tests). A 5 Mbit/s stream
    // through the field device's bond and the remote on one core was late (15 % of frames
    // on time where the tests see 100 %).
    let cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-pc", &cpus, &std::process::id().to_string()])
        .output();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for case in &cases {
        let mut runs = Vec::new();
        for binds in [2, 1] {
            eprintln!("{} with {binds} path(s)...", describe(case, secs, cuts));
            let net = TestNet::try_create().map_err(|e| anyhow::anyhow!("test network: {e}"))?;
            let setup = Setup {
                binds,
                ..setup(case, secs, cuts, &clips)
            };
            let measured = setup.secs;
            let start = |ip: String, extra: Vec<String>| {
                let bin = bin.clone();
                async move {
                    let server = launch(&bin, 1, &extra, &[], &ip, "").await?;
                    anyhow::Ok(Platform {
                        server,
                        field: "bench/f0".parse()?,
                    })
                }
            };
            // A run that fails (a remote that never played behind an overloaded link)
            // is a row of "-", said below the table; the other cases still run.
            match paths::run_paths(setup, net, start, |net, s| plan(case, net, s)).await {
                Ok(run) => {
                    let f = figures(case, &run, measured);
                    // As it goes, so a later failure or an interrupt loses nothing.
                    for (name, v, _) in &f {
                        eprintln!("  {name}: {}", v.map_or("-".into(), |v| format!("{v:.2}")));
                    }
                    runs.push(f);
                }
                Err(e) => {
                    let what =
                        format!("{} with {binds} path(s): {e:#}", describe(case, secs, cuts));
                    eprintln!("failed: {what}");
                    failed.push(what);
                    let none = figures(case, &Run::default(), measured);
                    runs.push(none.into_iter().map(|(f, _, m)| (f, None, m)).collect());
                }
            }
        }
        let (two, one) = (&runs[0], &runs[1]);
        for (t, o) in two.iter().zip(one) {
            rows.push(Row {
                case: describe(case, secs, cuts),
                figure: t.0,
                two: t.1,
                one: o.1,
                more_is_better: t.2,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:<52} {:<32} {:>10} {:>10} {:>7}",
        "case (SPEC §9)", "figure", "two paths", "one path", "gain"
    );
    let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for r in &rows {
        println!(
            "{:<52} {:<32} {:>10} {:>10} {:>7}",
            r.case,
            r.figure,
            cell(r.two),
            cell(r.one),
            r.ratio()
        );
    }
    println!(
        "gain: two paths' figure over one path's where more is better, one's over two's \
         where less is; inf: the one path lost what two paths did not lose at all; -: no \
         such figure with one path (no bond) or the run failed"
    );
    for f in &failed {
        println!("failed: {f}");
    }
    anyhow::ensure!(failed.is_empty(), "{} run(s) failed (above)", failed.len());
    Ok(())
}
