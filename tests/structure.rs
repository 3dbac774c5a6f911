//! The crate's structure, checked: no two modules of `src/` import each
//! other, directly or through others (a module is a file; the crate root,
//! whose re-exports are the public API, is left out). Paths are read from
//! the source text: `crate::a::b`, `super::x`, and a module's own child
//! modules by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path of a source file: `src/io/reader.rs` → `io::reader`,
/// `src/io/mod.rs` → `io`, `src/lib.rs` → `` (the root).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The words of a line of code that form `a::b::c` paths.
fn paths(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let word_start = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if word_start && (chars[i].is_alphabetic() || chars[i] == '_') {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                segs.push(chars[s..j].iter().collect::<String>());
                if j + 2 < chars.len()
                    && chars[j] == ':'
                    && chars[j + 1] == ':'
                    && (chars[j + 2].is_alphabetic() || chars[j + 2] == '_')
                {
                    j += 2;
                } else {
                    break;
                }
            }
            let group = chars[j..].starts_with(&[':', ':', '{']);
            if segs.len() > 1 || (group && matches!(segs[0].as_str(), "crate" | "super")) {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Every module's dependencies on other modules of the crate.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<String> = all
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    let resolve = |segs: &[String]| -> Option<String> {
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    let mut g = BTreeMap::new();
    for f in &all {
        let me = module_of(f.strip_prefix(&src).unwrap());
        let parent = me.rsplit_once("::").map_or("", |(p, _)| p).to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let mut deps = BTreeSet::new();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with("mod ") || code.contains(" mod ") {
                continue;
            }
            for segs in paths(code) {
                let target = match segs[0].as_str() {
                    "crate" => resolve(&segs[1..]),
                    "super" => {
                        let mut full: Vec<String> = parent
                            .split("::")
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect();
                        full.extend(segs[1..].iter().cloned());
                        resolve(&full).or(Some(parent.clone()))
                    }
                    first if !me.is_empty() => {
                        // A child module named directly.
                        let child = format!("{me}::{first}");
                        modules
                            .contains(&child)
                            .then(|| {
                                resolve(&{
                                    let mut v: Vec<String> =
                                        me.split("::").map(String::from).collect();
                                    v.extend(segs.iter().cloned());
                                    v
                                })
                            })
                            .flatten()
                    }
                    _ => None,
                };
                if let Some(t) = target
                    && t != me
                    && !t.is_empty()
                    && !me.is_empty()
                {
                    deps.insert(t);
                }
            }
        }
        g.insert(me, deps);
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn src_has_no_import_circle() {
    let g = graph();
    assert!(g.len() > 20, "modules found: {:?}", g.keys());
    if let Some(cycle) = find_cycle(&g) {
        panic!("modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_layers_hold() {
    let g = graph();
    let deps = |m: &str| g.get(m).cloned().unwrap_or_default();
    // The threads never reach into the user's façade.
    for (m, d) in &g {
        if m.starts_with("io") {
            assert!(!d.contains("transport"), "{m} imports transport: {d:?}");
        }
    }
    // The public snapshot types know nothing of the threads.
    assert!(
        deps("snapshot").iter().all(|d| !d.starts_with("io")),
        "{:?}",
        deps("snapshot")
    );
    // The connection core and the codec are pure: no threads, no sockets.
    for (m, d) in &g {
        let pure = m.starts_with("conn") || m.starts_with("wire");
        if pure && !m.ends_with("::tests") {
            assert!(
                d.iter().all(|x| !x.starts_with("io") && x != "transport"),
                "{m} depends on {d:?}"
            );
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src")
                    .join(m.replace("::", "/") + ".rs"),
            )
            .or_else(|_| {
                std::fs::read_to_string(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("src")
                        .join(m.replace("::", "/"))
                        .join("mod.rs"),
                )
            })
            .unwrap();
            for banned in [
                "mio::",
                "std::net::TcpStream",
                "std::thread",
                "Instant::now()",
            ] {
                let code: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.contains("#[cfg(test)]"))
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                assert!(
                    !code.iter().any(|l| l.contains(banned)),
                    "{m} uses {banned}"
                );
            }
        }
    }
    // A check that can fail: the graph does see real imports.
    assert!(
        deps("io::reader").contains("conn::receive"),
        "{:?}",
        deps("io::reader")
    );
    assert!(
        deps("conn::inbound").contains("conn"),
        "{:?}",
        deps("conn::inbound")
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g).unwrap(), vec!["a", "b", "c", "a"]);
    g.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    assert_eq!(
        paths("use crate::io::peers::{PeerShared, X};"),
        vec![vec!["crate", "io", "peers"]]
    );
}
