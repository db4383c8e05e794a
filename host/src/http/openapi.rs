//! `GET /openapi.json`: the HTTP API described in OpenAPI 3.1. The document is written by hand
//! (`openapi.json` beside this file); at serve time it gets the server's version and the names
//! of the models it serves. `tests/openapi.rs` checks the running server against it with a
//! schema-driven tester.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{AppState, VERSION, oip};

const DOCUMENT: &str = include_str!("openapi.json");

/// The document, with this server's version and, once loaded, its model names.
fn document(models: Option<Vec<String>>) -> Value {
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
    doc["info"]["version"] = Value::from(VERSION);
    if let Some(models) = models {
        doc["components"]["parameters"]["Model"]["schema"]["enum"] = Value::from(models);
    }
    doc
}

pub async fn serve(State(app): State<Arc<AppState>>) -> Response {
    static READY: OnceLock<String> = OnceLock::new();
    let body = match app.runtime.get() {
        Some(runtime) => READY
            .get_or_init(|| {
                let mut models: Vec<String> =
                    runtime.models().names().into_iter().map(String::from).collect();
                models.push(oip::PIPELINE.to_string());
                document(Some(models)).to_string()
            })
            .clone(),
        None => document(None).to_string(),
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
        let doc = document(None);
        assert_eq!(doc["openapi"], "3.1.0");
        let app = AppState::new(Settings {
            max_body_bytes: 1024,
            max_upload_memory: 4096,
            min_upload_rate: 0,
            max_in_flight: 4,
            request_timeout: std::time::Duration::from_secs(5),
            admin: None,
            admin_exposed_in_plain_text: false,
            allow_insecure_admin: false,
        });
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
}
