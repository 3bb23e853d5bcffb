//! The Lambda runtime protocol for tests: a function binary served by `cargo lambda watch` (the
//! emulator from cargo-lambda on PyPI) on a free port, invoked through `cargo lambda invoke` or
//! over HTTP (`/lambda-url/<binary>/...` for HTTP functions).
//!
//! The emulator is started in its own process group and the whole group (emulator, cargo, the
//! function) is killed when the [`LambdaWatch`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cargo-lambda executable: `CARGO_LAMBDA` if set, else `cargo-lambda` on `PATH` (the
/// set-up puts it in `$HIKMAH_CACHE_DIR/venv/bin`).
pub fn cargo_lambda() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_LAMBDA") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("cargo-lambda"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "cargo-lambda not found on PATH: run scripts/test.sh (it installs cargo-lambda from PyPI \
             into $HIKMAH_CACHE_DIR/venv/bin), or add that directory to PATH"
        )
    })
}

/// The workspace root (where `cargo lambda` runs).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free TCP port on 127.0.0.1 (free when asked; the emulator binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A running `cargo lambda watch`.
#[derive(Debug)]
pub struct LambdaWatch {
    child: Child,
    port: u16,
    binary: String,
    log: PathBuf,
}

impl LambdaWatch {
    /// Builds `package`'s `binary` (so the first invocation does not wait for a compile), then
    /// serves it with `cargo lambda watch` on a free port with `env` added to the function's
    /// environment; returns once the emulator accepts connections.
    pub fn start(package: &str, binary: &str, env: &[(String, String)]) -> Self {
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", binary])
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("cargo build -p {package}: {e}"));
        assert!(
            status.success(),
            "cargo build -p {package} --bin {binary} failed"
        );

        let port = free_port();
        let log = std::env::temp_dir().join(format!("hikmah-lambda-{binary}-{port}.log"));
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let mut cmd = Command::new(cargo_lambda());
        cmd.args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--invoke-address",
            "127.0.0.1",
        ])
        .args(["--invoke-port", &port.to_string(), "--timeout", "120"])
        .args(["--package", package, "--bin", binary])
        .current_dir(&root)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        // The function inherits the emulator's environment; `--env-var` is not used because it
        // splits values at commas (RUST_LOG=info,x=debug).
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting cargo lambda watch: {e}"));
        let mut watch = Self {
            child,
            port,
            binary: binary.to_owned(),
            log,
        };
        watch.wait_until_listening(Duration::from_secs(120));
        watch
    }

    /// The invoke port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: HTTP functions are at `/lambda-url/<binary>/...`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The emulator's and the function's output so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Invokes the function with the JSON in `data_file` through `cargo lambda invoke`; returns
    /// the function's JSON response, or panics with the emulator log.
    pub fn invoke_file(&self, data_file: &Path) -> serde_json::Value {
        let out = Command::new(cargo_lambda())
            .args([
                "lambda",
                "invoke",
                &self.binary,
                "--invoke-address",
                "127.0.0.1",
            ])
            .args([
                "--invoke-port",
                &self.port.to_string(),
                "--output-format",
                "json",
            ])
            .arg("--data-file")
            .arg(data_file)
            .current_dir(workspace_root())
            .output()
            .unwrap_or_else(|e| panic!("cargo lambda invoke: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo lambda invoke failed: {}\n{stdout}\n--- emulator log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "invoke output is not JSON ({e}): {stdout}\n--- emulator log ---\n{}",
                self.log()
            )
        })
    }

    /// Writes `payload` to a temporary file and invokes the function with it.
    pub fn invoke_json(&self, payload: &str) -> serde_json::Value {
        let file = std::env::temp_dir().join(format!(
            "hikmah-invoke-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&file, payload).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let result = self.invoke_file(&file);
        let _ = std::fs::remove_file(&file);
        result
    }

    fn wait_until_listening(&mut self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "cargo lambda watch exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "cargo lambda watch did not listen on port {} within {limit:?}:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        // The emulator runs the function as its child: signal the whole process group.
        let group = format!("-{}", self.child.id());
        let quiet = |signal: &str| {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        quiet("-KILL");
        let _ = self.child.wait();
    }
}
