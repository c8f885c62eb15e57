//! The GB28181 platform's SIP side against SIPp (`sip-tester`), a real SIP peer, over UDP on
//! 127.0.0.1: REGISTER with digest (401, then 200), a GB2312 MANSCDP keepalive answered
//! 200, a wrong password answered 403, and unregistering with `Expires: 0`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// Runs one SIPp call of `file` as device `id` with `password`; returns whether it passed,
/// with SIPp's output for the failure message.
fn sipp(server: &str, file: &str, id: &str, password: &str) -> (bool, String) {
    let out = Command::new("sipp")
        .arg(server)
        .arg("-sf")
        .arg(scenario(file))
        .args(["-m", "1", "-s", id, "-au", id, "-ap", password])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-nostdin",
            "-timeout",
            "10",
            "-timeout_error",
        ])
        .output()
        .expect("sipp (Debian package sip-tester) must be installed");
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sipp_registers_keeps_alive_is_refused_with_a_wrong_password_and_unregisters() {
    let s = TestServer::start_with("", &["--sip-listen", "127.0.0.1:0", "--log-sip"]);
    let sip = s.sip.clone().expect("the ready line names the SIP address");
    let dev = "34020000001320000001";
    let (ok, log) = sipp(&sip, "register.xml", dev, "12345678");
    assert!(ok, "register + keepalive failed:\n{log}");
    let (ok, log) = sipp(&sip, "register_wrong_password.xml", dev, "not-the-password");
    assert!(ok, "a wrong password must get 403:\n{log}");
    let (ok, log) = sipp(&sip, "unregister.xml", dev, "12345678");
    assert!(ok, "unregister failed:\n{log}");
    // The wrong-password scenario against the right password fails (the check can fail).
    let (ok, _) = sipp(&sip, "register_wrong_password.xml", dev, "12345678");
    assert!(!ok, "the right password must not get 403");
}
