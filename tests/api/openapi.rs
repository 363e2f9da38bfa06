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
            let public = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| s.is_empty())
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
