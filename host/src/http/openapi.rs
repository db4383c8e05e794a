//! `GET /openapi.json`: the HTTP API described in OpenAPI 3.1. The document is written by hand
//! (`openapi.json` beside this file) and names no label: at serve time it gets the server's
//! version, the names of the models it serves, and the default guest's labels (in descriptions
//! and examples), as the host knows labels only from the guest. `tests/observability.rs` checks
//! the running server against it with a schema-driven tester.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{AppState, VERSION, inference};

const DOCUMENT: &str = include_str!("openapi.json");

/// The document, with this server's version and, once loaded, its model names and the default
/// guest's labels.
fn document(models: Option<Vec<String>>, labels: Option<&[String]>) -> Value {
    let mut doc: Value =
        serde_json::from_str(&with_labels(DOCUMENT, labels)).expect("openapi.json is valid JSON");
    doc["info"]["version"] = Value::from(VERSION);
    if let Some(models) = models {
        doc["components"]["parameters"]["Model"]["schema"]["enum"] = Value::from(models);
    }
    doc
}

/// Fills the document's label placeholders: `{labels}` (every label, in order) in descriptions
/// and `{label0}`..`{label2}` in examples.
fn with_labels(document: &str, labels: Option<&[String]>) -> String {
    // Inside a JSON string: escaped as JSON, without the quotes.
    let escape = |text: &str| {
        let quoted = serde_json::to_string(text).expect("a string serialises");
        quoted[1..quoted.len() - 1].to_string()
    };
    let (list, picks) = match labels.filter(|l| !l.is_empty()) {
        Some(labels) => (
            labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "),
            [0, 1, 2].map(|i| labels[i % labels.len()].clone()),
        ),
        None => (
            "the default guest's labels, in its order (`GET /v1/guests` lists them)".to_string(),
            ["<label 1>", "<label 2>", "<label 3>"].map(String::from),
        ),
    };
    let mut filled = document.replace("{labels}", &escape(&list));
    for (i, pick) in picks.iter().enumerate() {
        filled = filled.replace(&format!("{{label{i}}}"), &escape(pick));
    }
    filled
}

pub async fn serve(State(app): State<Arc<AppState>>) -> Response {
    /// The last document served, by the default guest's digest it was made for.
    static SERVED: Mutex<Option<(String, String)>> = Mutex::new(None);
    let body = match app.service.loaded() {
        Some((set, served_models)) => {
            let default = set.default_guest();
            let digest = default.map(|g| g.digest.clone()).unwrap_or_default();
            let mut served = SERVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match served.as_ref().filter(|(made_for, _)| *made_for == digest) {
                Some((_, body)) => body.clone(),
                None => {
                    let mut models: Vec<String> =
                        served_models.iter().map(|m| m.name().to_string()).collect();
                    models.push(inference::PIPELINE.to_string());
                    let labels = default.map(|g| g.info.labels.as_slice());
                    let body = document(Some(models), labels).to_string();
                    *served = Some((digest, body.clone()));
                    body
                }
            }
        }
        None => document(None, None).to_string(),
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::http::{Settings, router};

    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let doc = document(None, None);
        assert_eq!(doc["openapi"], "3.1.0");
        let app = AppState::new(
            crate::service::Service::new(Default::default()),
            Settings {
                max_body_bytes: 1024,
                max_upload_memory: 4096,
                min_upload_rate: 0,
                max_in_flight: 4,
                request_timeout: std::time::Duration::from_secs(5),
                admin: None,
                admin_exposed_in_plain_text: false,
                allow_insecure_admin: false,
            },
        );
        let router = router(app);
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 20, "{}", paths.len());
        for (path, item) in paths {
            let concrete = path
                .replace("{model}", "motion-resnet18")
                .replace("{version}", "1")
                .replace("{name}", "motion");
            for method in ["get", "post", "put", "delete"] {
                if item.get(method).is_none() {
                    continue;
                }
                let request = Request::builder()
                    .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                    .uri(&concrete)
                    .body(Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                // The admin API is off here, and then its routes answer as unknown ones do.
                if status == StatusCode::NOT_FOUND && !path.starts_with("/admin") {
                    assert!(!text.contains("no such route"), "{method} {path}: {text}");
                }
            }
        }
    }

    #[test]
    fn the_document_names_no_label_until_a_guest_gives_them() {
        assert!(!DOCUMENT.contains("pan_left"), "openapi.json names a label of the default guest");
        let before = document(None, None).to_string();
        assert!(!before.contains("{label") && before.contains("GET /v1/guests` lists them"));
        let labels: Vec<String> = ["still", "swing \"left\""].map(String::from).to_vec();
        let after = document(None, Some(&labels));
        let text = after.to_string();
        assert!(text.contains("`still`, `swing \\\"left\\\"`"), "{text}");
        let example = &after["components"]["schemas"]["ClassifyResponse"]["examples"][0];
        assert_eq!(example["label"], "still");
        assert_eq!(example["top_k"][1]["label"], "swing \"left\"");
        assert_eq!(example["top_k"][2]["label"], "still");
    }
}
