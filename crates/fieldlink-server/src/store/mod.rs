//! Durable state through sqlx's `Any` driver: embedded SQLite by default, PostgreSQL when
//! given a `postgres://` URL. One set of portable SQL statements serves both (`$n`
//! placeholders in order, BIGINT/TEXT columns only, no auto-increment). The GB28181
//! platform's tables are in `gb`.

mod gb;

pub use gb::GbSettings;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use fieldlink_proto::Role;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Schema steps, applied in order once each; never edit a released step, add one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mode BIGINT NOT NULL,
        shared_key TEXT NOT NULL,
        auto_register BIGINT NOT NULL,
        field_list_enable BIGINT NOT NULL,
        whitelist_enable BIGINT NOT NULL,
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE devices (
        project_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        password TEXT NOT NULL,
        auto_registered BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (project_id, device_id))",
    "CREATE TABLE whitelist (
        project_id TEXT NOT NULL,
        remote_id TEXT NOT NULL,
        field_id TEXT NOT NULL,
        PRIMARY KEY (project_id, remote_id, field_id))",
    "CREATE TABLE permission_audit (
        project_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        field_id TEXT NOT NULL,
        previous_master TEXT,
        master TEXT,
        actor TEXT NOT NULL,
        cause TEXT NOT NULL)",
    "CREATE INDEX permission_audit_by_project ON permission_audit (project_id, ts_ms, seq)",
    // GB28181 devices' own settings: digest HA1 (MD5(id:realm:password), '' = the default
    // password) and media mode ('' = the server's).
    "CREATE TABLE gb_devices (
        device_id TEXT PRIMARY KEY,
        ha1 TEXT NOT NULL,
        media_mode TEXT NOT NULL,
        updated_ms BIGINT NOT NULL)",
    // SPEC §10 "always on": pull the channels on registration, not on demand.
    "ALTER TABLE gb_devices ADD COLUMN always_on BIGINT NOT NULL DEFAULT 0",
    // The last known state of each GB28181 device (presence, address, channel list), as
    // the admin API shows it (JSON), so it survives a restart.
    "CREATE TABLE gb_status (
        device_id TEXT PRIMARY KEY,
        view TEXT NOT NULL,
        updated_ms BIGINT NOT NULL)",
];

/// A project's security settings (SPEC §8), with the JSON names the spec uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// 0 off, 1 on: the shared key is in use.
    #[serde(rename = "Mode")]
    pub mode: i64,
    /// The 32-character shared key ("" when never set).
    #[serde(rename = "Key")]
    pub key: String,
    /// 0 none, 1 field devices only, 2 remote devices only, 3 both.
    #[serde(rename = "AutoRegister")]
    pub auto_register: i64,
    /// 0/1: may remote devices list field devices.
    #[serde(rename = "FieldListEnable")]
    pub field_list_enable: i64,
    /// 0/1: remote devices may only open sessions with whitelisted field devices (or with
    /// a session authorization code).
    #[serde(rename = "WhitelistEnable")]
    pub whitelist_enable: i64,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            mode: 0,
            key: String::new(),
            auto_register: 0,
            field_list_enable: 1,
            whitelist_enable: 0,
        }
    }
}

