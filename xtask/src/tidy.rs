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

/// The packages that are not libraries under `crates/`: every directory
/// under `examples/` with a manifest, and `xtask/`.
fn example_and_tool_packages() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut packages: Vec<PathBuf> = fs::read_dir(root.join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable examples/ entry").path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    packages.sort();
    assert!(!packages.is_empty(), "no packages found under examples/");
    packages.push(root.join("xtask"));
    packages
}

/// The path of `path` relative to the workspace root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
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

/// The package names of a manifest's normal dependencies: those of
/// `[dependencies]`, `[dependencies.<name>]` and the target-specific
/// `[target.<cfg>.dependencies]` / `[target.<cfg>.dependencies.<name>]`
/// tables, with renames (`package = "..."`) resolved. Dev- and build-
/// dependencies are not linked into the library and are left out.
///
/// A line parser, not a full TOML one (xtask keeps few dependencies): it
/// handles comments, quoted and dotted keys (`anyhow.workspace = true`,
/// `"anyhow" = "1"`), inline tables on one line, and table headers with
/// quoted `cfg(...)` keys, which is what Cargo manifests use.
fn normal_dependencies(manifest: &str) -> Vec<String> {
    /// Where the lines being read belong.
    enum Table {
        /// A dependencies table: every key is a dependency.
        Dependencies,
        /// One dependency's own table; the index of its entry in `deps`.
        Dependency(usize),
        Other,
    }
    let mut deps: Vec<String> = Vec::new();
    let mut table = Table::Other;
    for line in manifest.lines() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            let header = line.trim_start_matches('[').trim_end_matches(']');
            let keys = dotted_keys(header);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let rest = match keys.as_slice() {
                ["dependencies", rest @ ..] => rest,
                ["target", _, "dependencies", rest @ ..] => rest,
                _ => {
                    table = Table::Other;
                    continue;
                }
            };
            // An array of tables (`[[dependencies]]`) is not a manifest
            // form; treat it as another table.
            table = match rest {
                _ if line.starts_with("[[") => Table::Other,
                [] => Table::Dependencies,
                [dep] => {
                    deps.push((*dep).to_owned());
                    Table::Dependency(deps.len() - 1)
                }
                _ => Table::Other,
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let keys = dotted_keys(key);
        match table {
            Table::Dependencies => {
                let Some(dep) = keys.first() else { continue };
                let renamed = (keys.len() == 1 && value.trim_start().starts_with('{'))
                    .then(|| inline_table_string(value, "package"))
                    .flatten();
                deps.push(renamed.unwrap_or_else(|| dep.clone()));
                // `foo.package = "bar"`: a dotted rename.
                if keys.len() == 2
                    && keys[1] == "package"
                    && let Some(package) = unquote(value.trim())
                {
                    *deps.last_mut().expect("just pushed") = package;
                }
            }
            Table::Dependency(i) if keys == ["package"] => {
                if let Some(package) = unquote(value.trim()) {
                    deps[i] = package;
                }
            }
            Table::Dependency(_) | Table::Other => {}
        }
    }
    deps
}

/// `line` without a `#` comment (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `target.'cfg(unix)'.dependencies` → `["target", "cfg(unix)",
/// "dependencies"]`: the keys of a dotted key, unquoted and trimmed.
fn dotted_keys(key: &str) -> Vec<String> {
    let mut keys = vec![String::new()];
    let mut quote = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => keys.push(String::new()),
            (None, c) if c.is_whitespace() => {}
            (_, c) => keys.last_mut().expect("never empty").push(c),
        }
    }
    keys.retain(|k| !k.is_empty());
    keys
}

/// The contents of a quoted TOML string (basic or literal; escapes are not
/// needed for package names).
fn unquote(value: &str) -> Option<String> {
    let value = value.trim();
    ['"', '\''].iter().find_map(|&q| {
        value
            .strip_prefix(q)
            .and_then(|v| v.strip_suffix(q))
            .map(str::to_owned)
    })
}

/// The string value of `key` in a one-line inline table `{ a = "x", ... }`.
fn inline_table_string(table: &str, key: &str) -> Option<String> {
    let inner = table.trim().strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (dotted_keys(k) == [key]).then(|| unquote(v)).flatten()
    })
}

#[test]
fn no_library_crate_depends_on_anyhow() {
    for dir in library_crates() {
        let manifest = read(&dir.join("Cargo.toml"));
        assert!(
            !normal_dependencies(&manifest).iter().any(|d| d == "anyhow"),
            "crates/{} depends on anyhow; libraries return their own thiserror enum \
             (anyhow belongs in xtask, examples and bench binaries)",
            name(&dir)
        );
    }
}

