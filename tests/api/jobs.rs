//! Imports and exports (SPEC §8) against the real server: files as spreadsheets and Python's
//! openpyxl write them, every export read back by an independent reader (Python's csv module
//! and openpyxl), and the bad inputs of issue 11.
use crate::helpers::{TestApp, assert_problem, header_text, spawn_app, spawn_app_with};
use pixee_pim::config::ServeArgs;
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCOPES: &[&str] = &[
    "products:read",
    "products:write",
    "imports:read",
    "imports:write",
    "exports:read",
    "exports:write",
];

fn ean(n: u64) -> String {
    pixee_pim::domain::Ean::from_body(300_000_000_000 + n)
        .as_str()
        .to_owned()
}

/// The venv `scripts/test` installs openpyxl into.
fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/pytools/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test once (it installs openpyxl)",
        p.display()
    );
    p
}

/// Runs a Python snippet with `args` (argv[1..]); returns its stdout.
fn py(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn upload(
    app: &TestApp,
    key: &str,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = Form::new().part("file", Part::bytes(bytes).file_name(name.to_owned()));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    app.with_key(Method::POST, "/api/v1/imports/upload", key)
        .multipart(form)
        .send()
        .await
        .expect("upload")
}

/// Uploads and returns the job's id (the upload must be accepted).
pub(crate) async fn upload_ok(
    app: &TestApp,
    key: &str,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> String {
    let res = upload(app, key, name, bytes, fields).await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    body["id"].as_str().unwrap().to_owned()
}

async fn job(app: &TestApp, key: &str, kind: &str, id: &str) -> Value {
    let res = app
        .with_key(Method::GET, &format!("/api/v1/{kind}/jobs/{id}"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Polls a job until its status is one of `until`.
pub(crate) async fn wait(app: &TestApp, key: &str, kind: &str, id: &str, until: &[&str]) -> Value {
    let started = Instant::now();
    loop {
        let j = job(app, key, kind, id).await;
        if until.iter().any(|s| j["status"] == *s) {
            return j;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job stayed {}",
            j
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn product_by_ean(app: &TestApp, key: &str, ean: &str) -> Value {
    let res = app
        .with_key(Method::GET, &format!("/api/v1/ext/products/{ean}"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "product {ean}");
    res.json::<Value>().await.unwrap()["data"].clone()
}

async fn logs(app: &TestApp, key: &str, id: &str, level: &str) -> Vec<Value> {
    let res = app
        .with_key(
            Method::GET,
            &format!("/api/v1/imports/jobs/{id}/logs?level={level}&per_page=100"),
            key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[actix_web::test]
async fn a_csv_as_excel_writes_it_in_france_imports_and_upserts_by_ean() {
    let app = spawn_app().await;
    let (_, key) = app
        .admin_and_key(&[SCOPES, &["ext:products:read"]].concat())
        .await;
    let (a, b) = (ean(1), ean(2));
    // Windows-1252, semicolons, decimal commas, a quoted cell across lines, CRLF.
    let text = format!(
        "Code-barres;Désignation;Prix;Marque;Qté;Actif\r\n\
         {a};\"Crème\r\nbrûlée\";12,50;Château;3;oui\r\n\
         {b};Thé vert;1 234,00;;0;non\r\n"
    );
    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&text);
    let id = upload_ok(
        &app,
        &key.raw,
        "catalogue.csv",
        bytes.into_owned(),
        &[("auto_process", "true")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["total_rows"], 2);
    assert_eq!(done["created_rows"], 2);
    assert_eq!(done["mapping"]["Désignation"], "name");
    assert_eq!(done["mapping"]["Code-barres"], "ean");
    let p = product_by_ean(&app, &key.raw, &a).await;
    assert_eq!(p["name"], "Crème\r\nbrûlée");
    assert_eq!(p["price"], 12.5);
    assert_eq!(p["brand"], "Château");
    assert_eq!(p["stock"], 3);
    let p = product_by_ean(&app, &key.raw, &b).await;
    assert_eq!(p["price"], 1234.0);
    assert_eq!(p["is_active"], false);

    // The same EAN again: the product is updated in the fields the file carries, and only
    // those; no second product appears.
    let text = format!("EAN,Name,Price\n{a},Crème brûlée,13.90\n");
    let id = upload_ok(
        &app,
        &key.raw,
        "again.csv",
        text.into_bytes(),
        &[("auto_process", "1")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(
        (done["created_rows"].clone(), done["updated_rows"].clone()),
        (json!(0), json!(1))
    );
    let p = product_by_ean(&app, &key.raw, &a).await;
    assert_eq!(p["price"], 13.9);
    assert_eq!(
        p["brand"], "Château",
        "a field the file lacks is left alone"
    );
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 2);
    // The upload is gone once the job ended.
    let uploads = app.data_dir.path().join("jobs/uploads");
    assert_eq!(std::fs::read_dir(uploads).unwrap().count(), 0);
}

#[actix_web::test]
async fn an_xlsx_written_by_openpyxl_imports_its_first_sheet() {
    let app = spawn_app().await;
    let (_, key) = app
        .admin_and_key(&[SCOPES, &["ext:products:read"]].concat())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalogue.xlsx");
    let (a, b) = (ean(10), ean(11));
    // EANs typed as numbers, a price as a float, a title row above the header.
    py(
        "import sys, openpyxl\n\
         wb = openpyxl.Workbook(); ws = wb.active; ws.title = 'Produits'\n\
         ws.append(['Catalogue printemps'])\n\
         ws.append(['GTIN', 'Nom', 'Prix', 'Poids'])\n\
         ws.append([int(sys.argv[2]), 'Café moulu', 4.2, 0.25])\n\
         ws.append([int(sys.argv[3]), 'Thé', 3, None])\n\
         wb.create_sheet('ignored').append(['x'])\n\
         wb.save(sys.argv[1])\n",
        &[path.to_str().unwrap(), &a, &b],
    );
    let bytes = std::fs::read(&path).unwrap();
    let id = upload_ok(
        &app,
        &key.raw,
        "catalogue.xlsx",
        bytes,
        &[("auto_process", "true"), ("skip_header_rows", "1")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["file_type"], "xlsx");
    assert_eq!(done["headers"], json!(["GTIN", "Nom", "Prix", "Poids"]));
    let p = product_by_ean(&app, &key.raw, &a).await;
    assert_eq!(
        (p["name"].clone(), p["price"].clone(), p["weight"].clone()),
        (json!("Café moulu"), json!(4.2), json!(0.25))
    );
    assert_eq!(product_by_ean(&app, &key.raw, &b).await["price"], 3.0);
}

#[actix_web::test]
async fn unknown_columns_wait_for_a_mapping_and_templates_remember_one() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    let text = format!("Code,Article,Colour\n{},Lamp,red\n", ean(20));
    let id = upload_ok(
        &app,
        &key.raw,
        "f.csv",
        text.clone().into_bytes(),
        &[("auto_process", "true")],
    )
    .await;
    let j = wait(
        &app,
        &key.raw,
        "imports",
        &id,
        &["awaiting_mapping", "failed"],
    )
    .await;
    assert_eq!(j["headers"], json!(["Code", "Article", "Colour"]));
    let process = format!("/api/v1/imports/jobs/{id}/process");
    let mapping = format!("/api/v1/imports/jobs/{id}/mapping");
    let res = app
        .with_key(Method::POST, &process, &key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "CONFLICT").await;
    // A field that does not exist: 422. A column the file lacks is left out (the job still
    // waits: nothing fills `ean`).
    let res = app
        .with_key(Method::PUT, &mapping, &key.raw)
        .json(&json!({"mapping": {"Code": "colour", "Article": "name"}}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = app
        .with_key(Method::PUT, &mapping, &key.raw)
        .json(&json!({"mapping": {"Nope": "ean", "Article": "name"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let j: Value = res.json().await.unwrap();
    assert_eq!(
        (j["status"].clone(), j["mapping"].clone()),
        (json!("awaiting_mapping"), json!({"Article": "name"}))
    );
    let res = app
        .with_key(Method::PUT, &mapping, &key.raw)
        .json(
            &json!({"mapping": {"Code": "ean", "Article": "name", "Colour": "attributes.colour"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ready");
    let res = app
        .with_key(Method::POST, &process, &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["successful_rows"], 1, "{done}");
    // Once it ran, neither the mapping nor a second start.
    let res = app
        .with_key(Method::PUT, &mapping, &key.raw)
        .json(&json!({"mapping": {"Code": "ean", "Article": "name"}}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "CONFLICT").await;
    let res = app
        .with_key(Method::POST, &process, &key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "CONFLICT").await;

    // A saved mapping makes the same layout ready at once.
    let res = app
        .with_key(Method::POST, "/api/v1/imports/templates", &key.raw)
        .json(&json!({"name": "supplier X", "mapping": {"Code": "ean", "Article": "name"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let template = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = upload_ok(
        &app,
        &key.raw,
        "g.csv",
        text.into_bytes(),
        &[("template_id", &template)],
    )
    .await;
    let j = wait(
        &app,
        &key.raw,
        "imports",
        &id,
        &["ready", "awaiting_mapping", "failed"],
    )
    .await;
    assert_eq!(j["status"], "ready", "{j}");
    let list: Value = app
        .with_key(Method::GET, "/api/v1/imports/templates", &key.raw)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    // An unknown template is refused at upload.
    let res = upload(
        &app,
        &key.raw,
        "h.csv",
        b"ean,name\n".to_vec(),
        &[("template_id", crate::helpers::NOWHERE_ID)],
    )
    .await;
    assert_problem(res, 422, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn bad_rows_are_logged_with_their_row_and_field_and_the_report_lists_them() {
    let app = spawn_app().await;
    let (_, key) = app
        .admin_and_key(&[SCOPES, &["ext:products:read"]].concat())
        .await;
    let (a, b) = (ean(30), ean(31));
    let text = format!(
        "ean;name;price\n\
         {a};First;1,00\n\
         1234;Bad EAN;2,00\n\
         {b};Bad price;douze\n\
         {a};Second;3,00\n\
         {b};Wide;4,00;extra;cells\n"
    );
    let id = upload_ok(
        &app,
        &key.raw,
        "f.csv",
        text.into_bytes(),
        &[("auto_process", "true")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (
            done["processed_rows"].clone(),
            done["successful_rows"].clone(),
            done["failed_rows"].clone()
        ),
        (json!(5), json!(2), json!(3))
    );
    // The later row of a repeated EAN wins, and the log says so.
    assert_eq!(product_by_ean(&app, &key.raw, &a).await["name"], "Second");
    let warnings = logs(&app, &key.raw, &id, "warning").await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["row"], 5);
    assert!(warnings[0]["message"].as_str().unwrap().contains("row 2"));
    let errors = logs(&app, &key.raw, &id, "error").await;
    let found: Vec<(u64, String)> = errors
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["field"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (3, "ean".to_owned()),
            (4, "price".to_owned()),
            (6, "row".to_owned())
        ]
    );
    let res = app
        .with_key(
            Method::GET,
            &format!("/api/v1/imports/jobs/{id}/error-report"),
            &key.raw,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(header_text(&res, "content-type").starts_with("text/csv"));
    let report = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(report.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["row", "ean", "name", "price", "error"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[0][0], "3");
    assert_eq!(&rows[0][1], "1234");
    assert!(rows[0][4].starts_with("ean:"), "{:?}", &rows[0]);
    assert_eq!(&rows[1][2], "Bad price");
}

#[actix_web::test]
async fn a_file_whose_every_row_fails_ends_failed_with_import_failed() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    let id = upload_ok(
        &app,
        &key.raw,
        "f.csv",
        b"ean,name\n1,a\n2,b\n".to_vec(),
        &[("auto_process", "true")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error_code"], "IMPORT_FAILED");
    assert_eq!(done["failed_rows"], 2);
}

#[actix_web::test]
async fn a_dry_run_says_what_it_would_do_and_writes_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    app.create_product(&key.raw, &ean(40), "Existing").await;
    let text = format!(
        "ean,name\n{},Existing renamed\n{},New\nbad,x\n",
        ean(40),
        ean(41)
    );
    let id = upload_ok(
        &app,
        &key.raw,
        "f.csv",
        text.into_bytes(),
        &[("auto_process", "true"), ("dry_run", "true")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["dry_run"], true);
    assert_eq!(
        (
            done["created_rows"].clone(),
            done["updated_rows"].clone(),
            done["failed_rows"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
    let info = logs(&app, &key.raw, &id, "info").await;
    let said: Vec<&str> = info
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        said[0].contains("would update") && said[1].contains("would create"),
        "{said:?}"
    );
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["name"], "Existing");
}

#[actix_web::test]
async fn hostile_files_get_a_clear_answer_and_write_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    let uploads = app.data_dir.path().join("jobs/uploads");
    // Over 50 MiB: 413, and nothing stays on disk.
    let big = vec![b'a'; 50 * 1024 * 1024 + 1];
    let res = upload(&app, &key.raw, "big.csv", big, &[]).await;
    assert_problem(res, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    // A bad form value, a supplier that does not exist: 422.
    let res = upload(
        &app,
        &key.raw,
        "f.csv",
        b"ean,name\n".to_vec(),
        &[("supplier_code", "NOPE")],
    )
    .await;
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = upload(
        &app,
        &key.raw,
        "f.csv",
        b"ean,name\n".to_vec(),
        &[("dry_run", "maybe")],
    )
    .await;
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    // Not multipart at all: 415.
    let res = app
        .with_key(Method::POST, "/api/v1/imports/upload", &key.raw)
        .json(&json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;

    // Files that are not what they say end `failed` with a reason.
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.xlsx");
    // A workbook whose sheet unpacks to 300 MiB of zeros.
    Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n\
             with z.open('xl/worksheets/sheet1.xml', 'w', force_zip64=True) as f:\n\
             \x20   block = bytes(1 << 20)\n\
             \x20   for _ in range(300): f.write(block)\n\
             z.close()\n",
        )
        .arg(&bomb)
        .status()
        .expect("python3 writes the zip");
    let wide = (0..5000)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n1,2\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("noise.xlsx", noise.clone(), "not a readable XLSX"),
        ("noise.json", noise.clone(), "JSON"),
        // No extension: the first bytes decide, and binary is no CSV.
        ("noise", noise, "not text"),
        ("bomb.xlsx", std::fs::read(&bomb).unwrap(), "unpack"),
        ("wide.csv", wide.into_bytes(), "columns"),
        ("empty.csv", b"ean;name\n".to_vec(), "no data rows"),
    ];
    for (name, bytes, reason) in cases {
        let id = upload_ok(&app, &key.raw, name, bytes, &[("auto_process", "true")]).await;
        let done = wait(
            &app,
            &key.raw,
            "imports",
            &id,
            &["failed", "completed", "ready", "awaiting_mapping"],
        )
        .await;
        assert_eq!(done["status"], "failed", "{name}: {done}");
        assert_eq!(done["error_code"], "IMPORT_FAILED", "{name}");
        let said = done["error"].as_str().unwrap();
        assert!(said.contains(reason), "{name}: {said}");
    }
    // An unterminated quote swallows the rest of the file into one cell: that row fails, the
    // rows before it are imported.
    let mut text = format!("ean,name\n{},Good\n{},\"runaway\n", ean(50), ean(51));
    text.push_str(&"more text,\n".repeat(7000));
    let id = upload_ok(
        &app,
        &key.raw,
        "quote.csv",
        text.into_bytes(),
        &[("auto_process", "true")],
    )
    .await;
    let done = wait(&app, &key.raw, "imports", &id, &["failed", "completed"]).await;
    assert_eq!(
        (done["successful_rows"].clone(), done["failed_rows"].clone()),
        (json!(1), json!(1)),
        "{done}"
    );
    let errors = logs(&app, &key.raw, &id, "error").await;
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("unterminated"),
        "{errors:?}"
    );
    // Every failed upload's file is gone.
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
}

#[actix_web::test]
async fn jobs_belong_to_their_tenant_and_environment_and_downloads_need_exports_write() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(SCOPES).await;
    let test_key = app.create_key(&admin.token, SCOPES, "test").await;
    let reader = app
        .create_key(&admin.token, &["exports:read", "imports:read"], "live")
        .await;
    let id = upload_ok(
        &app,
        &key.raw,
        "f.csv",
        format!("ean,name\n{},A\n", ean(60)).into_bytes(),
        &[],
    )
    .await;
    let res = app
        .with_key(
            Method::GET,
            &format!("/api/v1/imports/jobs/{id}"),
            &test_key.raw,
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "NOT_FOUND").await;
    let res = app
        .with_key(Method::GET, &format!("/api/v1/exports/jobs/{id}"), &key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "NOT_FOUND").await;
    let res = app
        .with_key(Method::POST, "/api/v1/exports/csv/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let export = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait(&app, &key.raw, "exports", &export, &["completed"]).await;
    let download = format!("/api/v1/exports/jobs/{export}/download");
    let res = app
        .with_key(Method::GET, &download, &reader.raw)
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 403, "PERMISSION_DENIED").await;
    assert!(body["detail"].as_str().unwrap().contains("exports:write"));
    let res = app
        .with_key(Method::GET, &download, &test_key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "NOT_FOUND").await;
    let res = app
        .with_key(Method::GET, &download, &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = upload(&app, &reader.raw, "f.csv", b"ean,name\n".to_vec(), &[]).await;
    assert_problem(res, 403, "PERMISSION_DENIED").await;
}

/// A catalog with what exports must carry faithfully: accents, a formula, a quote, a comma.
async fn catalog_for_export(app: &TestApp, key: &str) {
    for (n, name, active) in [
        (70, "Crème \"brûlée\", maison", true),
        (71, "=HYPERLINK(\"http://x\")", true),
        (72, "@SUM(A1)", false),
    ] {
        let res = app
            .with_key(Method::POST, "/api/v1/products", key)
            .json(&json!({"ean": ean(n), "name": name, "price": 2.5, "is_active": active, "attributes": {"colour": "vert"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
}

async fn export(app: &TestApp, key: &str, format: &str, body: Value) -> (Value, Vec<u8>, String) {
    let res = app
        .with_key(
            Method::POST,
            &format!("/api/v1/exports/{format}/products"),
            key,
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait(app, key, "exports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let res = app
        .with_key(
            Method::GET,
            &format!("/api/v1/exports/jobs/{id}/download"),
            key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let disposition = header_text(&res, "content-disposition");
    let bytes = res.bytes().await.unwrap().to_vec();
    assert_eq!(done["file_size"], bytes.len());
    (done, bytes, disposition)
}

#[actix_web::test]
async fn exports_are_read_back_by_independent_readers() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    catalog_for_export(&app, &key.raw).await;
    let dir = tempfile::tempdir().unwrap();

    // CSV: Python's csv module reads it; the formulas are shown, never run.
    let (done, bytes, disposition) = export(
        &app,
        &key.raw,
        "csv",
        json!({"include_fields": ["ean", "name", "price", "is_active"]}),
    )
    .await;
    assert_eq!(done["total_rows"], 3);
    assert!(
        disposition.starts_with("attachment; filename=\"products-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    assert!(bytes.starts_with("\u{feff}".as_bytes()), "a BOM by default");
    let path = dir.path().join("out.csv");
    std::fs::write(&path, &bytes).unwrap();
    let rows: Value = serde_json::from_str(&py(
        "import csv, json, sys\n\
         with open(sys.argv[1], newline='', encoding='utf-8-sig') as f: print(json.dumps(list(csv.reader(f))))\n",
        &[path.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(rows[0], json!(["ean", "name", "price", "is_active"]));
    assert_eq!(
        rows[1],
        json!([ean(70), "Crème \"brûlée\", maison", "2.5", "true"])
    );
    assert_eq!(rows[2][1], "'=HYPERLINK(\"http://x\")");
    assert_eq!(rows[3][1], "'@SUM(A1)");

    // Filters of the product list apply.
    let (done, bytes, _) = export(
        &app,
        &key.raw,
        "csv",
        json!({"filters": {"is_active": false}, "utf8_bom": false}),
    )
    .await;
    assert_eq!(done["total_rows"], 1);
    assert!(!bytes.starts_with("\u{feff}".as_bytes()));
    let (done, _, _) = export(
        &app,
        &key.raw,
        "csv",
        json!({"filters": {"search": "creme"}}),
    )
    .await;
    assert_eq!(done["total_rows"], 1);

    // JSON, pretty and as lines.
    let (_, bytes, _) = export(&app, &key.raw, "json", json!({})).await;
    let all: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[0]["attributes"]["colour"], "vert");
    assert_eq!(
        all[0]["name"], "Crème \"brûlée\", maison",
        "JSON is data: no formula prefix"
    );
    let (_, bytes, disposition) = export(&app, &key.raw, "json", json!({"json_lines": true})).await;
    assert!(disposition.ends_with(".ndjson\""));
    let lines: Vec<Value> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    // XLSX: openpyxl reads both sheets.
    let res = app
        .with_token(Method::POST, "/api/v1/suppliers", &app.admin().await.token)
        .json(&json!({"code": "ACME", "name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (_, bytes, _) = export(
        &app,
        &key.raw,
        "xlsx",
        json!({"include_sheets": ["products", "suppliers"]}),
    )
    .await;
    let path = dir.path().join("out.xlsx");
    std::fs::write(&path, &bytes).unwrap();
    let book: Value = serde_json::from_str(&py(
        "import json, sys, openpyxl\n\
         wb = openpyxl.load_workbook(sys.argv[1], read_only=True)\n\
         print(json.dumps({ws.title: [list(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets}))\n",
        &[path.to_str().unwrap()],
    ))
    .unwrap();
    let products = book["products"].as_array().unwrap();
    assert_eq!(products.len(), 4);
    assert_eq!(products[0][1], "ean");
    assert_eq!(products[1][1], ean(70));
    assert_eq!(products[1][8], 2.5, "prices are numbers");
    assert_eq!(
        products[2][5], "=HYPERLINK(\"http://x\")",
        "a string cell, never a formula"
    );
    assert_eq!(book["suppliers"][1][1], "ACME");

    // Unknown columns and sheets: 422.
    let res = app
        .with_key(Method::POST, "/api/v1/exports/csv/products", &key.raw)
        .json(&json!({"include_fields": ["ean", "secret"]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = app
        .with_key(Method::POST, "/api/v1/exports/xlsx/products", &key.raw)
        .json(&json!({"include_sheets": ["users"]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn an_export_answers_410_once_expired_and_the_sweep_removes_its_file() {
    let app = spawn_app_with(ServeArgs {
        export_retention: Some("1h".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    catalog_for_export(&app, &key.raw).await;
    let (done, _, _) = export(&app, &key.raw, "csv", json!({})).await;
    let id = done["id"].as_str().unwrap();
    let file = app
        .data_dir
        .path()
        .join(format!("jobs/exports/{}.csv", id.replace('-', "")));
    assert!(file.exists());
    app.clock.advance(time::Duration::minutes(61));
    let res = app
        .with_key(
            Method::GET,
            &format!("/api/v1/exports/jobs/{id}/download"),
            &key.raw,
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 410, "EXPORT_EXPIRED").await;
    let expired = app.jobs.sweep().unwrap();
    assert_eq!(expired, 1);
    assert!(!file.exists());
    assert_eq!(
        job(&app, &key.raw, "exports", id).await["status"],
        "expired"
    );
}

#[actix_web::test]
async fn an_import_paused_by_a_restart_resumes_where_it_stopped() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(SCOPES).await;
    let mut text = String::from("ean,name\n");
    for n in 0..6000 {
        text.push_str(&format!("{},Product {n}\n", ean(1000 + n)));
    }
    let id = upload_ok(
        &app,
        &key.raw,
        "big.csv",
        text.into_bytes(),
        &[("auto_process", "true")],
    )
    .await;
    // Stop the server while the job runs: the worker finishes its batch and the job stays
    // `processing`; the next start resumes it after its last batch.
    let started = Instant::now();
    loop {
        let j = job(&app, &key.raw, "imports", &id).await;
        if j["processed_rows"].as_u64().unwrap() > 0 || j["status"] == "completed" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    let app = app.restart().await;
    let done = wait(&app, &key.raw, "imports", &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (
            done["processed_rows"].clone(),
            done["created_rows"].clone(),
            done["failed_rows"].clone()
        ),
        (json!(6000), json!(6000), json!(0))
    );
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products?per_page=1", &key.raw)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 6000);
}

/// An API key with the job scopes, created with the admin's token on a running binary.
async fn binary_key(base: &str, token: &str) -> String {
    let res = crate::binary::insecure_client()
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "jobs", "scopes": SCOPES}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn binary_job(base: &str, key: &str, id: &str) -> Value {
    crate::binary::insecure_client()
        .get(format!("{base}/api/v1/imports/jobs/{id}"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[actix_web::test]
async fn an_import_killed_by_kill_9_resumes_with_exact_counts_and_no_duplicate() {
    use crate::binary::{cli, insecure_client, login, serve};
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PIXEE_ADMIN_EMAIL", "admin@example.com"),
        ("PIXEE_ADMIN_PASSWORD", "kill nine admin pass 1"),
    ];
    let flags = [
        "--key-reads-per-minute",
        "1000000",
        "--key-writes-per-minute",
        "1000000",
    ];
    let mut server = serve(dir.path(), &flags, &env).await;
    let token = login(&server.base, env[0].1, env[1].1).await;
    let key = binary_key(&server.base, &token).await;
    // 20 000 rows: every 97th has a bad EAN, and every 1000th repeats the EAN of the row
    // before it (the later row wins).
    let rows = 20_000u64;
    let mut text = String::from("ean;name;price\n");
    let (mut good, mut bad) = (std::collections::BTreeSet::new(), 0u64);
    for n in 0..rows {
        let e = if n % 97 == 0 {
            bad += 1;
            "123".to_owned()
        } else if n % 1000 == 999 {
            ean(5000 + n - 1)
        } else {
            ean(5000 + n)
        };
        if e != "123" {
            good.insert(e.clone());
        }
        text.push_str(&format!("{e};Item {n};{},50\n", n % 50));
    }
    let form = Form::new()
        .part("file", Part::bytes(text.into_bytes()).file_name("big.csv"))
        .text("auto_process", "true");
    let res = insecure_client()
        .post(format!("{}/api/v1/imports/upload", server.base))
        .header("X-API-Key", &key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // kill -9 once some batches are committed and before the last.
    let started = Instant::now();
    let at_kill = loop {
        let j = binary_job(&server.base, &key, &id).await;
        let done = j["processed_rows"].as_u64().unwrap();
        assert_ne!(
            j["status"], "completed",
            "the job ended before it could be killed"
        );
        if done >= 2000 {
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            break done;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{j}");
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    };
    drop(server);
    let server = serve(dir.path(), &flags, &env).await;
    let started = Instant::now();
    let done = loop {
        let j = binary_job(&server.base, &key, &id).await;
        if j["status"] == "completed" || j["status"] == "failed" {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{j}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(at_kill < rows);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["processed_rows"], rows);
    assert_eq!(done["failed_rows"], bad);
    assert_eq!(done["successful_rows"], rows - bad);
    assert_eq!(done["created_rows"], good.len() as u64, "{done}");
    assert_eq!(done["updated_rows"], rows - bad - good.len() as u64);
    // One product per EAN, and exactly one error entry per bad row.
    let list: Value = insecure_client()
        .get(format!("{}/api/v1/products?per_page=1", server.base))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], good.len() as u64);
    let errors: Value = insecure_client()
        .get(format!(
            "{}/api/v1/imports/jobs/{id}/logs?level=error&per_page=1",
            server.base
        ))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(errors["total"], bad);
    drop(server);
    let check = cli(dir.path()).arg("check").output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[actix_web::test]
async fn the_cli_imports_and_exports_a_catalog_on_a_stopped_server() {
    use crate::binary::cli;
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let out = cli(dir.path())
        .args(["tenant", "create", "--name", "acme"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = files.path().join("in.csv");
    let text = format!(
        "Réf;Libellé;PV\n{};Crème;2,50\n{};Thé;1,00\n",
        ean(90),
        ean(91)
    );
    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&text);
    std::fs::write(&input, &bytes).unwrap();
    // `Réf` is the reference, `PV` is unknown: map it on the command line.
    let out = cli(dir.path())
        .args([
            "import",
            input.to_str().unwrap(),
            "--tenant",
            "acme",
            "--mapping",
            "PV=price,Réf=ean",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 created"), "{stderr}");
    let csv_out = files.path().join("out.csv");
    let out = cli(dir.path())
        .args([
            "export",
            "--tenant",
            "acme",
            "--format",
            "csv",
            "--out",
            csv_out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_str(&py(
        "import csv, json, sys\n\
         with open(sys.argv[1], newline='', encoding='utf-8-sig') as f: print(json.dumps([[r['ean'], r['name'], r['price']] for r in csv.DictReader(f)]))\n",
        &[csv_out.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(
        rows,
        json!([[ean(90), "Crème", "2.5"], [ean(91), "Thé", "1"]])
    );
    let xlsx_out = files.path().join("out.xlsx");
    let out = cli(dir.path())
        .args([
            "export",
            "--tenant",
            "acme",
            "--format",
            "xlsx",
            "--out",
            xlsx_out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = py(
        "import sys, openpyxl\n\
         wb = openpyxl.load_workbook(sys.argv[1], read_only=True)\n\
         print(wb.sheetnames, wb['products'].max_row)\n",
        &[xlsx_out.to_str().unwrap()],
    );
    assert_eq!(names.trim(), "['products', 'suppliers'] 3");
    // The data dir is whole, and a missing mapping is a clear failure.
    let check = cli(dir.path()).arg("check").output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(&input, "a;b\n1;2\n").unwrap();
    let out = cli(dir.path())
        .args(["import", input.to_str().unwrap(), "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mapping"));
}
