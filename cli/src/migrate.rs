//! `hikmah migrate`.

use std::process::ExitCode;

use anyhow::Context;
use shared::config::{DbConfig, Env};
use shared::db::{self, Db};

/// Applies the embedded migrations to `DATABASE_URL` (or `DB_SECRET_ARN`); prints the versions
/// applied, or that the schema was already up to date. Safe to run concurrently and repeatedly.
pub async fn run() -> anyhow::Result<ExitCode> {
    let cfg = DbConfig::from_env(&Env::process(), 1).context("database configuration")?;
    let db = Db::connect(&cfg).await?;
    let report = db::migrate(&db).await?;
    db.close();
    if report.applied.is_empty() {
        println!("already up to date (schema version {})", report.version);
    } else {
        for (version, name) in &report.applied {
            println!("applied {version:04} {name}");
        }
        println!("schema version {}", report.version);
    }
    if report.version > db::LATEST_SCHEMA_VERSION {
        eprintln!(
            "warning: the database is at schema version {}, newer than this build's {}; \
             upgrade hikmah",
            report.version,
            db::LATEST_SCHEMA_VERSION
        );
    }
    Ok(ExitCode::SUCCESS)
}