impl Security {
    pub fn key_on(&self) -> bool {
        self.mode == 1 && !self.key.is_empty()
    }
    pub fn auto_registers(&self, role: Role) -> bool {
        match role {
            Role::Field => self.auto_register & 1 != 0,
            Role::Remote => self.auto_register & 2 != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub security: Security,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub project_id: String,
    pub device_id: String,
    pub kind: Role,
    pub name: String,
    /// Stored password: a PBKDF2 hash or the literal `USEPROJECTKEYPWD`. Never serialized.
    #[serde(skip)]
    pub password: String,
    /// True when `USEPROJECTKEYPWD`: only key-derived passwords log in.
    pub key_password_only: bool,
    pub auto_registered: bool,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub ts_ms: i64,
    pub field_id: String,
    pub previous_master: Option<String>,
    pub master: Option<String>,
    pub actor: String,
    pub cause: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    seq: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn role_of(s: &str) -> Result<Role> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("device kind {s:?}")))
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer; a single connection avoids lock errors.
            .max_connections(if is_sqlite { 1 } else { 8 })
            .connect(url)
            .await?;
        if is_sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store {
            pool,
            seq: Default::default(),
        };
        store.migrate(is_sqlite).await?;
        Ok(store)
    }

    async fn migrate(&self, is_sqlite: bool) -> Result<()> {
        use sqlx::Acquire;
        // One connection throughout; on PostgreSQL an advisory lock keeps two servers
        // (or test processes) starting at once from migrating twice.
        let mut conn = self.pool.acquire().await?;
        if !is_sqlite {
            sqlx::query("SELECT pg_advisory_lock(727172)")
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            sqlx::query("CREATE TABLE IF NOT EXISTS fieldlink_schema (version BIGINT NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let row = sqlx::query("SELECT MAX(version) AS v FROM fieldlink_schema")
                .fetch_one(&mut *conn)
                .await?;
            let current: Option<i64> = row.try_get("v")?;
            let current = current.unwrap_or(0) as usize;
            for (i, step) in MIGRATIONS.iter().enumerate().skip(current) {
                let mut tx = conn.begin().await?;
                sqlx::query(step).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO fieldlink_schema (version) VALUES ($1)")
                    .bind((i + 1) as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if !is_sqlite {
            sqlx::query("SELECT pg_advisory_unlock(727172)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    /// Flushes and closes every connection (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_project(&self, p: &Project) -> Result<()> {
        let s = &p.security;
        sqlx::query(
            "INSERT INTO projects (id, name, mode, shared_key, auto_register, field_list_enable, whitelist_enable, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(s.mode)
        .bind(&s.key)
        .bind(s.auto_register)
        .bind(s.field_list_enable)
        .bind(s.whitelist_enable)
        .bind(p.created_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { e.into() })?;
        Ok(())
    }

    pub async fn update_project(&self, id: &str, name: &str, s: &Security) -> Result<()> {
        let r = sqlx::query(
            "UPDATE projects SET name = $1, mode = $2, shared_key = $3, auto_register = $4,
             field_list_enable = $5, whitelist_enable = $6 WHERE id = $7",
        )
        .bind(name)
        .bind(s.mode)
        .bind(&s.key)
        .bind(s.auto_register)
        .bind(s.field_list_enable)
        .bind(s.whitelist_enable)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn project_from(row: &sqlx::any::AnyRow) -> Result<Project> {
        Ok(Project {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            security: Security {
                mode: row.try_get("mode")?,
                key: row.try_get("shared_key")?,
                auto_register: row.try_get("auto_register")?,
                field_list_enable: row.try_get("field_list_enable")?,
                whitelist_enable: row.try_get("whitelist_enable")?,
            },
            created_ms: row.try_get("created_ms")?,
        })
    }

    pub async fn project(&self, id: &str) -> Result<Option<Project>> {
        let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::project_from).transpose()
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        let rows = sqlx::query("SELECT * FROM projects ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::project_from).collect()
    }

    /// Deletes a project with its devices, whitelist and audit log.
    pub async fn delete_project(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for table in ["devices", "whitelist", "permission_audit"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE project_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let r = sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_device(&self, d: &Device) -> Result<()> {
        insert_device(d, false)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// Creates the devices not stored yet (an existing one is left as it is), in one
    /// transaction: a registration storm's new devices cost one write, not one each.
    /// Returns how many were created.
    pub async fn create_devices_missing(&self, devices: &[Device]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut created = 0;
        for d in devices {
            let r = insert_device(d, true).execute(&mut *tx).await?;
            created += r.rows_affected();
        }
        tx.commit().await?;
        Ok(created)
    }

    fn device_from(row: &sqlx::any::AnyRow) -> Result<Device> {
        let kind: String = row.try_get("kind")?;
        let password: String = row.try_get("password")?;
        Ok(Device {
            project_id: row.try_get("project_id")?,
            device_id: row.try_get("device_id")?,
            kind: role_of(&kind)?,
            name: row.try_get("name")?,
            key_password_only: password == fieldlink_auth::USE_PROJECT_KEY_PWD,
            password,
            auto_registered: row.try_get::<i64, _>("auto_registered")? != 0,
            created_ms: row.try_get("created_ms")?,
        })
    }

    pub async fn device(&self, project: &str, device: &str) -> Result<Option<Device>> {
        let row = sqlx::query("SELECT * FROM devices WHERE project_id = $1 AND device_id = $2")
            .bind(project)
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::device_from).transpose()
    }

    pub async fn devices(&self, project: &str, kind: Option<Role>) -> Result<Vec<Device>> {
        let rows =
            match kind {
                Some(k) => sqlx::query(
                    "SELECT * FROM devices WHERE project_id = $1 AND kind = $2 ORDER BY device_id",
                )
                .bind(project)
                .bind(k.as_str())
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM devices WHERE project_id = $1 ORDER BY device_id")
                        .bind(project)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter().map(Self::device_from).collect()
    }

    pub async fn set_device_password(
        &self,
        project: &str,
        device: &str,
        stored: &str,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE devices SET password = $1 WHERE project_id = $2 AND device_id = $3",
        )
        .bind(stored)
        .bind(project)
        .bind(device)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn delete_device(&self, project: &str, device: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM whitelist WHERE project_id = $1 AND (remote_id = $2 OR field_id = $3)",
        )
        .bind(project)
        .bind(device)
        .bind(device)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query("DELETE FROM devices WHERE project_id = $1 AND device_id = $2")
            .bind(project)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_whitelist(&self, project: &str, remote: &str, field: &str) -> Result<()> {
        sqlx::query("INSERT INTO whitelist (project_id, remote_id, field_id) VALUES ($1, $2, $3)")
            .bind(project)
            .bind(remote)
            .bind(field)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    pub async fn remove_whitelist(&self, project: &str, remote: &str, field: &str) -> Result<()> {
        let r = sqlx::query(
            "DELETE FROM whitelist WHERE project_id = $1 AND remote_id = $2 AND field_id = $3",
        )
        .bind(project)
        .bind(remote)
        .bind(field)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn whitelist(&self, project: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT remote_id, field_id FROM whitelist WHERE project_id = $1 ORDER BY remote_id, field_id")
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("remote_id")?, r.try_get("field_id")?)))
            .collect()
    }

    pub async fn is_whitelisted(&self, project: &str, remote: &str, field: &str) -> Result<bool> {
        let row = sqlx::query("SELECT remote_id FROM whitelist WHERE project_id = $1 AND remote_id = $2 AND field_id = $3")
            .bind(project)
            .bind(remote)
            .bind(field)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn append_audit(&self, project: &str, e: &AuditEntry) -> Result<()> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query(
            "INSERT INTO permission_audit (project_id, ts_ms, seq, field_id, previous_master, master, actor, cause)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(project)
        .bind(e.ts_ms)
        .bind(seq)
        .bind(&e.field_id)
        .bind(e.previous_master.as_deref())
        .bind(e.master.as_deref())
        .bind(&e.actor)
        .bind(&e.cause)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` entries, oldest first, optionally for one field device.
    pub async fn audit(
        &self,
        project: &str,
        field: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM permission_audit WHERE project_id = $1 AND ($2 = '' OR field_id = $3)
             ORDER BY ts_ms DESC, seq DESC LIMIT $4",
        )
        .bind(project)
        .bind(field.unwrap_or(""))
        .bind(field.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    ts_ms: r.try_get("ts_ms")?,
                    field_id: r.try_get("field_id")?,
                    previous_master: r.try_get("previous_master")?,
                    master: r.try_get("master")?,
                    actor: r.try_get("actor")?,
                    cause: r.try_get("cause")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }
}

/// The INSERT of one device; `keep_existing`: a stored one is left as it is instead of
/// the insert failing on it.
fn insert_device(
    d: &Device,
    keep_existing: bool,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    const INSERT: &str = "INSERT INTO devices (project_id, device_id, kind, name, password, auto_registered, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    const KEEP: &str = "INSERT INTO devices (project_id, device_id, kind, name, password, auto_registered, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, device_id) DO NOTHING";
    sqlx::query(if keep_existing { KEEP } else { INSERT })
        .bind(&d.project_id)
        .bind(&d.device_id)
        .bind(d.kind.as_str())
        .bind(&d.name)
        .bind(&d.password)
        .bind(d.auto_registered as i64)
        .bind(d.created_ms)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the same checks on SQLite and, when `FIELDLINK_TEST_PG_URL` is set, PostgreSQL.
    async fn exercise(store: &Store) {
        let p = Project {
            id: "p1".into(),
            name: "Plant 1".into(),
            security: Security {
                mode: 1,
                key: "k".repeat(32),
                ..Default::default()
            },
            created_ms: 1,
        };
        store.create_project(&p).await.unwrap();
        assert!(matches!(
            store.create_project(&p).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.project("p1").await.unwrap(), Some(p.clone()));
        let mut s = p.security.clone();
        s.auto_register = 3;
        store.update_project("p1", "Plant one", &s).await.unwrap();
        assert_eq!(
            store
                .project("p1")
                .await
                .unwrap()
                .unwrap()
                .security
                .auto_register,
            3
        );
        assert!(matches!(
            store.update_project("nope", "", &s).await,
            Err(StoreError::NotFound)
        ));
        let d = Device {
            project_id: "p1".into(),
            device_id: "f1".into(),
            kind: Role::Field,
            name: "digger".into(),
            password: fieldlink_auth::hash_password("pw"),
            key_password_only: false,
            auto_registered: false,
            created_ms: 2,
        };
        store.create_device(&d).await.unwrap();
        assert!(matches!(
            store.create_device(&d).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.device("p1", "f1").await.unwrap(), Some(d.clone()));
        // In a batch, the existing device stays as it is and the new one is created.
        let mut d2 = d.clone();
        d2.device_id = "f2".into();
        let mut changed = d.clone();
        changed.name = "other".into();
        assert_eq!(
            store
                .create_devices_missing(&[changed, d2.clone()])
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.device("p1", "f1").await.unwrap(), Some(d.clone()));
        assert_eq!(store.device("p1", "f2").await.unwrap(), Some(d2));
        store.delete_device("p1", "f2").await.unwrap();
        store
            .set_device_password("p1", "f1", fieldlink_auth::USE_PROJECT_KEY_PWD)
            .await
            .unwrap();
        assert!(
            store
                .device("p1", "f1")
                .await
                .unwrap()
                .unwrap()
                .key_password_only
        );
        assert_eq!(
            store.devices("p1", Some(Role::Remote)).await.unwrap().len(),
            0
        );
        assert_eq!(
            store.devices("p1", Some(Role::Field)).await.unwrap().len(),
            1
        );
        store.add_whitelist("p1", "r1", "f1").await.unwrap();
        assert!(store.is_whitelisted("p1", "r1", "f1").await.unwrap());
        assert!(!store.is_whitelisted("p1", "r2", "f1").await.unwrap());
        for (i, cause) in ["auto_grant", "released"].iter().enumerate() {
            let e = AuditEntry {
                ts_ms: 10,
                field_id: "p1/f1".into(),
                previous_master: None,
                master: (i == 0).then(|| "p1/r1".to_string()),
                actor: "p1/r1".into(),
                cause: cause.to_string(),
            };
            store.append_audit("p1", &e).await.unwrap();
        }
        let log = store.audit("p1", None, 100).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.cause.as_str()).collect::<Vec<_>>(),
            ["auto_grant", "released"]
        );
        assert_eq!(
            store
                .audit("p1", Some("p1/other"), 100)
                .await
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            store.audit("p1", Some("p1/f1"), 1).await.unwrap()[0].cause,
            "released"
        );
        store.delete_device("p1", "f1").await.unwrap();
        assert!(!store.is_whitelisted("p1", "r1", "f1").await.unwrap());
        store.delete_project("p1").await.unwrap();
        assert_eq!(store.project("p1").await.unwrap(), None);
        assert!(store.audit("p1", None, 10).await.unwrap().is_empty());

        gb::tests::exercise(store).await;
    }

    #[tokio::test]
    async fn sqlite_store_round_trip_and_reopen() {
        let dir = std::env::temp_dir().join(format!("fieldlink-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        exercise(&store).await;
        store
            .create_project(&Project {
                id: "keep".into(),
                name: "".into(),
                security: Security::default(),
                created_ms: 0,
            })
            .await
            .unwrap();
        store.close().await;
        let again = Store::open(&url).await.unwrap();
        assert!(
            again.project("keep").await.unwrap().is_some(),
            "data survives reopen; migrations are idempotent"
        );
        again.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn postgres_store_round_trip() {
        let Ok(url) = std::env::var("FIELDLINK_TEST_PG_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide FIELDLINK_TEST_PG_URL"
            );
            eprintln!("FIELDLINK_TEST_PG_URL not set: PostgreSQL store test skipped (CI sets it)");
            return;
        };
        let store = Store::open(&url).await.unwrap();
        let _ = store.delete_project("p1").await;
        exercise(&store).await;
        store.close().await;
    }
}
