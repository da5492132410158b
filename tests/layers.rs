//! The layering rule, checked: which top-level module of `src/` may import which.
//!
//! Run with `cargo test --test layers`. The test reads every `src/**/*.rs` file, collects
//! the `crate::…` paths its code names (in `use` lines and inline), and checks them against
//! [`LAYERS`]: a module may only name the modules its row allows, and the modules must not
//! import each other in a cycle. A module using its own children (`self::`, `super::`, or
//! `crate::room::history` from inside `room`) is always fine; `super::` paths are not
//! followed, so a unit split off its parent (`http::request`) must not reach back up. The layers are described in
//! docs/ARCHITECTURE.md (or, until that exists, in the module docs of `src/lib.rs`).
//!
//! A new top-level module makes this test fail until it gets a row: decide where it sits.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every unit (a top-level module, or a submodule that sits lower than its parent) and
/// the units it may import, lowest layer first. A path belongs to the longest unit that
/// prefixes it. `crate` is the crate root's own items (`crate::Shared`).
const LAYERS: &[(&str, &[&str])] = &[
    // Wire: bytes and text formats, no state. Imports nothing above itself.
    ("http::request", &[]),
    ("http::response", &[]),
    ("ws", &["http::request"]),
    ("protocol", &["ws"]),
    // The pure core: rooms, limits, counters. No runtime, no cluster, no settings.
    ("limits", &[]),
    ("metrics", &[]),
    ("journal", &[]),
    ("room", &["ws", "protocol", "metrics", "journal"]),
    // The cluster bus: speaks the core's types; reaches the shards only through the
    // `cluster::bridge::Shards` trait the runtime implements.
    ("cluster", &["room", "ws", "protocol", "metrics"]),
    // The application backend: proxy calls and webhooks on a thread of its own; speaks
    // the core's webhook events, knows nothing of shards.
    ("backend", &["room", "protocol"]),
    // Settings, and the glommio wrapper that reads them.
    ("config", &["cluster", "backend"]),
    ("rt", &["config"]),
    // The durable log's writer and start-time replay: the format, files through `rt`.
    ("store", &["config", "rt", "journal", "metrics"]),
    // Authentication hashes passwords on the runtime's blocking pool.
    ("auth", &["config", "protocol", "rt"]),
    ("error", &["auth", "cluster"]),
    // HTTP endpoints: pure answers built from the core's figures.
    ("http", &["http::request", "http::response", "protocol", "ws", "metrics", "room", "cluster", "backend", "config"]),
    // The runtime: shards, mesh, connections. May use everything below it.
    (
        "shard",
        &[
            "crate",
            "http::request",
            "http::response",
            "ws",
            "protocol",
            "limits",
            "metrics",
            "room",
            "cluster",
            "backend",
            "config",
            "rt",
            "auth",
            "error",
            "http",
            "journal",
            "store",
        ],
    ),
];

/// Units that must stay free of any runtime: they are unit-tested without one.
const PURE: &[&str] = &["http::request", "http::response", "ws", "protocol", "limits", "metrics", "journal", "room"];

/// Crates that only the runtime (and the cluster bridge thread) may name.
const RUNTIME_CRATES: &[&str] = &["glommio", "tokio", "async_nats"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/room/history.rs` → `["room", "history"]`; `src/room/mod.rs` → `["room"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The unit a module path belongs to: the longest [`LAYERS`] key prefixing it.
fn unit_of(path: &[String]) -> Option<&'static str> {
    LAYERS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| {
            let key: Vec<&str> = k.split("::").collect();
            key.len() <= path.len() && key.iter().zip(path).all(|(a, b)| *a == b)
        })
        .max_by_key(|k| k.split("::").count())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths named after `crate::` in `code` (grouped `crate::{a::X, b}` too).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue; // `$crate::`, `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut start = 0;
            let body = &group[..end];
            for (i, c) in body.char_indices().chain([(body.len(), ',')]) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(segments(body[start..i].trim()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(segments(rest));
        }
    }
    found.retain(|p| !p.is_empty());
    found
}

