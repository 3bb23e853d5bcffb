//! PostgreSQL: a pre-pinged pool that never hands out a dead connection, and migrations.
//!
//! The original service failed on its *second* request: the pool handed out a connection the
//! server had closed while the Lambda environment was frozen. Here every layer guards against it:
//!
//! - [`RecyclingMethod::Verified`]: a real round trip before a pooled connection is reused
//!   (like SQLAlchemy's `pool_pre_ping`), bounded by the recycle timeout;
//! - [`Db::drop_aged_connections`] drops connections older than `POOL_MAX_AGE_SECS`; Lambda
//!   handlers call it through [`crate::lambda::begin_invocation`] at each invocation's entry
//!   (like `pool_recycle`: no background task runs while an environment is frozen), and a
//!   pre-recycle hook does the same for long-running processes;
//! - [`Db::run`] retries a unit of work once, on a fresh connection, when it failed on a
//!   connection-class error ([`ConnectionClass`]);
//! - wait / create / recycle timeouts, a connect timeout, a server-side `statement_timeout`
//!   and TCP keepalives, so a dead database fails an invocation in seconds, not at the Lambda
//!   timeout.
//!
//! Credentials come from `DATABASE_URL`, or in AWS from a Secrets Manager secret read through
//! the Parameters and Secrets Lambda Extension (see
//! [`crate::lambda::secrets_extension`]). `sslmode=require` (always for
//! a secret, as RDS requires TLS) connects with rustls, verifying the server certificate
//! against `PGSSLROOTCERT` when set (see [`tls`]).

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    TimeoutType,
};
use tokio::sync::oneshot;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::{DbConfig, DbSource};

mod migrate;
pub mod tls;

pub use migrate::{
    migrate, migrate_within, schema_version, Migration, MigrationReport, DEFAULT_MIGRATION_BUDGET,
    LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATION_LOCK_KEY,
};

/// A pooled connection, as handed to a unit of work by [`Db::run`].
pub type Client = deadpool_postgres::Client;

/// A pooled connection lent to one attempt of a unit of work by [`Db::run`]; derefs to
/// [`Client`] (so `conn.transaction()`, `conn.query(..)` work). When dropped it goes back to
/// `run`, which returns it to the pool or, after an error, discards it if it is in doubt.
pub struct Conn {
    // Both are Some from construction until Drop.
    client: Option<Client>,
    back: Option<oneshot::Sender<Client>>,
}

impl Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        match &self.client {
            Some(client) => client,
            None => unreachable!("a Conn holds its client until it is dropped"),
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        match &mut self.client {
            Some(client) => client,
            None => unreachable!("a Conn holds its client until it is dropped"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let (Some(client), Some(back)) = (self.client.take(), self.back.take()) {
            // If `run` is gone (its future was dropped), the client returns to the pool here;
            // a Transaction dropped with it has already queued its ROLLBACK.
            drop(back.send(client));
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Conn")
    }
}

/// Errors that say whether they were caused by a broken or unreachable connection.
///
/// [`Db::run`] retries a unit of work once when its error is connection-class. Implement this
/// for your own error type (delegating to [`DbError::is_connection`] for its database variant)
/// to return it from a unit of work.
pub trait ConnectionClass {
    /// True when the connection (not the statement) failed, so a fresh connection may succeed.
    fn is_connection(&self) -> bool;
}

/// A database failure, with enough context to act on it (never the password).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A connection could not be opened (refused, DNS, authentication, TLS...).
    #[error(
        "cannot connect to PostgreSQL at {target}: {detail} \
         (check DATABASE_URL / DB_SECRET_ARN and that the server is reachable)"
    )]
    Connect {
        /// `host:port/dbname as user`.
        target: String,
        /// The cause, rendered with its whole chain.
        detail: String,
        /// The driver's error, for callers that inspect it.
        cause: Option<tokio_postgres::Error>,
    },
    /// A pool operation exceeded its configured timeout.
    #[error("timed out after {after:?} {during} PostgreSQL at {target} (raise {setting} if the server is just slow)")]
    Timeout {
        /// `host:port/dbname as user`.
        target: String,
        /// What was being done ("connecting to", "waiting for a free pooled connection to"...).
        during: &'static str,
        /// The configured limit.
        after: Duration,
        /// The environment variable that sets it.
        setting: &'static str,
        /// Whether the connection itself was at fault (create/recycle), not pool exhaustion.
        connection: bool,
    },
    /// A statement failed (bad SQL, constraint, statement timeout) or the connection broke.
    #[error("database error: {detail}")]
    Query {
        /// The server's message, SQLSTATE, detail and hint, or the I/O failure.
        detail: String,
        /// The driver's error, for callers that inspect it.
        cause: tokio_postgres::Error,
    },
    /// The pool was closed with [`Db::close`].
    #[error("the database pool is closed")]
    PoolClosed,
    /// The credentials secret could not be read or parsed.
    #[error("cannot read database credentials from secret {arn}: {reason}")]
    Secret {
        /// The secret's ARN (not secret itself).
        arn: String,
        /// What went wrong, and what to check.
        reason: String,
    },
    /// The configuration cannot produce a working pool.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// A migration failed; the whole migration transaction was rolled back.
    #[error("migration {version} ({name}) failed, nothing was applied: {source}")]
    Migration {
        /// The failing migration's version.
        version: i64,
        /// Its name.
        name: &'static str,
        /// Why.
        source: Box<DbError>,
    },
}

