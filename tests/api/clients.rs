//! Clients generated from the OpenAPI document work (issue 12): openapi-python-client (pinned,
//! installed by scripts/test) generates a client from static/openapi.json without a single
//! warning — a dropped response is a warning — and that client drives a live server: log in,
//! create a key, create and list products, read a 422 as its model.
use crate::binary::serve;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "0.29.1";

/// The venv's generator, at the pinned version. Missing is a failure, not a skip.
fn generator() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/openapi-client/bin/openapi-python-client");
    assert!(
        path.exists(),
        "openapi-python-client is not installed at {}: run scripts/test, which creates that \
         venv and installs openapi-python-client=={VERSION}",
        path.display()
    );
    let out = Command::new(&path).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.trim().ends_with(VERSION),
        "{} is {version:?}, not the pinned {VERSION}: run scripts/test",
        path.display()
    );
    path
}

#[actix_web::test]
async fn the_generated_python_client_works_against_the_live_server() {
    let generator = generator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    // No formatter hooks: the generator's own output is what is judged.
    let config = work.path().join("config.yaml");
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let package = work.path().join("pixee_pim_api_client");
    let out = Command::new(&generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(root.join("static/openapi.json"))
        .arg("--output-path")
        .arg(&package)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for word in [
        "warning",
        "unable",
        "cannot",
        "could not",
        "omitted",
        "removal",
    ] {
        assert!(
            !said.to_lowercase().contains(word),
            "the generator said {word:?}:\n{said}"
        );
    }
    assert!(package.join("api/products/list_products.py").exists());

    let data = tempfile::tempdir().unwrap();
    let password = "generated client pass 4";
    let server = serve(data.path(), &[], &[("PIXEE_ADMIN_PASSWORD", password)]).await;
    let python = generator.with_file_name("python");
    let out = Command::new(python)
        .arg(root.join("tests/api/clients/drive_python_client.py"))
        .env("PYTHONPATH", work.path())
        .env("PIXEE_BASE", &server.base)
        .env("PIXEE_EMAIL", "admin@localhost")
        .env("PIXEE_PASSWORD", password)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(found["token_type"], "bearer");
    assert_eq!(found["key_prefix"], "pm_live_");
    let created: Vec<&str> = found["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 3);
    // Two pages of two: every created product listed once.
    let mut listed: Vec<&str> = found["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = created.clone();
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert_eq!(found["total"], 3);
    assert_eq!(found["pages"], 2);
    assert_eq!(found["got"], "Generated 0");
    assert_eq!(found["price"], 9.5);
    assert_eq!(
        found["problem"],
        serde_json::json!({"status": 422, "error_code": "VALIDATION_ERROR", "fields": ["ean"]})
    );
}
