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

/// Longest wait for one invocation's reply.
const INVOKE_LIMIT: Duration = Duration::from_secs(180);

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
        self.try_invoke_file(data_file)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// [`LambdaWatch::invoke_file`] that returns a failed invocation (the function crashed or
    /// returned an error) as `Err` with the invoke output and the emulator log.
    pub fn try_invoke_file(&self, data_file: &Path) -> Result<serde_json::Value, String> {
        // Output goes to files (a full pipe would block the invoke); the invoke is abandoned
        // when the function process dies, since the emulator would wait for it for ever.
        let base = std::env::temp_dir().join(format!(
            "hikmah-invoke-out-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
        let file = |p: &Path| {
            std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
        };
        let mut invoke = Command::new(cargo_lambda())
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
            .stdin(Stdio::null())
            .stdout(file(&out_path))
            .stderr(file(&err_path))
            .spawn()
            .unwrap_or_else(|e| panic!("cargo lambda invoke: {e}"));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = invoke.try_wait().ok().flatten() {
                break Some(status);
            }
            if !self.function_alive() || started.elapsed() > INVOKE_LIMIT {
                // Give a reply already on its way a moment, then give up.
                std::thread::sleep(Duration::from_millis(500));
                if let Some(status) = invoke.try_wait().ok().flatten() {
                    break Some(status);
                }
                let _ = invoke.kill();
                let _ = invoke.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        match status {
            None => {
                return Err(format!(
                    "no reply: the function process {} (after {:?})\n--- emulator log ---\n{}",
                    if self.function_alive() {
                        "is alive but did not answer"
                    } else {
                        "exited"
                    },
                    started.elapsed(),
                    self.log()
                ))
            }
            Some(status) if !status.success() => {
                return Err(format!(
                    "cargo lambda invoke failed: {stderr}\n{stdout}\n--- emulator log ---\n{}",
                    self.log()
                ))
            }
            Some(_) => {}
        }
        serde_json::from_str(stdout.trim()).map_err(|e| {
            format!(
                "invoke output is not JSON ({e}): {stdout}\n--- emulator log ---\n{}",
                self.log()
            )
        })
    }

    /// Whether the function process is still running (not exited, not a zombie).
    fn function_alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.function.id()))
            .map(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next())
                    .is_some_and(|state| state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    /// Writes `payload` to a temporary file and invokes the function with it.
    pub fn invoke_json(&self, payload: &str) -> serde_json::Value {
        self.try_invoke_json(payload)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// [`LambdaWatch::invoke_json`] returning a failed invocation as `Err`.
    pub fn try_invoke_json(&self, payload: &str) -> Result<serde_json::Value, String> {
        let file = std::env::temp_dir().join(format!(
            "hikmah-invoke-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&file, payload).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let result = self.try_invoke_file(&file);
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