impl DbError {
    /// True when the connection (not the statement) failed, so a fresh connection may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Timeout { connection, .. } => *connection,
            Self::Query { cause, .. } => is_connection_error(cause),
            Self::Migration { source, .. } => source.is_connection(),
            Self::PoolClosed | Self::Secret { .. } | Self::Config(_) => false,
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Self::Query { cause, .. } => cause.code(),
            Self::Connect {
                cause: Some(cause), ..
            } => cause.code(),
            Self::Migration { source, .. } => source.code(),
            _ => None,
        }
    }
}

impl ConnectionClass for DbError {
    fn is_connection(&self) -> bool {
        DbError::is_connection(self)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(cause: tokio_postgres::Error) -> Self {
        Self::Query {
            detail: describe(&cause),
            cause,
        }
    }
}

/// SQLSTATEs after which the session is gone (or going), so only a new connection helps.
const CONNECTION_CODES: [&str; 5] = [
    "57P01", // admin_shutdown (pg_terminate_backend, smart/fast shutdown)
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now (starting up / shutting down)
    "57P05", // idle_session_timeout
    "25P03", // idle_in_transaction_session_timeout
];

/// Whether a driver error means the connection broke rather than the statement failing.
fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        // After a FATAL (or PANIC) error the server ends the session, whatever the code.
        // (`parsed_severity` is the untranslated one; `severity` follows lc_messages.)
        let fatal = matches!(
            db.parsed_severity(),
            Some(tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic)
        ) || matches!(db.severity(), "FATAL" | "PANIC");
        return fatal || code.starts_with("08") || CONNECTION_CODES.contains(&code);
    }
    // Io and Connect kinds carry the std::io::Error that broke the socket (reset, broken pipe,
    // timed out...); the driver does not expose its error kind otherwise.
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    matches!(
        err.to_string().as_str(),
        "error communicating with the server"
            | "unexpected message from server"
            | "error parsing response from server"
            | "timeout waiting for server"
    )
}

/// Renders a driver error with its cause: `tokio_postgres` alone says just "db error".
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    crate::error::chain(err)
}

/// The pool and what it needs to report errors: cheap to clone, share it across tasks.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced (never mutated) when the credentials are re-read from the secret.
    pool: std::sync::RwLock<Pool>,
    /// What re-reading the credentials needs, when they come from a secret.
    secret: Option<SecretRefresh>,
    target: String,
    max_age: Duration,
    connect_timeout: Duration,
    wait_timeout: Duration,
    recycle_timeout: Duration,
}

/// Rebuilding the pool with fresh credentials after a failed login (a rotated password).
struct SecretRefresh {
    source: crate::config::SecretSource,
    cfg: DbConfig,
    root_cert: Option<std::path::PathBuf>,
    /// Serialises refreshes; counts them, so a task that saw the old pool fail does not refresh
    /// again after another task already did.
    generation: tokio::sync::Mutex<u64>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool().status();
        f.debug_struct("Db")
            .field("target", &self.inner.target)
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl Db {
    /// Builds the pool and opens (and pings) one connection, so the first request does not pay
    /// for it. A failure names the host and port, never the password.
    pub async fn connect(cfg: &DbConfig) -> Result<Db, DbError> {
        let db = Self::connect_lazy(cfg).await?;
        let client = db.get().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| db.connect_error(e))?;
        drop(client);
        tracing::debug!(target = %db.inner.target, "database pool ready (one warm connection)");
        Ok(db)
    }

