//! TLS to a real PostgreSQL that accepts only TLS connections (as RDS for PostgreSQL 15+ does by
//! default): `sslmode=require` connects encrypted, a root bundle makes the certificate checked,
//! and a plain connection gets an error that says what to change.
//!
//! The test starts its own throwaway cluster (initdb, as the `postgres` user when run as root)
//! with a certificate made by `openssl`, both installed with PostgreSQL by `scripts/test.sh`'s
//! image.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use hikmah_tests::secrets_extension::FakeExtension;
use shared::config::{DbConfig, Env};
use shared::db::{Db, DbError};

/// A PostgreSQL cluster with `ssl=on` and only `hostssl` entries, stopped and deleted on drop.
struct TlsCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (PostgreSQL's server binaries and openssl are needed: run scripts/test.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A command run as the `postgres` user when we are root (initdb refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    panic!("PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/test.sh, which installs them")
}

/// Makes a CA and a server certificate for `localhost` / 127.0.0.1 signed by it.
fn make_certs(dir: &Path, ca: &str) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.crt"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
}

impl TlsCluster {
    fn start() -> Self {
        Self::start_with_hba("")
    }

    /// Like [`TlsCluster::start`], with `hba` lines placed before the catch-all trust entry.
    fn start_with_hba(hba: &str) -> Self {
        Self::start_with(hba, false)
    }

    /// Like [`TlsCluster::start`], but the server's certificate signs itself (no CA issued it).
    fn start_self_signed() -> Self {
        Self::start_with("", true)
    }

    fn start_with(hba: &str, self_signed: bool) -> Self {
        let bindir = pg_bindir();
        let dir = std::env::temp_dir().join(format!(
            "hikmah-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        make_certs(&dir, "ca");
        make_certs(&dir, "other-ca");
        let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(&dir).args(args));
        if self_signed {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
            ]);
        } else {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]);
            std::fs::write(
                dir.join("server.ext"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ]);
        }
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&dir));
        }
        run(Command::new("chmod").args(["700"]).arg(&dir));
        run(Command::new("chmod")
            .args(["600"])
            .arg(dir.join("server.key")));

        let data = dir.join("data");
        run(as_postgres(&bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]));
        // Only TLS connections are accepted over TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}hostssl all all 127.0.0.1/32 trust\n"),
        )
        .unwrap();
        if is_root() {
            run(Command::new("chown")
                .args(["postgres:"])
                .arg(data.join("pg_hba.conf")));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={dir}/server.crt \
             -c ssl_key_file={dir}/server.key -c fsync=off",
            dir = dir.display()
        );
        let cluster = TlsCluster { dir, bindir, port };
        run(as_postgres(&cluster.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("log"))
            .args(["-w", "-t", "30", "-o", &options, "start"]));
        cluster
    }

    fn url(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pool(url: &str, root_cert: Option<&Path>) -> Result<Db, DbError> {
    let cfg = DbConfig::from_env(&Env::from_pairs([("DATABASE_URL", url)]), 1).unwrap();
    Db::from_pg_config_with_root_cert(url.parse().unwrap(), &cfg, root_cert)
}

async fn session_is_encrypted(db: &Db) -> Result<bool, DbError> {
    db.run(|conn| async move {
        let row = conn
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok::<_, DbError>(row.get(0))
    })
    .await
}

#[tokio::test]
async fn tls_connections_to_a_server_that_requires_tls() {
    let cluster = tokio::task::spawn_blocking(TlsCluster::start)
        .await
        .unwrap();
    let ca = cluster.dir.join("ca.crt");
    let other_ca = cluster.dir.join("other-ca.crt");

    // sslmode=require without a root bundle: encrypted (libpq's `require`), pool works twice.
    let db = pool(&cluster.url("127.0.0.1", "require"), None).unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());
    assert!(session_is_encrypted(&db).await.unwrap());

    // With the root bundle: the certificate chain and host name are verified.
    let db = pool(&cluster.url("localhost", "require"), Some(&ca)).unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());
    let db = pool(&cluster.url("127.0.0.1", "require"), Some(&ca)).unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());

    // A certificate from another CA is refused.
    let db = pool(&cluster.url("localhost", "require"), Some(&other_ca)).unwrap();
    let err = session_is_encrypted(&db).await.unwrap_err();
    assert!(err.is_connection(), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Without TLS the server refuses, and the error says what to change.
    let db = pool(&cluster.url("127.0.0.1", "disable"), None).unwrap();
    let err = session_is_encrypted(&db).await.unwrap_err();
    assert!(err.to_string().contains("sslmode=require"), "{err}");
}

#[tokio::test]
async fn a_server_with_a_self_signed_certificate_is_refused_when_a_ca_bundle_is_given() {
    let cluster = tokio::task::spawn_blocking(TlsCluster::start_self_signed)
        .await
        .unwrap();
    // The client trusts a real CA (as the functions trust the RDS bundle), which did not sign
    // the server's certificate: refused, and the error names the bundle's variable.
    let ca = cluster.dir.join("ca.crt");
    for host in ["localhost", "127.0.0.1"] {
        let db = pool(&cluster.url(host, "require"), Some(&ca)).unwrap();
        let err = session_is_encrypted(&db).await.unwrap_err();
        assert!(err.is_connection(), "{err}");
        assert!(err.to_string().contains("PGSSLROOTCERT"), "{err}");
    }

    // Without a bundle the same server is accepted, encrypted but unverified (libpq's
    // `require`): what DbVerifyServerCertificate=false means.
    let db = pool(&cluster.url("localhost", "require"), None).unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());
}

