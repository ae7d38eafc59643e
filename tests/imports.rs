//! ARCHITECTURE.md's rule that dependencies run one way, checked on the code: the files of
//! `src/` (the library's modules) and the paths each one uses of the others form no circle.
//! Issue 50 found one inside the engine (`checkpoint/gemma3.rs` → `stored.rs` →
//! `checkpoint/mod.rs` → `checkpoint/gemma3.rs`).
//!
//! A file depends on another when it names a path into it: in a `use` (braces expanded) or
//! inline (`crate::engine::stored::scale(...)`, `super::x::y`, `child::f()` for a module it
//! declares). A path resolves to the deepest module it names. A file's use of its own ancestors
//! (`use super::Shared` from a folder's file to its `mod.rs`, anything from `lib.rs`) is how a
//! folder shares, not a dependency that could close a circle; a `mod.rs` using its files is.
//! Test modules (`tests.rs`, `#[cfg(test)] mod tests { ... }`) are left out: they may use
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every library module of `src/` and its file (binaries and test modules left out).
fn modules(dir: &Path, at: &Module, out: &mut BTreeMap<Module, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name")
            .to_string();
        if name == "tests" || (at.is_empty() && name == "bin") {
            continue;
        }
        let mut module = at.clone();
        if path.is_dir() {
            module.push(name);
            modules(&path, &module, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            if !(name == "mod" || (at.is_empty() && name == "lib")) {
                module.push(name);
            }
            out.insert(module, path);
        }
    }
}

/// The code of a file without comments, string and character literals (blanked), and without
/// its inline test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied().unwrap_or(' ');
        if b[i] == '/' && next == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if b[i] == '/' && next == '*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == 'r' && (next == '"' || next == '#') && !ident_char(before(&b, i)) {
            // r"..." or r#"..."#: ends at the quote followed by as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() && !(b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')))
            {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == '\'' && (next == '\\' || b.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\''); a lifetime has no closing quote.
            i += if next == '\\' { 2 } else { 1 };
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn before(b: &[char], i: usize) -> char {
    if i == 0 { ' ' } else { b[i - 1] }
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths a `use` tree names, braces expanded (`a::{b, c::{d, self}}` → `a::b`, `a::c::d`,
/// `a::c`); renames and globs name their prefix.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into(&tree, &[], &mut out);
    out
}

fn expand_into(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let Some(open) = tree.find('{') else {
        let mut path = prefix.to_vec();
        let tree = tree.split("as").next().unwrap_or(tree);
        for seg in tree.split("::").filter(|s| !s.is_empty() && *s != "*") {
            if seg != "self" {
                path.push(seg.to_string());
            }
        }
        out.push(path);
        return;
    };
    let mut path = prefix.to_vec();
    path.extend(
        tree[..open]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_into(&inner[start..k], &path, out);
                start = k + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand_into(&inner[start..], &path, out);
    }
}

/// Every path the code names that may lead into this crate: `use` trees, and inline paths
/// of two or more segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` items: from a statement's start to its `;`.
    while let Some(at) = rest.find("use ") {
        let starts_item = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || c == ';' || c == '{' || c == ')');
        let after = &rest[at + 4..];
        match after.find(';') {
            Some(end) if starts_item => {
                out.extend(expand(&after[..end]));
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    // Inline paths: identifiers joined by `::`.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if ident_char(chars[i]) && !ident_char(before(&chars, i)) && before(&chars, i) != ':' {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let start = j;
                while j < chars.len() && ident_char(chars[j]) {
                    j += 1;
                }
                segs.push(chars[start..j].iter().collect::<String>());
                if chars.get(j) == Some(&':')
                    && chars.get(j + 1) == Some(&':')
                    && chars.get(j + 2).is_some_and(|c| ident_char(*c))
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The module `path` leads to from `at` (whose file declares the child modules `children`),
/// when it stays in this crate.
fn resolve(
    at: &Module,
    path: &[String],
    children: &BTreeSet<String>,
    all: &BTreeMap<Module, PathBuf>,
) -> Option<Module> {
    let (first, rest) = path.split_first()?;
    let mut absolute: Module = match first.as_str() {
        "crate" => Vec::new(),
        "self" => at.clone(),
        "super" => at[..at.len().checked_sub(1)?].to_vec(),
        child if children.contains(child) => {
            let mut m = at.clone();
            m.push(child.to_string());
            m
        }
        _ => return None,
    };
    let mut rest = rest;
    while rest.first().map(String::as_str) == Some("super") {
        absolute.pop()?;
        rest = &rest[1..];
    }
    absolute.extend(rest.iter().cloned());
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].to_vec())
        .find(|m| all.contains_key(m))
}

/// The child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(code: &str) -> BTreeSet<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub(super) "))
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// Each module's dependencies on the others (not on its ancestors).
fn graph() -> (
    BTreeMap<Module, BTreeSet<Module>>,
    BTreeMap<Module, PathBuf>,
) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = BTreeMap::new();
    modules(&src, &Vec::new(), &mut all);
    let mut edges = BTreeMap::new();
    for (module, file) in &all {
        let code = code(&std::fs::read_to_string(file).expect("read"));
        let children = declared_children(&code);
        let deps: BTreeSet<Module> = paths(&code)
            .iter()
            .filter_map(|p| resolve(module, p, &children, &all))
            .filter(|to| !module.starts_with(to))
            .collect();
        edges.insert(module.clone(), deps);
    }
    (edges, all)
}

/// The circles of `edges`: each strongly connected part of more than one module, as a loop
/// through it.
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    fn reach(edges: &BTreeMap<Module, BTreeSet<Module>>, from: &Module) -> BTreeSet<Module> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }
    let mut found: Vec<Vec<Module>> = Vec::new();
    let mut placed = BTreeSet::new();
    for m in edges.keys() {
        if placed.contains(m) {
            continue;
        }
        let ahead = reach(edges, m);
        if !ahead.contains(m) {
            continue;
        }
        let part: Vec<Module> = ahead
            .into_iter()
            .filter(|other| reach(edges, other).contains(m))
            .collect();
        placed.extend(part.iter().cloned());
        found.push(part);
    }
    found
}

