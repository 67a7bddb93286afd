//! The architecture, checked (see ARCHITECTURE.md): files stay small, the modules under `src/`
//! import each other one way only, the run vocabulary sits at the bottom, and no event's name
//! is spelled as a string outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 600;

/// The layers of ARCHITECTURE.md's module map, from the bottom up: a module uses only modules
/// of its own layer or the ones below.
const LAYERS: &[&[&str]] = &[
    &["vocab", "redact"],
    &["exit", "diagnostics", "selector", "logging", "failpoint"],
    &["window", "playbook", "config"],
    &["plan"],
    &["drain"],
    &["remote"],
    &["gate", "probe", "monitor", "health"],
    &["engine"],
    &["lock", "journal"],
    &["cluster", "rbac"],
    &["report", "notify"],
    &["driver", "preflight"],
    &["commands", "cli"],
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/engine/walk.rs` -> `engine`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments and without its `#[cfg(test)]` part (tests may reach
/// across modules to set things up).
fn code(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let in_tests = rel.components().any(|c| c.as_os_str() == "tests");
    if in_tests || path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("\n#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules: the files and directories under `src/`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .map(|e| {
            e.file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

/// Which top-level modules each module uses (`crate::NAME`).
fn imports() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let from = module_of(&file);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code(&file);
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_module = modules().contains(&name);
            if is_module && name != from {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(name)
                    .or_default()
                    .insert(file.strip_prefix(src()).unwrap().display().to_string());
            }
        }
    }
    graph
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(
        long.is_empty(),
        "split these files (at most {MAX_LINES} lines each):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn modules_import_each_other_one_way_only() {
    let graph = imports();
    // Every cycle shows up as an edge a -> b where b also reaches a.
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone())
                && let Some(next) = graph.get(&m)
            {
                todo.extend(next.keys().cloned());
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (from, edges) in &graph {
        for (to, files) in edges {
            if reaches(to, from) {
                cycles.push(format!(
                    "{from} -> {to} (in {}), and {to} leads back to {from}",
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn every_module_uses_only_its_own_layer_or_the_ones_below() {
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let unplaced: Vec<String> = modules()
        .into_iter()
        .filter(|m| layer(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in a layer (here and in ARCHITECTURE.md): {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (from, edges) in imports() {
        for (to, files) in edges {
            if layer(&to) > layer(&from) {
                upward.push(format!(
                    "{from} uses {to}, a layer above it (in {})",
                    files.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules must only use their own layer or the ones below:\n  {}",
        upward.join("\n  ")
    );
}

/// The vocabulary sits at the bottom: it uses no other module but `redact` (the event sink
/// scrubs secrets from every event), a leaf that uses none.
#[test]
fn the_run_vocabulary_imports_only_the_redaction_leaf() {
    let graph = imports();
    let used: Vec<&String> = graph
        .get("vocab")
        .map(|e| e.keys().filter(|m| *m != "redact").collect())
        .unwrap_or_default();
    assert!(
        used.is_empty(),
        "src/vocab must stay at the bottom; it uses {used:?}"
    );
    let leaf: Vec<&String> = graph
        .get("redact")
        .map(|e| e.keys().collect())
        .unwrap_or_default();
    assert!(
        leaf.is_empty(),
        "src/redact.rs must use no other module; it uses {leaf:?}"
    );
}

/// `RunEvent::NodeFailed` -> `node-failed`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn no_event_name_is_spelled_as_a_string_outside_the_vocabulary() {
    let events = std::fs::read_to_string(src().join("vocab/event.rs")).unwrap();
    let body = &events[events.find("pub enum RunEvent {").expect("RunEvent")..];
    let body = &body[..body.find("\n}\n").unwrap()];
    // Variants are the lines indented by four spaces that start with a capital.
    let names: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
        })
        .map(|n| kebab(&n))
        // One-word names ("paused", "problem", "warning") are also ordinary words.
        .filter(|n| n.contains('-'))
        .collect();
    assert!(names.len() > 10, "{names:?}");
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| module_of(f) != "vocab") {
        let code = code(file);
        for name in &names {
            if code.contains(&format!("\"{name}\"")) {
                found.push(format!("{name:?} in {}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "match on the typed events (crate::vocab::RunEvent) instead:\n  {}",
        found.join("\n  ")
    );
}
