//! The Lambda runtime protocol for tests: cargo-lambda's emulator (`cargo lambda watch
//! --only-lambda-apis`, from PyPI) on a free port, with the workspace's already-built function
//! binary connected to it as Lambda would run it (`AWS_LAMBDA_RUNTIME_API` and friends); invoked
//! through `cargo lambda invoke` or over HTTP (`/lambda-url/<binary>/...` for HTTP functions).
//!
//! The emulator does not build or start the function itself: building inside `cargo test` would
//! compile the package alone, with other features than the workspace build, which costs minutes.
//! `scripts/test.sh` builds the binaries first (see [`crate::bins`]).
//!
//! The emulator and the function each run in their own process group, killed when the
//! [`LambdaWatch`] is dropped.

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

/// A running emulator with one function binary attached.
#[derive(Debug)]
pub struct LambdaWatch {
    emulator: Child,
    function: Child,
    port: u16,
    binary: String,
    log: PathBuf,
}

impl LambdaWatch {
    /// Starts the emulator on a free port and the built `binary` of `package` against it, with
    /// `env` added to the function's environment; returns once the emulator accepts connections.
    pub fn start(package: &str, binary: &str, env: &[(String, String)]) -> Self {
        let exe = crate::bins::bin(binary);
        let port = free_port();
        let log = std::env::temp_dir().join(format!("hikmah-lambda-{binary}-{port}.log"));
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let log_handle = || out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));

        let mut emulator = Command::new(cargo_lambda());
        emulator
            .args(["lambda", "watch", "--only-lambda-apis"])
            .args([
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log_handle())
            .stderr(log_handle());
        let mut emulator = spawn_in_own_group(&mut emulator, "cargo lambda watch");

        // What the emulator would set for the function it starts itself (its runtime API is
        // per function name, so invocations of `binary` reach this process).
        let mut function = Command::new(&exe);
        function
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_FUNCTION_NAME", binary)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt/{binary}"),
            )
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log_handle())
            .stderr(log_handle());
        // The runtime client does not retry its first poll: start the function once the emulator
        // listens.
        if let Err(problem) = wait_until_listening(&mut emulator, port, Duration::from_secs(60)) {
            stop_group(&mut emulator);
            panic!(
                "{problem}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let function = spawn_in_own_group(&mut function, &format!("{package} ({binary})"));
        Self {
            emulator,
            function,
            port,
            binary: binary.to_owned(),
            log,
        }
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
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        stop_group(&mut self.function);
        stop_group(&mut self.emulator);
    }
}

/// Waits until the emulator accepts connections on `port`, or says why it did not.
fn wait_until_listening(emulator: &mut Child, port: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = emulator.try_wait() {
            return Err(format!(
                "cargo lambda watch exited ({status}) before listening"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "cargo lambda watch did not listen on port {port} within {limit:?}"
    ))
}

fn spawn_in_own_group(cmd: &mut Command, what: &str) -> Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"))
}

/// SIGTERM to the child's whole process group (what Lambda sends at shutdown), then SIGKILL.
fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |signal: &str| {
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal("-KILL");
    let _ = child.wait();
}
