//! SPEC §5 permission flows and operation sessions against a real server.

mod common;

use common::*;
use fieldlink_sdk::{DeviceConfig, ErrorCode, Event, FieldDevice, Permission, RemoteDevice};
use serde_json::Value;

fn is_perm(e: &Event, me: Permission, master: Option<&str>) -> bool {
    matches!(e, Event::Permission { self_permission, master_id, .. }
        if *self_permission == me && master_id.as_ref().map(|m| m.to_string()).as_deref() == master)
}

fn audit(s: &TestServer) -> Vec<(String, String, String)> {
    // The audit writer is asynchronous: give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (st, v) = s.api("GET", "/api/v1/projects/p/audit?field_id=p/f", None);
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| match &e[k] {
                Value::String(s) => s.clone(),
                _ => "-".into(),
            };
            (s("master"), s("actor"), s("cause"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_mode_hand_over_and_master_leaving() {
    let s = TestServer::start();
    s.standard();
    let (_f, mut fe) = s.field("p/f", "fpw").await;
    let (r1, mut e1) = s.remote("p/r1", "rpw").await;
    let (r2, mut e2) = s.remote("p/r2", "rpw").await;
    let f = id("p/f");

    // Automatic remote asks on connect; automatic field grants.
    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "r1 master", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;
    expect_event(
        &mut fe,
        "field sees r1 join",
        |e| matches!(e, Event::RemoteJoined { remote_id } if remote_id.to_string() == "p/r1"),
    )
    .await;
    expect_event(
        &mut fe,
        "field sees r1 master",
        |e| matches!(e, Event::MasterChanged { master_id: Some(m) } if m.to_string() == "p/r1"),
    )
    .await;

    // r2 connects (also automatic): it takes master, r1 is notified it is a guest now.
    r2.open_session(&f).await.unwrap();
    expect_event(&mut e2, "r2 master", |e| {
        is_perm(e, Permission::Master, Some("p/r2"))
    })
    .await;
    expect_event(&mut e1, "r1 demoted", |e| {
        is_perm(e, Permission::Guest, Some("p/r2"))
    })
    .await;
    assert_eq!(r1.permission(&f), Permission::Guest);
    assert_eq!(r2.permission(&f), Permission::Master);

    // r1 asks back explicitly.
    r1.request_permission(&f, Permission::Master).await.unwrap();
    expect_event(&mut e1, "r1 master again", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;
    expect_event(&mut e2, "r2 demoted", |e| {
        is_perm(e, Permission::Guest, Some("p/r1"))
    })
    .await;

    // Explicit release.
    r1.request_permission(&f, Permission::Guest).await.unwrap();
    expect_event(&mut e2, "master free", |e| {
        is_perm(e, Permission::Guest, None)
    })
    .await;

    // Master disconnecting frees master.
    r2.request_permission(&f, Permission::Master).await.unwrap();
    expect_event(&mut e1, "r2 master", |e| {
        is_perm(e, Permission::Guest, Some("p/r2"))
    })
    .await;
    r2.close().await;
    expect_event(&mut e1, "master freed by disconnect", |e| {
        is_perm(e, Permission::Guest, None)
    })
    .await;
    expect_event(
        &mut fe,
        "field sees r2 leave",
        |e| matches!(e, Event::RemoteLeft { remote_id } if remote_id.to_string() == "p/r2"),
    )
    .await;

    let log = audit(&s);
    let want: Vec<(String, String, String)> = [
        ("p/r1", "p/r1", "auto_grant"),
        ("p/r2", "p/r2", "auto_grant"),
        ("p/r1", "p/r1", "auto_grant"),
        ("-", "p/r1", "released"),
        ("p/r2", "p/r2", "auto_grant"),
        ("-", "p/r2", "master_left"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(log, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_mode_field_decides() {
    let s = TestServer::start();
    s.standard();
    let mut fc = s.cfg("p/f", "fpw");
    fc.auto_permission = false;
    let (field, mut fe) = FieldDevice::connect(fc).await.unwrap();
    let mut rc: DeviceConfig = s.cfg("p/r1", "rpw");
    rc.auto_permission = false;
    let (r1, mut e1) = RemoteDevice::connect(rc).await.unwrap();
    let f = id("p/f");

    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "initial guest", |e| {
        is_perm(e, Permission::Guest, None)
    })
    .await;
    // A manual remote does not ask by itself.
    let quiet = drain(&mut fe, std::time::Duration::from_millis(500)).await;
    assert!(
        !quiet
            .iter()
            .any(|e| matches!(e, Event::PermissionRequest { .. })),
        "{quiet:?}"
    );

    r1.request_permission(&f, Permission::Master).await.unwrap();
    let req = expect_event(&mut fe, "permission request", |e| {
        matches!(e, Event::PermissionRequest { .. })
    })
    .await;
    assert_eq!(
        req,
        Event::PermissionRequest {
            remote_id: id("p/r1"),
            level: Permission::Master
        }
    );
    assert_eq!(
        r1.permission(&f),
        Permission::Guest,
        "nothing granted before the field decides"
    );

    field
        .set_operation_permission(&id("p/r1"), Permission::Master)
        .await
        .unwrap();
    expect_event(&mut e1, "granted", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;
    field
        .set_operation_permission(&id("p/r1"), Permission::Guest)
        .await
        .unwrap();
    expect_event(&mut e1, "revoked", |e| is_perm(e, Permission::Guest, None)).await;
    // Setting the level of a device not in session is an error.
    let e = field
        .set_operation_permission(&id("p/r2"), Permission::Master)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotInSession);

    let causes: Vec<String> = audit(&s)
        .into_iter()
        .map(|(_, actor, cause)| format!("{actor}:{cause}"))
        .collect();
    assert_eq!(causes, ["p/f:field_grant", "p/f:field_revoke"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_sessions() {
    let s = TestServer::start();
    s.standard();
    let (r1, mut e1) = s.remote("p/r1", "rpw").await;
    let f = id("p/f");
    // A session with an offline field device opens; the remote learns it is offline.
    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "offline presence", |e| {
        matches!(e, Event::Presence { online: false, .. })
    })
    .await;
    assert_eq!(
        r1.request_permission(&f, Permission::Master)
            .await
            .unwrap_err()
            .code,
        ErrorCode::FieldOffline
    );

    // The field arrives: everyone learns; it learns who is in session; the automatic
    // remote becomes master.
    let (field, mut fe) = s.field("p/f", "fpw").await;
    expect_event(&mut e1, "online", |e| {
        matches!(e, Event::Presence { online: true, .. })
    })
    .await;
    expect_event(
        &mut fe,
        "r1 in session",
        |e| matches!(e, Event::RemoteJoined { remote_id } if remote_id.to_string() == "p/r1"),
    )
    .await;
    expect_event(&mut e1, "master on arrival", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;

    // r2 only listens (FieldListEnable 1): it hears presence without a session.
    let (_r2, mut e2) = s.remote("p/r2", "rpw").await;
    field.close().await;
    expect_event(&mut e1, "offline again", |e| {
        matches!(e, Event::Presence { online: false, .. })
    })
    .await;
    expect_event(&mut e2, "r2 hears offline", |e| {
        matches!(e, Event::Presence { online: false, .. })
    })
    .await;

    // Closing a session that is not open is an error.
    assert_eq!(
        r1.close_session(&id("p/f2")).await.unwrap_err().code,
        ErrorCode::NotInSession
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_after_a_server_restart() {
    let mut s = TestServer::start();
    s.standard();
    let (field, mut fe) = s.field("p/f", "fpw").await;
    let (r1, mut e1) = s.remote("p/r1", "rpw").await;
    let f = id("p/f");
    r1.open_session(&f).await.unwrap();
    expect_event(&mut e1, "master", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;

    s.restart();
    expect_event(&mut e1, "remote disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    expect_event(&mut fe, "field disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    expect_event(&mut e1, "remote reconnected", |e| {
        matches!(e, Event::Reconnected)
    })
    .await;
    expect_event(&mut fe, "field reconnected", |e| {
        matches!(e, Event::Reconnected)
    })
    .await;
    // The session was restored and control works again, both ways.
    expect_event(&mut e1, "master again", |e| {
        is_perm(e, Permission::Master, Some("p/r1"))
    })
    .await;
    r1.send(&f, b"after-restart", fieldlink_sdk::Qos::Reliable)
        .await
        .unwrap();
    expect_event(
        &mut fe,
        "control after restart",
        |e| matches!(e, Event::ControlData { data, .. } if data == b"after-restart"),
    )
    .await;
    field
        .send(b"report-after-restart", fieldlink_sdk::Qos::Reliable)
        .await
        .unwrap();
    expect_event(
        &mut e1,
        "report after restart",
        |e| matches!(e, Event::ControlData { data, .. } if data == b"report-after-restart"),
    )
    .await;
}
