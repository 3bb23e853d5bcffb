//! Real PostgreSQL for tests: a fresh, uniquely named database per [`TestDb`], with the
//! migrations applied, on the server given by `DATABASE_URL` (an admin URL; `scripts/test.sh`
//! provisions one).
//!
//! Each `TestDb` also has its own `application_name`, so a test can find exactly its own
//! sessions in `pg_stat_activity` and terminate them. The database is dropped (`WITH (FORCE)`)
//! when the `TestDb` is dropped, best-effort; databases left by crashed test processes are
//! dropped by the next test process that creates one.

use std::sync::atomic::{AtomicUsize, Ordering};

use shared::config::{DbConfig, Env};
use shared::db::{self, Db};
use tokio_postgres::NoTls;

/// Prefix of every test database's name (and of the pid-tagged suffix that follows it).
pub const DB_PREFIX: &str = "hikmah_test_";

/// The admin URL from `DATABASE_URL`, or a panic telling the developer what to run.
pub fn admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("DATABASE_URL not set: run scripts/test.sh (it provisions PostgreSQL), or set DATABASE_URL to an admin URL of a PostgreSQL server"),
    }
}

/// `url` with its database replaced by `dbname` (URL or key=value form).
pub fn with_dbname(url: &str, dbname: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (base, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let authority_start = scheme_end + 3;
        let path_start = base[authority_start..]
            .find('/')
            .map(|i| authority_start + i)
            .unwrap_or(base.len());
        format!("{}/{dbname}{query}", &base[..path_start])
    } else {
        // key=value form: a later key overrides an earlier one.
        format!("{url} dbname={dbname}")
    }
}

/// One of the application's sessions, as `pg_stat_activity` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Server process id.
    pub pid: i32,
    /// `active`, `idle`, `idle in transaction`, `idle in transaction (aborted)`, ...
    pub state: Option<String>,
}

