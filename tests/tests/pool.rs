//! The database pool against a real PostgreSQL: it never hands out a dead connection, never
//! leaks connections or open transactions, fails fast when the server is away, and retries a
//! unit of work exactly once on a connection-class error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hikmah_tests::pg::{render, TestDb};
use shared::config::{DbConfig, Env};
use shared::db::{ConnectionClass, Db, DbError};

async fn backend_pid(db: &Db, attempts: &AtomicUsize) -> Result<i32, DbError> {
    db.run(|conn| async move {
        attempts.fetch_add(1, Ordering::SeqCst);
        Ok::<_, DbError>(simple_pid(&conn).await?)
    })
    .await
}

/// The session's backend pid, over the simple query protocol: unlike a prepared statement it
/// leaves nothing to clean up (no `Close` sent after the fact), so the connection is truly idle
/// when this returns.
async fn simple_pid(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT pg_backend_pid()").await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("pg_backend_pid() returned a row"))
}

/// The application's sessions on `t`'s database: (total, idle in a transaction).
async fn sessions(admin: &tokio_postgres::Client, t: &TestDb) -> (usize, usize) {
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%') \
             FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&t.name(), &t.application_name()],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {}", render(&e)));
    (row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as usize)
}

async fn terminate(admin: &tokio_postgres::Client, pid: i32) {
    let row = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap_or_else(|e| panic!("pg_terminate_backend: {}", render(&e)));
    assert!(row.get::<_, bool>(0), "backend {pid} was not terminated");
    // Wait until it has exited (faster than the two-argument form, which polls every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if !alive {
            return;
        }
        assert!(Instant::now() < deadline, "backend {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A TCP proxy to PostgreSQL that hides a server-side close from the client until the client
/// next sends something (then it closes the client's socket): what a Lambda environment sees
/// when it thaws after the server closed its idle connection (the close is still unread), or a
/// NAT that dropped the flow. So the client's `is_closed()` cannot tell, and only a real round
/// trip before reuse (`RecyclingMethod::Verified`) keeps the dead connection from being handed
/// out. It understands just enough of the protocol (message framing, `Q`/`S` requests answered
/// by one `Z` each) to know when the client is waiting for nothing.
mod unnoticed_close {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Starts the proxy on a free local port; it runs until the test's runtime ends.
    pub async fn start(upstream: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream));
            }
        });
        addr
    }

    /// Complete messages at the front of `buf` (type byte + length), removed from it.
    fn frames(buf: &mut Vec<u8>, typed: bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let header = if typed { 5 } else { 4 };
            if buf.len() < header {
                return out;
            }
            let at = header - 4;
            let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let total = at + len;
            if buf.len() < total {
                return out;
            }
            out.push(buf.drain(..total).collect());
        }
    }

    async fn relay(mut client: TcpStream, upstream: SocketAddr) {
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let (mut cbuf, mut sbuf) = (Vec::new(), Vec::new());
        let (mut cread, mut sread) = ([0u8; 8192], [0u8; 8192]);
        // The startup message has no type byte; everything after it does.
        let mut startup_sent = false;
        // Requests awaiting their ReadyForQuery; None until the startup's own ReadyForQuery.
        let mut pending: Option<i64> = None;
        let mut server_gone = false;
        loop {
            tokio::select! {
                n = client.read(&mut cread) => {
                    let Ok(n @ 1..) = n else { return };
                    if server_gone {
                        return; // the client finally speaks: now it learns the truth
                    }
                    cbuf.extend_from_slice(&cread[..n]);
                    loop {
                        let typed = startup_sent;
                        let msgs = frames(&mut cbuf, typed);
                        if msgs.is_empty() {
                            break;
                        }
                        for m in msgs {
                            if !startup_sent {
                                startup_sent = true;
                            } else if matches!(m[0], b'Q' | b'S') {
                                pending = pending.map(|p| p + 1);
                            }
                            if server.write_all(&m).await.is_err() {
                                return;
                            }
                        }
                        if typed {
                            break;
                        }
                    }
                }
                n = server.read(&mut sread), if !server_gone => {
                    match n {
                        Ok(n @ 1..) => {
                            sbuf.extend_from_slice(&sread[..n]);
                            for m in frames(&mut sbuf, true) {
                                if pending == Some(0) {
                                    continue; // unsolicited (the FATAL of a terminated backend): held back
                                }
                                if client.write_all(&m).await.is_err() {
                                    return;
                                }
                                if m[0] == b'Z' {
                                    pending = Some(pending.map_or(0, |p| p - 1));
                                }
                            }
                        }
                        _ => {
                            if pending != Some(0) {
                                return; // closed mid-request: the client sees it at once
                            }
                            server_gone = true; // closed while idle: say nothing
                        }
                    }
                }
            }
        }
    }
}

