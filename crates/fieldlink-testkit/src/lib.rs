//! What fieldlink's network tests and `fieldlink-bench multipath` share: test hosts in
//! network namespaces ([`netns`]), a UDP relay that drops and delays ([`relay`]), and a
//! field device on two links played by a remote ([`paths`]). Real sockets and the real
//! server; needs root (namespaces, nftables, tc) where [`netns`] is used.

pub mod netns;
pub mod paths;
pub mod relay;
