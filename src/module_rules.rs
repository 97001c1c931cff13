//! The module graph as a test: reads every `crate::<module>` path in `src/`
//! (test modules excluded), and checks that the top-level modules form no
//! import circle and that the layering rules of docs/ARCHITECTURE.md hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, however deep.
fn rs_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let (mut files, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files
}

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut tops = BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n == "lib.rs" || n == "bin" {
            continue;
        }
        tops.insert(n.trim_end_matches(".rs").to_string());
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for top in &tops {
        let mut files = Vec::new();
        let (file, dir) = (src.join(format!("{top}.rs")), src.join(top));
        if file.is_file() {
            files.push(file);
        }
        files.extend(rs_files(&dir));
        let deps = g.entry(top.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // Tests may reach anywhere: only the code itself counts.
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            if f.file_name()
                .is_some_and(|n| n == "testing.rs" || n == "tests.rs")
            {
                continue;
            }
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if &name != top && tops.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// Modules on an import circle (strongly connected components of size > 1).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(n.to_string()) {
            return;
        }
        for m in g.get(n).into_iter().flatten() {
            visit(g, m, seen, out);
        }
        out.push(n.to_string());
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for n in g.keys() {
        visit(g, n, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (n, ms) in g {
        for m in ms {
            rev.entry(m.clone()).or_default().insert(n.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for n in order.iter().rev() {
        let mut comp = Vec::new();
        visit(&rev, n, &mut seen, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            found.push(comp);
        }
    }
    found
}

#[test]
fn top_level_modules_form_no_import_circle() {
    let g = graph();
    let c = circles(&g);
    assert!(c.is_empty(), "import circles: {c:?}\ngraph: {g:#?}");
}

#[test]
fn layering_rules_hold() {
    let g = graph();
    // (module, modules it must never import, why)
    let rules: &[(&str, &[&str], &str)] = &[
        (
            "ops",
            &["actors", "daemon", "cli", "helper", "protocol"],
            "ops is below the actors, knows no actor and speaks the domain, not the wire",
        ),
        (
            "helper",
            &["actors", "daemon", "ops", "cli"],
            "bangerd-root never reaches into the daemon",
        ),
        (
            "protocol",
            &["store", "ops", "actors", "daemon", "helper", "cli"],
            "the wire is a leaf of the daemon",
        ),
        (
            "store",
            &["protocol", "ops", "actors", "daemon", "workspace"],
            "the store keeps its own shape",
        ),
        (
            "domain",
            &["protocol", "store", "ops", "actors", "daemon"],
            "domain types are a leaf",
        ),
        (
            "cli",
            &[
                "daemon",
                "actors",
                "ops",
                "store",
                "helper",
                "vmm",
                "image",
                "kernel",
                "workspace",
                "guest",
            ],
            "the CLI reaches VMs, images, kernels and workspaces only over the protocol",
        ),
        (
            "actors",
            &["daemon", "cli", "helper"],
            "actors sit below the daemon's start-up and handlers",
        ),
    ];
    // The libraries: they speak the domain, not the wire, and know nothing
    // of the daemon above them.
    let library_never: &[&str] = &[
        "protocol", "ops", "store", "actors", "daemon", "cli", "helper",
    ];
    let libraries = ["vmm", "image", "workspace", "guest", "kernel", "host"].map(|m| {
        (
            m,
            library_never,
            "a library speaks the domain, not the wire",
        )
    });
    let mut broken = Vec::new();
    for (m, never, why) in rules.iter().chain(libraries.iter()) {
        for n in *never {
            if g.get(*m).is_some_and(|d| d.contains(*n)) {
                broken.push(format!("{m} imports {n}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn ops_names_no_actor_library() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops");
    let files = rs_files(&dir);
    assert!(files.len() > 10, "the ops files are found: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("ractor"), "{} names ractor", f.display());
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(circles(&g), vec![vec!["a", "b", "c"]]);
}

/// Every source file is named in docs/ARCHITECTURE.md's code map, in the
/// section of its directory (a directory module by `name/`).
#[test]
fn the_code_map_names_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let map = &map[map.find("## Code map").expect("a code map")..];
    // Section header → its text.
    let sections: Vec<(&str, &str)> = map
        .split("\n### ")
        .skip(1)
        .map(|s| s.split_once('\n').unwrap_or((s, "")))
        .collect();
    let mut missing = Vec::new();
    for base in ["src", "agent/src", "smoke/src"] {
        for f in rs_files(&root.join(base)) {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let parent = f.parent().unwrap();
            if name == "tests.rs" || name == "testing.rs" {
                continue;
            }
            // The section: the deepest header naming an ancestor directory
            // (or the file itself, for top-level files).
            let top = rel
                .split('/')
                .take(if base == "src" { 2 } else { 1 })
                .collect::<Vec<_>>()
                .join("/");
            let key = if rel.matches('/').count() == 1 && base == "src" {
                format!("`{rel}`")
            } else if base == "src" {
                format!("`{top}/`")
            } else {
                format!("`{}/`", base.split('/').next().unwrap())
            };
            let text = match sections.iter().find(|(h, _)| h.contains(&key)) {
                Some((h, t)) => format!("{h}\n{t}"),
                None => {
                    missing.push(format!("{rel}: no section {key}"));
                    continue;
                }
            };
            let wanted = if name == "mod.rs" {
                format!("{}/", parent.file_name().unwrap().to_string_lossy())
            } else {
                name.clone()
            };
            if !text.contains(&wanted) {
                missing.push(format!("{rel}: {wanted} not named under {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// No global mutable state in the code (tests aside): what a process
/// remembers lives in a context passed in. Write-once caches (`OnceLock`,
/// `LazyLock`) and a lock that guards nothing (`Mutex<()>`) are allowed.
#[test]
fn no_global_mutable_state() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for base in ["src", "agent/src"] {
        for f in rs_files(&root.join(base)) {
            if f.file_name()
                .is_some_and(|n| n == "tests.rs" || n == "testing.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            for (i, l) in code.lines().enumerate() {
                let t = l.trim_start();
                let t = t
                    .strip_prefix("pub(crate) ")
                    .or_else(|| t.strip_prefix("pub "))
                    .unwrap_or(t);
                if !t.starts_with("static ") {
                    continue;
                }
                let mutable = t.starts_with("static mut ")
                    || ["Atomic", "RwLock", "RefCell", "Cell<"]
                        .iter()
                        .any(|k| t.contains(k))
                    || (t.contains("Mutex<") && !t.contains("Mutex<()>"));
                if mutable {
                    found.push(format!("{}:{}: {t}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "global mutable state: {found:#?}");
}