/// `url` pointing at `addr` instead of its own host and port.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let start = url.find("://").map(|i| i + 3).expect("a postgres:// URL");
    let end = url[start..]
        .find(['/', '?'])
        .map(|i| start + i)
        .unwrap_or(url.len());
    let host_start = url[start..end]
        .rfind('@')
        .map(|i| start + i + 1)
        .unwrap_or(start);
    format!("{}{addr}{}", &url[..host_start], &url[end..])
}

fn upstream(url: &str) -> std::net::SocketAddr {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) if h == "localhost" => "127.0.0.1".to_owned(),
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("tests need a TCP DATABASE_URL, got {other:?}"),
    };
    format!(
        "{host}:{}",
        cfg.get_ports().first().copied().unwrap_or(5432)
    )
    .parse()
    .unwrap()
}

#[tokio::test]
async fn second_request_after_server_closed_connection_succeeds() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let proxy = unnoticed_close::start(upstream(t.url())).await;
    let mut cfg = t.db_config();
    cfg.source = shared::config::DbSource::Url(shared::config::Secret::new(via(t.url(), proxy)));
    cfg.pool_max_size = 1;
    let db = Db::connect(&cfg).await.unwrap();

    for round in 0..50 {
        // First request: uses the pooled connection and returns it to the pool.
        let attempts = AtomicUsize::new(0);
        let pid = backend_pid(&db, &attempts).await.unwrap();
        // The server closes it while it sits in the pool (idle timeout, failover, restart),
        // and the client has not noticed.
        terminate(&admin, pid).await;
        // Second request: no error surfaces, and the pre-use check (not the retry) caught the
        // dead connection: the work ran once, on a new backend.
        let attempts = AtomicUsize::new(0);
        let next = backend_pid(&db, &attempts)
            .await
            .unwrap_or_else(|e| panic!("round {round}: second request failed: {e}"));
        assert_ne!(
            next, pid,
            "round {round}: the dead connection was handed out again"
        );
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "round {round}: the work was retried"
        );

        // The same through a plain `get`, without `run`'s retry to fall back on.
        terminate(&admin, next).await;
        let client = db
            .get()
            .await
            .unwrap_or_else(|e| panic!("round {round}: get failed: {e}"));
        simple_pid(&client)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    t.cleanup().await;
}

#[tokio::test]
async fn second_request_after_server_closed_a_direct_connection_succeeds() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 1;
    let db = Db::connect(&cfg).await.unwrap();
    for round in 0..20 {
        let pid = backend_pid(&db, &AtomicUsize::new(0)).await.unwrap();
        terminate(&admin, pid).await;
        let attempts = AtomicUsize::new(0);
        let next = backend_pid(&db, &attempts)
            .await
            .unwrap_or_else(|e| panic!("round {round}: second request failed: {e}"));
        assert_ne!(next, pid);
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "round {round}: the work was retried"
        );
    }
    t.cleanup().await;
}

/// A caller's own error type, wrapping `DbError`, as the memory and elaborate services do.
#[derive(Debug)]
enum AppError {
    Db(DbError),
    Refused,
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        AppError::Db(e)
    }
}

impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> Self {
        AppError::Db(e.into())
    }
}

impl ConnectionClass for AppError {
    fn is_connection(&self) -> bool {
        matches!(self, AppError::Db(e) if e.is_connection())
    }
}

/// One failing unit of work of kind `i % 4`: bad SQL, bad SQL inside a transaction, a
/// constraint violation inside a transaction, or the caller's own error mid-transaction.
async fn failing_work(db: &Db, i: usize) -> AppError {
    let result = db
        .run(|mut conn| async move {
            match i % 4 {
                0 => {
                    conn.execute("SELEC 1", &[]).await?;
                }
                1 => {
                    let tx = conn.transaction().await?;
                    tx.execute("CREATE TEMP TABLE t(x int)", &[]).await?;
                    tx.execute("SELECT * FROM no_such_table", &[]).await?;
                    tx.commit().await?;
                }
                2 => {
                    let tx = conn.transaction().await?;
                    tx.execute("SELECT pg_advisory_xact_lock(42)", &[]).await?;
                    tx.execute(
                        "INSERT INTO processed_events (event_id, user_id) \
                         VALUES ('00000000-0000-0000-0000-000000000001', 'u'), \
                                ('00000000-0000-0000-0000-000000000001', 'u')",
                        &[],
                    )
                    .await?;
                    tx.commit().await?;
                }
                _ => {
                    let tx = conn.transaction().await?;
                    tx.execute("SELECT pg_advisory_xact_lock(43)", &[]).await?;
                    return Err(AppError::Refused);
                }
            }
            Ok(())
        })
        .await;
    result.expect_err("the unit of work was meant to fail")
}

#[tokio::test]
async fn failed_units_of_work_leak_no_connections_and_no_open_transactions() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 3;
    let db = Db::connect(&cfg).await.unwrap();

    // Watch pg_stat_activity the whole time: the pool must never hold more than its size.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, url, name, app) = (
            stop.clone(),
            t.url().to_owned(),
            t.name().to_owned(),
            t.application_name().to_owned(),
        );
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let (mut most, mut samples) = (0i64, 0u32);
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                        &[&name, &app],
                    )
                    .await
                    .unwrap()
                    .get(0);
                most = most.max(n);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (most, samples)
        })
    };

    // 100 one at a time: after each, nothing is left inside a transaction, and the connection
    // was kept (a clean failure is no reason to reconnect).
    let warm = backend_pid(&db, &AtomicUsize::new(0)).await.unwrap();
    for i in 0..100 {
        let err = failing_work(&db, i).await;
        assert!(!err.is_connection(), "unit {i}: {err:?}");
        let (total, in_tx) = sessions(&admin, &t).await;
        assert!(total <= 3, "unit {i}: {total} sessions for a pool of 3");
        assert_eq!(in_tx, 0, "unit {i} left a transaction open");
    }
    let still = backend_pid(&db, &AtomicUsize::new(0)).await.unwrap();
    assert_eq!(
        still, warm,
        "a connection was replaced after a clean failure"
    );
    // 100 more, six at a time over a pool of three.
    let errors: Vec<AppError> = futures::stream::iter(100..200)
        .map(|i| failing_work(&db, i))
        .buffer_unordered(6)
        .collect()
        .await;
    assert_eq!(errors.len(), 100);
    assert!(errors.iter().all(|e| !e.is_connection()), "{errors:?}");

    stop.store(true, Ordering::SeqCst);
    let (most, samples) = watcher.await.unwrap();
    assert!(samples > 0);
    assert!(most <= 3, "saw {most} sessions for a pool of 3");
    let (total, in_tx) = sessions(&admin, &t).await;
    assert!(total <= 3, "{total} sessions for a pool of 3");
    assert_eq!(in_tx, 0, "a transaction was left open");
    // The pool still works, on the connections it kept.
    let attempts = AtomicUsize::new(0);
    backend_pid(&db, &attempts).await.unwrap();
    assert_eq!(db.pool().status().size, 3);
    t.cleanup().await;
}

