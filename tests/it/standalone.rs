//! The repository stands on its own: no tracked file refers to a path outside it (a clone
//! has nothing beside it). Fails on a reference to a folder beside the checkout in code, tests,
//! benchmarks or documents.

use std::path::{Component, Path, PathBuf};

/// The name of the folder that stood beside the checkout during development.
const SIBLING: &str = "shared";

/// Every file git tracks in the checkout (or, outside a git checkout, every file below it
/// but build output and installed tools).
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success());
    match listed {
        Some(out) => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect(),
        None => {
            let mut files = Vec::new();
            let mut dirs = vec![root.to_owned()];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let p = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    if ["target", "node_modules", ".venv", "run", ".git"].contains(&name.as_str()) {
                        continue;
                    }
                    if p.is_dir() {
                        dirs.push(p);
                    } else {
                        files.push(p);
                    }
                }
            }
            files
        }
    }
}

/// Relative paths in `text` (runs of path characters with a `../` in them) that, resolved
/// from the file's folder, leave `root` or name nothing there (`exists` says what is there).
/// A path meant from the repository root, as code joins to `CARGO_MANIFEST_DIR`, resolves
/// from a subfolder to a place that does not exist, so it is caught too.
fn outside_paths(
    text: &str,
    file: &Path,
    root: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let folder = file.parent().unwrap_or(root);
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("../") {
        let start = rest[..i]
            .rfind(|c: char| !is_path_char(c))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| !is_path_char(c))
            .map_or(rest.len(), |j| i + j);
        let candidate = rest[start..end].trim_end_matches(['.', '/']);
        let mut resolved: Vec<Component> = folder.components().collect();
        let mut escapes = false;
        for c in Path::new(candidate).components() {
            match c {
                Component::ParentDir => {
                    resolved.pop();
                    escapes |= !resolved.iter().collect::<PathBuf>().starts_with(root);
                }
                Component::CurDir => {}
                other => resolved.push(other),
            }
        }
        let target: PathBuf = resolved.iter().collect();
        if escapes || !exists(&target) {
            found.push(candidate.to_owned());
        }
        rest = &rest[end.max(i + 3)..];
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_tracked_file_refers_to_a_path_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    // The folder that stood beside the checkout while the project was written, and what it
    // held; spelt out here only as parts, so that this file passes its own check.
    let beside: Vec<String> = ["spec", "data", "DESIGN", "STYLE", "LAYOUT"]
        .iter()
        .map(|part| format!("{SIBLING}/{part}"))
        .collect();
    for file in tracked_files(root) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // not text
        };
        for p in outside_paths(&text, &file, root, Path::exists) {
            offenders.push(format!(
                "{}: {p}",
                file.strip_prefix(root).unwrap().display()
            ));
        }
        for word in &beside {
            if text.contains(word.as_str()) {
                offenders.push(format!(
                    "{}: {word}",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "files refer to paths outside the repository (a clone has nothing beside it):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_check_finds_a_path_that_leaves_the_repository() {
    let root = Path::new("/repo");
    let file = Path::new("/repo/src/producer/generator.rs");
    let exists = |p: &Path| {
        [
            Path::new("/repo/docs/cleaning.md"),
            Path::new("/repo/README.md"),
        ]
        .contains(&p)
    };
    let far = format!("../../../{SIBLING}/data/pin.ndjson");
    assert_eq!(
        outside_paths(&format!("see {far}."), file, root, exists),
        std::slice::from_ref(&far)
    );
    // Meant from the repository root (CARGO_MANIFEST_DIR): resolves to nothing from here.
    let near = format!("../{SIBLING}/data");
    assert_eq!(
        outside_paths(&format!(r#"join("{near}")"#), file, root, exists),
        std::slice::from_ref(&near)
    );
    assert!(outside_paths(
        "see ../../docs/cleaning.md and ../../README.md",
        file,
        root,
        exists
    )
    .is_empty());
}