const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hikmah-db-AbCdEf";

fn rds_secret(port: u16, password: &str) -> String {
    serde_json::json!({
        "engine": "postgres", "host": "127.0.0.1", "port": port,
        "username": "app", "password": password, "dbname": "postgres",
    })
    .to_string()
}

fn secret_config(fake: &FakeExtension, extra: &[(&str, &str)]) -> DbConfig {
    let mut pairs = fake.env_pairs(ARN);
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    DbConfig::from_env(&Env::from_pairs(pairs), 2).unwrap()
}

/// A TLS cluster where the role `app` logs in with a password, as on RDS.
async fn cluster_with_app_role(password: &str) -> (TlsCluster, tokio_postgres::Client) {
    let cluster = tokio::task::spawn_blocking(|| {
        TlsCluster::start_with_hba("hostssl all app 127.0.0.1/32 scram-sha-256\n")
    })
    .await
    .unwrap();
    let tls = shared::db::tls::MakeRustls::new(shared::db::tls::client_config(None).unwrap());
    let (client, connection) = tokio_postgres::connect(&cluster.url("127.0.0.1", "require"), tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{password}'"))
        .await
        .unwrap();
    (cluster, client)
}

async fn select_one(db: &Db) -> Result<i32, DbError> {
    db.run(|conn| async move { Ok::<_, DbError>(conn.query_one("SELECT 1", &[]).await?.get(0)) })
        .await
}

#[tokio::test]
async fn a_rotated_password_is_read_again_from_the_secret_on_the_next_login() {
    let (cluster, admin) = cluster_with_app_role("first-password").await;
    let fake = FakeExtension::start(&rds_secret(cluster.port, "first-password")).await;
    let db = Db::connect(&secret_config(&fake, &[])).await.unwrap();
    assert_eq!(select_one(&db).await.unwrap(), 1);

    // Secrets Manager rotates the password; the extension still caches the old one.
    admin
        .batch_execute("ALTER ROLE app PASSWORD 'second-password'")
        .await
        .unwrap();
    fake.rotate(&rds_secret(cluster.port, "second-password"));
    // The environment was frozen long enough for its connections to go.
    db.pool().retain(|_, _| false);

    assert_eq!(select_one(&db).await.unwrap(), 1);
    let (_, refreshes) = fake.counts();
    assert_eq!(
        refreshes, 1,
        "the secret was read again, bypassing the extension's cache"
    );
    // Later connections use the new password without asking again.
    db.pool().retain(|_, _| false);
    assert_eq!(select_one(&db).await.unwrap(), 1);
    assert_eq!(fake.counts().1, 1);
    drop(admin);
}

#[tokio::test]
async fn init_waits_for_a_secrets_extension_that_is_not_listening_yet() {
    let (cluster, admin) = cluster_with_app_role("pw").await;
    // Registered, but listening only 1.5 s after the runtime started.
    let fake =
        FakeExtension::start_after(Duration::from_millis(1500), &rds_secret(cluster.port, "pw"))
            .await;
    let db = Db::connect(&secret_config(
        &fake,
        &[("SECRETS_EXTENSION_WAIT_MS", "10000")],
    ))
    .await
    .unwrap();
    assert_eq!(select_one(&db).await.unwrap(), 1);

    // Within a budget: an extension that never comes fails init after it, saying why.
    let never = FakeExtension::start_after(Duration::from_secs(3600), "{}").await;
    let started = std::time::Instant::now();
    let err = Db::connect(&secret_config(
        &never,
        &[("SECRETS_EXTENSION_WAIT_MS", "1000")],
    ))
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("SECRETS_EXTENSION_WAIT_MS"),
        "{err}"
    );
    drop(admin);
}

#[tokio::test]
async fn an_unverified_connection_refuses_a_cleartext_password_request_and_scram_binds_to_the_channel(
) {
    let cluster = tokio::task::spawn_blocking(|| {
        TlsCluster::start_with_hba(
            "hostssl all clear 127.0.0.1/32 password\nhostssl all app 127.0.0.1/32 scram-sha-256\n",
        )
    })
    .await
    .unwrap();
    let tls = shared::db::tls::MakeRustls::new(shared::db::tls::client_config(None).unwrap());
    let (admin, connection) = tokio_postgres::connect(&cluster.url("127.0.0.1", "require"), tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(
            "CREATE ROLE clear LOGIN PASSWORD 'pw1'; CREATE ROLE app LOGIN PASSWORD 'pw2';",
        )
        .await
        .unwrap();
    let url = |user: &str, pw: &str, host: &str, extra: &str| {
        format!(
            "postgres://{user}:{pw}@{host}:{}/postgres?sslmode=require{extra}",
            cluster.port
        )
    };
    let ca = cluster.dir.join("ca.crt");

    // Unverified (no root bundle): whoever answers may be in the middle, so no cleartext password.
    let db = pool(&url("clear", "pw1", "127.0.0.1", ""), None).unwrap();
    let err = session_is_encrypted(&db).await.unwrap_err();
    assert!(err.to_string().contains("clear text"), "{err}");
    // Verified against the CA: the server is who it says, the password may go.
    let db = pool(&url("clear", "pw1", "localhost", ""), Some(&ca)).unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());

    // SCRAM with channel binding (tls-server-end-point), required by the client.
    let db = pool(
        &url("app", "pw2", "127.0.0.1", "&channel_binding=require"),
        None,
    )
    .unwrap();
    assert!(session_is_encrypted(&db).await.unwrap());
    drop(admin);
}