#[tokio::test]
async fn a_connection_left_inside_a_raw_transaction_after_an_error_is_discarded() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let db = t.db().await;
    let result = db
        .run(|conn| async move {
            // A raw BEGIN (not a Transaction guard): nothing rolls it back on drop.
            conn.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7)")
                .await?;
            Err::<(), _>(AppError::Refused)
        })
        .await;
    assert!(matches!(result, Err(AppError::Refused)));
    assert_eq!(
        db.pool().status().size,
        0,
        "the connection in doubt went back to the pool"
    );
    // Its backend goes away (the client closed it), releasing the lock.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sessions(&admin, &t).await.1 > 0 {
        assert!(
            Instant::now() < deadline,
            "the open transaction's session did not go away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock(7)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        free,
        "the advisory lock of the abandoned transaction is still held"
    );
    t.cleanup().await;
}

/// A TCP port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn config_for(url: &str, connect_timeout: Duration) -> DbConfig {
    let mut cfg = DbConfig::from_env(&Env::from_pairs([("DATABASE_URL", url)]), 1).unwrap();
    cfg.connect_timeout = connect_timeout;
    cfg.wait_timeout = Duration::from_millis(500);
    cfg.recycle_timeout = Duration::from_millis(500);
    cfg
}

#[tokio::test]
async fn against_a_closed_port_getting_a_connection_fails_within_the_timeouts() {
    let port = closed_port();
    let cfg = config_for(
        &format!("postgres://app:hunter2@127.0.0.1:{port}/db"),
        Duration::from_secs(1),
    );

    let started = Instant::now();
    let err = Db::connect(&cfg).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1) + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_connection(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // Through `run` (one retry), a lazily built pool also fails within twice the timeout.
    let db = Db::connect_lazy(&cfg).await.unwrap();
    let started = Instant::now();
    let err = db
        .run(|conn| async move { Ok::<_, DbError>(conn.query_one("SELECT 1", &[]).await?) })
        .await;
    assert!(err.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn against_a_server_that_never_answers_connecting_fails_within_the_connect_timeout() {
    // Accepts TCP connections and then says nothing, like a hung server or a black hole.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(700);
    let cfg = config_for(&format!("postgres://app@127.0.0.1:{port}/db"), timeout);

    let started = Instant::now();
    let err = Db::connect(&cfg).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= timeout / 2,
        "failed suspiciously early ({took:?}): {err}"
    );
    assert!(took < timeout + Duration::from_secs(3), "{took:?}");
    assert!(matches!(err, DbError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("DB_CONNECT_TIMEOUT_MS"), "{err}");
}

#[tokio::test]
async fn when_every_connection_is_busy_waiting_fails_within_the_wait_timeout() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 1;
    cfg.wait_timeout = Duration::from_millis(300);
    let db = Db::connect(&cfg).await.unwrap();
    let held = db.get().await.unwrap();

    let started = Instant::now();
    let err = db.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(300) + Duration::from_secs(3));
    assert!(matches!(err, DbError::Timeout { .. }), "{err}");
    assert!(
        !err.is_connection(),
        "pool exhaustion is not a connection failure: {err}"
    );
    drop(held);
    let _again = db.get().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn begin_invocation_drops_connections_older_than_the_max_age() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let mut cfg = t.db_config();
    cfg.pool_max_age = Duration::from_millis(300);
    let db = Db::connect(&cfg).await.unwrap();
    let attempts = AtomicUsize::new(0);
    let old = backend_pid(&db, &attempts).await.unwrap();

    // Young connections are kept.
    assert_eq!(shared::lambda::begin_invocation(&db), 0);
    assert_eq!(db.pool().status().size, 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        shared::lambda::begin_invocation(&db),
        1,
        "the over-age connection was not dropped"
    );
    assert_eq!(db.pool().status().size, 0);
    let new = backend_pid(&db, &attempts).await.unwrap();
    assert_ne!(new, old, "the over-age connection was reused");

    // Its server session ends too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&old],
            )
            .await
            .unwrap()
            .get(0);
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped connection's session is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.cleanup().await;
}

