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

/// A CA certificate made by `openssl` in `dir`, standing in for the RDS bundle; returns its path.
fn make_ca_bundle(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .output()
        .expect("openssl is needed (installed with PostgreSQL by scripts/test.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(format!("{name}.pem"))
}

/// `ensure_db_ca_bundle` with a manifest whose db-ca line pins `pin`, from the local `bundle`
/// (never the network), writing `out`.
fn db_ca_bundle_with_pin(dir: &Path, bundle: &Path, pin: &str, out: &Path) -> (bool, String) {
    let manifest = dir.join("artifacts.txt");
    std::fs::write(
        &manifest,
        format!("# test manifest\ndb-ca  https://ca.invalid/global-bundle.pem  {pin}\n"),
    )
    .unwrap();
    let run = with_lib(
        dir,
        &format!(
            "HIKMAH_DB_CA_BUNDLE='{}' ensure_db_ca_bundle '{}' '{}'",
            bundle.display(),
            out.display(),
            manifest.display()
        ),
    );
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn the_database_ca_bundle_is_shipped_only_when_its_sha256_matches_the_pin() {
    let dir = private_dir("db-ca");
    let bundle = make_ca_bundle(&dir, "ca");
    let other = make_ca_bundle(&dir, "other-ca");
    let sha = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    let out = dir.join("layer/certs/rds-global-bundle.pem");

    // Unpinned: refused before any download, saying how to get the digest and where it goes.
    let (ok, stderr) = db_ca_bundle_with_pin(&dir, &bundle, "UNPINNED", &out);
    assert!(!ok, "an unpinned bundle was accepted");
    assert!(stderr.contains("not pinned"), "{stderr}");
    assert!(stderr.contains("| sha256sum"), "{stderr}");
    assert!(stderr.contains("artifacts.txt"), "{stderr}");
    assert!(!out.exists(), "an unpinned bundle was written");

    // Pinned to another bundle: refused, nothing left behind.
    let (ok, stderr) = db_ca_bundle_with_pin(&dir, &bundle, &sha(&other), &out);
    assert!(!ok, "a bundle not matching its pin was accepted");
    assert!(stderr.contains("does not match the pinned"), "{stderr}");
    assert!(!out.exists() && !out.with_extension("pem.tmp").exists());

    // A malformed pin is refused too.
    let (ok, stderr) = db_ca_bundle_with_pin(&dir, &bundle, "abc", &out);
    assert!(!ok && stderr.contains("sha256"), "{stderr}");

    // Matching: shipped as it is.
    let (ok, stderr) = db_ca_bundle_with_pin(&dir, &bundle, &sha(&bundle), &out);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&bundle).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `make build-DbCaBundleLayer` as `sam build` runs it, with the repository's own manifest.
fn build_ca_layer(dir: &Path, ca_bundle: &str) -> (bool, String, PathBuf) {
    let artifacts = dir.join(format!("layer-{}", uuid::Uuid::new_v4().simple()));
    let run = Command::new("make")
        .current_dir(dir)
        .arg("-s")
        .arg("-f")
        .arg(root().join("layer/Makefile"))
        .arg("build-DbCaBundleLayer")
        .arg(format!("ARTIFACTS_DIR={}", artifacts.display()))
        .env("HIKMAH_DB_CA_BUNDLE", ca_bundle)
        .output()
        .expect("make is needed to build the layers");
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
        artifacts,
    )
}

#[test]
fn the_ca_layer_build_refuses_a_bundle_that_is_not_the_pinned_one_unless_told_to_ship_none() {
    let dir = private_dir("db-ca-layer");
    let impostor = make_ca_bundle(&dir, "impostor");

    // Whether the repository's pin is still UNPINNED or the real digest, a self-made bundle
    // never gets into the layer.
    let (ok, stderr, layer) = build_ca_layer(&dir, &impostor.display().to_string());
    assert!(
        !ok,
        "the layer was built with an unpinned bundle:\n{stderr}"
    );
    assert!(
        !layer.join("certs/rds-global-bundle.pem").exists(),
        "{stderr}"
    );

    // The explicit opt-out builds a layer without a bundle, loudly.
    let (ok, stderr, layer) = build_ca_layer(&dir, "none");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("WARNING"), "{stderr}");
    assert!(
        stderr.contains("DbVerifyServerCertificate=false"),
        "{stderr}"
    );
    assert!(!layer.join("certs/rds-global-bundle.pem").exists());
    assert!(layer.join("certs/NO-BUNDLE.txt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
