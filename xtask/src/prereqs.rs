//! Tools that some tests drive besides the three services: a real headless
//! browser and a real Eureka client. `cargo xtask test` installs them first,
//! so that the tests can insist on them instead of skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// npm packages the tests run, pinned, installed under `target/test-deps`.
const NPM_PACKAGES: &[&str] = &["eureka-js-client@4.5.0"];

/// Debian packages the tests run, with the file that shows they are there.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[("chromium", "/usr/bin/chromium")];

/// Where the npm packages go; tests look for `node_modules` there.
fn test_deps_dir() -> PathBuf {
    crate::target_dir().join("test-deps")
}

pub(crate) fn ensure() -> Result<()> {
    for (package, file) in DEBIAN_PACKAGES {
        if !Path::new(file).exists() {
            crate::services::apt_install(package)?;
        }
    }
    let dir = test_deps_dir();
    let missing: Vec<&str> = NPM_PACKAGES
        .iter()
        .copied()
        .filter(|spec| !installed(&dir, spec))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    println!(
        "installing npm packages {} into {}",
        missing.join(" "),
        dir.display()
    );
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(&missing)
        .status()
        .context("running npm (install Debian's `nodejs` and `npm` packages)")?;
    if !status.success() {
        bail!("`npm install {}` failed with {status}", missing.join(" "));
    }
    Ok(())
}

/// Whether `name@version` is installed at exactly that version.
fn installed(dir: &Path, spec: &str) -> bool {
    let (name, version) = spec.rsplit_once('@').unwrap_or((spec, ""));
    let manifest = dir.join("node_modules").join(name).join("package.json");
    std::fs::read_to_string(manifest)
        .map(|m| m.contains(&format!("\"version\": \"{version}\"")))
        .unwrap_or(false)
}
