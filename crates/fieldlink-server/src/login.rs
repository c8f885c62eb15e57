//! Device login (SPEC §8): the pure decision over what the store holds, and the async
//! wrapper that looks things up, auto-registers, and keeps the failure throttle.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fieldlink_auth::{
    verify_device_password, verify_password_or_dummy, KeyedError, Throttle, USE_PROJECT_KEY_PWD,
};
use fieldlink_proto::{DeviceId, ErrorCode, Role};

use crate::config::LoginConfig;
use crate::store::{now_ms, Device, Project, Store, StoreError};

/// What a successful check means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Unknown device with a valid key-derived password, and AutoRegister allows it.
    AcceptAndRegister,
}

/// Does the presented password look like `<signature>_<minutes>`?
fn looks_key_derived(pw: &str) -> bool {
    pw.rsplit_once('_').is_some_and(|(s, e)| {
        !s.is_empty() && !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    })
}

fn check_key(project: &Project, id: &DeviceId, pw: &str, now_unix: u64) -> Result<(), ErrorCode> {
    if !project.security.key_on() {
        return Err(ErrorCode::KeyModeOff);
    }
    verify_device_password(&project.security.key, &id.to_string(), pw, now_unix).map_err(
        |e| match e {
            KeyedError::Expired { .. } => ErrorCode::PasswordExpired,
            _ => ErrorCode::WrongPassword,
        },
    )
}

/// The login rules, with no I/O. `device` is the stored record of `id`, if any. The error
/// says exactly what was wrong, for the log; [`public_code`] is what the device is told.
pub fn decide(
    project: Option<&Project>,
    device: Option<&Device>,
    id: &DeviceId,
    role: Role,
    password: &str,
    now_unix: u64,
) -> Result<Decision, ErrorCode> {
    // Exactly one password hash is checked on every path (a dummy one where there is no
    // usable hash), so the time taken does not tell an unknown device from a wrong password.
    let own_hash = device
        .filter(|d| d.kind == role && !d.key_password_only)
        .map(|d| d.password.as_str());
    let own_ok = verify_password_or_dummy(password, own_hash);
    let project = project.ok_or(ErrorCode::UnknownProject)?;
    match device {
        Some(d) if d.kind != role => Err(ErrorCode::WrongRole),
        Some(d) if d.key_password_only => {
            if !looks_key_derived(password) {
                return Err(ErrorCode::KeyPasswordRequired);
            }
            check_key(project, id, password, now_unix).map(|_| Decision::Accept)
        }
        Some(_) => {
            if own_ok {
                Ok(Decision::Accept)
            } else if project.security.key_on() && looks_key_derived(password) {
                check_key(project, id, password, now_unix).map(|_| Decision::Accept)
            } else {
                Err(ErrorCode::WrongPassword)
            }
        }
        None => {
            if !project.security.auto_registers(role) {
                return Err(ErrorCode::UnknownDevice);
            }
            check_key(project, id, password, now_unix).map(|_| Decision::AcceptAndRegister)
        }
    }
}

/// What a refused device is told: every reason that would say whether the project or the
/// device exists, or which role it has, is the same `LOGIN_FAILED` (SPEC §11, no
/// enumeration). An expired key-derived password keeps its code: saying so needs a valid
/// signature, so it tells nothing to someone without the project key.
pub fn public_code(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::UnknownProject
        | ErrorCode::UnknownDevice
        | ErrorCode::WrongPassword
        | ErrorCode::WrongRole
        | ErrorCode::KeyPasswordRequired
        | ErrorCode::KeyModeOff => ErrorCode::LoginFailed,
        other => other,
    }
}

/// A refused login, with how long to wait where the throttle says so.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What the device is told.
    pub code: ErrorCode,
    /// What was really wrong (the log and the metrics say it; the device is not told).
    pub reason: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal {
            code: public_code(code),
            reason: code,
            message: public_code(code).describe().to_string(),
            retry_after: None,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!("store during login: {e}");
        ErrorCode::Internal.into()
    }
}

/// Failure throttles by device id and by client address.
pub struct Throttles {
    by_device: Throttle,
    by_addr: Throttle,
}

impl Throttles {
    pub fn new(c: &LoginConfig) -> Mutex<Self> {
        let base = Duration::from_millis(c.base_delay_ms);
        let max = Duration::from_millis(c.max_delay_ms);
        Mutex::new(Throttles {
            by_device: Throttle::new(c.device_free_failures, base, max, 100_000),
            by_addr: Throttle::new(c.address_free_failures, base, max, 100_000),
        })
    }
}

pub fn now_unix() -> u64 {
    (now_ms() / 1000).max(0) as u64
}

