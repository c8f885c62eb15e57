//! Tolerance: the third-party GB28181 device of the `gb28181-rs` crate (its own SIP,
//! MANSCDP and PS/RTP code, with its deviations from the standard) registers with the
//! platform, keeps alive, answers the catalog, and its live video, made from our test
//! pattern, plays on a remote receiver.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig, VideoSource};
use fieldlink_sdk::Event;
use gb28181_rs::config::{Gb28181Config, Transport};
use gb28181_rs::frame::{AccessUnit, Nalu};
use gb28181_rs::mock::MockFrameHub;
use gb28181_rs::server::Gb28181Server;

const DEVICE: &str = "34020000001320000007";

/// Our test pattern (stream id 5) as gb28181-rs access units, 25 a second.
async fn produce(hub: Arc<MockFrameHub>) {
    let cfg = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 25,
    };
    let mut tp = TestPattern::new(5, cfg).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    loop {
        tick.tick().await;
        let Ok(Some(f)) = tp.next_frame(false) else {
            continue;
        };
        let nalus: Vec<Nalu> = fieldlink_media::nal_units(&f.data)
            .into_iter()
            .filter(|n| !n.is_empty())
            .map(|n| {
                let t = n[0] & 0x1F;
                Nalu {
                    nalu_type: t,
                    data: n.to_vec(),
                    is_idr: t == 5,
                    is_sps: t == 7,
                    is_pps: t == 8,
                    is_aud: t == 9,
                }
            })
            .collect();
        hub.write(AccessUnit {
            nalus,
            timestamp: std::time::Instant::now(),
            is_key_frame: f.keyframe,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gb28181_rs_device_registers_keeps_alive_and_plays() {
    let s = TestServer::start_with(
        "[gb28181]\nproject = \"p\"\nlinger_secs = 1\n",
        &[
            "--sip-listen",
            "127.0.0.1:0",
            "--sip-keepalive-secs",
            "1",
            "--log-sip",
        ],
    );
    s.standard();
    let sip: std::net::SocketAddr = s.sip.clone().unwrap().parse().unwrap();
    let config = Gb28181Config {
        enabled: true,
        platform_sip_address: "127.0.0.1".to_string(),
        platform_sip_port: sip.port(),
        device_id: DEVICE.to_string(),
        channel_id: DEVICE.to_string(),
        sip_domain: "3402000000".to_string(),
        password: "12345678".to_string(),
        local_sip_port: free_port(),
        register_interval_secs: 3600,
        heartbeat_interval_secs: 1,
        heartbeat_timeout_count: 3,
        transport: Transport::Udp,
        ..Gb28181Config::default()
    };
    let hub = Arc::new(MockFrameHub::new());
    let producer = tokio::spawn(produce(hub.clone()));
    let mut server = Gb28181Server::start(config, hub, None).await.unwrap();

    // Registered, catalog in: listed as a field device with its channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dev = loop {
        let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
        if let Some(d) = list
            .as_array()
            .and_then(|l| l.iter().find(|d| d["id"] == DEVICE))
        {
            if d["field_id"].is_string() && d["channels"].as_array().is_some_and(|c| !c.is_empty())
            {
                break d.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not registered with a catalog: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dev["online"], true);

    // Live video through the platform to a remote receiver.
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    let (r, mut ev) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    let gwid = id(&format!("p/{DEVICE}"));
    r.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    let mut frames = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while frames < 25 {
        let e = tokio::time::timeout_at(deadline, ev.recv())
            .await
            .unwrap_or_else(|_| panic!("frames from gb28181-rs: {frames}"))
            .unwrap();
        if let Event::Frame(f) = e {
            let m = fieldlink_media::FrameMeta::find(&f.data).expect("our metadata SEI survived");
            assert_eq!(m.stream_id, 5);
            frames += 1;
        }
    }
    // Still online after more than 3 keepalive periods: its keepalives are accepted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
    let d = list
        .as_array()
        .and_then(|l| l.iter().find(|d| d["id"] == DEVICE))
        .cloned()
        .unwrap();
    assert_eq!(d["online"], true, "{d}");
    r.disconnect_all().await.unwrap();
    producer.abort();
    let _ = server.shutdown().await;
}

/// Our PS demuxer reads gb28181-rs's PS (which labels its stream map 0xBB, not 0xBC):
/// the same access units come out, frame by frame.
#[test]
fn our_demuxer_reads_gb28181_rs_ps() {
    let cfg = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 10,
    };
    let mut tp = TestPattern::new(3, cfg).unwrap();
    let mut sent = Vec::new();
    let mut demux = fieldlink_media::ps::Demuxer::new();
    let mut got = Vec::new();
    for i in 0..20u64 {
        let f = tp.next_frame(false).unwrap().unwrap();
        let nals = fieldlink_media::nal_units(&f.data);
        let ps = gb28181_rs::ps::mux_h264_to_ps(&nals, f.keyframe, i * 3600, i * 3600);
        sent.push(nals.iter().map(|n| n.to_vec()).collect::<Vec<_>>());
        got.extend(demux.push(&ps).unwrap());
    }
    got.extend(demux.flush());
    assert_eq!(got.len(), 20, "frames out");
    for (f, nals) in got.iter().zip(&sent) {
        let back: Vec<Vec<u8>> = fieldlink_media::nal_units(&f.data)
            .iter()
            .map(|n| n.to_vec())
            .collect();
        assert_eq!(&back, nals);
    }
}
