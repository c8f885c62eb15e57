//! GB/T 28181 platform pieces with no I/O (SPEC §10): device ids, SIP digest
//! authentication with expiring nonces, the `y=` SSRC, and MANSCDP XML bodies (GB2312 /
//! GB18030 / UTF-8, tolerant of what real devices send). The SIP transport, registrar and
//! media receiver build on these.

pub mod catalog;
pub mod digest;
pub mod guard;
pub mod ids;
pub mod manscdp;
pub mod pacer;
pub mod ptz;
pub mod registrar;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod ssrc;
pub mod transaction;

pub use digest::{DigestError, DigestResponse, NonceCheck, Nonces};
pub use ids::{GbId, GbKind};
pub use manscdp::{CatalogItem, Manscdp, ManscdpError};
