//! What fieldlink's network tests and `fieldlink-bench multipath` share: test hosts in
//! network namespaces ([`netns`]), a UDP relay that drops and delays ([`relay`]), and a
//! field device on two links played by a remote ([`paths`]). Real sockets and the real
//! server; needs root (namespaces, nftables, tc) where [`netns`] is used.

pub mod netns;
pub mod paths;
pub mod relay;

/// Collects a device's events for `d`.
pub async fn drain(
    ev: &mut fieldlink_sdk::Events,
    d: std::time::Duration,
) -> Vec<fieldlink_sdk::Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, ev.recv()).await {
        out.push(e);
    }
    out
}
