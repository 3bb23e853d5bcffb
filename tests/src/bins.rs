//! The workspace's built binaries (`hikmah`, `elaborate`, `memory-consumer`), for tests that run
//! them as a user or the Lambda runtime would.
//!
//! `cargo test` holds the target directory's lock while tests run, so a test cannot build a
//! binary itself: `scripts/test.sh` runs `cargo build --workspace --bins` first.

use std::path::PathBuf;

/// Path of the workspace binary `name`: `$HIKMAH_BIN_DIR/name`, else the dev-profile target dir.
/// Panics, saying what to run, when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("HIKMAH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug")
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test.sh does) or set HIKMAH_BIN_DIR",
        path.display()
    );
    path
}
