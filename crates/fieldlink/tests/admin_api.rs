//! Admin HTTP API against a real server: CRUD, validation (4xx, never 500), auth, and data
//! surviving a graceful restart.

mod common;

use common::*;
use serde_json::json;

#[test]
fn requires_the_admin_token() {
    let s = TestServer::start();
    let (st, v) = s.api_with_token("GET", "/api/v1/projects", None, None);
    assert_eq!((st, v["name"].as_str()), (401, Some("UNAUTHORIZED")));
    let (st, _) = s.api_with_token("GET", "/api/v1/projects", None, Some("wrong"));
    assert_eq!(st, 401);
    let (st, v) = s.api_with_token("GET", "/api/v1/health", None, None);
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
}

#[test]
fn bad_input_is_4xx_with_a_stable_code() {
    let s = TestServer::start();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/projects",
            Some("{bad json"),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":"p","Bogus":1}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":"p","Mode":1}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":"p","Key":"SHORT"}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":"p","AutoRegister":4}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":"a/b"}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":""}"#),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/projects",
            Some(r#"{"id":5}"#),
            400,
            "BAD_REQUEST",
        ),
        ("GET", "/api/v1/projects/nope", None, 404, "NOT_FOUND"),
        ("DELETE", "/api/v1/projects/nope", None, 404, "NOT_FOUND"),
        (
            "POST",
            "/api/v1/projects/nope/devices",
            Some(r#"{"id":"d","kind":"field","password":"x"}"#),
            404,
            "NOT_FOUND",
        ),
        ("GET", "/api/v1/nothing-here", None, 404, "NOT_FOUND"),
    ];
    for (m, path, body, want, name) in cases {
        let (st, v) = raw_http(&s.http, m, path, body.unwrap_or(""), Some(TOKEN));
        assert_eq!(
            (st, v["name"].as_str()),
            (want, Some(name)),
            "{m} {path} {body:?}: {v}"
        );
        assert!(v["code"].as_i64().unwrap() < 0 && v["message"].is_string());
    }
    s.project("p", json!({}));
    let (st, v) = s.api("POST", "/api/v1/projects", Some(json!({"id": "p"})));
    assert_eq!((st, v["name"].as_str()), (409, Some("CONFLICT")));
    for body in [
        json!({"id": "d", "kind": "robot", "password": "x"}),
        json!({"id": "d", "kind": "field", "password": ""}),
        json!({"id": "d", "kind": "field"}),
        json!({"id": "d/x", "kind": "field", "password": "x"}),
    ] {
        let (st, v) = s.api("POST", "/api/v1/projects/p/devices", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {v}");
    }
    let (st, _) = s.api("GET", "/api/v1/projects/p/devices?kind=robot", None);
    assert_eq!(st, 400);
    let (st, _) = s.api("GET", "/api/v1/projects/p/audit?limit=0", None);
    assert_eq!(st, 400);
    let (st, v) = s.api(
        "POST",
        "/api/v1/projects/p/device-password",
        Some(json!({"device_id": "d"})),
    );
    assert_eq!((st, v["name"].as_str()), (400, Some("KEY_MODE_OFF")));
    let (st, v) = s.api(
        "POST",
        "/api/v1/projects/p/session-code",
        Some(json!({"remote_id": "r", "field_id": "d"})),
    );
    assert_eq!((st, v["name"].as_str()), (400, Some("KEY_MODE_OFF")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_devices_whitelist_and_generated_passwords() {
    let s = TestServer::start();
    s.project(
        "p",
        json!({"name": "Port crane", "Mode": 1, "Key": KEY, "AutoRegister": 1}),
    );
    let (st, v) = s.api("GET", "/api/v1/projects/p", None);
    assert_eq!(st, 200);
    assert_eq!(
        (
            &v["name"],
            &v["Mode"],
            &v["Key"],
            &v["AutoRegister"],
            &v["FieldListEnable"],
            &v["WhitelistEnable"]
        ),
        (
            &json!("Port crane"),
            &json!(1),
            &json!(KEY),
            &json!(1),
            &json!(1),
            &json!(0)
        )
    );
    s.device("p", "f", "field", "secret");
    let (_, dev) = s.api("GET", "/api/v1/projects/p/devices/f", None);
    assert!(
        dev.get("password").is_none(),
        "passwords never leave the server: {dev}"
    );
    assert_eq!(dev["online"], false);

    // A generated key-derived password logs in; the device then shows online.
    let (st, gen) = s.api(
        "POST",
        "/api/v1/projects/p/device-password",
        Some(json!({"device_id": "f", "valid_minutes": 30})),
    );
    assert_eq!(st, 200, "{gen}");
    let (_f, _fe) = s.field("p/f", gen["password"].as_str().unwrap()).await;
    let (_, list) = s.api("GET", "/api/v1/projects/p/devices?kind=field", None);
    assert_eq!(list[0]["online"], true);

    // A generated session code is the SPEC §8 derivation, valid for the minutes asked.
    let (st, c) = s.api(
        "POST",
        "/api/v1/projects/p/session-code",
        Some(json!({"remote_id": "r", "field_id": "f", "valid_minutes": 60})),
    );
    assert_eq!(st, 200, "{c}");
    let expire = c["expire"].as_u64().unwrap();
    let now_min = now_minutes();
    assert!((now_min + 59..=now_min + 61).contains(&expire), "{c}");
    assert_eq!(
        (c["remote_id"].as_str(), c["field_id"].as_str()),
        (Some("p/r"), Some("p/f"))
    );
    assert_eq!(
        c["code"],
        fieldlink_auth::session_code(KEY, "p/r", "p/f", expire),
        "{c}"
    );
    let (st, _) = s.api(
        "POST",
        "/api/v1/projects/p/session-code",
        Some(json!({"remote_id": "r", "field_id": "f", "valid_minutes": 0})),
    );
    assert_eq!(st, 400);

    // Password change to USEPROJECTKEYPWD: the own password stops working.
    let (st, _) = s.api(
        "PUT",
        "/api/v1/projects/p/devices/f/password",
        Some(json!({"password": "USEPROJECTKEYPWD"})),
    );
    assert_eq!(st, 204);
    let e = fieldlink_sdk::FieldDevice::connect(s.cfg("p/f", "secret"))
        .await
        .err()
        .unwrap();
    // (The device is told only LOGIN_FAILED; the reason is in the server's log.)
    assert_eq!(e.code, fieldlink_sdk::ErrorCode::LoginFailed);

    // Whitelist CRUD.
    let wl = json!({"remote_id": "r", "field_id": "f"});
    assert_eq!(
        s.api("POST", "/api/v1/projects/p/whitelist", Some(wl.clone()))
            .0,
        201
    );
    assert_eq!(
        s.api("POST", "/api/v1/projects/p/whitelist", Some(wl.clone()))
            .0,
        409
    );
    assert_eq!(
        s.api("GET", "/api/v1/projects/p/whitelist", None).1,
        json!([wl])
    );
    assert_eq!(
        s.api("DELETE", "/api/v1/projects/p/whitelist/r/f", None).0,
        204
    );
    assert_eq!(
        s.api("DELETE", "/api/v1/projects/p/whitelist/r/f", None).0,
        404
    );

    // Deleting a device and a project.
    assert_eq!(s.api("DELETE", "/api/v1/projects/p/devices/f", None).0, 204);
    assert_eq!(s.api("GET", "/api/v1/projects/p/devices/f", None).0, 404);
    assert_eq!(s.api("DELETE", "/api/v1/projects/p", None).0, 204);
    assert_eq!(s.api("GET", "/api/v1/projects", None).1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_graceful_restart() {
    let mut s = TestServer::start();
    s.standard();
    {
        let (_f, _fe) = s.field("p/f", "fpw").await;
        let (r, mut re) = s.remote("p/r1", "rpw").await;
        r.open_session(&id("p/f")).await.unwrap();
        expect_event(&mut re, "master", |e| {
            matches!(
                e,
                fieldlink_sdk::Event::Permission {
                    self_permission: fieldlink_sdk::Permission::Master,
                    ..
                }
            )
        })
        .await;
        // Stop right away: the audit record must still be written before the store closes.
        s.restart();
    }
    let (st, v) = s.api("GET", "/api/v1/projects/p/devices", None);
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (_, log) = s.api("GET", "/api/v1/projects/p/audit", None);
    let causes: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["cause"].as_str())
        .collect();
    assert_eq!(causes.first(), Some(&"auto_grant"), "{log}");
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["ts_ms"].as_i64().unwrap() > 0 && e["field_id"] == "p/f"));
}

/// The same server on PostgreSQL (CI provides one; locally skipped without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_runs_on_postgres() {
    let Ok(url) = std::env::var("FIELDLINK_TEST_PG_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide FIELDLINK_TEST_PG_URL"
        );
        eprintln!("FIELDLINK_TEST_PG_URL not set: PostgreSQL server test skipped");
        return;
    };
    let s = TestServer::start_with("", &["--database-url", &url]);
    let p = format!("pg{}", std::process::id());
    let _ = s.api("DELETE", &format!("/api/v1/projects/{p}"), None);
    s.project(&p, json!({"Mode": 1, "Key": KEY, "AutoRegister": 3}));
    s.device(&p, "f", "field", "fpw");
    let (_f, _fe) = s.field(&format!("{p}/f"), "fpw").await;
    // Auto-registration writes through the same portable SQL.
    let r = format!("{p}/r");
    let pw = fieldlink_auth::device_password(KEY, &r, now_minutes() + 5);
    let (remote, mut re) = s.remote(&r, &pw).await;
    remote.open_session(&id(&format!("{p}/f"))).await.unwrap();
    expect_event(&mut re, "master", |e| {
        matches!(
            e,
            fieldlink_sdk::Event::Permission {
                self_permission: fieldlink_sdk::Permission::Master,
                ..
            }
        )
    })
    .await;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, log) = s.api("GET", &format!("/api/v1/projects/{p}/audit"), None);
    assert_eq!(log[0]["cause"], "auto_grant", "{log}");
    let (_, devs) = s.api("GET", &format!("/api/v1/projects/{p}/devices"), None);
    assert_eq!(devs.as_array().unwrap().len(), 2, "{devs}");
    assert_eq!(
        s.api("DELETE", &format!("/api/v1/projects/{p}"), None).0,
        204
    );
}
