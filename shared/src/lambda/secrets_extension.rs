//! Database credentials from AWS Secrets Manager, through the AWS Parameters and Secrets Lambda
//! Extension.
//!
//! With `DB_SECRET_ARN` set (and no `DATABASE_URL`), [`crate::db::Db::connect`] asks the extension,
//! which caches the secret inside the execution environment:
//!
//! ```text
//! GET http://localhost:2773/secretsmanager/get?secretId=<ARN>
//! X-Aws-Parameters-Secrets-Token: $AWS_SESSION_TOKEN
//! ```
//!
//! The port is `PARAMETERS_SECRETS_EXTENSION_HTTP_PORT` when set (the extension's own setting).
//! At init the extension may not be listening yet: the request is retried for up to
//! `SECRETS_EXTENSION_WAIT_MS`. After a failed login (SQLSTATE 28P01, a rotated password) the
//! pool asks again with `refreshNow=true` and rebuilds its credentials ([`crate::db::Db::get`]).
//! The reply is the `GetSecretValue` JSON; its `SecretString` is the RDS secret format
//! `{"host", "port", "username", "password", "dbname"}` (`port` may be a number or a string,
//! `dbname` defaults to `postgres`). The function needs the extension layer and
//! `secretsmanager:GetSecretValue` on the secret.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Secret, SecretSource};
use crate::db::DbError;

/// Default port of the Parameters and Secrets Lambda Extension.
pub const EXTENSION_DEFAULT_PORT: u16 = 2773;

/// Credentials of an RDS database, as stored by RDS / Secrets Manager.
#[derive(Clone, PartialEq, Eq)]
pub struct RdsSecret {
    /// Server host name.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Login role.
    pub username: String,
    /// Its password (never printed).
    pub password: Secret,
    /// Database name.
    pub dbname: String,
}

impl fmt::Debug for RdsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdsSecret")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl RdsSecret {
    /// The driver configuration for these credentials, with TLS required (our session settings
    /// are added later).
    pub fn to_pg_config(&self) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .user(&self.username)
            .password(self.password.expose())
            .dbname(&self.dbname)
            // RDS always offers TLS, and PostgreSQL 15+ on RDS requires it by default.
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        pg
    }
}

#[derive(Deserialize)]
struct GetSecretValue {
    #[serde(rename = "SecretString")]
    secret_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u16),
    Text(String),
}

#[derive(Deserialize)]
struct RawRdsSecret {
    host: Option<String>,
    port: Option<Port>,
    username: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
}

