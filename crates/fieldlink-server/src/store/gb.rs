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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The GB28181 tables, run by the store's tests on SQLite and PostgreSQL.
    pub(in crate::store) async fn exercise(store: &Store) {
        // GB28181 device settings: insert, then the upsert replaces them.
        let id = "34020000001320000001";
        let _ = sqlx::query("DELETE FROM gb_devices WHERE device_id = $1")
            .bind(id)
            .execute(&store.pool)
            .await;
        assert_eq!(store.gb_device(id).await.unwrap(), None);
        let mut g = GbSettings {
            ha1: "00ff".into(),
            media_mode: "tcp-active".into(),
            always_on: false,
        };
        store.set_gb_device(id, &g).await.unwrap();
        assert_eq!(store.gb_device(id).await.unwrap().as_ref(), Some(&g));
        g.always_on = true;
        g.media_mode.clear();
        store.set_gb_device(id, &g).await.unwrap();
        assert_eq!(store.gb_device(id).await.unwrap(), Some(g.clone()));
        let all = store.gb_devices(100).await.unwrap();
        assert!(all.contains(&(id.to_string(), g)), "{all:?}");
        let _ = sqlx::query("DELETE FROM gb_status")
            .execute(&store.pool)
            .await;
        store.save_gb_status(id, r#"{"a":1}"#).await.unwrap();
        store.save_gb_status(id, r#"{"a":2}"#).await.unwrap();
        assert!(store
            .gb_statuses(100)
            .await
            .unwrap()
            .contains(&r#"{"a":2}"#.to_string()));
        // A batch over several statements, one device named twice (its last view wins),
        // then the same batch again (every row an update).
        let mut batch: Vec<(String, String)> = (0..450)
            .map(|i| (format!("3402000000132{i:07}"), format!(r#"{{"n":{i}}}"#)))
            .collect();
        batch.push(("34020000001320000007".into(), r#"{"n":"last"}"#.into()));
        store.save_gb_statuses(&batch).await.unwrap();
        batch[3].1 = r#"{"n":"again"}"#.into();
        store.save_gb_statuses(&batch).await.unwrap();
        let all = store.gb_statuses(1000).await.unwrap();
        for want in [
            r#"{"n":0}"#,
            r#"{"n":449}"#,
            r#"{"n":"last"}"#,
            r#"{"n":"again"}"#,
        ] {
            assert!(all.contains(&want.to_string()), "{want} not stored");
        }
        assert!(!all.contains(&r#"{"n":7}"#.to_string()));
        assert!(!all.contains(&r#"{"n":3}"#.to_string()));
        assert_eq!(all.len(), 450, "the device above is one of the batch's");
    }
}
