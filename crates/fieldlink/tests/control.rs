//! SPEC §4 control data over the WebRTC data channels, against a real server.

mod common;

use std::time::Duration;

use common::*;
use fieldlink_proto::ControlFrame;
use fieldlink_sdk::{ErrorCode, Event, Permission, Qos};

fn data_of(e: &Event) -> Option<(String, &[u8], Qos)> {
    match e {
        Event::ControlData { from, data, qos } => Some((from.to_string(), data.as_slice(), *qos)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_both_qos_and_limits() {
    let s = TestServer::start();
    s.standard();
    let (field, mut fe) = s.field("p/f", "fpw").await;
    let (r1, mut e1) = s.remote("p/r1", "rpw").await;
    let (r2, mut e2) = s.remote("p/r2", "rpw").await;
    let f = id("p/f");
    r2.open_session(&f).await.unwrap();
    expect_event(&mut e2, "r2 master", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Master,
                ..
            }
        )
    })
    .await;
    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "r1 master", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Master,
                ..
            }
        )
    })
    .await;
    expect_event(&mut e2, "r2 guest", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Guest,
                ..
            }
        )
    })
    .await;

    // Remote (master) -> field, sizes 1 and 700, both qos; the callback names the controller.
    for qos in [Qos::Reliable, Qos::Lossy] {
        for len in [1usize, 350, 700] {
            let msg = vec![(len % 251) as u8; len];
            r1.send(&f, &msg, qos).await.unwrap();
            let ev = expect_event(&mut fe, "control at field", |e| {
                matches!(e, Event::ControlData { .. })
            })
            .await;
            let (from, data, q) = data_of(&ev).unwrap();
            assert_eq!((from.as_str(), data.len(), q), ("p/r1", len, qos));
            assert_eq!(data, &msg[..]);
        }
    }
    // 701 bytes and empty messages are refused in the SDK.
    assert_eq!(
        r1.send(&f, &[0u8; 701], Qos::Reliable)
            .await
            .unwrap_err()
            .code,
        ErrorCode::MessageTooLarge
    );
    assert_eq!(
        field.send(&[0u8; 701], Qos::Lossy).await.unwrap_err().code,
        ErrorCode::MessageTooLarge
    );
    // A guest cannot send.
    assert_eq!(
        r2.send(&f, b"x", Qos::Reliable).await.unwrap_err().code,
        ErrorCode::NotMaster
    );

    // Field -> every remote in session (guest too), with the field's id.
    for qos in [Qos::Reliable, Qos::Lossy] {
        field.send(b"report", qos).await.unwrap();
        for ev in [&mut e1, &mut e2] {
            let got = expect_event(ev, "report at remote", |e| {
                matches!(e, Event::ControlData { .. })
            })
            .await;
            assert_eq!(
                data_of(&got).unwrap(),
                ("p/f".to_string(), &b"report"[..], qos)
            );
        }
    }

    // Rate: the 101st message within one second is refused (after a second of quiet).
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let mut refused_at = None;
    for i in 0..101 {
        if let Err(e) = r1.send(&f, b"r", Qos::Lossy).await {
            assert_eq!(e.code, ErrorCode::RateLimited);
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(100), "exactly 100 pass in one second");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    r1.send(&f, b"again", Qos::Reliable).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_enforces_limits_against_a_misbehaving_client() {
    let s = TestServer::start();
    s.standard();
    let (_field, mut fe) = s.field("p/f", "fpw").await;
    let (r1, mut e1) = s.remote("p/r1", "rpw").await;
    let (r2, mut e2) = s.remote("p/r2", "rpw").await;
    let f = id("p/f");
    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "r1 master", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Master,
                ..
            }
        )
    })
    .await;
    r2.open_session(&f).await.unwrap();
    // r2 connected automatically and took master; give it back to r1.
    expect_event(&mut e2, "r2 master", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Master,
                ..
            }
        )
    })
    .await;
    r1.request_permission(&f, Permission::Master).await.unwrap();
    expect_event(&mut e2, "r2 guest", |e| {
        matches!(
            e,
            Event::Permission {
                self_permission: Permission::Guest,
                ..
            }
        )
    })
    .await;
    drain(&mut fe, Duration::from_millis(200)).await;

    let frame = |payload: &[u8], seq: u32| {
        // Built by hand so that no check of ours runs.
        let peer = b"p/f";
        let mut v = vec![1u8, peer.len() as u8];
        v.extend_from_slice(peer);
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(payload);
        v
    };
    // The hand-built frame is the wire format.
    assert_eq!(
        ControlFrame::decode(&frame(b"x", 5)).unwrap(),
        ControlFrame {
            peer: "p/f",
            seq: 5,
            payload: b"x"
        }
    );
    // A guest's frame is dropped by the server, with a warning to the guest.
    r2.send_raw_frame(frame(b"guest-sneaks", 1), Qos::Reliable)
        .await
        .unwrap();
    expect_event(&mut e2, "NOT_MASTER warning", |e| {
        matches!(
            e,
            Event::Warning {
                code: ErrorCode::NotMaster,
                ..
            }
        )
    })
    .await;
    // 701 bytes from the master is dropped.
    r1.send_raw_frame(frame(&[7u8; 701], 2), Qos::Reliable)
        .await
        .unwrap();
    expect_event(&mut e1, "MESSAGE_TOO_LARGE warning", |e| {
        matches!(
            e,
            Event::Warning {
                code: ErrorCode::MessageTooLarge,
                ..
            }
        )
    })
    .await;
    // 150 lossy messages at once: exactly 100 pass, the rest are dropped with a warning.
    for i in 0..150u32 {
        r1.send_raw_frame(frame(format!("m{i}").as_bytes(), 10 + i), Qos::Lossy)
            .await
            .unwrap();
    }
    expect_event(&mut e1, "RATE_LIMITED warning", |e| {
        matches!(
            e,
            Event::Warning {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    })
    .await;
    let got: Vec<Vec<u8>> = drain(&mut fe, Duration::from_millis(1200))
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ControlData { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(
        got.len(),
        100,
        "server passes exactly 100 lossy messages in a second"
    );
    assert!(!got.iter().any(|d| d == b"guest-sneaks" || d.len() == 701));
    assert_eq!(
        (got[0].as_slice(), got[99].as_slice()),
        (&b"m0"[..], &b"m99"[..])
    );

    // 150 reliable messages at once: none is lost, but the server paces them to 100/s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let start = tokio::time::Instant::now();
    for i in 0..150u32 {
        r1.send_raw_frame(frame(format!("q{i}").as_bytes(), 500 + i), Qos::Reliable)
            .await
            .unwrap();
    }
    let mut arrivals = Vec::new();
    while arrivals.len() < 150 {
        match tokio::time::timeout(WAIT, fe.recv()).await {
            Ok(Some(Event::ControlData { data, .. })) => arrivals.push((data, start.elapsed())),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let order: Vec<Vec<u8>> = (0..150).map(|i| format!("q{i}").into_bytes()).collect();
    assert_eq!(
        arrivals.iter().map(|a| a.0.clone()).collect::<Vec<_>>(),
        order,
        "all 150, in order"
    );
    let gap = arrivals[100].1 - arrivals[0].1;
    assert!(
        gap >= Duration::from_millis(900),
        "the 101st waited for the next second ({gap:?})"
    );
}
