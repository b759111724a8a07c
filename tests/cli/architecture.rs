//! The invariants of ARCHITECTURE.md that a reading of the source can check: the core names no
//! concrete provider and no cloud, no top-level module imports itself through others (no import
//! circle), the stack file's module imports nothing of the DSL, the run's secrets name no
//! provider, and every module opens with a `//!` paragraph. Each failure names the file and line.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The lines of `path` before its tests (`#[cfg(test)]`), numbered from 1; none of a tests file.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return vec![];
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Every `(file:line: text)` of the modules `under` (paths relative to `src/`) whose code has one
/// of `needles`.
fn offenders(under: &[&str], needles: &[&str]) -> Vec<String> {
    let mut found = vec![];
    for u in under {
        let p = src().join(u);
        let mut all = vec![];
        if p.is_dir() {
            files(&p, &mut all);
        } else {
            all.push(p);
        }
        for f in all {
            for (n, l) in code_lines(&f) {
                if needles.iter().any(|x| l.contains(x)) {
                    found.push(format!(
                        "src/{}:{n}: {}",
                        f.strip_prefix(src()).unwrap().display(),
                        l.trim()
                    ));
                }
            }
        }
    }
    found
}

/// The core's modules (paths relative to `src/`), as ARCHITECTURE.md names them.
const CORE: &[&str] = &[
    "dsl",
    "stack.rs",
    "graph.rs",
    "planner",
    "executor",
    "state",
    "secrets.rs",
    "engine.rs",
];

#[test]
fn the_core_names_no_concrete_provider() {
    let concrete = [
        "provider::aws",
        "provider::local_pg",
        "provider::local_file",
        "provider::builtin",
        "provider::pg_steps",
        "provider::pg_handoff",
        "provider::http",
    ];
    let found = offenders(CORE, &concrete);
    assert!(
        found.is_empty(),
        "the core imports a provider:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cores_code_speaks_of_no_cloud() {
    let found: Vec<String> = offenders(CORE, &["aws", "AWS", "secretsmanager", "s3:"])
        .into_iter()
        .filter(|l| {
            let code = l.splitn(3, ':').nth(2).unwrap_or("").trim();
            !code.starts_with("//")
        })
        .collect();
    assert!(
        found.is_empty(),
        "the core's code names AWS (a provider's business):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_stack_files_module_imports_nothing_of_the_dsl() {
    let found = offenders(&["stack.rs"], &["crate::dsl"]);
    assert!(
        found.is_empty(),
        "stack.rs imports the DSL:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_runs_secrets_name_no_provider() {
    let found = offenders(&["secrets.rs"], &["crate::provider", "aws::"]);
    assert!(
        found.is_empty(),
        "secrets.rs names a provider:\n{}",
        found.join("\n")
    );
}

/// The top-level modules of the library (`src/NAME.rs` or `src/NAME/`).
fn top_modules() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_stem()?.to_str()?.to_string();
            let module = p.is_dir() || p.extension().is_some_and(|x| x == "rs");
            (module && name != "lib" && name != "bin").then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn no_two_top_level_modules_import_each_other_even_through_others() {
    let modules = top_modules();
    // module -> (imported module -> the first line that imports it)
    let mut uses: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    for m in &modules {
        let target = if src().join(m).is_dir() {
            m.clone()
        } else {
            format!("{m}.rs")
        };
        for other in &modules {
            if other == m {
                continue;
            }
            let (path, whole) = (format!("crate::{other}::"), format!("crate::{other};"));
            let found = offenders(&[target.as_str()], &[&path, &whole]);
            if let Some(first) = found.into_iter().next() {
                uses.entry(m.clone())
                    .or_default()
                    .insert(other.clone(), first);
            }
        }
    }
    // A path back to `from` from each module it imports, by depth-first search.
    fn path_back(
        uses: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
        at: &str,
        goal: &str,
        seen: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        for next in uses.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == goal {
                return Some(vec![next.clone()]);
            }
            if !seen.contains(next) {
                seen.push(next.clone());
                if let Some(mut p) = path_back(uses, next, goal, seen) {
                    p.insert(0, next.clone());
                    return Some(p);
                }
            }
        }
        None
    }
    let mut circles = vec![];
    for m in &modules {
        if let Some(p) = path_back(&uses, m, m, &mut vec![]) {
            let mut steps = vec![];
            let mut from = m.clone();
            for to in &p {
                steps.push(format!("{from} -> {to} ({})", uses[&from][to]));
                from = to.clone();
            }
            circles.push(steps.join("\n    "));
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import themselves through others:\n  {}",
        circles.join("\n  ")
    );
}

#[test]
fn every_module_opens_with_what_it_is_for() {
    let mut all = vec![];
    files(&src(), &mut all);
    let missing: Vec<String> = all
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` paragraph: {missing:?}"
    );
}
