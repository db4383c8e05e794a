//! The soak's short run: `bench/soak.py --ci` for two minutes against the real server over
//! TLS, with 16 clients sending valid, invalid and abandoned requests while the default guest
//! is swapped, a canary comes and goes and the certificate rotates. It fails on any request
//! lost or answered wrongly, descriptors that do not come back to within 5 of the start, or
//! more threads than its bound. The 30-minute run is `bench/soak`.

use std::process::Command;

use motion_host_tests::{bin, repo_root, test_guest, test_python};

#[test]
fn two_minutes_of_mixed_traffic_swaps_canaries_and_rotations_lose_nothing() {
    // The guests it swaps between, built by scripts/test.
    test_guest("motion");
    test_guest("motion-reversed");
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("soak.json");
    let run = Command::new(test_python())
        .arg(repo_root().join("bench/soak.py"))
        .args(["--ci", "--duration", "120", "--bin"])
        .arg(bin())
        .arg("--out")
        .arg(&report)
        .current_dir(repo_root())
        .output()
        .expect("the soak runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the soak failed");
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let outcomes = &result["outcomes"];
    for outcome in ["ok", "invalid", "cancelled"] {
        assert!(outcomes[outcome].as_u64().unwrap_or(0) > 100, "too few '{outcome}' requests: {outcomes}");
    }
    let events: Vec<&str> =
        result["events"].as_array().unwrap().iter().map(|e| e[1].as_str().unwrap()).collect();
    for event in ["swap", "canary", "certificate"] {
        assert!(events.contains(&event), "no '{event}' in {events:?}");
    }
}
