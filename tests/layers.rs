//! The layering ARCHITECTURE.md states, held by crate boundaries and checked here from
//! `cargo metadata` and the model crate's source: only `motion-model` depends on tch (the
//! benchmark's floor goes through it too), no tch type or re-export leaves it, and no crate
//! below the binary reaches the HTTP stack.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use motion_host_tests::repo_root;

/// The crates below the binary, which must not know HTTP.
const BELOW_THE_BINARY: &[&str] = &["motion-model", "motion-request"];
const HTTP_STACK: &[&str] = &["axum", "axum-server", "hyper", "hyper-util", "tower", "tower-service", "h2"];

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

#[test]
fn only_the_model_crate_depends_on_tch() {
    let meta = metadata();
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    let mut dependents = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        if !members.contains(package["id"].as_str().unwrap()) {
            continue;
        }
        let deps = package["dependencies"].as_array().unwrap();
        if deps.iter().any(|d| d["name"] == "tch") {
            dependents.push(package["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(dependents, ["motion-model"], "workspace crates that depend on tch directly");
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