    /// Builds the pool without opening a connection (credentials are still resolved).
    pub async fn connect_lazy(cfg: &DbConfig) -> Result<Db, DbError> {
        let base = match &cfg.source {
            DbSource::Url(url) => url
                .expose()
                .parse::<tokio_postgres::Config>()
                .map_err(|e| {
                    // The parse error never contains the URL itself, but be explicit about it.
                    DbError::Config(format!("DATABASE_URL cannot be parsed ([redacted]): {e}"))
                })?,
            DbSource::SecretArn(source) => {
                let secret = crate::lambda::secrets_extension::fetch_rds_secret(
                    source,
                    cfg.connect_timeout,
                    false,
                )
                .await?;
                let root_cert = root_cert_from_env();
                let mut db = Self::from_pg_config_with_root_cert(
                    secret.to_pg_config(),
                    cfg,
                    root_cert.as_deref(),
                )?;
                if let Some(inner) = Arc::get_mut(&mut db.inner) {
                    inner.secret = Some(SecretRefresh {
                        source: source.clone(),
                        cfg: cfg.clone(),
                        root_cert,
                        generation: tokio::sync::Mutex::new(0),
                    });
                }
                return Ok(db);
            }
        };
        Self::from_pg_config(base, cfg)
    }

    /// Builds the pool from an already parsed driver config, adding our settings to it. With
    /// `sslmode=require`, the server certificate is verified against `PGSSLROOTCERT` when set
    /// (see [`tls`]).
    pub fn from_pg_config(pg: tokio_postgres::Config, cfg: &DbConfig) -> Result<Db, DbError> {
        let root_cert = root_cert_from_env();
        Self::from_pg_config_with_root_cert(pg, cfg, root_cert.as_deref())
    }

    /// [`Db::from_pg_config`] with an explicit root certificate bundle (PEM) instead of
    /// `PGSSLROOTCERT`; `None` means encrypt without verifying (libpq's `require`).
    pub fn from_pg_config_with_root_cert(
        mut pg: tokio_postgres::Config,
        cfg: &DbConfig,
        root_cert: Option<&Path>,
    ) -> Result<Db, DbError> {
        apply_session_settings(&mut pg, cfg);
        let target = describe_target(&pg);
        let pool = build_pool(pg, cfg, root_cert)?;
        Ok(Db {
            inner: Arc::new(Inner {
                pool: std::sync::RwLock::new(pool),
                secret: None,
                target,
                max_age: cfg.pool_max_age,
                connect_timeout: cfg.connect_timeout,
                wait_timeout: cfg.wait_timeout,
                recycle_timeout: cfg.recycle_timeout,
            }),
        })
    }

    /// After a failed login (SQLSTATE 28P01) with credentials from a secret: reads the secret
    /// again, bypassing the extension's cache, and replaces the pool with one using the new
    /// password (the old pool's connections were opened with the old one and keep working until
    /// they are dropped). Concurrent callers refresh once.
    async fn refresh_credentials(&self, seen_generation: u64) -> Result<(), DbError> {
        let Some(refresh) = &self.inner.secret else {
            return Ok(());
        };
        let mut generation = refresh.generation.lock().await;
        if *generation != seen_generation {
            return Ok(());
        }
        let secret = crate::lambda::secrets_extension::fetch_rds_secret(
            &refresh.source,
            refresh.cfg.connect_timeout,
            true,
        )
        .await?;
        let mut pg = secret.to_pg_config();
        apply_session_settings(&mut pg, &refresh.cfg);
        let pool = build_pool(pg, &refresh.cfg, refresh.root_cert.as_deref())?;
        let old = match self.inner.pool.write() {
            Ok(mut current) => std::mem::replace(&mut *current, pool),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), pool),
        };
        old.close();
        *generation += 1;
        tracing::warn!(
            target = %self.inner.target,
            "login failed with the cached password (28P01): re-read the secret and rebuilt the pool"
        );
        Ok(())
    }

    fn credentials_generation(&self) -> Option<u64> {
        let refresh = self.inner.secret.as_ref()?;
        refresh.generation.try_lock().ok().map(|g| *g)
    }
}

