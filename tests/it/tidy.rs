//! Conventions of the source tree that a compiler does not check.

use std::path::{Path, PathBuf};

use crate::support::repo_path;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_module_doc() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        if repo_path(dir).exists() {
            rust_files(&repo_path(dir), &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!"))
        .map(|path| path.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:?}");
}

#[test]
fn no_test_is_ignored() {
    let mut files = Vec::new();
    rust_files(&repo_path("src"), &mut files);
    rust_files(&repo_path("tests"), &mut files);
    let marker = ["#[", "ignore]"].concat();
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| std::fs::read_to_string(path).unwrap().contains(&marker))
        .map(|path| path.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "tests marked ignored: {offenders:?}");
}