#[test]
fn the_import_graph_has_no_circle() {
    let (edges, files) = graph();
    let name = |m: &Module| {
        files[m]
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&files[m])
            .display()
            .to_string()
    };
    let circles: Vec<String> = circles(&edges)
        .iter()
        .map(|part| part.iter().map(name).collect::<Vec<_>>().join(", "))
        .collect();
    let count: usize = edges.values().map(BTreeSet::len).sum();
    println!("{} modules, {count} dependencies between them", edges.len());
    assert!(
        count > 100,
        "the reader found only {count} dependencies: it no longer reads the code"
    );
    assert!(
        circles.is_empty(),
        "modules that depend on one another in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_follows_uses_inline_paths_and_declared_modules() {
    assert_eq!(
        expand("super::{a, b::{c, self}, d as e, f::*}"),
        vec![
            vec!["super", "a"],
            vec!["super", "b", "c"],
            vec!["super", "b"],
            vec!["super", "d"],
            vec!["super", "f"],
        ]
    );
    let code = code(
        "use super::x::Y; // crate::not::this\nfn f() { let s = \"crate::nor::this\"; crate::a::b::c(); child::g(); }\nmod child;\n",
    );
    let found = paths(&code);
    let strings: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(strings.contains(&"super::x::Y".to_string()), "{strings:?}");
    assert!(
        strings.contains(&"crate::a::b::c".to_string()),
        "{strings:?}"
    );
    assert!(strings.contains(&"child::g".to_string()), "{strings:?}");
    assert!(
        !strings
            .iter()
            .any(|s| s.contains("not") || s.contains("nor")),
        "{strings:?}"
    );
    assert_eq!(
        declared_children(&code),
        BTreeSet::from(["child".to_string()])
    );
    // A circle of three, and a chain that is none.
    let m = |s: &str| vec![s.to_string()];
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a"), m("d")]));
    edges.insert(m("d"), BTreeSet::new());
    assert_eq!(circles(&edges), vec![vec![m("a"), m("b"), m("c")]]);
    edges.insert(m("c"), BTreeSet::from([m("d")]));
    assert!(circles(&edges).is_empty());
}