/// `PGSSLROOTCERT`, libpq's variable for the root certificate bundle.
fn root_cert_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os("PGSSLROOTCERT")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// Builds the pool for a complete driver config (our settings already applied).
fn build_pool(
    pg: tokio_postgres::Config,
    cfg: &DbConfig,
    root_cert: Option<&Path>,
) -> Result<Pool, DbError> {
    {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = if pg.get_ssl_mode() == SslMode::Require {
            let tls = tls::MakeRustls::for_root_cert(root_cert)?;
            Manager::from_config(pg, tls, manager_config)
        } else {
            // disable, or prefer (libpq's default): without a TLS connector no TLS is attempted.
            Manager::from_config(pg, NoTls, manager_config)
        };
        let max_age = cfg.pool_max_age;
        let settings = session_settings_sql(cfg);
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.wait_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.recycle_timeout))
            // Long-running processes (the local runner, the CLI) have no invocations:
            // refuse to reuse an over-age connection here too; the pool then opens a new one.
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if metrics.age() > max_age {
                    Err(HookError::message(
                        "connection older than POOL_MAX_AGE_SECS",
                    ))
                } else {
                    Ok(())
                }
            }))
            .post_create(Hook::async_fn(move |client, _| {
                let settings = settings.clone();
                Box::pin(async move {
                    client
                        .batch_execute(&settings)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| DbError::Config(format!("cannot build the connection pool: {e}")))?;
        Ok(pool)
    }
}

impl Db {
    /// Drops pooled connections older than `POOL_MAX_AGE_SECS`; returns how many were dropped.
    pub fn drop_aged_connections(&self) -> usize {
        let max_age = self.inner.max_age;
        let removed = self
            .pool()
            .retain(|_, metrics| metrics.age() <= max_age)
            .removed;
        if !removed.is_empty() {
            tracing::debug!(
                dropped = removed.len(),
                "dropped over-age database connections"
            );
        }
        removed.len()
    }

    /// A pooled connection, verified by a round trip when reused. Prefer [`Db::run`], which
    /// also retries and keeps a connection in doubt out of the pool.
    ///
    /// With credentials from a secret, a login refused as `invalid_password` (28P01: the password
    /// was rotated) re-reads the secret and tries once more with the new one.
    pub async fn get(&self) -> Result<Client, DbError> {
        let generation = self.credentials_generation();
        match self.pool().get().await {
            Err(PoolError::Backend(e))
                if generation.is_some() && e.code() == Some(&SqlState::INVALID_PASSWORD) =>
            {
                self.refresh_credentials(generation.unwrap_or_default())
                    .await?;
                self.pool().get().await.map_err(|e| self.pool_error(e))
            }
            other => other.map_err(|e| self.pool_error(e)),
        }
    }

    /// Runs a unit of work on a pooled connection; retries it once, on a fresh connection, when
    /// it failed on a connection-class error ([`ConnectionClass::is_connection`]). Other errors
    /// (bad SQL, a constraint, a statement timeout) are returned as they are.
    ///
    /// `work` gets the connection by value as a [`Conn`] (it derefs to [`Client`]) and returns
    /// a future; taking it by value, rather than an `AsyncFnMut(&mut Client)`, keeps the
    /// future `Send` (rustc cannot yet prove `Send` for futures of higher-ranked async closures).
    /// Capture what the work needs by reference or by copy; `work` is called again on a retry.
    ///
    /// ```no_run
    /// # use shared::db::{Db, DbError};
    /// # async fn example(db: &Db, a: &str, b: i32) -> Result<u64, DbError> {
    /// let added: u64 = db
    ///     .run(|mut conn| async move {
    ///         let tx = conn.transaction().await?;
    ///         let n = tx.execute("INSERT INTO t VALUES ($1, $2)", &[&a, &b]).await?;
    ///         tx.commit().await?;
    ///         Ok::<_, DbError>(n)
    ///     })
    ///     .await?;
    /// # Ok(added)
    /// # }
    /// ```
    ///
    /// The error type is yours when it is `From<DbError> + ConnectionClass` (convert driver
    /// errors with `DbError::from`); `DbError` itself qualifies.
    ///
    /// `work` may run twice, so it must be safe to repeat: do its writes in one transaction (a
    /// broken connection means the transaction did not commit, except in the rare case that the
    /// connection broke while the `COMMIT` reply was in flight, so make writes idempotent, as
    /// the consumer does with its `processed_events` row).
    ///
    /// An error returned while a transaction is open is safe: dropping a `Transaction` queues
    /// a `ROLLBACK` ahead of anything else sent on that connection. After any error, before
    /// `run` returns, the connection is checked to be outside a transaction (one round trip, on
    /// the error path only, which also waits for that `ROLLBACK`); it is discarded if broken or
    /// if that cannot be confirmed. So when `run` returns, no transaction is left open.
    pub async fn run<T, E, F, Fut>(&self, mut work: F) -> Result<T, E>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<DbError> + ConnectionClass,
    {
        let mut attempt = 1;
        loop {
            let result = match self.get().await {
                Ok(client) => {
                    let (back, mut returned) = oneshot::channel();
                    let result = work(Conn {
                        client: Some(client),
                        back: Some(back),
                    })
                    .await;
                    // The work's future is gone, and its Conn with it, unless the work stored
                    // the Conn somewhere (then it goes back to the pool whenever that drops it).
                    if let (Err(err), Ok(client)) = (&result, returned.try_recv()) {
                        self.release_after_error(client, err.is_connection()).await;
                    }
                    result
                }
                Err(err) => Err(E::from(err)),
            };
            match result {
                Err(err) if attempt == 1 && err.is_connection() => {
                    tracing::warn!(
                        target = %self.inner.target,
                        "unit of work failed on a broken database connection; retrying once"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Returns a connection to the pool after its unit of work failed, or discards it when it is
    /// broken or may still be inside a transaction.
    async fn release_after_error(&self, client: Client, connection_error: bool) {
        if connection_error || client.is_closed() {
            drop(Object::take(client));
            return;
        }
        // Outside a transaction block every statement starts its own transaction, so the two
        // timestamps are equal; inside one (a raw BEGIN left open) they differ, and in an aborted
        // transaction the query fails. Either way: discard the connection.
        let probe = client.simple_query("SELECT transaction_timestamp() = statement_timestamp()");
        let idle = match tokio::time::timeout(self.inner.recycle_timeout, probe).await {
            Ok(Ok(messages)) => messages.iter().any(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
                _ => false,
            }),
            _ => false,
        };
        if !idle {
            tracing::warn!("discarding a database connection left inside a transaction");
            drop(Object::take(client));
        }
    }

    /// The underlying pool (status, resizing in tests); the current one, if credentials were
    /// refreshed.
    pub fn pool(&self) -> Pool {
        match self.inner.pool.read() {
            Ok(pool) => pool.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `host:port/dbname as user`, for messages (never the password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Closes the pool: waiting and future `get`s fail with [`DbError::PoolClosed`].
    pub fn close(&self) {
        self.pool().close();
    }

    fn connect_error(&self, cause: tokio_postgres::Error) -> DbError {
        let mut detail = describe(&cause);
        if detail.contains("no encryption") || detail.contains("SSL off") {
            detail.push_str(" (the server requires TLS: add sslmode=require to DATABASE_URL)");
        }
        if detail.contains("invalid peer certificate") {
            detail
                .push_str(" (the server's certificate is not trusted by the PGSSLROOTCERT bundle)");
        }
        DbError::Connect {
            target: self.inner.target.clone(),
            detail,
            cause: Some(cause),
        }
    }

    fn pool_error(&self, err: PoolError) -> DbError {
        let target = self.inner.target.clone();
        match err {
            PoolError::Backend(cause) => self.connect_error(cause),
            PoolError::Timeout(TimeoutType::Wait) => DbError::Timeout {
                target,
                during: "waiting for a free pooled connection to",
                after: self.inner.wait_timeout,
                setting: "DB_POOL_WAIT_TIMEOUT_MS (or POOL_MAX_SIZE)",
                connection: false,
            },
            PoolError::Timeout(TimeoutType::Create) => DbError::Timeout {
                target,
                during: "connecting to",
                after: self.inner.connect_timeout,
                setting: "DB_CONNECT_TIMEOUT_MS",
                connection: true,
            },
            PoolError::Timeout(TimeoutType::Recycle) => DbError::Timeout {
                target,
                during: "checking a pooled connection to",
                after: self.inner.recycle_timeout,
                setting: "DB_RECYCLE_TIMEOUT_MS",
                connection: true,
            },
            PoolError::Closed => DbError::PoolClosed,
            PoolError::NoRuntimeSpecified => {
                DbError::Config("the pool has no async runtime".into())
            }
            PoolError::PostCreateHook(e) => DbError::Connect {
                target,
                detail: e.to_string(),
                cause: None,
            },
        }
    }
}

/// Adds our connection settings to the driver config. The server-side session settings are
/// not among them: they are sent by [`session_settings_sql`] once each connection is open,
/// because the startup packet's `options` do not survive RDS Proxy (it drops them, so the
/// timeouts would silently not apply).
fn apply_session_settings(pg: &mut tokio_postgres::Config, cfg: &DbConfig) {
    pg.application_name(&cfg.application_name)
        .connect_timeout(cfg.connect_timeout)
        .keepalives(true)
        // A peer that vanished (failover, NAT timeout) is detected in ~25 s, not hours.
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        // Unacknowledged writes to a vanished peer fail after this, instead of retransmitting
        // for ~15 minutes.
        .tcp_user_timeout(Duration::from_secs(25));
}

/// The session settings each new connection runs once (one round trip, at connect, never per
/// checkout): `statement_timeout` (`DB_STATEMENT_TIMEOUT_MS`) and
/// `idle_in_transaction_session_timeout`.
pub fn session_settings_sql(cfg: &DbConfig) -> String {
    let statement_ms = cfg.statement_timeout.as_millis();
    // A transaction left idle (a bug, or a client that died mid-transaction) must not hold
    // locks for ever; real transactions here are short and never wait on the network.
    let idle_tx_ms = (statement_ms * 2).max(60_000);
    format!(
        "SET statement_timeout = {statement_ms}; \
         SET idle_in_transaction_session_timeout = {idle_tx_ms}"
    )
}

/// `host:port/dbname as user` (or the socket path), never the password.
fn describe_target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let user = pg.get_user().unwrap_or("(default user)");
    let dbname = pg.get_dbname().unwrap_or(user);
    format!("{hosts}/{dbname} as {user}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn cfg(url: &str) -> Result<DbConfig, Box<dyn std::error::Error>> {
        Ok(DbConfig::from_env(
            &Env::from_pairs([("DATABASE_URL", url)]),
            1,
        )?)
    }

    #[test]
    fn target_names_host_port_database_and_user_but_not_the_password(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pg: tokio_postgres::Config = "postgres://app:hunter2@db.example:6543/notes".parse()?;
        let target = describe_target(&pg);
        assert_eq!(target, "db.example:6543/notes as app");
        Ok(())
    }

    #[test]
    fn session_settings_are_sent_after_connecting_not_in_the_startup_options(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let c = cfg("postgres://app@h/db?options=-c%20search_path%3Dx")?;
        let mut pg: tokio_postgres::Config =
            "postgres://app@h/db?options=-c%20search_path%3Dx".parse()?;
        apply_session_settings(&mut pg, &c);
        // The URL's own options are left as they are; ours are not added to them.
        assert_eq!(pg.get_options(), Some("-c search_path=x"));
        assert_eq!(
            session_settings_sql(&c),
            "SET statement_timeout = 10000; SET idle_in_transaction_session_timeout = 60000"
        );
        assert_eq!(pg.get_application_name(), Some("hikmah"));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert!(pg.get_keepalives());
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_failure_names_host_and_port_but_never_the_password(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut c = cfg("postgres://app:hunter2@127.0.0.1:1/db")?;
        c.connect_timeout = Duration::from_millis(500);
        let err = Db::connect(&c).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        assert!(err.is_connection(), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn the_pool_debug_output_never_shows_the_password(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let db = Db::connect_lazy(&cfg("postgres://app:hunter2@127.0.0.1:1/db")?).await?;
        let text = format!("{db:?}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{:?}", db.pool()).contains("hunter2"));
        Ok(())
    }

    /// Compile-time check: a unit of work that borrows from its caller and opens a transaction
    /// gives a `Send` future, so it can be spawned and boxed (`BoxFuture`).
    #[allow(dead_code)]
    fn run_future_is_send_when_work_borrows_and_uses_a_transaction(db: &Db, user: &str, n: i64) {
        fn assert_send<T: Send>(_: T) {}
        assert_send(db.run(|mut conn| async move {
            let tx = conn.transaction().await?;
            tx.execute("SELECT $1::text, $2::bigint", &[&user, &n])
                .await?;
            tx.commit().await?;
            Ok::<_, DbError>(())
        }));
    }

    #[test]
    fn sslmode_require_with_an_unreadable_root_bundle_names_the_file(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pg: tokio_postgres::Config = "postgres://app@h/db?sslmode=require".parse()?;
        let root = Path::new("/nonexistent/global-bundle.pem");
        let err = Db::from_pg_config_with_root_cert(pg, &cfg("postgres://app@h/db")?, Some(root))
            .unwrap_err();
        assert!(err.to_string().contains("global-bundle.pem"), "{err}");
        Ok(())
    }
}
