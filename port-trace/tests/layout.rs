//! The daemon's modules are the stages of its pipeline, and data flows one way: a stage
//! imports earlier stages only, never a later one or a sink. This reads every `crate::` path
//! in `src/` (test modules aside), and main.rs's `port_trace::` paths, and fails on one that
//! runs against the flow. `lib.rs` is the crate root, not a stage: it only declares them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Each top-level module of the daemon and its place in the flow. A module may use modules
/// of a lower rank; two modules of the same rank stand side by side and use neither the other.
const RANKS: &[(&str, u8)] = &[
    // Plumbing any stage may use; it uses no stage.
    ("error", 0),
    ("sys", 0),
    // The stages, in order.
    ("probes", 1),
    ("event", 2),
    ("workload", 3),
    ("track", 4),
    ("exhaustion", 5),
    ("stats", 5),
    // Judges the state of the stages before it; beside nothing.
    ("findings", 6),
    ("pipeline", 7),
    ("sinks", 8),
    // The edges: the command line, the subcommands, main (the binary, which reaches the
    // library's modules as `port_trace::`).
    ("cli", 9),
    ("cmd", 10),
    ("main", 11),
];

/// The crate root: declares the modules above and holds nothing else.
const ROOT: &str = "lib";

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a file under `src/` belongs to.
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// The code of `source` outside its `#[cfg(test)]` module.
fn non_test(source: &str) -> &str {
    ["#[cfg(test)]\nmod tests", "#[cfg(test)]\npub mod tests"]
        .iter()
        .filter_map(|start| source.find(start))
        .min()
        .map_or(source, |at| &source[..at])
}

/// How deep the module of a file under `src/` is: `a.rs` and `a/mod.rs` 1, `a/b.rs` 2.
fn depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    if relative.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Whether a `super::` chain in `source` climbs to the crate root, where it could name any
/// module without a `crate::` path this check would read.
fn climbs_to_root(depth: usize, source: &str) -> bool {
    let code = non_test(source);
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let chain = &rest[at..];
        let mut supers = 0;
        let mut tail = chain;
        while let Some(next) = tail.strip_prefix("super::") {
            supers += 1;
            tail = next;
        }
        if supers >= depth {
            return true;
        }
        rest = &rest[at + "super::".len() * supers..];
    }
    false
}

/// The top-level modules `source` names through `crate::` (in `use` lines or inline paths),
/// outside its `#[cfg(test)]` module.
fn crate_imports(source: &str) -> Vec<String> {
    paths_under("crate::", source)
}

/// The top-level modules `source` names through `prefix` (`crate::` inside the library,
/// `port_trace::` in main.rs), outside its `#[cfg(test)]` module.
fn paths_under(prefix: &str, source: &str) -> Vec<String> {
    let code = non_test(source);
    let mut found = Vec::new();
    // `use crate::{a::x, b::{y, z}}` names a and b; `crate::a::x` names a.
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `port_trace::` inside `my_port_trace::` is another crate.
        let inside_a_name = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + prefix.len()..];
        if inside_a_name {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut name = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        item_start = false;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        found.extend((!name.is_empty()).then(|| std::mem::take(&mut name)));
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ if item_start && !name.is_empty() => {
                        found.push(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            // The last item, when the group closes right after its name.
            found.extend((!name.is_empty()).then_some(name));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found.retain(|n| !n.is_empty());
    found
}

/// What in the crate root is not a module declaration (doc comments and blank lines aside).
fn root_code(source: &str) -> Vec<String> {
    source
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .filter(|line| {
            let declaration = line.strip_prefix("pub ").unwrap_or(line);
            !(declaration.starts_with("mod ") && declaration.ends_with(';'))
        })
        .map(str::to_string)
        .collect()
}

/// What is wrong with `module` importing `imports`, one line each.
fn violations(module: &str, imports: &[String]) -> Vec<String> {
    let Some(own) = rank(module) else {
        return vec![format!(
            "module `{module}` has no place in the flow: add it to RANKS in tests/layout.rs"
        )];
    };
    let mut wrong = Vec::new();
    for target in imports {
        if target == module {
            continue;
        }
        match rank(target) {
            None => wrong.push(format!("`{module}` uses `{target}`, which is not in RANKS")),
            Some(theirs) if theirs > own => wrong.push(format!(
                "`{module}` (rank {own}) uses `{target}` (rank {theirs}), a later stage"
            )),
            Some(theirs) if theirs == own => wrong.push(format!(
                "`{module}` uses `{target}`, which stands beside it (rank {own})"
            )),
            Some(_) => {}
        }
    }
    wrong
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn no_stage_imports_a_later_stage_or_a_sink() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "found only {} files", files.len());
    let mut wrong = BTreeMap::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let source = std::fs::read_to_string(file).expect("readable");
        let module = module_of(relative);
        if module == ROOT {
            let code = root_code(&source);
            if !code.is_empty() {
                wrong.insert(
                    relative.display().to_string(),
                    vec![format!(
                        "the crate root only declares modules; move this into one: {code:?}"
                    )],
                );
            }
            continue;
        }
        let mut imports = crate_imports(&source);
        if module == "main" {
            imports.extend(paths_under("port_trace::", &source));
        }
        checked += imports.len();
        let mut found = violations(&module, &imports);
        if climbs_to_root(depth(relative), &source) {
            found.push("a super:: chain reaches the crate root: name it with crate::".into());
        }
        if !found.is_empty() {
            wrong.insert(relative.display().to_string(), found);
        }
    }
    assert!(checked > 50, "only {checked} crate:: paths read");
    assert!(wrong.is_empty(), "imports against the flow: {wrong:#?}");
}

#[test]
fn the_check_sees_imports_against_the_flow() {
    let source = "use crate::{\n    event::Event,\n    sinks::events::WarningRecord,\n};\n\
                  fn f() { crate::pipeline::x(); }\n#[cfg(test)]\nmod tests { use crate::cmd; }\n";
    assert_eq!(crate_imports(source), ["event", "sinks", "pipeline"]);
    let wrong = violations("exhaustion", &crate_imports(source));
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    assert!(wrong[0].contains("`sinks`") && wrong[1].contains("`pipeline`"));
    assert_eq!(
        violations("stats", &["exhaustion".into()]).len(),
        1,
        "side by side"
    );
    assert!(violations("sinks", &["event".into(), "stats".into()]).is_empty());
    assert_eq!(violations("newstage", &[]).len(), 1, "unplaced module");
    assert_eq!(depth(Path::new("stats.rs")), 1);
    assert_eq!(depth(Path::new("sinks/mod.rs")), 1);
    assert_eq!(depth(Path::new("sinks/summary.rs")), 2);
    assert!(climbs_to_root(1, "use super::sinks::Sinks;"));
    assert!(climbs_to_root(2, "use super::super::cmd;"));
    assert!(!climbs_to_root(2, "use super::human_ns;"));
    assert!(!climbs_to_root(
        1,
        "#[cfg(test)]\nmod tests {\n    use super::*;\n}"
    ));
    assert_eq!(
        crate_imports("use crate::{a::{b, c::{d}}, e};"),
        ["a", "e"],
        "nested groups name only their first segment"
    );
    assert_eq!(
        paths_under(
            "port_trace::",
            "use port_trace::{cli, cmd};\nmy_port_trace::x();"
        ),
        ["cli", "cmd"]
    );
    assert!(root_code("//! doc\n\npub mod a;\nmod b;\n").is_empty());
    assert_eq!(
        root_code("pub mod a;\nfn helper() {}\npub use a::X;\n"),
        ["fn helper() {}", "pub use a::X;"]
    );
}
