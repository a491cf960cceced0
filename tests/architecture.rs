//! The crate layout holds by check, not by habit:
//! - no import cycle between the top-level modules of either crate (the application crate in
//!   `src/`, the pure core in `crates/hnc-core/src/`), so each stage only builds on those below it;
//! - the core's manifest names no async runtime or HTTP crate (CI also checks its whole
//!   dependency tree with `cargo tree`, in `scripts/check-architecture.sh`);
//! - no source file over 600 lines, tests aside.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules of the crate whose sources are in `dir`, each with its files.
fn modules(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name")
            .to_string();
        if path.is_dir() {
            let files = out.entry(name).or_default();
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("module directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module names a source text reaches through `crate::` paths, including each
/// item of a `use crate::{a::X, b}` group. Comments are left out.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `hnc_core::`, `my_crate::`: another crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.extend(first_ident(&item));
        } else {
            out.extend(first_ident(rest));
        }
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

/// The dependency graph between the top-level modules of the crate in `dir`: module → (module it
/// uses → a file where it does).
fn graph(dir: &Path) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mods = modules(dir);
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for (name, files) in &mods {
        let edges = g.entry(name.clone()).or_default();
        for file in files {
            let text = fs::read_to_string(file).expect("source file");
            for used in crate_references(&text) {
                if used != *name && mods.contains_key(&used) {
                    edges.entry(used).or_insert_with(|| file.clone());
                }
            }
        }
    }
    g
}

/// One cycle of `g`, if there is any, as the modules along it (the first repeated at the end).
fn find_cycle<V>(g: &BTreeMap<String, BTreeMap<String, V>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<V>(
        node: &str,
        g: &BTreeMap<String, BTreeMap<String, V>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in g.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in g.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            let mut path = Vec::new();
            if let Some(c) = visit(node, g, &mut marks, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

fn assert_acyclic(dir: &Path) {
    let g = graph(dir);
    if let Some(cycle) = find_cycle(&g) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} (in {})", w[0], w[1], g[&w[0]][&w[1]].display()))
            .collect();
        panic!(
            "import cycle between top-level modules of {}:\n  {}",
            dir.display(),
            steps.join("\n  ")
        );
    }
}

#[test]
fn no_import_cycle_between_the_application_crate_s_modules() {
    assert_acyclic(&root().join("src"));
}

#[test]
fn no_import_cycle_between_the_core_crate_s_modules() {
    assert_acyclic(&root().join("crates/hnc-core/src"));
}

#[test]
fn the_cycle_check_finds_a_cycle_and_reads_use_groups() {
    let refs = crate_references(
        "use crate::{config::{Secret, Key}, model::X};\nlet a = crate::plan::diff(); // crate::http\nuse hnc_core::desired;",
    );
    assert_eq!(
        refs,
        BTreeSet::from(["config".into(), "model".into(), "plan".into()])
    );
    let edge = |to: &str| BTreeMap::from([(to.to_string(), ())]);
    let g = BTreeMap::from([
        ("a".to_string(), edge("b")),
        ("b".to_string(), edge("c")),
        ("c".to_string(), edge("a")),
        ("d".to_string(), edge("a")),
    ]);
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let dag = BTreeMap::from([
        ("a".to_string(), edge("b")),
        ("b".to_string(), BTreeMap::new()),
    ]);
    assert_eq!(find_cycle(&dag), None);
}

#[test]
fn the_core_crate_names_no_async_or_http_dependency() {
    let manifest = fs::read_to_string(root().join("crates/hnc-core/Cargo.toml")).expect("manifest");
    let forbidden = [
        "tokio", "reqwest", "hyper", "axum", "tower", "futures", "mio", "async-", "h2",
    ];
    let mut section = "";
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['=', ' ']).next().unwrap_or("");
        assert!(
            !forbidden.iter().any(|f| name.starts_with(f)),
            "the core crate depends on {name}: it must stay free of async and HTTP crates"
        );
    }
}

#[test]
fn no_source_file_is_over_600_lines_tests_aside() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("crates/hnc-core/src"), &mut files);
    let mut long: Vec<(usize, PathBuf)> = files
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Test modules: `tests.rs`, `props.rs` (property tests), and any file in a `tests/`
            // directory of a module.
            let in_tests_dir = p
                .strip_prefix(root())
                .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == "tests"));
            name != "tests.rs" && name != "props.rs" && !in_tests_dir
        })
        .map(|p| (fs::read_to_string(&p).expect("source").lines().count(), p))
        .filter(|(n, _)| *n > 600)
        .collect();
    long.sort();
    assert!(long.is_empty(), "source files over 600 lines: {long:?}");
}