/// A fresh database for one test; dropped when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
    application_name: String,
    dropped: bool,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// A fresh database with the migrations applied. Panics (with what to do) when the server is
    /// unreachable.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        let setup = db
            .connect_as(&format!("{}-setup", db.application_name), 1)
            .await;
        if let Err(e) = db::migrate(&setup).await {
            panic!("migrating test database {}: {e}", db.name);
        }
        setup.close();
        db
    }

    /// A fresh, empty database (no migrations): for migration tests.
    pub async fn empty() -> Self {
        let admin_url = admin_url();
        let admin = connect(&admin_url, "hikmah-test-admin").await;
        sweep_stale_databases(&admin).await;
        let suffix = format!(
            "{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let name = format!("{DB_PREFIX}{suffix}");
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            panic!("creating test database {name}: {}", render(&e));
        }
        TestDb {
            url: with_dbname(&admin_url, &name),
            name,
            admin_url,
            application_name: format!("hikmah-test-{suffix}"),
            dropped: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for this database (the admin URL's credentials, this database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `application_name` of the pools built from [`TestDb::env`] / [`TestDb::db_config`].
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// `DATABASE_URL` and `DB_APPLICATION_NAME` for this database, to extend with other vars.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.url.clone()),
            ("DB_APPLICATION_NAME".into(), self.application_name.clone()),
        ]
    }

    /// An [`Env`] holding just [`TestDb::env_pairs`].
    pub fn env(&self) -> Env {
        Env::from_pairs(self.env_pairs())
    }

    /// The pool configuration for this database (default settings, pool size 4).
    pub fn db_config(&self) -> DbConfig {
        DbConfig::from_env(&self.env(), 4).unwrap_or_else(|e| panic!("test database config: {e}"))
    }

    /// A connected pool with [`TestDb::db_config`].
    pub async fn db(&self) -> Db {
        Db::connect(&self.db_config())
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.name))
    }

    /// A separate session on this database (not counted as the application's), for checks.
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.url, &format!("{}-admin", self.application_name)).await
    }

    /// (content, times_seen) of the user's notes, oldest first.
    pub async fn notes(&self, user: &str) -> Vec<(String, i32)> {
        self.admin()
            .await
            .query(
                "SELECT content, times_seen FROM memory_notes WHERE user_id = $1 ORDER BY id",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The application's sessions on this database (by `application_name`), excluding admin ones.
    pub async fn app_backends(&self) -> Vec<Backend> {
        let admin = self.admin().await;
        let rows = admin
            .query(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                &[&self.name, &self.application_name],
            )
            .await
            .unwrap_or_else(|e| panic!("reading pg_stat_activity: {}", render(&e)));
        rows.iter()
            .map(|r| Backend {
                pid: r.get(0),
                state: r.get(1),
            })
            .collect()
    }

    /// Terminates every session of the application on this database (as a server restart or an
    /// idle timeout would); returns how many were terminated.
    pub async fn terminate_app_backends(&self) -> usize {
        let admin = self.admin().await;
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = $2",
                &[&self.name, &self.application_name],
            )
            .await
            .unwrap_or_else(|e| panic!("terminating backends: {}", render(&e)));
        rows.iter().filter(|r| r.get::<_, bool>(0)).count()
    }

    /// Drops the database now (prefer this at the end of a test: errors are reported).
    pub async fn cleanup(mut self) {
        self.dropped = true;
        let admin = connect(&self.admin_url, "hikmah-test-admin").await;
        if let Err(e) = drop_database(&admin, &self.name).await {
            panic!("dropping test database {}: {}", self.name, render(&e));
        }
    }

    async fn connect_as(&self, application_name: &str, pool_size: usize) -> Db {
        let mut cfg = self.db_config();
        cfg.application_name = application_name.to_owned();
        cfg.pool_max_size = pool_size;
        Db::connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.name))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot be async and may run inside a runtime: use a thread with its own runtime.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut cfg) = admin_url.parse::<tokio_postgres::Config>() else {
                    return;
                };
                cfg.connect_timeout(std::time::Duration::from_secs(5));
                if let Ok((client, conn)) = cfg.connect(NoTls).await {
                    tokio::spawn(conn);
                    if let Err(e) = drop_database(&client, &name).await {
                        eprintln!(
                            "warning: could not drop test database {name}: {}",
                            render(&e)
                        );
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

async fn drop_database(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
}

/// Drops test databases whose creating process is gone (a crashed or killed test run).
async fn sweep_stale_databases(admin: &tokio_postgres::Client) {
    static SWEPT: AtomicUsize = AtomicUsize::new(0);
    if SWEPT.fetch_add(1, Ordering::Relaxed) > 0 {
        return;
    }
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'hikmah\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name[DB_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if pid.is_some() && !alive {
            // Without FORCE: a database someone is connected to (a process in another pid
            // namespace sharing this server) is left alone.
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                .await;
        }
    }
}

async fn connect(url: &str, application_name: &str) -> tokio_postgres::Client {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("DATABASE_URL cannot be parsed: {e}"));
    cfg.application_name(application_name);
    cfg.connect_timeout(std::time::Duration::from_secs(5));
    match cfg.connect(NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => panic!(
            "cannot connect to the test PostgreSQL server ({}): run scripts/test.sh, which \
             provisions one, or fix DATABASE_URL",
            render(&e)
        ),
    }
}

/// A driver error with its cause (the driver alone says just "db error").
pub fn render(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => shared::error::chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced_in_urls_and_keyword_strings() {
        assert_eq!(
            with_dbname("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgresql://u@h:5432", "t1"),
            "postgresql://u@h:5432/t1"
        );
        assert_eq!(
            with_dbname("postgres://u@h?x=1", "t1"),
            "postgres://u@h/t1?x=1"
        );
        assert_eq!(
            with_dbname("host=h user=u dbname=postgres", "t1"),
            "host=h user=u dbname=postgres dbname=t1"
        );
    }
}