#[tokio::test]
async fn over_age_connections_are_not_reused_even_without_begin_invocation() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.pool_max_age = Duration::from_millis(200);
    let db = Db::connect(&cfg).await.unwrap();
    let attempts = AtomicUsize::new(0);
    let old = backend_pid(&db, &attempts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = backend_pid(&db, &attempts).await.unwrap();
    assert_ne!(new, old);
    t.cleanup().await;
}

#[tokio::test]
async fn a_connection_class_error_is_retried_once_on_a_fresh_connection_and_succeeds() {
    let t = TestDb::new().await;
    let db = t.db().await;
    let attempts = AtomicUsize::new(0);
    let pids = std::sync::Mutex::new(Vec::new());
    let value = db
        .run(|conn| {
            let (attempts, pids) = (&attempts, &pids);
            async move {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                let pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                pids.lock().unwrap().push(pid);
                if n == 0 {
                    // The server ends the session mid-work (57P01 admin_shutdown).
                    conn.execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                        .await?;
                }
                Ok::<_, DbError>(42)
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let pids = pids.into_inner().unwrap();
    assert_ne!(pids[0], pids[1], "the retry did not use a fresh connection");
    t.cleanup().await;
}

#[tokio::test]
async fn a_connection_class_error_is_retried_only_once() {
    let t = TestDb::new().await;
    let db = t.db().await;
    let attempts = AtomicUsize::new(0);
    let err = db
        .run(|conn| {
            let attempts = &attempts;
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                    .await?;
                Ok::<_, DbError>(())
            }
        })
        .await
        .unwrap_err();
    assert!(err.is_connection(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // The pool recovers.
    backend_pid(&db, &AtomicUsize::new(0)).await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn statement_errors_are_returned_as_they_are_and_never_retried() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.statement_timeout = Duration::from_millis(200);
    let db = Db::connect(&cfg).await.unwrap();
    for (sql, code) in [
        ("SELEC 1", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        (
            "INSERT INTO processed_events (event_id, user_id) VALUES (gen_random_uuid(), NULL)",
            "23502",
        ),
        ("SELECT pg_sleep(5)", "57014"),
    ] {
        let attempts = AtomicUsize::new(0);
        let started = Instant::now();
        let err = db
            .run(|conn| {
                let attempts = &attempts;
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    conn.execute(sql, &[]).await?;
                    Ok::<_, DbError>(())
                }
            })
            .await
            .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{sql}: retried");
        assert_eq!(err.code().map(|c| c.code()), Some(code), "{sql}: {err}");
        assert!(!err.is_connection(), "{sql}: {err}");
        assert!(
            err.to_string().contains(code),
            "the message carries the SQLSTATE: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{sql}: the statement timeout did not apply"
        );
    }
    // The caller's own errors are not retried either.
    let attempts = AtomicUsize::new(0);
    let err = db
        .run(|_conn| {
            let attempts = &attempts;
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(AppError::Refused)
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Refused));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    t.cleanup().await;
}

#[tokio::test]
async fn sessions_carry_the_configured_name_timeouts_and_keepalive() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.statement_timeout = Duration::from_millis(1500);
    let db = Db::connect(&cfg).await.unwrap();
    let (app, stmt, idle_tx) = db
        .run(|conn| async move {
            let row = conn
                .query_one(
                    "SELECT current_setting('application_name'), current_setting('statement_timeout'), \
                            current_setting('idle_in_transaction_session_timeout')",
                    &[],
                )
                .await?;
            Ok::<_, DbError>((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)))
        })
        .await
        .unwrap();
    assert_eq!(app, t.application_name());
    assert_eq!(stmt, "1500ms");
    assert_eq!(idle_tx, "1min");
    t.cleanup().await;
}

#[tokio::test]
async fn a_unit_of_work_cancelled_mid_transaction_leaves_no_transaction_open() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 1;
    let db = Db::connect(&cfg).await.unwrap();
    // The caller gives up (a handler timeout) while the transaction is open and idle.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        db.run(|mut conn| async move {
            let tx = conn.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(9)", &[]).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            tx.commit().await?;
            Ok::<_, DbError>(())
        }),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the unit of work was meant to be cancelled"
    );
    // The next unit of work on the (only) connection runs outside any transaction...
    // (Over the simple protocol, outside a transaction block the two timestamps are equal.)
    let in_tx = db
        .run(|conn| async move {
            let messages = conn
                .simple_query("SELECT transaction_timestamp() <> statement_timestamp()")
                .await?;
            Ok::<_, DbError>(messages.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
            }))
        })
        .await
        .unwrap();
    assert!(!in_tx, "the cancelled transaction is still open");
    // ...and the cancelled transaction's lock is gone.
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock(9)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the cancelled transaction still holds its lock");
    assert_eq!(sessions(&admin, &t).await.1, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn a_unit_of_work_cancelled_during_a_query_does_not_block_the_next_one() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 1;
    cfg.recycle_timeout = Duration::from_millis(300);
    let db = Db::connect(&cfg).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        db.run(|mut conn| async move {
            let tx = conn.transaction().await?;
            tx.execute("SELECT pg_sleep(3)", &[]).await?;
            tx.commit().await?;
            Ok::<_, DbError>(())
        }),
    )
    .await;
    assert!(cancelled.is_err());
    // The pooled connection is still busy with the abandoned query: its pre-use check times
    // out and a fresh connection serves the next unit of work, well before the query ends.
    let started = Instant::now();
    backend_pid(&db, &AtomicUsize::new(0)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300) + Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    t.cleanup().await;
}

