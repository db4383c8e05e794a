//! The guest kit as a team would use it: `motion-host guest new` writes a Rust, a Python and a
//! JavaScript project; each is built outside the repository with the real toolchains (the
//! versions its template pins, installed by scripts/env.sh's `guest_toolchains`), passes
//! `guest check`, is swapped in as the live guest of a running server under load without a
//! failed request, and answers as the default Rust guest does, within 1e-3 on every label, for
//! the whole clip and for each window of a timeline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use motion_host_tests::{ADMIN_TOKEN, Server, ServerBuilder, bin, clips, json, repo_root};

/// The cache directory `guest_toolchains` installs into (`MOTION_HOST_GUEST_TOOLS`).
fn guest_tools() -> PathBuf {
    match std::env::var_os("MOTION_HOST_GUEST_TOOLS") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "MOTION_HOST_GUEST_TOOLS is not set: run the suite with scripts/test, which installs the \
             guest templates' toolchains (scripts/env.sh's guest_toolchains) and sets it"
        ),
    }
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// Writes the `lang` template as guest `name` into `dir` and builds it with its own build
/// script, as its README says; returns the component. A Rust project builds on the SDK it
/// carries, as it would anywhere.
fn new_and_build(lang: &str, name: &str, dir: &Path) -> Vec<u8> {
    new_and_build_with(lang, name, dir, |_| {})
}

/// [`new_and_build`], with `edit` changing the project before it is built.
fn new_and_build_with(lang: &str, name: &str, dir: &Path, edit: impl FnOnce(&Path)) -> Vec<u8> {
    let project = dir.join(name);
    run(
        Command::new(bin())
            .current_dir(repo_root())
            .args(["guest", "new", name, "--lang", lang, "--dir"])
            .arg(&project),
        &format!("guest new --lang {lang}"),
    );
    edit(&project);
    let tools = guest_tools();
    let path = format!("{}:{}", tools.join("venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    if lang == "js" {
        // The toolchain the template pins, installed once in the cache, instead of npm install.
        std::os::unix::fs::symlink(tools.join("node/node_modules"), project.join("node_modules")).unwrap();
    }
    let mut build = Command::new(project.join("build.sh"));
    build.env("PATH", path);
    if lang == "rust" {
        // Built like any crate outside the workspace, from the crates already fetched, into a
        // target directory kept between runs.
        build
            .env("CARGO_TARGET_DIR", repo_root().join("target/guest-templates"))
            .env("CARGO_NET_OFFLINE", "true");
    }
    if lang == "rust" {
        // The whole guest, rustfmt'd as its author's editor would leave it, in about 40 lines.
        let source = project.join("src/lib.rs");
        run(Command::new("rustfmt").args(["--check", "--edition", "2024"]).arg(&source), "rustfmt --check");
        let lines = std::fs::read_to_string(&source).unwrap().lines().count();
        assert!(lines <= 40, "the Rust template is {lines} lines");
    }
    let started = Instant::now();
    run(&mut build, &format!("{lang}'s build.sh"));
    let wasm = project.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    eprintln!("{lang}: built {} bytes in {:.1} s", bytes.len(), started.elapsed().as_secs_f64());
    bytes
}

fn check(name: &str, dir: &Path) {
    let wasm = dir.join(name).join(format!("{name}.wasm"));
    let report =
        run(Command::new(bin()).current_dir(repo_root()).args(["guest", "check"]).arg(&wasm), "guest check");
    for media_type in ["multipart/form-data", "image/png", "image/jpeg", "image/gif", "video/x-yuv4mpeg"] {
        assert!(report.contains(&format!("the {media_type} sample")), "{report}");
    }
    eprintln!("{report}");
}

fn admin(server: &Server, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
    server.client().request(method, server.url(path)).bearer_auth(ADMIN_TOKEN)
}

/// The clips every guest is compared on: a Y4M, an animated GIF, and PNG frames as multipart.
fn clips() -> Vec<(&'static str, reqwest::blocking::multipart::Form, Vec<u8>)> {
    let y4m = clips::y4m(12, 160, 90);
    let gif = clips::gif(6, 96, 54);
    let mut out = vec![
        ("video/x-yuv4mpeg", reqwest::blocking::multipart::Form::new(), y4m),
        ("image/gif", reqwest::blocking::multipart::Form::new(), gif),
    ];
    let mut form = reqwest::blocking::multipart::Form::new();
    for (i, png) in clips::png_frames(5, 120, 80).into_iter().enumerate() {
        let part = reqwest::blocking::multipart::Part::bytes(png)
            .file_name(format!("{i}.png"))
            .mime_str("image/png");
        form = form.part("frames", part.unwrap());
    }
    out.push(("multipart/form-data", form, Vec::new()));
    out
}

/// Every label's score for each clip and for each window of its timeline in 4-frame windows,
/// from `path`.
fn scores(server: &Server, path: &str) -> Vec<HashMap<String, f64>> {
    clips()
        .into_iter()
        .flat_map(|(media_type, form, body)| {
            let request = server.client().post(server.url(&format!("{path}?top_k=16&segment_frames=4")));
            let request = if media_type == "multipart/form-data" {
                request.multipart(form)
            } else {
                request.header("content-type", media_type).body(body)
            };
            let (status, answer) = json(request.send().unwrap());
            assert_eq!(status, 200, "{media_type}: {answer}");
            let ranking = |top: &serde_json::Value| -> HashMap<String, f64> {
                top.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["label"].as_str().unwrap().to_string(), e["score"].as_f64().unwrap()))
                    .collect()
            };
            let segments = answer["segments"].as_array().unwrap_or_else(|| panic!("{media_type}: {answer}"));
            assert!(!segments.is_empty(), "{media_type}: {answer}");
            std::iter::once(ranking(&answer["top_k"]))
                .chain(segments.iter().map(|s| ranking(&s["top_k"])))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn templates_build_outside_the_repository_check_and_swap_in_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let guests: Vec<(&str, String, Vec<u8>)> = ["rust", "python", "js"]
        .into_iter()
        .map(|lang| {
            let name = format!("kit-{lang}");
            let bytes = new_and_build(lang, &name, dir.path());
            check(&name, dir.path());
            (lang, name, bytes)
        })
        .collect();

    let server = Arc::new(ServerBuilder::new().admin_token().start());
    let reference = scores(&server, "/v1/classify");

    // Load on the live guest while its versions change: every request must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clip = clips::y4m(12, 160, 90);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop, answered, clip) =
                (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&answered), clip.clone());
            std::thread::spawn(move || {
                let client = server.client();
                let mut guests = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(server.url("/v1/classify"))
                        .header("content-type", "video/x-yuv4mpeg")
                        .body(clip.clone())
                        .send()
                        .expect("no request may fail while guests are swapped");
                    let (status, body) = json(r);
                    assert_eq!(status, 200, "{body}");
                    guests.insert(
                        body["guest"]["version"].as_str().unwrap().to_string()
                            + " "
                            + body["guest"]["digest"].as_str().unwrap(),
                    );
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                guests
            })
        })
        .collect();

    for (lang, name, bytes) in &guests {
        // Beside the default, under its own name, and then as the live version of the default.
        let r = admin(&server, reqwest::Method::PUT, &format!("/admin/guests/{name}"))
            .body(bytes.clone())
            .send()
            .unwrap();
        let (status, entry) = json(r);
        assert_eq!(status, 201, "{lang}: {entry}");
        let theirs = scores(&server, &format!("/v1/guests/{name}/classify"));
        for (clip, (want, got)) in reference.iter().zip(&theirs).enumerate() {
            assert_eq!(want.len(), 16, "{want:?}");
            for (label, score) in want {
                let other = got.get(label).unwrap_or_else(|| panic!("{lang}: no {label} in {got:?}"));
                assert!((score - other).abs() < 1e-3, "{lang}, clip {clip}: {label} {other} vs {score}");
            }
        }
        let r =
            admin(&server, reqwest::Method::PUT, "/admin/guests/motion").body(bytes.clone()).send().unwrap();
        let (status, entry) = json(r);
        assert_eq!(status, 200, "{lang}: {entry}");
        let before = answered.load(Ordering::Relaxed);
        server.wait_for(&format!("requests answered by the {lang} guest"), Duration::from_secs(60), || {
            answered.load(Ordering::Relaxed) >= before + 8
        });
        let r = admin(&server, reqwest::Method::POST, "/admin/guests/motion/rollback").send().unwrap();
        assert_eq!(r.status(), 200, "{lang}: rollback");
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    for client in clients {
        seen.extend(client.join().expect("a client thread failed"));
    }
    let names: Vec<&String> = guests.iter().map(|(_, name, _)| name).collect();
    eprintln!("answered {} requests; guests seen: {seen:?} ({names:?})", answered.load(Ordering::Relaxed));
    // The default and each template's build answered live traffic.
    assert!(seen.len() > guests.len(), "{seen:?}");
}

