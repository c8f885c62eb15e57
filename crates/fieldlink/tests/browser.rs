//! A real browser as a remote device: headless Chromium (Debian's) driven by Playwright
//! opens the server's /watch page, logs in over the same signalling, and must decode the
//! SFU's video (frames counted with requestVideoFrameCallback).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::FieldDevice;
use serde_json::Value;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_sfu_output() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = std::path::Path::new(&chromium).exists()
        && browser_dir().join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and tests/browser/node_modules"
        );
        eprintln!("chromium or playwright-core missing: browser test skipped (see .ci/run)");
        return;
    }
    let s = TestServer::start();
    s.standard();
    let mut cfg = s.cfg("p/f", "fpw");
    cfg.streams = 2;
    let (field, _fe) = FieldDevice::connect(cfg).await.unwrap();
    for i in 0..2 {
        let tp = TestPatternConfig {
            width: 320,
            height: 180,
            fps: 25.0,
            kbps: 300,
            gop: 50,
        };
        field
            .start_video(i, TestPattern::new(i, tp).unwrap())
            .unwrap();
    }
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("watch.png");
    let base = format!("http://{}", s.http);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir().join("watch.mjs"))
            .args([base.as_str(), "p/r1", "rpw", "p/f", "1,0", "5"])
            .arg(&shot)
            .env("CHROMIUM", chromium)
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    let frames: Vec<u64> = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_u64().unwrap())
        .collect();
    eprintln!("decoded frames per window in 5 s: {frames:?}");
    assert!(
        frames.len() == 2 && frames.iter().all(|f| *f >= 40),
        "frames decoded per window: {frames:?}"
    );
    let playing = v["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "playing")
        .count();
    assert_eq!(playing, 2, "{v}");
}
