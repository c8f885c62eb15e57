//! Wire vocabulary shared by the fieldlink server and devices: ids, permission levels,
//! qos, error codes, the signalling messages and the control-data frame. No I/O.

pub mod bond;
pub mod control;
pub mod diag;
pub mod error;
pub mod fec;
pub mod field_config;
pub mod ids;
pub mod quality;
pub mod signal;

pub use control::{
    ControlFrame, FrameError, Qos, RateLimiter, MAX_CONTROL_BYTES, MAX_CONTROL_RATE,
};
pub use error::ErrorCode;
pub use ids::{DeviceId, IdError, Role};
pub use signal::{ClientMsg, FieldInfo, Permission, ServerMsg, StreamState, PROTOCOL_VERSION};