/// The toolkit holds a guest's policy to the model's contract: a Python guest whose `frames`
/// chooses 7 frames, and one whose `rank` fails, are refused by `guest check` with the reason,
/// because validation's samples run through them as a request would.
#[test]
fn a_policy_that_breaks_the_contract_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("kit-seven", "for i in range(8)]", "for i in range(7)]", "the model takes 8 frames"),
        (
            "kit-failing",
            "        return [[Label",
            "        raise Err('no answer today')\n        return [[Label",
            "no answer today",
        ),
    ];
    for (name, from, to, reason) in cases {
        new_and_build_with("python", name, dir.path(), |project| {
            let app = project.join("app.py");
            let source = std::fs::read_to_string(&app).unwrap();
            assert!(source.contains(from), "app.py no longer holds {from:?}");
            let source = source.replacen(from, to, 1).replacen(
                "import math",
                "import math\n\nfrom componentize_py_types import Err",
                1,
            );
            std::fs::write(&app, source).unwrap();
        });
        let wasm = dir.path().join(name).join(format!("{name}.wasm"));
        let out = Command::new(bin())
            .current_dir(repo_root())
            .args(["guest", "check"])
            .arg(&wasm)
            .output()
            .unwrap();
        let report =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{name} passed the check:\n{report}");
        assert!(report.contains(reason), "{name}: the check does not say {reason:?}:\n{report}");
        eprintln!("{name}: {report}");
    }
}
