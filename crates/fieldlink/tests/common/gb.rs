//! The GB28181 platform in tests: a server with it on, `fieldlink gb-device` cameras.

use std::process::Stdio;
use std::time::Duration;

use super::TestServer;

/// A server whose GB28181 devices join project `p` (with the standard devices), SIP on a
/// free port; `toml` goes into its `[gb28181]` section. Returns it and its SIP address.
pub fn gb_server(toml: &str, flags: &[&str]) -> (TestServer, String) {
    let s = TestServer::start_with(
        &format!("[gb28181]\nproject = \"p\"\n{toml}"),
        &[&["--sip-listen", "127.0.0.1:0"], flags].concat(),
    );
    s.standard();
    let sip = s.sip.clone().expect("the ready line names the SIP address");
    (s, sip)
}

/// `fieldlink gb-device` registering at `sip` with `args`, its JSON lines on stdout.
pub fn gb_device(sip: &str, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_fieldlink"))
            .args(["gb-device", "--server", sip])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A child process that is killed however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until remote `r` lists the camera `gwid` online (its catalog is in).
pub async fn wait_listed(r: &fieldlink_sdk::RemoteDevice, gwid: &fieldlink_sdk::DeviceId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fields = r.list_fields().await.unwrap();
        if fields.iter().any(|f| &f.id == gwid && f.online) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gwid} not listed online: {fields:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
