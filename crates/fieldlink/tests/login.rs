//! SPEC §8 login, listing and whitelist rules against a real server.

mod common;

use common::*;
use fieldlink_auth::{device_password, session_code};
use fieldlink_sdk::{ErrorCode, FieldDevice, RemoteDevice};
use serde_json::json;

async fn field_login(s: &TestServer, id: &str, pw: &str) -> Result<(), ErrorCode> {
    FieldDevice::connect(s.cfg(id, pw))
        .await
        .map(|(d, _)| drop(d))
        .map_err(|e| e.code)
}

async fn remote_login(s: &TestServer, id: &str, pw: &str) -> Result<(), ErrorCode> {
    RemoteDevice::connect(s.cfg(id, pw))
        .await
        .map(|(d, _)| drop(d))
        .map_err(|e| e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_matrix() {
    let s = TestServer::start();
    s.standard();
    s.device("p", "keyonly", "field", "USEPROJECTKEYPWD");
    let now = now_minutes();
    let kp = |dev: &str, exp: u64| device_password(KEY, dev, exp);

    // Own password.
    assert_eq!(field_login(&s, "p/f", "fpw").await, Ok(()));
    assert_eq!(
        field_login(&s, "p/f", "nope").await,
        Err(ErrorCode::LoginFailed)
    );
    assert_eq!(
        remote_login(&s, "p/f", "fpw").await,
        Err(ErrorCode::LoginFailed)
    );
    assert_eq!(
        field_login(&s, "nosuch/f", "fpw").await,
        Err(ErrorCode::LoginFailed)
    );
    // Key-derived: valid, expired, made for another device.
    assert_eq!(field_login(&s, "p/f", &kp("p/f", now + 60)).await, Ok(()));
    assert_eq!(
        field_login(&s, "p/f", &kp("p/f", now - 2)).await,
        Err(ErrorCode::PasswordExpired)
    );
    assert_eq!(
        field_login(&s, "p/f", &kp("p/other", now + 60)).await,
        Err(ErrorCode::LoginFailed)
    );
    // USEPROJECTKEYPWD: own-style password refused, key-derived accepted.
    assert_eq!(
        field_login(&s, "p/keyonly", "USEPROJECTKEYPWD").await,
        Err(ErrorCode::LoginFailed)
    );
    assert_eq!(
        field_login(&s, "p/keyonly", "whatever").await,
        Err(ErrorCode::LoginFailed)
    );
    assert_eq!(
        field_login(&s, "p/keyonly", &kp("p/keyonly", now + 5)).await,
        Ok(())
    );

    // AutoRegister 0..3 for each kind: unknown devices with valid key-derived passwords.
    for auto in 0..=3 {
        let (st, v) = s.api(
            "PUT",
            "/api/v1/projects/p",
            Some(json!({"AutoRegister": auto})),
        );
        assert_eq!(st, 200, "{v}");
        let f = format!("p/newf{auto}");
        let r = format!("p/newr{auto}");
        let want = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ErrorCode::LoginFailed)
            }
        };
        assert_eq!(
            field_login(&s, &f, &kp(&f, now + 5)).await,
            want(auto & 1 != 0),
            "AutoRegister {auto} field"
        );
        assert_eq!(
            remote_login(&s, &r, &kp(&r, now + 5)).await,
            want(auto & 2 != 0),
            "AutoRegister {auto} remote"
        );
        if auto & 1 != 0 {
            // Registered on first login, with USEPROJECTKEYPWD.
            let (st, v) = s.api(
                "GET",
                &format!("/api/v1/projects/p/devices/newf{auto}"),
                None,
            );
            assert_eq!(st, 200);
            assert_eq!(v["auto_registered"], true);
            assert_eq!(v["key_password_only"], true);
        }
    }
    // Rotating the key changes every key-derived password at once.
    let (st, _) = s.api(
        "PUT",
        "/api/v1/projects/p",
        Some(json!({"Key": "abcdefghijklmnopqrstuvwxyz012345"})),
    );
    assert_eq!(st, 200);
    assert_eq!(
        field_login(&s, "p/keyonly", &kp("p/keyonly", now + 5)).await,
        Err(ErrorCode::LoginFailed)
    );
    let rotated = device_password("abcdefghijklmnopqrstuvwxyz012345", "p/keyonly", now + 5);
    assert_eq!(field_login(&s, "p/keyonly", &rotated).await, Ok(()));
    // Key mode off: key-derived passwords no longer work.
    s.api("PUT", "/api/v1/projects/p", Some(json!({"Mode": 0})));
    assert_eq!(
        field_login(&s, "p/keyonly", &rotated).await,
        Err(ErrorCode::LoginFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_down() {
    let s = TestServer::start_with(
        "[login]\ndevice_free_failures = 3\nbase_delay_ms = 1500\n",
        &[],
    );
    s.standard();
    for _ in 0..3 {
        assert_eq!(
            field_login(&s, "p/f", "bad").await,
            Err(ErrorCode::LoginFailed)
        );
    }
    // Now even the right password must wait.
    let e = FieldDevice::connect(s.cfg("p/f", "fpw"))
        .await
        .err()
        .expect("throttled");
    assert_eq!(e.code, ErrorCode::TooManyAttempts, "{e}");
    // Another device id is not affected.
    assert_eq!(remote_login(&s, "p/r1", "rpw").await, Ok(()));
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(field_login(&s, "p/f", "fpw").await, Ok(()));
    // Success resets: three more failures before slowing again.
    assert_eq!(
        field_login(&s, "p/f", "bad").await,
        Err(ErrorCode::LoginFailed)
    );
    assert_eq!(field_login(&s, "p/f", "fpw").await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_list_and_whitelist() {
    let s = TestServer::start();
    s.standard();
    s.device("p", "f2", "field", "fpw");
    let (_f, _fe) = s.field("p/f", "fpw").await;
    let (r, _re) = s.remote("p/r1", "rpw").await;
    let list = r.list_fields().await.unwrap();
    let ids: Vec<_> = list.iter().map(|f| (f.id.to_string(), f.online)).collect();
    assert_eq!(
        ids,
        [("p/f".to_string(), true), ("p/f2".to_string(), false)]
    );

    s.api(
        "PUT",
        "/api/v1/projects/p",
        Some(json!({"FieldListEnable": 0, "WhitelistEnable": 1})),
    );
    assert_eq!(
        r.list_fields().await.unwrap_err().code,
        ErrorCode::FieldListDisabled
    );
    // Whitelist on, no entry: refused.
    assert_eq!(
        r.open_session(&id("p/f")).await.unwrap_err().code,
        ErrorCode::NotWhitelisted
    );
    // With an entry: allowed.
    let (st, _) = s.api(
        "POST",
        "/api/v1/projects/p/whitelist",
        Some(json!({"remote_id": "r1", "field_id": "f"})),
    );
    assert_eq!(st, 201);
    r.open_session(&id("p/f")).await.unwrap();
    // Session codes for the field device without an entry.
    let now = now_minutes();
    let expired = session_code(KEY, "p/r1", "p/f2", now - 2);
    let valid = session_code(KEY, "p/r1", "p/f2", now + 10);
    let for_other = session_code(KEY, "p/r2", "p/f2", now + 10);
    assert_eq!(
        r.set_session_permission_token(&id("p/f2"), &expired)
            .await
            .unwrap_err()
            .code,
        ErrorCode::SessionCodeExpired
    );
    assert_eq!(
        r.open_session(&id("p/f2")).await.unwrap_err().code,
        ErrorCode::SessionCodeExpired
    );
    assert_eq!(
        r.set_session_permission_token(&id("p/f2"), &for_other)
            .await
            .unwrap_err()
            .code,
        ErrorCode::SessionCodeInvalid
    );
    assert_eq!(
        r.open_session(&id("p/f2")).await.unwrap_err().code,
        ErrorCode::SessionCodeInvalid
    );
    // A later, valid code replaces the earlier one.
    r.set_session_permission_token(&id("p/f2"), &valid)
        .await
        .unwrap();
    r.open_session(&id("p/f2")).await.unwrap();
    // And an expired one replacing it is refused again.
    let _ = r.set_session_permission_token(&id("p/f2"), &expired).await;
    r.close_session(&id("p/f2")).await.unwrap();
    assert_eq!(
        r.open_session(&id("p/f2")).await.unwrap_err().code,
        ErrorCode::SessionCodeExpired
    );
    // Unknown field device and other projects are refused.
    assert_eq!(
        r.open_session(&id("p/nosuch")).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        r.open_session(&id("q/f")).await.unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_replaces_the_first() {
    let s = TestServer::start();
    s.standard();
    let (_a, mut ae) = s.remote("p/r1", "rpw").await;
    let (_b, _be) = s.remote("p/r1", "rpw").await;
    expect_event(&mut ae, "replaced warning", |e| {
        matches!(
            e,
            fieldlink_sdk::Event::Warning {
                code: ErrorCode::Replaced,
                ..
            }
        )
    })
    .await;
}