/// Leading `a::b::c` segments of `s`.
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = s;
    loop {
        let len = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
        if len == 0 {
            break;
        }
        out.push(s[..len].to_owned());
        match s[len..].strip_prefix("::") {
            Some(next) if next.starts_with(is_ident) => s = next,
            _ => break,
        }
    }
    out
}

/// Source without its comments (line comments only: the code uses no block comments).
fn code_of(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

struct Scan {
    /// unit → unit → one file and path that shows it.
    edges: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
    problems: Vec<String>,
}

fn scan() -> Scan {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let mut scan = Scan { edges: BTreeMap::new(), problems: Vec::new() };
    for file in &files {
        let module = module_of(&src, file);
        // The crate root (lib.rs, main.rs) assembles everything: it is above every layer.
        if module.len() == 1 && (module[0] == "lib" || module[0] == "main") {
            continue;
        }
        let shown = file.strip_prefix(&src).unwrap_or(file).display().to_string();
        let Some(from) = unit_of(&module) else {
            scan.problems.push(format!("src/{shown}: module `{}` has no row in LAYERS", module.join("::")));
            continue;
        };
        let code = code_of(&fs::read_to_string(file).unwrap_or_default());
        if PURE.contains(&from) {
            for krate in RUNTIME_CRATES {
                if code.contains(&format!("{krate}::")) {
                    scan.problems.push(format!("src/{shown}: the pure layer `{from}` names `{krate}`"));
                }
            }
        }
        for path in crate_paths(&code) {
            let to = if path[0].starts_with(char::is_uppercase) {
                "crate"
            } else {
                match unit_of(&path) {
                    Some(u) => u,
                    None => {
                        scan.problems.push(format!("src/{shown}: `crate::{}` is in no LAYERS row", path.join("::")));
                        continue;
                    }
                }
            };
            if to == from {
                continue;
            }
            scan.edges
                .entry(from)
                .or_default()
                .entry(to)
                .or_insert_with(|| format!("src/{shown}: crate::{}", path.join("::")));
        }
    }
    scan
}

/// A cycle in `edges`, if any, as the list of units around it.
fn find_cycle(edges: &BTreeMap<&'static str, BTreeSet<&'static str>>) -> Option<Vec<&'static str>> {
    fn visit(
        n: &'static str,
        edges: &BTreeMap<&'static str, BTreeSet<&'static str>>,
        state: &mut BTreeMap<&'static str, u8>,
        stack: &mut Vec<&'static str>,
    ) -> Option<Vec<&'static str>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle = stack[at..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for &m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for &n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_layer_table_itself_has_no_cycle() {
    let table: BTreeMap<&'static str, BTreeSet<&'static str>> =
        LAYERS.iter().map(|(k, allowed)| (*k, allowed.iter().copied().collect())).collect();
    assert_eq!(find_cycle(&table), None);
    for (k, allowed) in LAYERS {
        for a in *allowed {
            assert!(*a == "crate" || table.contains_key(a), "{k} allows `{a}`, which has no row");
        }
    }
}

#[test]
fn modules_import_only_lower_layers_and_never_in_a_cycle() {
    let scan = scan();
    let mut problems = scan.problems;
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    for (from, tos) in &scan.edges {
        for (to, example) in tos {
            if !allowed.get(from).is_some_and(|a| a.contains(to)) {
                problems.push(format!("`{from}` may not import `{to}` ({example})"));
            }
        }
    }
    let graph: BTreeMap<&'static str, BTreeSet<&'static str>> =
        scan.edges.iter().map(|(k, v)| (*k, v.keys().copied().collect())).collect();
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" → ")));
    }
    assert!(problems.is_empty(), "layering violations:\n  {}", problems.join("\n  "));
}

#[test]
fn the_scanner_sees_grouped_and_inline_paths() {
    let code = "use crate::{room::Users, metrics::{inc, add}};\nlet x = crate::ws::frame::text_frame(b\"\");\n// crate::shard::Shard\n$crate::x";
    let paths = crate_paths(&code_of(code));
    let firsts: Vec<&str> = paths.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(firsts, ["room", "metrics", "ws"]);
    assert_eq!(unit_of(&segments("http::request::Request")), Some("http::request"));
    assert_eq!(unit_of(&segments("http::stats::x")), Some("http"));
}
