//! SPEC §2 live video through the server: field test-pattern streams, remote receivers,
//! switching, state events, and what each receiver really gets (checked with the frame
//! metadata the test pattern embeds in every access unit).

mod common;

use std::time::Duration;

use common::*;
use fieldlink_media::FrameMeta;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::{ErrorCode, Event, Events, FieldDevice, RemoteDevice, StreamState};

const SMALL: TestPatternConfig = TestPatternConfig {
    width: 160,
    height: 96,
    fps: 25.0,
    kbps: 200,
    gop: 50,
};

async fn field_with_streams(s: &TestServer, id: &str, n: u32) -> (FieldDevice, Events) {
    let mut cfg = s.cfg(id, "fpw");
    cfg.streams = n;
    let (f, e) = FieldDevice::connect(cfg).await.expect("field login");
    for i in 0..n {
        f.start_video(i, TestPattern::new(i, SMALL).unwrap())
            .unwrap();
    }
    (f, e)
}

async fn remote_with_receivers(s: &TestServer, id: &str, n: u32) -> (RemoteDevice, Events) {
    let mut cfg = s.cfg(id, "rpw");
    cfg.streams = n;
    RemoteDevice::connect(cfg).await.expect("remote login")
}

/// Waits until `conn_fd` plays, then returns the stream ids (from the embedded metadata)
/// of the next `frames` frames on it.
async fn frames_on(ev: &mut Events, conn_fd: u32, frames: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < frames {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(Event::Frame(f))) if f.conn_fd == conn_fd => {
                let meta = FrameMeta::find(&f.data).expect("test pattern metadata");
                out.push(meta.stream_id);
            }
            Ok(Some(_)) => {}
            _ => panic!("only {} frames on conn_fd {conn_fd} within 10 s", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_play_switch_and_disconnect() {
    let s = TestServer::start();
    s.standard();
    let (_f, _fe) = field_with_streams(&s, "p/f", 4).await;
    let (r, mut re) = remote_with_receivers(&s, "p/r1", 2).await;
    let f = id("p/f");

    r.connect_streams(&f, &[2, 3], &[0, 1]).await.unwrap();
    expect_event(&mut re, "fd 0 playing", |e| {
        matches!(
            e,
            Event::StreamState {
                conn_fd: 0,
                stream_id: 2,
                state: StreamState::Playing,
                ..
            }
        )
    })
    .await;
    assert!(frames_on(&mut re, 0, 10).await.iter().all(|s| *s == 2));
    assert!(frames_on(&mut re, 1, 10).await.iter().all(|s| *s == 3));

    // Switch stream 0 into window/receiver 0: the old stream is dropped at once, and the
    // receiver only ever shows the new stream after the keyframe.
    r.connect_streams(&f, &[0], &[0]).await.unwrap();
    let ev = expect_event(&mut re, "fd 0 switched", |e| {
        matches!(
            e,
            Event::StreamState {
                conn_fd: 0,
                state: StreamState::Playing,
                ..
            }
        )
    })
    .await;
    assert!(matches!(ev, Event::StreamState { stream_id: 0, .. }));
    assert!(frames_on(&mut re, 0, 10).await.iter().all(|s| *s == 0));

    // Out-of-range ids fail with distinct codes.
    assert_eq!(
        r.connect_streams(&f, &[4], &[0]).await.unwrap_err().code,
        ErrorCode::StreamOutOfRange
    );
    assert_eq!(
        r.connect_streams(&f, &[0], &[2]).await.unwrap_err().code,
        ErrorCode::ConnFdOutOfRange
    );

    r.disconnect_streams(&[1]).await.unwrap();
    expect_event(&mut re, "fd 1 disconnected", |e| {
        matches!(
            e,
            Event::StreamState {
                conn_fd: 1,
                state: StreamState::Disconnected,
                ..
            }
        )
    })
    .await;
    r.disconnect_all().await.unwrap();
    expect_event(&mut re, "fd 0 disconnected", |e| {
        matches!(
            e,
            Event::StreamState {
                conn_fd: 0,
                state: StreamState::Disconnected,
                ..
            }
        )
    })
    .await;
    let after: Vec<Event> = drain(&mut re, Duration::from_millis(500)).await;
    let late = after
        .iter()
        .filter(|e| matches!(e, Event::Frame(_)))
        .count();
    assert!(late <= 2, "frames keep coming after disconnect_all: {late}");
}
