//! A stand-in for the AWS Parameters and Secrets Lambda Extension on 127.0.0.1, speaking its
//! protocol: `GET /secretsmanager/get?secretId=<ARN>` with the `X-Aws-Parameters-Secrets-Token`
//! header, answering the `GetSecretValue` JSON. Like the real extension it serves its cached copy
//! of the secret unless asked with `refreshNow=true`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;

/// The token every request must carry (the test sets `AWS_SESSION_TOKEN` to it).
pub const TOKEN: &str = "test-session-token";

#[derive(Default)]
struct Shared {
    /// What Secrets Manager holds now.
    current: String,
    /// What the extension has cached.
    cached: String,
    requests: usize,
    refreshes: usize,
}

/// A running fake extension.
#[derive(Clone)]
pub struct FakeExtension {
    shared: Arc<Mutex<Shared>>,
    port: u16,
}

impl FakeExtension {
    /// Reserves a port; the server starts listening on it after `delay` (an extension that has
    /// registered but is not ready yet refuses connections meanwhile).
    pub async fn start_after(delay: Duration, secret_string: &str) -> Self {
        let port = crate::lambda::free_port();
        let shared = Arc::new(Mutex::new(Shared {
            current: secret_string.to_owned(),
            cached: secret_string.to_owned(),
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route("/secretsmanager/get", get(handle))
            .with_state(shared.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap_or_else(|e| panic!("fake extension bind {port}: {e}"));
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, port }
    }

    /// Starts listening at once.
    pub async fn start(secret_string: &str) -> Self {
        let fake = Self::start_after(Duration::ZERO, secret_string).await;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", fake.port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fake
    }

    /// The port (`PARAMETERS_SECRETS_EXTENSION_HTTP_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the secret in "Secrets Manager" (a rotation); the cached copy stays until a
    /// request asks for `refreshNow=true`.
    pub fn rotate(&self, secret_string: &str) {
        if let Ok(mut s) = self.shared.lock() {
            s.current = secret_string.to_owned();
        }
    }

    /// (requests answered, of which with `refreshNow=true`).
    pub fn counts(&self) -> (usize, usize) {
        self.shared
            .lock()
            .map(|s| (s.requests, s.refreshes))
            .unwrap_or_default()
    }

    /// The environment a function reading `arn` through this extension gets.
    pub fn env_pairs(&self, arn: &str) -> Vec<(String, String)> {
        vec![
            ("DB_SECRET_ARN".to_owned(), arn.to_owned()),
            (
                "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".to_owned(),
                self.port.to_string(),
            ),
            ("AWS_SESSION_TOKEN".to_owned(), TOKEN.to_owned()),
        ]
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let query: HashMap<String, String> =
        reqwest::Url::parse(&format!("http://x/?{}", uri.query().unwrap_or_default()))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
    if headers
        .get("X-Aws-Parameters-Secrets-Token")
        .and_then(|v| v.to_str().ok())
        != Some(TOKEN)
    {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong token".to_owned(),
        );
    }
    let Some(arn) = query.get("secretId") else {
        return (StatusCode::BAD_REQUEST, "secretId is required".to_owned());
    };
    let Ok(mut s) = shared.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
    };
    s.requests += 1;
    if query.get("refreshNow").map(String::as_str) == Some("true") {
        s.refreshes += 1;
        s.cached = s.current.clone();
    }
    let body = serde_json::json!({
        "ARN": arn,
        "Name": "hikmah-db",
        "SecretString": s.cached,
        "VersionId": "v",
        "VersionStages": ["AWSCURRENT"],
    });
    (StatusCode::OK, body.to_string())
}
