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

/// The commands that install and run [`NPM_PACKAGES`], and Debian's
/// packages that provide them (Debian 12: `npm` is packaged apart from
/// `nodejs`).
const NODE_COMMANDS: &[&str] = &["node", "npm"];
const NODE_PACKAGES: &[&str] = &["nodejs", "npm"];

/// Where the npm packages go; tests look for `node_modules` there.
fn test_deps_dir() -> PathBuf {
    crate::target_dir().join("test-deps")
}

pub(crate) fn ensure() -> Result<()> {
    for (package, file) in DEBIAN_PACKAGES {
        if !Path::new(file).exists() {
            crate::services::apt_install(&[package])?;
        }
    }
    if let Some(missing) = NODE_COMMANDS.iter().find(|c| !on_path(c)) {
        println!("`{missing}` is not on PATH; the Eureka client tests need Node.js and npm");
        crate::services::apt_install(NODE_PACKAGES)?;
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
        .context("running npm")?;
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

/// Whether an executable file named `command` is in a directory of `PATH`.
fn on_path(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(command))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::on_path;

    #[test]
    fn finds_commands_on_path_only() {
        assert!(on_path("sh"), "every Debian machine has /bin/sh on PATH");
        assert!(!on_path("no-such-command-xtask-7f3a"));
    }
}
