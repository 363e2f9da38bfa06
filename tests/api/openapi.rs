//! The OpenAPI document: valid 3.1 JSON, and every operation it documents exists and answers
//! as documented without credentials.
use crate::helpers::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[actix_web::test]
async fn every_documented_operation_exists_and_protected_ones_ask_for_credentials() {
    let app = spawn_app().await;
    let res = app
        .req(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{} paths", paths.len());
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                continue;
            }
            operations += 1;
            // No requirement, or an empty one among them (credentials optional).
            let public = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| s.is_empty() || s.iter().any(|r| r == &serde_json::json!({})))
                || path.ends_with("/auth/refresh");
            let res = app
                .req(m.clone(), &concrete)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = res.status();
            if public {
                assert_ne!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{m} {path} is documented but missing"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{m} {path} should ask for credentials"
                );
            }
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {path} documents its responses"
            );
        }
    }
    assert!(operations >= 28, "{operations} operations");
}

/// The other direction: every route the server registers (read off `src/api`, where each
/// resource is declared with `web::resource(path)` and its methods) is in the document, so an
/// undocumented route fails here rather than going unnoticed by clients and the contract test.
#[test]
fn every_registered_route_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("static/openapi.json")).unwrap())
            .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("src/api")).unwrap() {
        let file = entry.unwrap().path();
        let source = std::fs::read_to_string(&file).unwrap();
        // A file whose routes live in one `web::scope(...)` prefixes them with it.
        let scope = source
            .find("web::scope(\"")
            .map(|i| {
                let rest = &source[i + "web::scope(\"".len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .filter(|s| s != "/api/v1")
            .unwrap_or_default();
        for (i, _) in source.match_indices("web::resource(\"") {
            let rest = &source[i + "web::resource(\"".len()..];
            let path = &rest[..rest.find('"').unwrap()];
            // The resource's method chain runs to the next resource or the statement's end.
            let after = &rest[path.len()..];
            let end = [after.find("web::resource("), after.find(';')]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(after.len());
            let chain = &after[..end];
            // Only the probes and the metrics live outside the API's scope.
            let full = if ["/healthz", "/readyz", "/metrics"].contains(&path) {
                path.to_owned()
            } else {
                format!("/api/v1{scope}{path}")
            };
            for method in ["get", "post", "put", "patch", "delete"] {
                if chain.contains(&format!(".{method}(")) {
                    checked += 1;
                    if paths.get(&full).and_then(|item| item.get(method)).is_none() {
                        missing.push(format!("{} {full}", method.to_uppercase()));
                    }
                }
            }
        }
    }
    assert!(checked >= 30, "read only {checked} routes off src/api");
    assert!(
        missing.is_empty(),
        "routes missing from static/openapi.json: {missing:?}"
    );
}
