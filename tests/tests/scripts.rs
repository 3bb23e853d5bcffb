//! The provisioning scripts as a new user runs them: from a clone in a private directory, and
//! with files that hold credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    hikmah_tests::lambda::workspace_root()
}

/// Runs `script` with `scripts/lib.sh` sourced, from `cwd`.
fn with_lib(cwd: &Path, script: &str) -> std::process::Output {
    let lib = root().join("scripts/lib.sh");
    Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}'\n{script}", lib.display()))
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// A fresh directory only its owner can enter, like a clone under a private home directory.
fn private_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hikmah-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn the_local_env_file_with_the_database_url_is_readable_by_its_owner_only() {
    let dir = private_dir("envfile");
    let file = dir.join("local.env");
    // Even where a world-readable file was left behind by an older run.
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = with_lib(
        &dir,
        &format!(
            "echo DATABASE_URL=postgres://u:secret@h/db | write_private_file '{}'",
            file.display()
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "local.env has mode {mode:o}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "DATABASE_URL=postgres://u:secret@h/db\n"
    );
    // scripts/run.sh writes the file through it.
    let run = std::fs::read_to_string(root().join("scripts/run.sh")).unwrap();
    assert!(
        run.contains("| write_private_file \"$HIKMAH_CACHE_DIR/local.env\""),
        "scripts/run.sh must write local.env with write_private_file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_throwaway_cluster_started_from_a_private_directory_prints_no_permission_errors() {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        // Only root runs the cluster as another user (postgres); others run it as themselves.
        return;
    }
    let dir = private_dir("clone");
    let out = with_lib(
        &dir,
        "ensure_postgres\npsql \"$DATABASE_URL\" -qAtc 'select 1'\nstop_postgres",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("could not change directory"),
        "commands run as postgres complained about the caller's directory:\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