/// Parses the extension's reply into credentials. The error never contains the secret's values.
pub fn parse_extension_response(body: &str) -> Result<RdsSecret, String> {
    let reply: GetSecretValue = serde_json::from_str(body).map_err(|e| {
        format!(
            "the extension's reply is not GetSecretValue JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let secret = reply
        .secret_string
        .ok_or("the secret has no SecretString (binary secrets are not supported)")?;
    parse_rds_secret(&secret)
}

/// Parses an RDS-format `SecretString`. The error never contains the secret's values.
pub fn parse_rds_secret(secret_string: &str) -> Result<RdsSecret, String> {
    // serde_json's messages can quote the input; report only the position.
    let raw: RawRdsSecret = serde_json::from_str(secret_string).map_err(|e| {
        format!(
            "SecretString is not a JSON object of host, port, username, password, dbname \
             (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let required = |v: Option<String>, field: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or(format!("SecretString has no \"{field}\""))
    };
    let port = match raw.port {
        None => 5432,
        Some(Port::Number(p)) => p,
        Some(Port::Text(t)) => t
            .trim()
            .parse()
            .map_err(|_| "SecretString \"port\" is not a port number".to_owned())?,
    };
    Ok(RdsSecret {
        host: required(raw.host, "host")?,
        port,
        username: required(raw.username, "username")?,
        password: Secret::new(required(raw.password, "password")?),
        dbname: raw
            .dbname
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "postgres".to_owned()),
    })
}

/// The extension's URL for a secret id (URL-encoded: names may contain `+`, `/`, `=`, `@`).
pub fn extension_url(port: u16, arn: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse_with_params(
        &format!("http://localhost:{port}/secretsmanager/get"),
        &[("secretId", arn)],
    )
    .map_err(|e| format!("cannot build the extension URL: {e}"))
}

/// Reads the RDS secret through the extension running in this execution environment.
///
/// `refresh` asks the extension to bypass its cache (`refreshNow=true`), after a failed login
/// suggests the password was rotated. An extension that is not listening yet (it registered but
/// has not started its HTTP server), or answers 5xx, is retried with a doubling pause for up to
/// `source.extension_wait`; a 4xx (wrong ARN, missing permission) is not retried.
pub async fn fetch_rds_secret(
    source: &SecretSource,
    timeout: Duration,
    refresh: bool,
) -> Result<RdsSecret, DbError> {
    let arn = source.arn.as_str();
    let port = source.extension_port;
    let fail = |reason: String| DbError::Secret {
        arn: arn.to_owned(),
        reason,
    };
    let token = source.session_token.as_ref().ok_or_else(|| {
        fail("AWS_SESSION_TOKEN is not set: DB_SECRET_ARN works only inside Lambda (use DATABASE_URL elsewhere)".into())
    })?;
    let mut url = extension_url(port, arn).map_err(fail)?;
    if refresh {
        url.query_pairs_mut().append_pair("refreshNow", "true");
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeout)
        // The extension fetches from Secrets Manager on a cache miss: allow it a little longer.
        .timeout(timeout + Duration::from_secs(5))
        .build()
        .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
    let give_up = tokio::time::Instant::now() + source.extension_wait;
    let mut pause = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = match client
            .get(url.clone())
            .header("X-Aws-Parameters-Secrets-Token", token.expose())
            .send()
            .await
        {
            Err(e) => Err((
                true,
                format!(
                    "the Parameters and Secrets Lambda Extension on localhost:{port} did not answer \
                     ({e}); is the extension layer attached to the function?"
                ),
            )),
            Ok(response) => {
                let status = response.status();
                let body = response
                    .text()
                    .await
                    .map_err(|e| fail(format!("reading the extension's reply: {e}")))?;
                if status.is_success() {
                    Ok(body)
                } else {
                    // The extension's error bodies are short messages about the request, not the
                    // secret.
                    let snippet: String = body.chars().take(300).collect();
                    Err((
                        status.is_server_error(),
                        format!(
                            "the extension answered HTTP {status}: {snippet} (check the ARN and \
                             the function's secretsmanager:GetSecretValue permission)"
                        ),
                    ))
                }
            }
        };
        match outcome {
            Ok(body) => {
                if attempts > 1 {
                    tracing::info!(attempts, "the secrets extension answered after retries");
                }
                return parse_extension_response(&body).map_err(fail);
            }
            Err((retryable, reason)) => {
                let now = tokio::time::Instant::now();
                if !retryable || now + pause > give_up {
                    return Err(fail(if attempts > 1 {
                        format!(
                            "{reason} (after {attempts} attempts over SECRETS_EXTENSION_WAIT_MS)"
                        )
                    } else {
                        reason
                    }));
                }
                tracing::debug!(attempts, %reason, "secrets extension not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(secret_string: &str) -> String {
        serde_json::json!({
            "ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hikmah-db-AbCdEf",
            "Name": "hikmah-db",
            "SecretString": secret_string,
            "VersionId": "v1",
            "VersionStages": ["AWSCURRENT"],
        })
        .to_string()
    }

    #[test]
    fn rds_secret_is_parsed_from_the_extension_reply() -> Result<(), Box<dyn std::error::Error>> {
        let body = reply(
            r#"{"engine":"postgres","host":"db.abc.eu-west-1.rds.amazonaws.com","port":5432,
                "username":"hikmah","password":"p@ss:w/rd","dbname":"hikmah"}"#,
        );
        let s = parse_extension_response(&body)
            .map_err(|e| format!("parse_extension_response: {e:?}"))?;
        assert_eq!(s.host, "db.abc.eu-west-1.rds.amazonaws.com");
        assert_eq!(s.port, 5432);
        assert_eq!(s.username, "hikmah");
        assert_eq!(s.password.expose(), "p@ss:w/rd");
        assert_eq!(s.dbname, "hikmah");
        let pg = s.to_pg_config();
        assert_eq!(pg.get_password(), Some(&b"p@ss:w/rd"[..]));
        assert_eq!(pg.get_ports(), &[5432]);
        Ok(())
    }

    #[test]
    fn port_as_text_and_missing_dbname_are_accepted() -> Result<(), Box<dyn std::error::Error>> {
        let s = parse_rds_secret(r#"{"host":"h","port":"6543","username":"u","password":"p"}"#)
            .map_err(|e| format!("parse_rds_secret: {e:?}"))?;
        assert_eq!(s.port, 6543);
        assert_eq!(s.dbname, "postgres");
        Ok(())
    }

    #[test]
    fn missing_fields_are_named_and_values_never_echoed() {
        let err = parse_rds_secret(r#"{"host":"h","username":"u"}"#).unwrap_err();
        assert!(err.contains("\"password\""), "{err}");
        let err =
            parse_rds_secret(r#"{"host":"h","username":"u","password":"hunter2","port":"x"}"#)
                .unwrap_err();
        assert!(err.contains("port") && !err.contains("hunter2"), "{err}");
        let err = parse_rds_secret(r#"{"password":"hunter2", oops}"#).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_extension_response(r#"{"Name":"x"}"#).unwrap_err();
        assert!(err.contains("SecretString"), "{err}");
    }

    #[test]
    fn debug_output_redacts_the_password() -> Result<(), Box<dyn std::error::Error>> {
        let s = parse_rds_secret(r#"{"host":"h","username":"u","password":"hunter2"}"#)
            .map_err(|e| format!("parse_rds_secret: {e:?}"))?;
        assert!(!format!("{s:?}").contains("hunter2"));
        Ok(())
    }

    #[test]
    fn secret_id_is_url_encoded() -> Result<(), Box<dyn std::error::Error>> {
        let url = extension_url(2773, "arn:aws:secretsmanager:r:1:secret:a+b/c=d")
            .map_err(|e| format!("extension_url: {e:?}"))?;
        assert_eq!(
            url.as_str(),
            "http://localhost:2773/secretsmanager/get?secretId=arn%3Aaws%3Asecretsmanager%3Ar%3A1%3Asecret%3Aa%2Bb%2Fc%3Dd"
        );
        Ok(())
    }
}
