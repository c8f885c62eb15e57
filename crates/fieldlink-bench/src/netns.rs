//! A test host for the SFU bench: a network namespace this process creates, joined to
//! ours by a veth pair (10.199.0.1 here, 10.199.0.2 there), deleted when dropped. Janus
//! gathers no ICE candidate on a loopback interface (it skips them by design), so both
//! servers run in here and every subscriber reaches them over the same veth pair.

use std::process::Command;

use anyhow::{bail, Context};

pub struct TestNet {
    pub ns: String,
    host_if: String,
    /// Our side.
    pub host_ip: &'static str,
    /// The namespace's side, where the servers listen.
    pub ns_ip: &'static str,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TestNet {
    /// Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN).
    pub fn create() -> anyhow::Result<TestNet> {
        let pid = std::process::id() % 10_000_000;
        let net = TestNet {
            ns: format!("flb-sfu-{pid}"),
            host_if: format!("flbs{pid}"),
            host_ip: "10.199.0.1",
            ns_ip: "10.199.0.2",
        };
        let peer_if = format!("flbn{pid}");
        let _ = ip(&["netns", "del", &net.ns]);
        ip(&["netns", "add", &net.ns])?;
        // From here on, Drop cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &net.ns])?;
        ip(&["addr", "add", "10.199.0.1/30", "dev", &net.host_if])?;
        ip(&["link", "set", &net.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut v = vec!["netns", "exec", &net.ns, "ip"];
            v.extend_from_slice(args);
            ip(&v)
        };
        inside(&["addr", "add", "10.199.0.2/30", "dev", &peer_if])?;
        inside(&["link", "set", &peer_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// `ip netns exec <ns>`, to put before a command.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
