//! The layering ARCHITECTURE.md states, held by crate boundaries and checked here from
//! `cargo metadata` and the sources: each workspace crate depends only on the crates below it,
//! and the guest side (the SDK, the default guest, the toolkit) and the server share none;
//! only `motion-model` depends on tch (the benchmark's floor goes through it too), and no tch
//! type or re-export leaves it; only `motion-nn` and `motion-runtime` depend on wasmtime; no
//! crate below the binary reaches the HTTP stack; and the binary's modules import each other
//! without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use motion_host_tests::repo_root;

/// The crates below the binary, which must not know HTTP.
const BELOW_THE_BINARY: &[&str] = &["motion-model", "motion-nn", "motion-runtime", "motion-request"];
/// The server's crates, bottom up, with the workspace crates each may depend on.
const LAYERS: &[(&str, &[&str])] = &[
    ("motion-request", &[]),
    ("motion-model", &[]),
    ("motion-nn", &["motion-model"]),
    ("motion-runtime", &["motion-model", "motion-nn", "motion-request"]),
    ("motion-host", &["motion-model", "motion-request", "motion-runtime"]),
    // The guest side: the SDK, and the two components built on it. None of them may reach a
    // server crate, and no server crate may reach them (the host decodes nothing).
    ("motion-guest-sdk", &[]),
    ("motion-guest", &["motion-guest-sdk"]),
    ("motion-toolkit", &["motion-guest-sdk"]),
];
const HTTP_STACK: &[&str] =
    &["axum", "axum-server", "hyper", "hyper-util", "tower", "tower-service", "h2", "tonic", "prost"];

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Package name by package id.
fn names(meta: &serde_json::Value) -> BTreeMap<String, String> {
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["name"].as_str().unwrap().to_string()))
        .collect()
}

/// Each workspace package's name and the names of its direct normal dependencies.
fn workspace_dependencies(meta: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// The workspace crates that depend directly on `dependency`.
fn dependents(meta: &serde_json::Value, dependency: &str) -> Vec<String> {
    workspace_dependencies(meta)
        .into_iter()
        .filter(|(_, deps)| deps.contains(dependency))
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn only_the_model_crate_depends_on_tch() {
    assert_eq!(
        dependents(&metadata(), "tch"),
        ["motion-model"],
        "workspace crates that depend on tch directly"
    );
}

#[test]
fn only_the_nn_and_runtime_crates_depend_on_wasmtime() {
    let meta = metadata();
    assert_eq!(dependents(&meta, "wasmtime"), ["motion-nn", "motion-runtime"]);
    assert_eq!(dependents(&meta, "wasmtime-wasi"), ["motion-runtime"]);
}

#[test]
fn each_crate_depends_only_on_the_crates_below_it() {
    let all = workspace_dependencies(&metadata());
    let workspace: BTreeSet<&str> = all.keys().map(String::as_str).collect();
    for (name, allowed) in LAYERS {
        let deps = &all[*name];
        let inside: Vec<&str> = deps.iter().map(String::as_str).filter(|d| workspace.contains(d)).collect();
        let stray: Vec<&&str> = inside.iter().filter(|d| !allowed.contains(d)).collect();
        assert!(stray.is_empty(), "{name} depends on {stray:?}; it may depend on {allowed:?}");
    }
}

#[test]
fn no_crate_below_the_binary_reaches_the_http_stack() {
    let meta = metadata();
    let names = names(&meta);
    let nodes: BTreeMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            // Normal (not dev or build) dependencies only.
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (node["id"].as_str().unwrap(), deps)
        })
        .collect();
    for crate_name in BELOW_THE_BINARY {
        let root = names.iter().find(|(_, n)| n == crate_name).map(|(id, _)| id.as_str()).unwrap();
        let mut seen = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(nodes.get(id).into_iter().flatten());
            }
        }
        let reached: Vec<&str> =
            seen.iter().map(|id| names[*id].as_str()).filter(|n| HTTP_STACK.contains(n)).collect();
        assert!(reached.is_empty(), "{crate_name} depends on {reached:?}");
    }
}

#[test]
fn no_tch_type_or_re_export_leaves_the_model_crate() {
    let dir = repo_root().join("model/src");
    let tch_words = ["tch", "Tensor", "CModule", "Kind", "Device", "TchError"];
    let mut leaks = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            let public = line.starts_with("pub ") && !line.starts_with("pub(");
            if public && tch_words.iter().any(|w| contains_word(line, w)) {
                leaks.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(leaks.is_empty(), "public items of motion-model that name tch types:\n{}", leaks.join("\n"));
}

/// Whether `word` occurs in `line` as a whole identifier.
fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

/// A module of the binary crate by its path (`http::oip`), and the modules it names through
/// `crate::…` or `super::…` paths.
fn binary_modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo_root().join("host/src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let module_of = |path: &std::path::Path| -> String {
        let rel = path.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "main") {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let parent = module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
        let text = std::fs::read_to_string(file).unwrap();
        let mut uses = BTreeSet::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.clone())] {
            for (at, _) in text.match_indices(prefix) {
                if text[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                {
                    continue;
                }
                let rest = &text[at + prefix.len()..];
                let path: Vec<&str> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                // The longest prefix of the path that is a module.
                let mut target = None;
                for n in 1..=path.len() {
                    let candidate = if base.is_empty() {
                        path[..n].join("::")
                    } else {
                        format!("{base}::{}", path[..n].join("::"))
                    };
                    if modules.contains(&candidate) {
                        target = Some(candidate);
                    }
                }
                let target = target.unwrap_or_else(|| base.clone());
                // A module may use its ancestors' items: they are its context, not a layer.
                let ancestor = target.is_empty() || module.starts_with(&format!("{target}::"));
                if target != module && !ancestor {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module, uses);
    }
    graph
}

#[test]
fn the_binarys_modules_import_each_other_without_a_cycle() {
    let graph = binary_modules();
    assert!(graph.contains_key("http::oip") && graph["serve"].contains("service"), "{graph:#?}");
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[at..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("the binary's modules import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}