#[tokio::test]
async fn after_every_pooled_connection_is_terminated_the_next_units_of_work_succeed() {
    let t = TestDb::new().await;
    let mut cfg = t.db_config();
    cfg.pool_max_size = 3;
    let db = Db::connect(&cfg).await.unwrap();
    // Warm all three connections at once.
    let held = [
        db.get().await.unwrap(),
        db.get().await.unwrap(),
        db.get().await.unwrap(),
    ];
    drop(held);
    assert_eq!(t.app_backends().await.len(), 3);

    // A server restart or failover: every session of the application ends.
    assert_eq!(t.terminate_app_backends().await, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.app_backends().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "terminated sessions did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attempts = AtomicUsize::new(0);
    let pids: Vec<i32> = futures::future::try_join_all((0..3).map(|_| backend_pid(&db, &attempts)))
        .await
        .unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "a unit of work needed its retry"
    );
    assert_eq!(pids.len(), 3);
    t.cleanup().await;
}

#[tokio::test]
async fn statement_timeout_applies_through_a_proxy_that_drops_the_startup_options() {
    use hikmah_tests::proxy::{upstream_of, TcpProxy};
    let t = TestDb::new().await;
    // As RDS Proxy does: the `options` startup parameter never reaches the server.
    let proxy = TcpProxy::start_stripping_startup_options(upstream_of(t.url())).await;
    let env = Env::from_pairs([
        ("DATABASE_URL", proxy.rewrite_url(t.url())),
        ("DB_STATEMENT_TIMEOUT_MS", "300".to_owned()),
    ]);
    let db = Db::connect(&DbConfig::from_env(&env, 1).unwrap())
        .await
        .unwrap();
    let shown: String = db
        .get()
        .await
        .unwrap()
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "300ms");
    let started = Instant::now();
    let err = db
        .get()
        .await
        .unwrap()
        .simple_query("SELECT pg_sleep(3)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    db.close();
    t.cleanup().await;
}
