//! Versioned SQL migrations, embedded in the binary and applied by `hikmah migrate`.
//!
//! All pending migrations are applied in one transaction that first takes a transaction-level
//! advisory lock, so two migrators running at once serialise (the second finds nothing to do)
//! and a failure leaves the schema exactly as it was. `schema_migrations` records each version.

use super::{Db, DbError};

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Strictly increasing version, recorded in `schema_migrations`.
    pub version: i64,
    /// Short name (the file name without the version and extension).
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, in the order they are applied. Never edit an applied one: add a new file.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "memory_notes_and_processed_events",
        sql: include_str!("../../migrations/0001_memory_notes_and_processed_events.sql"),
    },
    Migration {
        version: 2,
        name: "note_variants",
        sql: include_str!("../../migrations/0002_note_variants.sql"),
    },
    Migration {
        version: 3,
        name: "embedding_signature",
        sql: include_str!("../../migrations/0003_embedding_signature.sql"),
    },
    Migration {
        version: 4,
        name: "forgotten_users",
        sql: include_str!("../../migrations/0004_forgotten_users.sql"),
    },
];

/// The schema version this build expects (the last migration's).
pub const LATEST_SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Advisory lock key serialising migrators ("hikmah_m" as ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x6869_6b6d_6168_5f6d;

/// Longest [`migrate`] may run (the pool's `statement_timeout` is for requests, not DDL),
/// including waiting for another migrator's lock, when the caller has no tighter budget.
pub const DEFAULT_MIGRATION_BUDGET: std::time::Duration = std::time::Duration::from_secs(600);

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The migrations applied by this call, in order (empty: already up to date).
    pub applied: Vec<(i64, &'static str)>,
    /// The schema version after the call.
    pub version: i64,
}

/// Applies every pending migration in one transaction, under an advisory lock, within
/// [`DEFAULT_MIGRATION_BUDGET`].
pub async fn migrate(db: &Db) -> Result<MigrationReport, DbError> {
    migrate_within(db, DEFAULT_MIGRATION_BUDGET).await
}

/// [`migrate`] where the server itself aborts (and rolls back) whatever is still running or
/// waiting for a lock once `budget` has passed: before each statement the session's
/// `statement_timeout` and `lock_timeout` are set to the time left. A caller that gives up at
/// its own deadline (the deploy custom resource) passes a budget that ends before it, so no
/// blocked DDL outlives it.
pub async fn migrate_within(
    db: &Db,
    budget: std::time::Duration,
) -> Result<MigrationReport, DbError> {
    let deadline = std::time::Instant::now() + budget;
    let limit = move || {
        // 0 would mean "no timeout": keep at least 1 ms.
        let left = deadline
            .saturating_duration_since(std::time::Instant::now())
            .as_millis()
            .max(1);
        format!("SET LOCAL statement_timeout = {left}; SET LOCAL lock_timeout = {left};")
    };
    db.run(|mut conn| async move {
        let tx = conn.transaction().await?;
        tx.batch_execute(&limit()).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint      PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied: Vec<i64> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut report = MigrationReport {
            applied: Vec::new(),
            version: 0,
        };
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            let step = async {
                tx.batch_execute(&limit()).await?;
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await
            };
            step.await.map_err(|e| DbError::Migration {
                version: m.version,
                name: m.name,
                source: Box::new(DbError::from(e)),
            })?;
            report.applied.push((m.version, m.name));
        }
        let version: Option<i64> = tx
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        tx.commit().await?;
        report.version = version.unwrap_or(0);
        Ok::<_, DbError>(report)
    })
    .await
}

/// The highest applied migration, or `None` when migrations never ran on this database.
pub async fn schema_version(db: &Db) -> Result<Option<i64>, DbError> {
    db.run(|conn| async move {
        let exists: bool = conn
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let version: Option<i64> = conn
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        Ok::<_, DbError>(version)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_strictly_increase_and_latest_is_the_last(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(MIGRATIONS[0].version >= 1);
        assert_eq!(
            LATEST_SCHEMA_VERSION,
            MIGRATIONS.last().ok_or("no migrations")?.version
        );
        Ok(())
    }

    #[test]
    fn migrations_do_not_manage_their_own_transaction() {
        for m in MIGRATIONS {
            let upper = m.sql.to_ascii_uppercase();
            for word in ["BEGIN;", "COMMIT;", "ROLLBACK;", "CONCURRENTLY"] {
                assert!(
                    !upper.contains(word),
                    "migration {} contains {word}",
                    m.version
                );
            }
        }
    }

    #[test]
    fn migration_files_match_their_version_and_name() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?
                .file_name()
                .into_string()
                .map_err(|n| format!("file name is not UTF-8: {n:?}"))?;
            if name.ends_with(".sql") {
                files.push(name);
            }
        }
        files.sort();
        let expected: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            files, expected,
            "every file in shared/migrations must be listed in MIGRATIONS"
        );
        Ok(())
    }
}
