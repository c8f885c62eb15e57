//! The `fieldlink` command line: token vectors, and field/remote processes talking through
//! a real server.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

#[test]
fn token_prints_the_spec_test_vectors() {
    let out = fieldlink()
        .args([
            "token",
            "device-password",
            "--key",
            KEY,
            "--device-id",
            "proj1/dev1",
            "--expire",
            "29433600",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sINpihXd9RT0pkibuCg4Z3NlhJuCpUFCZE3pqNlk8do_29433600\n"
    );
    let out = fieldlink()
        .args([
            "token",
            "session-code",
            "--key",
            KEY,
            "--remote-id",
            "proj1/remote1",
            "--field-id",
            "proj1/dev1",
            "--expire",
            "29433600",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ZbHRkwBaykRp7h9tG9CecqmAUkcw5Bt5v8Q46S7XeQQ_29433600\n"
    );
    let out = fieldlink()
        .args([
            "token",
            "device-password",
            "--key",
            "TOO-SHORT",
            "--device-id",
            "p/d",
            "--expire",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 characters"));
    let out = fieldlink()
        .args([
            "token",
            "device-password",
            "--key",
            KEY,
            "--device-id",
            "no-slash",
            "--expire",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `fieldlink remote` as `p/r1` (JSON output) with `extra` arguments.
fn remote_r1(s: &TestServer, extra: &[&str]) -> Command {
    let mut c = fieldlink();
    c.args(["remote", "--server", &s.ws, "--device-id", "p/r1"])
        .args(["--password", "rpw", "--json"])
        .args(extra);
    c
}

#[test]
fn field_and_remote_command_lines_exchange_control_data() {
    let s = TestServer::start();
    s.standard();
    let (mut field, field_out) = start_field(
        &s,
        &format!(
            r#"{{"device_id":"f","projectid":"p","password":"fpw","device_streams":1,"server":"{}"}}"#,
            s.ws
        ),
    );

    let remote = |extra: &[&str]| remote_r1(&s, extra);
    // List.
    let out = remote(&["list"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "p/f");
    assert_eq!(list[0]["online"], true);

    // One-shot send: waits for master, sends, exits 0.
    let out = remote(&[
        "send",
        "--gwid",
        "p/f",
        "--data",
        "hello field",
        "--count",
        "3",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..3 {
        let v = wait_line(&field_out, "control data at field", |v| {
            v["event"] == "control_data"
        });
        assert_eq!(
            (v["from"].as_str(), v["text"].as_str(), v["qos"].as_u64()),
            (Some("p/r1"), Some("hello field"), Some(1))
        );
    }

    // Interactive session: report data from the field's stdin reaches the remote.
    let mut conn = remote(&["connect", "--gwid", "p/f", "--duration", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let conn_out = lines(&mut conn);
    wait_line(&conn_out, "master", |v| {
        v["event"] == "permission" && v["self_permission"] == 1
    });
    writeln!(
        field.stdin.as_mut().unwrap(),
        r#"{{"send_hex":"00ff10","qos":0}}"#
    )
    .unwrap();
    let v = wait_line(&conn_out, "report at remote", |v| {
        v["event"] == "control_data"
    });
    assert_eq!(
        (v["from"].as_str(), v["hex"].as_str(), v["qos"].as_u64()),
        (Some("p/f"), Some("00ff10"), Some(0))
    );
    // A bad command line is reported, not fatal.
    writeln!(field.stdin.as_mut().unwrap(), r#"{{"send_hex":"zz"}}"#).unwrap();
    let v = wait_line(&field_out, "error line", |v| v["event"] == "error");
    assert_eq!(v["name"], "BAD_REQUEST");
    // The remote sends from its stdin, and releases master.
    writeln!(conn.stdin.as_mut().unwrap(), "typed line").unwrap();
    let v = wait_line(&field_out, "typed line at field", |v| {
        v["event"] == "control_data"
    });
    assert_eq!(v["text"], "typed line");
    writeln!(
        conn.stdin.as_mut().unwrap(),
        r#"{{"request_permission":0}}"#
    )
    .unwrap();
    wait_line(&field_out, "master released", |v| {
        v["event"] == "master_changed" && v["master_id"].is_null()
    });
    // As a guest, sending is refused with NOT_MASTER.
    writeln!(conn.stdin.as_mut().unwrap(), "not allowed").unwrap();
    let v = wait_line(&conn_out, "not master", |v| v["event"] == "error");
    assert_eq!(v["name"], "NOT_MASTER");
    drop(conn.stdin.take());
    assert!(conn.wait().unwrap().success());
    let _ = field.kill();
    let _ = field.wait();
}

/// `remote watch --json --decode`: a state line per conn_fd and a stats line per second
/// (fps, kbps, latency, frames decoded/dropped); exit 0 only when every conn_fd played.
#[test]
fn remote_watch_prints_states_and_stats_and_exits_by_outcome() {
    let s = TestServer::start();
    s.standard();
    let (mut field, _field_out) = start_field(
        &s,
        &format!(
            r#"{{"device_id":"f","projectid":"p","password":"fpw","device_streams":2,"server":"{}",
                    "streams_config":[{{"width":320,"height":180,"fps":25,"bps":300}},{{"width":320,"height":180,"fps":25,"bps":300}}]}}"#,
            s.ws
        ),
    );
    let watch = |extra: &[&str]| {
        remote_r1(&s, &["watch", "--gwid", "p/f", "--duration", "3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = watch(&["--streams", "0,1", "--conn-fds", "0,1", "--decode"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for fd in [0, 1] {
        assert!(
            lines.iter().any(|v| v["event"] == "stream_state"
                && v["conn_fd"] == fd
                && v["state"] == "playing"),
            "conn_fd {fd} never played: {text}"
        );
        let stats: Vec<&Value> = lines
            .iter()
            .filter(|v| v["event"] == "stats" && v["conn_fd"] == fd)
            .collect();
        assert!(stats.len() >= 2, "stats lines for {fd}: {text}");
        let last = stats.last().unwrap();
        assert!(last["fps"].as_u64().unwrap() >= 15, "fps: {last}");
        assert!(last["kbps"].as_u64().unwrap() > 0, "kbps: {last}");
        assert!(last["latency_ms"].as_f64().is_some(), "latency: {last}");
        assert!(
            last["frames_decoded"].as_u64().unwrap_or(0) >= 15,
            "decoded: {last}"
        );
        assert_eq!(last["frames_dropped"], 0, "dropped on loopback: {last}");
    }
    // A stream the field device does not have: a failed state and exit status 1.
    let out = watch(&["--streams", "7", "--conn-fds", "0"]);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("STREAM_OUT_OF_RANGE"), "{all}");
    let _ = field.kill();
    let _ = field.wait();
}

#[test]
fn clear_errors_for_bad_logins_and_configs() {
    let s = TestServer::start();
    s.standard();
    let out = fieldlink()
        .args([
            "remote",
            "--server",
            &s.ws,
            "--device-id",
            "p/r1",
            "--password",
            "wrong",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LOGIN_FAILED"), "{err}");
    let cfg = s.dir.join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"device_id":"f","projectid":"p","password":"x","nonsense":1}"#,
    )
    .unwrap();
    let out = fieldlink()
        .args(["field", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
    let out = fieldlink()
        .args([
            "remote",
            "--server",
            "ws://127.0.0.1:9/ws",
            "--device-id",
            "p/r1",
            "--password",
            "x",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DISCONNECTED"));
}

/// `fieldlink field --config X --check`: every problem with its JSON path and exit 1, or
/// OK and exit 0; nothing is contacted.
#[test]
fn field_config_check_lists_every_problem() {
    let dir = std::env::temp_dir().join(format!("fieldlink-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"device_id":"f","projectid":"p","password":"x","device_streams":2,"colour":1,
            "streams_config":[{"fps":25,"cameras":[{"url":"ftp://cam"}]}]}"#,
    )
    .unwrap();
    let out = fieldlink()
        .args(["field", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "$.colour: unknown key",
        "$.device_streams: 2, but $.streams_config has 1 entries",
        "$.streams_config[0].cameras[0].url:",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 problem(s)"));
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"device_id":"f","projectid":"p","password":"x","device_streams":1,
            "streams_config":[{"fps":25,"cameras":[{"url":"test://pattern"}]}]}"#,
    )
    .unwrap();
    let out = fieldlink()
        .args(["field", "--check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let _ = std::fs::remove_dir_all(&dir);
}
