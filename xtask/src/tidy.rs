//! Repository invariants, checked as tests (rust-analyzer's `tidy.rs`).
//!
//! Each test states one rule of the workspace. They read files only, so
//! they run in milliseconds with the rest of `cargo xtask test`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::workspace_root;

/// Every directory under `crates/` (each one a library crate).
fn library_crates() -> Vec<PathBuf> {
    let mut crates: Vec<PathBuf> = fs::read_dir(workspace_root().join("crates"))
        .expect("crates/ exists")
        .map(|e| e.expect("readable crates/ entry").path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    crates.sort();
    assert!(!crates.is_empty(), "no crates found under crates/");
    crates
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .expect("crate dir has a name")
        .to_string_lossy()
        .into_owned()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines of one `[section]` of a manifest, without the header.
fn manifest_section<'a>(manifest: &'a str, section: &str) -> Vec<&'a str> {
    let header = format!("[{section}]");
    manifest
        .lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect()
}

#[test]
fn no_library_crate_depends_on_anyhow() {
    for dir in library_crates() {
        let manifest = read(&dir.join("Cargo.toml"));
        let deps = manifest_section(&manifest, "dependencies");
        assert!(
            !deps.iter().any(|l| l.trim_start().starts_with("anyhow")),
            "crates/{} depends on anyhow; libraries return their own thiserror enum \
             (anyhow belongs in xtask, examples and bench binaries)",
            name(&dir)
        );
    }
}

#[test]
fn every_crate_has_a_crate_doc_and_uses_workspace_lints() {
    for dir in library_crates() {
        let lib = read(&dir.join("src/lib.rs"));
        assert!(
            lib.trim_start().starts_with("//!"),
            "crates/{}/src/lib.rs must open with a crate-level `//!` doc",
            name(&dir)
        );
        assert!(
            lib.contains("#![warn(missing_docs"),
            "crates/{}/src/lib.rs must warn on missing docs",
            name(&dir)
        );
        let manifest = read(&dir.join("Cargo.toml"));
        assert!(
            manifest_section(&manifest, "lints")
                .iter()
                .any(|l| l.replace(' ', "") == "workspace=true"),
            "crates/{}/Cargo.toml must say `[lints] workspace = true`",
            name(&dir)
        );
        let package = manifest_section(&manifest, "package");
        assert!(
            package.iter().any(|l| l
                .trim_start()
                .starts_with(&format!("name = \"{}\"", name(&dir)))),
            "crates/{0}: the package must be named like its directory, `{0}`",
            name(&dir)
        );
    }
}

#[test]
fn every_crate_has_a_readme() {
    for dir in library_crates() {
        assert!(
            dir.join("README.md").exists(),
            "crates/{} needs a README.md (what it is, how to use it, its numbers)",
            name(&dir)
        );
    }
}

#[test]
fn architecture_md_names_every_crate() {
    let architecture = read(&workspace_root().join("ARCHITECTURE.md"));
    for dir in library_crates() {
        let heading = format!("### `crates/{}`", name(&dir));
        assert!(
            architecture.contains(&heading),
            "ARCHITECTURE.md needs a code-map heading `{heading}`"
        );
    }
}

#[test]
fn readme_names_every_crate_and_the_test_command() {
    let readme = read(&workspace_root().join("README.md"));
    assert!(
        readme.contains("cargo xtask test"),
        "README.md must give `cargo xtask test`"
    );
    for dir in library_crates() {
        assert!(
            readme.contains(&format!("crates/{}", name(&dir))),
            "README.md's crate table must list crates/{}",
            name(&dir)
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = read(&workspace_root().join(".ci/run"));
    assert!(
        ci.contains("set -euo pipefail"),
        ".ci/run must stop on the first failure"
    );
    assert!(
        ci.contains("cargo xtask test"),
        ".ci/run must run `cargo xtask test`"
    );
}

#[test]
fn zab_election_core_does_no_io_and_reads_no_clock() {
    // The sans-IO core: everything but the driver modules (`node`,
    // `transport`, `cli`, and `metrics`, which the node driver feeds), the
    // simulator and the binary.
    let src = workspace_root().join("crates/zab-election/src");
    let core = [
        "lib.rs",
        "config.rs",
        "error.rs",
        "message.rs",
        "peer.rs",
        "quorum.rs",
        "types.rs",
    ];
    let drivers = ["node.rs", "transport.rs", "cli.rs", "metrics.rs", "sim.rs"];
    for entry in fs::read_dir(&src).expect("zab-election/src exists") {
        let name = entry.expect("readable entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".rs") {
            assert!(
                core.contains(&name.as_ref()) || drivers.contains(&name.as_ref()),
                "crates/zab-election/src/{name}: add it to the core list of this test, or to \
                 the drivers if it really does I/O"
            );
        }
    }
    for file in core {
        let text = read(&src.join(file));
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [
            "tokio::",
            "use tokio",
            "std::net",
            "Instant::now",
            "SystemTime::now",
            "std::thread",
            "std::fs",
        ] {
            // lib.rs re-exports tokio for users of the `node` feature.
            if file == "lib.rs" && banned == "use tokio" {
                continue;
            }
            assert!(
                !code.contains(banned),
                "crates/zab-election/src/{file} uses `{banned}`: the election core must not do I/O \
                 or read the clock (only node.rs, transport.rs, cli.rs and sim.rs may)"
            );
        }
    }
}