/// Checks a login and registers the device on first login where allowed.
pub async fn authenticate(
    store: &Store,
    throttles: &Mutex<Throttles>,
    id: &DeviceId,
    role: Role,
    password: String,
    addr: IpAddr,
) -> Result<Project, Refusal> {
    let dev_key = id.to_string();
    let addr_key = addr.to_string();
    {
        let t = throttles.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Err(wait) = t
            .by_device
            .check(&dev_key, now)
            .and(t.by_addr.check(&addr_key, now))
        {
            return Err(Refusal {
                code: ErrorCode::TooManyAttempts,
                reason: ErrorCode::TooManyAttempts,
                message: format!("too many failed logins; retry in {} ms", wait.as_millis()),
                retry_after: Some(wait),
            });
        }
    }
    let project = store.project(&id.project).await?;
    let device = store.device(&id.project, &id.device).await?;
    let (p2, d2, id2) = (project.clone(), device.clone(), id.clone());
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let decision = tokio::task::spawn_blocking(move || {
        decide(p2.as_ref(), d2.as_ref(), &id2, role, &password, now_unix())
    })
    .await
    .map_err(|_| Refusal::from(ErrorCode::Internal))?;
    {
        let mut t = throttles.lock().unwrap_or_else(|p| p.into_inner());
        match decision {
            Ok(_) => t.by_device.success(&dev_key),
            Err(_) => {
                let now = Instant::now();
                t.by_device.failure(&dev_key, now);
                t.by_addr.failure(&addr_key, now);
            }
        }
    }
    let decision = decision.map_err(|code| {
        tracing::info!(device = %id, %addr, code = code.name(), reason = code.describe(), "login refused");
        Refusal::from(code)
    })?;
    let project = project.ok_or(ErrorCode::Internal)?;
    if decision == Decision::AcceptAndRegister {
        let dev = Device {
            project_id: id.project.clone(),
            device_id: id.device.clone(),
            kind: role,
            name: id.device.clone(),
            password: USE_PROJECT_KEY_PWD.to_string(),
            key_password_only: true,
            auto_registered: true,
            created_ms: now_ms(),
        };
        match store.create_device(&dev).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(device = %id, role = role.as_str(), "auto-registered");
    }
    Ok(project)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Security;
    use fieldlink_auth::{device_password, hash_password};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn project(mode: i64, auto: i64) -> Project {
        Project {
            id: "p".into(),
            name: "p".into(),
            security: Security {
                mode,
                key: KEY.into(),
                auto_register: auto,
                ..Default::default()
            },
            created_ms: 0,
        }
    }

    fn device(kind: Role, pw: &str) -> Device {
        Device {
            project_id: "p".into(),
            device_id: "d".into(),
            kind,
            name: "d".into(),
            password: if pw == USE_PROJECT_KEY_PWD {
                pw.into()
            } else {
                hash_password(pw)
            },
            key_password_only: pw == USE_PROJECT_KEY_PWD,
            auto_registered: false,
            created_ms: 0,
        }
    }

    #[test]
    fn login_matrix() {
        let id: DeviceId = "p/d".parse().unwrap();
        let now = 1_000_000 * 60;
        let good = device_password(KEY, "p/d", 1_000_010);
        let old = device_password(KEY, "p/d", 999_999);
        let other = device_password(KEY, "p/x", 1_000_010);
        let on = project(1, 0);
        let own = device(Role::Field, "pw");
        let keyonly = device(Role::Field, USE_PROJECT_KEY_PWD);
        let f = Role::Field;
        assert_eq!(
            decide(None, None, &id, f, "pw", now),
            Err(ErrorCode::UnknownProject)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, f, "pw", now),
            Ok(Decision::Accept)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, f, "bad", now),
            Err(ErrorCode::WrongPassword)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, Role::Remote, "pw", now),
            Err(ErrorCode::WrongRole)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, f, &good, now),
            Ok(Decision::Accept)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, f, &old, now),
            Err(ErrorCode::PasswordExpired)
        );
        assert_eq!(
            decide(Some(&on), Some(&own), &id, f, &other, now),
            Err(ErrorCode::WrongPassword)
        );
        assert_eq!(
            decide(Some(&project(0, 0)), Some(&own), &id, f, &good, now),
            Err(ErrorCode::WrongPassword)
        );
        assert_eq!(
            decide(Some(&on), Some(&keyonly), &id, f, "pw", now),
            Err(ErrorCode::KeyPasswordRequired)
        );
        assert_eq!(
            decide(Some(&on), Some(&keyonly), &id, f, &good, now),
            Ok(Decision::Accept)
        );
        assert_eq!(
            decide(Some(&on), Some(&keyonly), &id, f, &old, now),
            Err(ErrorCode::PasswordExpired)
        );
        assert_eq!(
            decide(Some(&project(0, 3)), Some(&keyonly), &id, f, &good, now),
            Err(ErrorCode::KeyModeOff)
        );
        for (auto, field_ok, remote_ok) in [
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, true, true),
        ] {
            let p = project(1, auto);
            let expect = |ok: bool| {
                if ok {
                    Ok(Decision::AcceptAndRegister)
                } else {
                    Err(ErrorCode::UnknownDevice)
                }
            };
            assert_eq!(
                decide(Some(&p), None, &id, Role::Field, &good, now),
                expect(field_ok),
                "auto {auto}"
            );
            assert_eq!(
                decide(Some(&p), None, &id, Role::Remote, &good, now),
                expect(remote_ok),
                "auto {auto}"
            );
        }
        assert_eq!(
            decide(Some(&project(1, 3)), None, &id, f, &old, now),
            Err(ErrorCode::PasswordExpired)
        );
        assert_eq!(
            decide(Some(&project(1, 3)), None, &id, f, "pw", now),
            Err(ErrorCode::WrongPassword)
        );
    }

    #[test]
    fn refusals_do_not_tell_what_exists() {
        use std::collections::HashSet;
        let told: HashSet<ErrorCode> = [
            ErrorCode::UnknownProject,
            ErrorCode::UnknownDevice,
            ErrorCode::WrongPassword,
            ErrorCode::WrongRole,
            ErrorCode::KeyPasswordRequired,
            ErrorCode::KeyModeOff,
        ]
        .into_iter()
        .map(public_code)
        .collect();
        assert_eq!(told, HashSet::from([ErrorCode::LoginFailed]));
        assert_eq!(
            public_code(ErrorCode::PasswordExpired),
            ErrorCode::PasswordExpired
        );
        assert_eq!(
            public_code(ErrorCode::TooManyAttempts),
            ErrorCode::TooManyAttempts
        );
    }
}
