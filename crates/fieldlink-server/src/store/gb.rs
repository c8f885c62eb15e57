//! The GB28181 platform's tables: each device's own settings (`gb_devices`) and its last
//! known state (`gb_status`).

use sqlx::Row;

use super::{now_ms, Result, Store};

/// A GB28181 device's own settings (admin API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GbSettings {
    /// Digest HA1 for its own password; "" = the server default password.
    pub ha1: String,
    /// `udp`, `tcp-passive`, `tcp-active`; "" = the server default.
    pub media_mode: String,
    /// Pull every channel as soon as it registers (continuous recording), not on demand.
    pub always_on: bool,
}

/// Rows per upsert statement (3 parameters each: well under SQLite's and PostgreSQL's
/// limits).
const STATUS_ROWS_PER_STATEMENT: usize = 200;

impl Store {
    /// Every GB28181 device's own settings, by device id (at most `limit`).
    pub async fn gb_devices(&self, limit: i64) -> Result<Vec<(String, GbSettings)>> {
        let rows = sqlx::query(
            "SELECT device_id, ha1, media_mode, always_on FROM gb_devices ORDER BY device_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    GbSettings {
                        ha1: r.try_get("ha1")?,
                        media_mode: r.try_get("media_mode")?,
                        always_on: r.try_get::<i64, _>("always_on")? != 0,
                    },
                ))
            })
            .collect()
    }

    /// A GB28181 device's own settings, if any were set.
    pub async fn gb_device(&self, device_id: &str) -> Result<Option<GbSettings>> {
        let row =
            sqlx::query("SELECT ha1, media_mode, always_on FROM gb_devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(GbSettings {
                ha1: r.try_get("ha1")?,
                media_mode: r.try_get("media_mode")?,
                always_on: r.try_get::<i64, _>("always_on")? != 0,
            })
        })
        .transpose()
    }

    /// Saves a GB28181 device's last known state (JSON, an upsert).
    pub async fn save_gb_status(&self, device_id: &str, view: &str) -> Result<()> {
        self.save_gb_statuses(&[(device_id.to_string(), view.to_string())])
            .await
    }

    /// Stores several devices' states (device id, JSON) in one transaction, many rows per
    /// statement: a storm re-stores thousands of views, and each statement is a round trip
    /// to the database (SQLite's worker thread or PostgreSQL). A device named twice keeps
    /// its last view (one statement may not update a row twice).
    pub async fn save_gb_statuses(&self, views: &[(String, String)]) -> Result<()> {
        let mut last: std::collections::HashMap<&str, &str> = Default::default();
        for (id, view) in views {
            last.insert(id, view);
        }
        let rows: Vec<(&str, &str)> = last.into_iter().collect();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(STATUS_ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO gb_status (device_id, view, updated_ms) VALUES {}
                 ON CONFLICT (device_id) DO UPDATE SET view = excluded.view, updated_ms = excluded.updated_ms",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, view) in chunk {
                q = q.bind(*id).bind(*view).bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every GB28181 device's last known state (JSON), at most `limit`.
    pub async fn gb_statuses(&self, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT view FROM gb_status ORDER BY device_id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("view")?)).collect()
    }

    /// Sets a GB28181 device's own settings (an upsert).
    pub async fn set_gb_device(&self, device_id: &str, s: &GbSettings) -> Result<()> {
        sqlx::query(
            "INSERT INTO gb_devices (device_id, ha1, media_mode, always_on, updated_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE
             SET ha1 = $2, media_mode = $3, always_on = $4, updated_ms = $5",
        )
        .bind(device_id)
        .bind(&s.ha1)
        .bind(&s.media_mode)
        .bind(i64::from(s.always_on))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
