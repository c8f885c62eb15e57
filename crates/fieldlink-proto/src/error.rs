//! Stable error codes. Negative numbers, as the C API returns them (1 = success); each has a
//! stable upper-case name used in JSON (`{"code":-10,"name":"WRONG_PASSWORD",...}`).

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident = $num:expr, $name:literal, $text:literal;)*) => {
        /// Every failure fieldlink reports to a device or API client.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];
            /// The negative number of the C API.
            pub fn code(self) -> i32 { match self { $(ErrorCode::$variant => $num),* } }
            /// The stable name used in JSON.
            pub fn name(self) -> &'static str { match self { $(ErrorCode::$variant => $name),* } }
            /// A one-line description for people.
            pub fn describe(self) -> &'static str { match self { $(ErrorCode::$variant => $text),* } }
            pub fn from_code(code: i32) -> Option<Self> {
                match code { $($num => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    Internal = -1, "INTERNAL", "internal server error";
    BadRequest = -2, "BAD_REQUEST", "malformed or invalid request";
    NotLoggedIn = -3, "NOT_LOGGED_IN", "log in first";
    VersionMismatch = -4, "VERSION_MISMATCH", "unsupported protocol version";
    Unauthorized = -5, "UNAUTHORIZED", "admin token missing or wrong";
    NotFound = -6, "NOT_FOUND", "no such object";
    Conflict = -7, "CONFLICT", "object already exists";
    Disconnected = -8, "DISCONNECTED", "not connected to the server";
    Timeout = -9, "TIMEOUT", "no answer in time";
    WrongPassword = -10, "WRONG_PASSWORD", "wrong password";
    PasswordExpired = -11, "PASSWORD_EXPIRED", "key-derived password has expired";
    UnknownDevice = -12, "UNKNOWN_DEVICE", "device is not registered and may not auto-register";
    UnknownProject = -13, "UNKNOWN_PROJECT", "no such project";
    WrongRole = -14, "WRONG_ROLE", "device is registered with the other role";
    KeyPasswordRequired = -15, "KEY_PASSWORD_REQUIRED", "device may only log in with a key-derived password";
    TooManyAttempts = -16, "TOO_MANY_ATTEMPTS", "too many failed logins; wait and retry";
    KeyModeOff = -17, "KEY_MODE_OFF", "project shared key is off";
    Replaced = -18, "REPLACED", "the same device logged in elsewhere";
    LoginFailed = -19, "LOGIN_FAILED", "login failed: unknown project or device, wrong password or wrong role (the server's log says which)";
    FieldListDisabled = -20, "FIELD_LIST_DISABLED", "project does not let remote devices list field devices";
    NotWhitelisted = -21, "NOT_WHITELISTED", "remote device is not whitelisted for this field device";
    SessionCodeExpired = -22, "SESSION_CODE_EXPIRED", "session authorization code has expired";
    SessionCodeInvalid = -23, "SESSION_CODE_INVALID", "session authorization code is not valid";
    FieldOffline = -24, "FIELD_OFFLINE", "field device is offline";
    NotInSession = -25, "NOT_IN_SESSION", "not in session with that device";
    NotMaster = -30, "NOT_MASTER", "only the master may send control data";
    MessageTooLarge = -31, "MESSAGE_TOO_LARGE", "control message larger than 700 bytes";
    RateLimited = -32, "RATE_LIMITED", "more than 100 control messages in one second";
    MediaNotReady = -34, "MEDIA_NOT_READY", "media connection is not established";
    Congested = -35, "CONGESTED", "send buffer full";
    WrongRoleForCall = -36, "WRONG_ROLE_FOR_CALL", "this call is for the other device role";
    StreamOutOfRange = -40, "STREAM_OUT_OF_RANGE", "stream id is not in 0..device_streams-1 of that field device";
    ConnFdOutOfRange = -41, "CONN_FD_OUT_OF_RANGE", "conn_fd is not in 0..max_streams-1";
    NoVideo = -42, "NO_VIDEO", "the field device publishes no video";
    SourceFailed = -43, "SOURCE_FAILED", "a video source (camera) of the field device does not work";
    NotConnected = -44, "NOT_CONNECTED", "no receiver of this device is connected to a stream of that field device";
    DiagBusy = -45, "DIAG_BUSY", "a diagnosis of that field device by this device is already running";
    AudioOff = -46, "AUDIO_OFF", "audio is off on this device (audio_enable / audio_external not set)";
    BadAudioFrame = -47, "BAD_AUDIO_FRAME", "a PCM frame must be exactly 10 ms of s16le at 8000/16000/24000/32000/44100/48000 Hz";
    AudioDevice = -48, "AUDIO_DEVICE", "no such audio device";
    TlsFailed = -49, "TLS_FAILED", "TLS with the server failed (its certificate is not trusted or not valid for its name, or the PEM to verify it is unusable)";
    TooLarge = -50, "TOO_LARGE", "a signalling message or admin API body is over its size limit (the message names it)";
}

impl ErrorCode {
    /// HTTP status for the admin API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Internal => 500,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound | ErrorCode::UnknownProject | ErrorCode::UnknownDevice => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::TooManyAttempts | ErrorCode::RateLimited => 429,
            _ => 400,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.code(), self.describe())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i32::deserialize(d)?;
        ErrorCode::from_code(n)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_names_are_unique_and_negative() {
        let mut nums = HashSet::new();
        let mut names = HashSet::new();
        for c in ErrorCode::ALL {
            assert!(c.code() < 0);
            assert!(nums.insert(c.code()), "{c:?}");
            assert!(names.insert(c.name()), "{c:?}");
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
    }
}