#[test]
fn the_manifest_parser_finds_every_form_of_a_dependency() {
    let manifest = r#"
[package]
name = "x" # anyhow = "1" in a comment is no dependency
description = "a # inside a string"

[dependencies]
serde.workspace = true
"quoted" = "1"
renamed = { package = "real-name", version = "1" }
dotted.package = "dotted-real"
tokio = { workspace = true, features = ["rt"] } # comment

[dependencies.table-dep]
version = "1"

[dependencies.renamed-table]
package = "table-real"

[target.'cfg(unix)'.dependencies]
unix-only = "1"

[target."cfg(windows)".dependencies.windows-table]
version = "1"

[dev-dependencies]
dev-only = "1"

[build-dependencies]
build-only = "1"

[dev-dependencies.dev-table]
version = "1"

[[bin]]
name = "not-a-dependency"
"#;
    assert_eq!(
        normal_dependencies(manifest),
        [
            "serde",
            "quoted",
            "real-name",
            "dotted-real",
            "tokio",
            "table-dep",
            "table-real",
            "unix-only",
            "windows-table",
        ]
    );
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
fn every_example_binary_and_xtask_has_a_crate_doc() {
    let mut roots = Vec::new();
    for dir in example_and_tool_packages() {
        let lib = dir.join("src/lib.rs");
        roots.push(if lib.exists() {
            lib
        } else {
            dir.join("src/main.rs")
        });
        let manifest = read(&dir.join("Cargo.toml"));
        assert!(
            manifest_section(&manifest, "lints")
                .iter()
                .any(|l| l.replace(' ', "") == "workspace=true"),
            "{}/Cargo.toml must say `[lints] workspace = true`",
            shown(&dir)
        );
    }
    // The binaries of the library crates are crates of their own too.
    for dir in library_crates() {
        if let Ok(bins) = fs::read_dir(dir.join("src/bin")) {
            roots.extend(
                bins.map(|e| e.expect("readable src/bin entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "rs")),
            );
        }
    }
    for root in roots {
        assert!(
            read(&root).trim_start().starts_with("//!"),
            "{} must open with a crate-level `//!` doc",
            shown(&root)
        );
    }
}

#[test]
fn every_library_crate_has_one_error_rs_re_exported_with_a_result_alias() {
    for dir in library_crates() {
        let error = dir.join("src/error.rs");
        assert!(
            error.exists(),
            "crates/{} needs src/error.rs with its thiserror enum and Result alias",
            name(&dir)
        );
        let text = read(&error);
        assert!(
            text.contains("thiserror::Error") && text.contains("pub type Result"),
            "crates/{}/src/error.rs must hold a thiserror enum and a `Result` alias",
            name(&dir)
        );
        let lib = read(&dir.join("src/lib.rs"));
        assert!(
            lib.lines()
                .any(|l| l.starts_with("pub use error::{") && l.contains("Result")),
            "crates/{}/src/lib.rs must re-export its error enum and `Result` from `error`",
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

/// Every `.rs` file under `dir`, at any depth.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn zab_election_core_does_no_io_and_reads_no_clock() {
    // The sans-IO core: everything but the driver modules (`node`,
    // `transport`, `cli`), the simulator and the binaries. `metrics` is core:
    // the node driver feeds it, but it does no I/O and reads no clock (the
    // driver passes elapsed times in). A file in a subdirectory belongs to
    // the module its first path component names (`peer/vote.rs` to `peer`).
    let src = workspace_root().join("crates/zab-election/src");
    let core = [
        "lib", "config", "error", "message", "metrics", "peer", "quorum", "types",
    ];
    let drivers = ["node", "transport", "cli", "sim", "bin"];
    let mut checked = Vec::new();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .expect("a file has a name")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let file = relative.display().to_string();
        if drivers.contains(&module.as_str()) {
            continue;
        }
        assert!(
            core.contains(&module.as_str()),
            "crates/zab-election/src/{file}: add module `{module}` to the core list of this \
             test, or to the drivers if it really does I/O"
        );
        let code: String = read(&path)
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
                 or read the clock (only the driver modules {drivers:?} may)"
            );
        }
        checked.push(module);
    }
    for module in core {
        assert!(
            checked.iter().any(|m| m == module),
            "crates/zab-election/src/{module}.rs is gone: update the core list of this test"
        );
    }
}
