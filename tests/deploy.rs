//! The Kubernetes manifests in `deploy/kubernetes/`, validated against the Kubernetes schemas
//! (kubernetes-validate, strict) and KServe's ServingRuntime requirements, with the
//! cross-checks no schema makes (`tests/python/validate_k8s.py`); and the validator shown to
//! catch what it should.

use std::path::Path;
use std::process::{Command, Output};

use motion_host_tests::{repo_root, test_python};

fn validate(dir: &Path) -> Output {
    Command::new(test_python())
        .arg(repo_root().join("tests/python/validate_k8s.py"))
        .arg(dir)
        .output()
        .expect("run tests/python/validate_k8s.py")
}

#[test]
fn the_manifests_are_valid_kubernetes_and_agree_with_each_other() {
    let out = validate(&repo_root().join("deploy/kubernetes"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for kind in
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"]
    {
        assert!(stdout.contains(&format!("{kind}/")), "{kind} was not validated:\n{stdout}");
    }
    assert!(stdout.contains("ServingRuntime"), "{stdout}");
}

#[test]
fn the_validator_catches_typos_and_contradictions() {
    let source = repo_root().join("deploy/kubernetes");
    let cases = [
        ("readOnlyRootFilesystem", "readOnlyRootFileSystem", "readOnlyRootFileSystem"),
        ("--bind=[::]:8443", "--bind=[::]:9443", "--bind port 9443"),
        ("path: /health/ready", "path: /health", "readiness"),
        ("claimName: motion-host-guests", "claimName: other-guests", "other-guests"),
    ];
    for (from, to, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = if path.ends_with("deployment.yaml") { text.replacen(from, to, 1) } else { text };
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
        let out = validate(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "'{to}' passed validation");
        assert!(stderr.contains(words), "'{to}': the failure does not name '{words}': {stderr}");
    }
}

#[test]
fn the_dockerfile_keeps_its_contract() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let rust_version =
        manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    assert!(
        dockerfile.contains(&format!("ARG RUST_IMAGE=docker.io/library/rust:{rust_version}-slim-bookworm")),
        "the builder's Rust is the toolchain Cargo.toml asks for ({rust_version})"
    );
    // Exec form, so the platform's arguments reach the server; the probe needs no curl.
    assert_eq!(dockerfile.matches(r#"ENTRYPOINT ["motion-host", "serve"]"#).count(), 2);
    assert_eq!(dockerfile.matches(r#"CMD ["motion-host", "healthcheck"]"#).count(), 2);
    assert_eq!(dockerfile.matches("USER 10001:10001").count(), 2);
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.last().unwrap().ends_with("AS runtime"), "the CPU image is the default: {stages:?}");
    assert!(stages.iter().any(|s| s.ends_with("AS runtime-cuda")), "{stages:?}");
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for kept_out in ["target/", ".git/", ".env", "*.key", "*.pem"] {
        assert!(ignore.lines().any(|l| l == kept_out), ".dockerignore lacks {kept_out}");
    }
}
