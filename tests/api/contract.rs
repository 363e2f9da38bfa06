//! The contract, proven from outside. schemathesis, an independent OpenAPI fuzzer (installed
//! by scripts/test), drives the compiled binary from static/openapi.json with every check it
//! has, with an API key and with sessions; and a table of scripted requests shows that every
//! status the document lists for an operation is one the live server answers.
use crate::helpers::refresh_cookie;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DOC: &str = include_str!("../../static/openapi.json");
/// The pinned version; scripts/test installs exactly this one.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
const ADMIN_EMAIL: &str = "admin@localhost";
const ADMIN_PASSWORD: &str = "contract admin pass 1";
/// Test cases per operation and phase: enough to reach every operation's edge cases, small
/// enough that the four runs take well under a minute on two cores.
const MAX_EXAMPLES: &str = "15";
/// A well-formed id that names nothing.
const NOWHERE: &str = "00000000-0000-4000-8000-000000000000";

/// Rules of pixee-pim that JSON Schema cannot state (the document states them in words): an
/// EAN's GS1 check digit, an API key's expiry window relative to now, and the password policy
/// (8 to 1024 bytes of UTF-8, not on the common-password list). A generated value that breaks
/// only such a rule is adjusted before it is sent; everything else goes out as generated, so
/// "schema-valid data is accepted" stays a strict check.
const HOOKS: &str = r#"
import datetime
import os
import re

import schemathesis

with open(os.environ["PIXEE_COMMON_PASSWORDS"], encoding="utf-8") as f:
    COMMON = {line.strip() for line in f if line.strip()}


def ean_with_check_digit(ean):
    body = [int(c) for c in ean[:-1]]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return ean[:-1] + str((10 - total % 10) % 10)


def acceptable_password(password):
    if len(password.encode("utf-8")) < 8 or password.lower() in COMMON:
        password += " contract 1"
    while len(password.encode("utf-8")) > 1024:
        password = password[:-1]
    return password


PASSWORD_FIELDS = {
    ("POST", "/api/v1/users"): "password",
    ("POST", "/api/v1/auth/password"): "new_password",
}


@schemathesis.hook
def before_call(context, case, kwargs):
    method, path = case.operation.method.upper(), case.operation.path
    params = case.path_parameters if case.path_parameters is not None else {}
    # An EAN in a path gets its check digit; PUT creates, so its EAN must be one.
    ean = params.get("ean")
    if isinstance(ean, str) and re.fullmatch(r"[0-9]{8}|[0-9]{13}", ean):
        params["ean"] = ean_with_check_digit(ean)
    elif "ean" in params and method == "PUT":
        params["ean"] = "96385074"
    # The feed's position must be a time (tests/api/partner.rs tries bad ones).
    ts = params.get("ts")
    if "ts" in params and not (isinstance(ts, str) and re.fullmatch(r"[0-9]{1,10}", ts)):
        params["ts"] = "0"
    body = case.body
    if not isinstance(body, dict):
        return
    partner = path.startswith("/api/v1/ext/products") or path.startswith("/api/v1/windev/products")
    if partner and "{ean}" in path:
        # A body may repeat the path's EAN, never name another (tests/api/partner.rs).
        body.pop("ean", None)
    if partner or (path.startswith("/api/v1/products") and path != "/api/v1/products/bulk-delete"):
        ean = body.get("ean")
        if isinstance(ean, str) and re.fullmatch(r"[0-9]{8}|[0-9]{13}", ean):
            body["ean"] = ean_with_check_digit(ean)
        # A supplier reference must name an existing supplier, which no generator can know,
        # and `barcode` may only repeat the EAN: both are tested in tests/api/suppliers.rs and
        # tests/api/products.rs.
        body.pop("supplier_id", None)
        body.pop("supplier_code", None)
        # Category ids likewise (tests/api/categories.rs).
        body.pop("category_ids", None)
        if "barcode" in body:
            if isinstance(body.get("ean"), str):
                body["barcode"] = body["ean"]
            else:
                body.pop("barcode")
    elif (method, path) == ("POST", "/api/v1/imports/upload"):
        # The supplier and the template must exist (tests/api/jobs.rs); a value that breaks
        # the schema stays, so a negative case stays negative.
        uuid = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
        for field in ("supplier_id", "template_id"):
            if isinstance(body.get(field), str) and uuid.fullmatch(body[field]):
                body.pop(field)
        if isinstance(body.get("supplier_code"), str):
            body.pop("supplier_code")
    elif path.startswith("/api/v1/categories"):
        # A parent must be an existing category (tests/api/categories.rs).
        body.pop("parent_id", None)
    elif (method, path) == ("POST", "/api/v1/api-keys"):
        # Extra tenants must be tenants the caller administers (tests/api/tenant_keys.rs).
        body.pop("tenant_ids", None)
        expires = body.get("expires_at")
        if isinstance(expires, str):
            try:
                datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                return
            later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
            body["expires_at"] = later.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif path.startswith("/api/v1/webhooks"):
        # A generated URL names a host no test can reach, or an address the policy refuses
        # (tests/api/webhooks.rs): a URL the schema accepts becomes a name that never
        # resolves. Headers the schema accepts may still be reserved names (tested there).
        url = body.get("url")
        if isinstance(url, str) and len(url) <= 2048 and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", url):
            body["url"] = "https://receiver.invalid/hook"
        headers = body.get("headers")
        if isinstance(headers, dict) and len(headers) <= 20 and all(
            isinstance(v, str) and len(v) <= 1024 for v in headers.values()
        ):
            body.pop("headers")
    else:
        field = PASSWORD_FIELDS.get((method, path))
        if field and isinstance(body.get(field), str):
            body[field] = acceptable_password(body[field])
"#;

/// The schemathesis settings every run shares (the hooks file and credentials are added).
const CONFIG: &str = r#"
[cache]
enabled = false

[generation]
database = "none"

# `current_password` must be the caller's own password, which no generator can know: a
# schema-valid change is refused with the documented 422 that names `current_password`.
[[operations]]
include-operation-id = "changePassword"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# The upload's "negative" cases in its headers reach the server without the mutated header
# (a value no HTTP client can send is dropped), so the request that arrives is a valid one;
# its answer may be the 202 of a valid upload. The upload's refusals (413, 415, 422, unknown
# form fields) are tested in tests/api/jobs.rs and in the status table below.
[[operations]]
include-operation-id = "uploadImport"
checks.negative_data_rejection.expected-statuses = ["202", "400", "401", "403", "404", "406", "409", "413", "415", "422", "429", "5xx"]
"#;

/// The compiled binary serving a fresh data dir; killed on drop.
struct Server {
    /// Kept for its lifetime: dropping it kills the server.
    _process: crate::binary::Server,
    base: String,
    addr: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let process = crate::binary::serve(
            dir.path(),
            flags,
            &[
                ("PIXEE_ADMIN_EMAIL", ADMIN_EMAIL),
                ("PIXEE_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ],
        )
        .await;
        let base = process.base.clone();
        Server {
            addr: base.trim_start_matches("http://").to_owned(),
            log: process.stderr.clone(),
            base,
            _process: process,
            _dir: dir,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// schemathesis

/// The venv's schemathesis, at the pinned version. Missing is a failure, not a skip.
fn schemathesis() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/schemathesis");
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run scripts/test, which creates that venv and \
         installs schemathesis=={SCHEMATHESIS_VERSION}",
        path.display()
    );
    let out = Command::new(&path).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.trim().ends_with(SCHEMATHESIS_VERSION),
        "{} is {version:?}, not the pinned {SCHEMATHESIS_VERSION}: run scripts/test, which \
         reinstalls it",
        path.display()
    );
    path
}

/// Runs `cmd` to completion or until `limit`; returns its exit code (None: killed) and output.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|pipe| {
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    })
    .collect();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let text = out.lock().unwrap().clone();
    (code, text)
}

/// One schemathesis run: the security schemes it fills (scheme, config field, value) and the
/// operations it tests.
struct Run {
    name: &'static str,
    auth: Vec<(&'static str, &'static str, String)>,
    filters: Vec<&'static str>,
}

/// The operations that can end or replace the caller's own session: left out of the session
/// run so they cannot cut it short, and run after it with sessions of their own. Logging out
/// ends the session on the first success, so those two get a session apart.
const SESSION_CHANGING: [&str; 3] = ["changePassword", "endSession", "refreshSession"];
const LOGGING_OUT: [&str; 2] = ["logout", "logoutAll"];

#[actix_web::test]
async fn schemathesis_finds_no_failure_with_a_key_or_a_session() {
    let st = schemathesis();
    // Limits and lockout are off: the fuzzer must see the contract, not the brakes (the table
    // below proves 423 and 429 on a server with them on).
    let server = Server::start(&[
        "--key-reads-per-minute",
        "1000000",
        "--key-writes-per-minute",
        "1000000",
        "--login-rate-per-minute",
        "0",
        "--lockout-threshold",
        "1000000",
    ])
    .await;
    let client = client();
    let login = || async {
        let res = client
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        let cookie = refresh_cookie(&res).unwrap();
        let body: Value = res.json().await.unwrap();
        (body["access_token"].as_str().unwrap().to_owned(), cookie)
    };
    let (session, _) = login().await;
    let (changing_session, changing_cookie) = login().await;
    let (leaving_session, _) = login().await;
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let every_scope = doc["components"]["schemas"]["Scope"]["enum"].clone();
    let res = client
        .post(format!("{}/api/v1/api-keys", server.base))
        .bearer_auth(&session)
        .json(&json!({"name": "contract", "scopes": every_scope}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let work = tempfile::tempdir().unwrap();
    let hooks = work.path().join("hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();
    let runs = [
        // A key cannot end a session, but rotating itself would end the run's own credential;
        // the session run rotates the keys it creates.
        Run {
            name: "API key",
            auth: vec![("apiKey", "api_key", key)],
            filters: vec!["--exclude-operation-id", "rotateApiKey"],
        },
        Run {
            name: "session",
            auth: vec![("bearerAuth", "bearer", session)],
            filters: SESSION_CHANGING
                .iter()
                .chain(&LOGGING_OUT)
                .flat_map(|op| ["--exclude-operation-id", op])
                .collect(),
        },
        Run {
            name: "session-changing",
            auth: vec![
                ("bearerAuth", "bearer", changing_session),
                ("refreshCookie", "api_key", changing_cookie),
            ],
            filters: SESSION_CHANGING
                .iter()
                .flat_map(|op| ["--include-operation-id", op])
                .collect(),
        },
        Run {
            name: "logout",
            auth: vec![("bearerAuth", "bearer", leaving_session)],
            filters: LOGGING_OUT
                .iter()
                .flat_map(|op| ["--include-operation-id", op])
                .collect(),
        },
    ];
    // A guard against a hung run, not a benchmark: the four runs take about 45 s on two
    // otherwise idle cores, and two to three times that beside the rest of the suite.
    let budget = Duration::from_secs(300);
    let all_started = Instant::now();
    for run in runs {
        // Credentials reach schemathesis through the environment, never a file.
        let mut config = format!("hooks = \"{}\"\n{CONFIG}", hooks.display());
        let mut cmd = Command::new(&st);
        for (i, (scheme, field, value)) in run.auth.iter().enumerate() {
            config.push_str(&format!(
                "\n[auth.openapi.{scheme}]\n{field} = \"${{PIXEE_CONTRACT_CREDENTIAL_{i}}}\"\n"
            ));
            cmd.env(format!("PIXEE_CONTRACT_CREDENTIAL_{i}"), value);
        }
        let config_path = work.path().join("schemathesis.toml");
        std::fs::write(&config_path, config).unwrap();
        cmd.current_dir(work.path())
            .env(
                "PIXEE_COMMON_PASSWORDS",
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/common-passwords.txt"),
            )
            .env("NO_COLOR", "1")
            .arg("--config-file")
            .arg(&config_path)
            .arg("run")
            .arg(format!("{}/api/v1/openapi.json", server.base))
            .args(["--checks", "all"])
            .args(["--max-examples", MAX_EXAMPLES])
            .arg("--generation-deterministic")
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .arg("--no-color")
            .args(&run.filters);
        let started = Instant::now();
        let left = budget.saturating_sub(all_started.elapsed());
        let (code, output) = run_bounded(cmd, left);
        let outcome = code.map_or("killed: over the time budget".to_owned(), |c| {
            format!("exit {c}")
        });
        assert!(
            code == Some(0),
            "schemathesis {} run: {outcome} after {:.0?}\n{output}\n--- server log ---\n{}",
            run.name,
            started.elapsed(),
            server.log.lock().unwrap()
        );
        eprintln!(
            "schemathesis {} run passed in {:.1?}: {}",
            run.name,
            started.elapsed(),
            output
                .lines()
                .find(|l| l.contains(" generated, "))
                .unwrap_or("")
                .trim()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Every documented status is reachable

/// One documented operation.
struct Op {
    method: Method,
    path: String,
    statuses: BTreeSet<u16>,
}

/// The document's operations by operationId, the requests sent so far and what they proved.
struct Table {
    base: String,
    client: reqwest::Client,
    ops: BTreeMap<String, Op>,
    reached: BTreeSet<(String, u16)>,
    /// Context for the generic probes.
    admin: String,
    tenant: String,
    spent_key: String,
}

fn operations() -> BTreeMap<String, Op> {
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let id = op["operationId"].as_str().unwrap().to_owned();
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|s| {
                    s.parse()
                        .unwrap_or_else(|_| panic!("{id}: status {s} is not a number"))
                })
                .collect();
            ops.insert(
                id,
                Op {
                    method,
                    path: path.clone(),
                    statuses,
                },
            );
        }
    }
    ops
}

impl Table {
    fn req(&self, op: &str, id: &str) -> RequestBuilder {
        let op = &self.ops[op];
        let mut path = op.path.clone();
        for param in ["{id}", "{ean}", "{ref}", "{ts}"] {
            path = path.replace(param, id);
        }
        self.client
            .request(op.method.clone(), format!("{}{path}", self.base))
    }

    /// A new live key with these scopes (each partner scenario takes fresh rate windows).
    async fn key(&self, scopes: &[&str]) -> String {
        let res = self
            .client
            .post(format!("{}/api/v1/api-keys", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"name": "contract partner", "scopes": scopes}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        res.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends `rb`, which must answer `status`, a status the document lists for `op`.
    async fn probe(&mut self, op: &str, status: u16, rb: RequestBuilder) -> Response {
        assert!(
            self.ops
                .get(op)
                .is_some_and(|o| o.statuses.contains(&status)),
            "the table expects {status} from {op}, which the document does not list"
        );
        let res = rb.send().await.unwrap();
        let got = res.status().as_u16();
        if got != status {
            let body = res.text().await.unwrap_or_default();
            panic!("{op}: expected {status}, got {got}: {body}");
        }
        self.reached.insert((op.to_owned(), status));
        res
    }

    async fn probe_json(&mut self, op: &str, status: u16, rb: RequestBuilder) -> Value {
        self.probe(op, status, rb).await.json().await.unwrap()
    }

    /// Logs in (200); returns the access token and the refresh cookie.
    async fn login(&mut self, email: &str, password: &str) -> (String, String) {
        let rb = self
            .req("login", "")
            .json(&json!({"email": email, "password": password}));
        let res = self.probe("login", 200, rb).await;
        let cookie = refresh_cookie(&res).unwrap();
        let body: Value = res.json().await.unwrap();
        (body["access_token"].as_str().unwrap().to_owned(), cookie)
    }

    /// A request that answers `status` from any operation that documents it, or None when that
    /// status needs a scenario of its own.
    fn generic(&self, op: &str, status: u16) -> Option<RequestBuilder> {
        let o = &self.ops[op];
        let public = op == "login" || op == "refreshSession";
        let is_get = o.method == Method::GET;
        let id = match (op, status) {
            (_, 404) => "no-such-id",
            // The tenant is checked before the body is read.
            ("addTenantMember", _) => self.tenant.as_str(),
            _ => NOWHERE,
        };
        if status == 404 && !o.path.contains("{id}") {
            return None;
        }
        // The partner surfaces take keys only: their scenarios are in `partner_statuses`.
        if o.path.starts_with("/api/v1/ext/") || o.path.starts_with("/api/v1/windev/") {
            return None;
        }
        let rb = self.req(op, id);
        let oversized = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
        Some(match status {
            400 if public => rb.header("content-type", "application/json").body("{"),
            400 => rb
                .bearer_auth(&self.admin)
                .header("X-Tenant-ID", "not-a-tenant-id"),
            401 if op == "login" => {
                rb.json(&json!({"email": "nobody@example.com", "password": "not the password"}))
            }
            401 if op == "refreshSession" => rb.json(&json!({})),
            401 => rb,
            403 if !public => rb.bearer_auth(&self.admin).header("X-Tenant-ID", NOWHERE),
            404 => rb.bearer_auth(&self.admin),
            413 => rb
                .bearer_auth(&self.admin)
                .header("content-type", "application/json")
                .body(oversized),
            415 => rb
                .bearer_auth(&self.admin)
                .header("content-type", "text/plain")
                .body("{}"),
            422 if is_get => {
                let url = format!("{}{}?per_page=0", self.base, o.path.replace("{id}", id));
                self.client
                    .request(o.method.clone(), url)
                    .bearer_auth(&self.admin)
            }
            422 => rb.bearer_auth(&self.admin).json(&json!([])),
            429 if !public => rb.header("X-API-Key", &self.spent_key),
            _ => return None,
        })
    }
}

/// POST /auth/password answers 423 when the account locks between the token check and the
/// password check: the request's head (and token) arrives, the account is locked by failed
/// logins, then the body arrives. Locking ends every session, so this is the only way in.
async fn password_change_meets_a_lock(t: &mut Table, addr: &str, email: &str, password: &str) {
    let (token, _) = t.login(email, password).await;
    let body =
        json!({"current_password": password, "new_password": "racer password 2"}).to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/auth/password HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // "100 Continue" comes once the server has dispatched the request (and so checked the
    // token); the handler is now waiting for the body.
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let rb = t
            .req("login", "")
            .json(&json!({"email": email, "password": "not the password"}));
        t.probe("login", 401, rb).await;
    }
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap_or("");
    assert_eq!(status, "423", "{answer}");
    t.reached.insert(("changePassword".to_owned(), 423));
}

/// Polls a job with the admin session until `ready(status)`.
async fn job_until(t: &Table, kind: &str, id: &str, ready: impl Fn(&str) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let j: Value = t
            .client
            .get(format!("{}/api/v1/{kind}/jobs/{id}", t.base))
            .bearer_auth(&t.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready(j["status"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{j}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The import and export jobs: the statuses that need a job in a given state. The server runs
/// one job at a time, so a long import holds the runner while the others wait their turn.
async fn job_statuses(t: &mut Table) {
    let upload = |t: &Table, name: &str, bytes: Vec<u8>, fields: &[(&str, &str)]| {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        t.req("uploadImport", "")
            .bearer_auth(&t.admin)
            .multipart(form)
    };
    let ean = |n: u64| {
        pixee_pim::domain::Ean::from_body(710_000_000_000 + n)
            .as_str()
            .to_owned()
    };
    let mut big = String::from("ean,name\n");
    for n in 0..40_000 {
        big.push_str(&format!("{},Item {n}\n", ean(n)));
    }
    let rb = upload(t, "big.csv", big.into_bytes(), &[("auto_process", "true")]);
    let busy = t.probe_json("uploadImport", 202, rb).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rb = upload(t, "f.csv", b"ean,name\n".to_vec(), &[("dry_run", "maybe")]);
    t.probe("uploadImport", 422, rb).await;
    let rb = upload(t, "huge.csv", vec![b'a'; 50 * 1024 * 1024 + 1], &[]);
    t.probe("uploadImport", 413, rb).await;
    job_until(t, "imports", &busy, |s| s == "processing").await;
    let rb = t.req("getImportJob", &busy).bearer_auth(&t.admin);
    t.probe("getImportJob", 200, rb).await;
    let rb = t
        .req("putImportMapping", &busy)
        .bearer_auth(&t.admin)
        .json(&json!({"mapping": {"ean": "ean", "name": "name"}}));
    t.probe("putImportMapping", 409, rb).await;
    let rb = t.req("processImportJob", &busy).bearer_auth(&t.admin);
    t.probe("processImportJob", 409, rb).await;
    // An export waits behind the import: no file yet (409); cancelled, then cancelled again.
    let rb = t
        .req("createCsvExport", "")
        .bearer_auth(&t.admin)
        .json(&json!({}));
    let queued = t.probe_json("createCsvExport", 202, rb).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rb = t.req("downloadExport", &queued).bearer_auth(&t.admin);
    t.probe("downloadExport", 409, rb).await;
    for status in [200, 409] {
        let rb = t.req("cancelExportJob", &queued).bearer_auth(&t.admin);
        t.probe("cancelExportJob", status, rb).await;
    }
    for status in [200, 409] {
        let rb = t.req("cancelImportJob", &busy).bearer_auth(&t.admin);
        t.probe("cancelImportJob", status, rb).await;
    }
    // A file whose columns need a mapping; mapped, processed, with one bad row.
    let text = format!("Code,Article\n{},Lamp\nbad,Chair\n", ean(50_000));
    let rb = upload(t, "map.csv", text.into_bytes(), &[]);
    let id = t.probe_json("uploadImport", 202, rb).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    job_until(t, "imports", &id, |s| s == "awaiting_mapping").await;
    let rb = t
        .req("putImportMapping", &id)
        .bearer_auth(&t.admin)
        .json(&json!({"mapping": {"Code": "ean", "Article": "name"}}));
    t.probe("putImportMapping", 200, rb).await;
    let rb = t.req("processImportJob", &id).bearer_auth(&t.admin);
    t.probe("processImportJob", 202, rb).await;
    job_until(t, "imports", &id, |s| s == "completed").await;
    for op in ["getImportLogs", "getImportErrorReport"] {
        let rb = t.req(op, &id).bearer_auth(&t.admin);
        t.probe(op, 200, rb).await;
    }
    for op in ["listImportJobs", "listImportTemplates", "listExportJobs"] {
        let rb = t.req(op, "").bearer_auth(&t.admin);
        t.probe(op, 200, rb).await;
    }
    let rb = t
        .req("createImportTemplate", "")
        .bearer_auth(&t.admin)
        .json(&json!({"name": "layout", "mapping": {"Code": "ean"}}));
    t.probe("createImportTemplate", 201, rb).await;
    for op in ["createJsonExport", "createXlsxExport"] {
        let rb = t.req(op, "").bearer_auth(&t.admin).json(&json!({}));
        t.probe(op, 202, rb).await;
    }
    // A completed export downloads until it expires (4 s on this server), then 410.
    let rb = t
        .req("createCsvExport", "")
        .bearer_auth(&t.admin)
        .json(&json!({}));
    let id = t.probe_json("createCsvExport", 202, rb).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    job_until(t, "exports", &id, |s| s == "completed").await;
    let rb = t.req("getExportJob", &id).bearer_auth(&t.admin);
    t.probe("getExportJob", 200, rb).await;
    let rb = t.req("downloadExport", &id).bearer_auth(&t.admin);
    t.probe("downloadExport", 200, rb).await;
    actix_web::rt::time::sleep(Duration::from_millis(4100)).await;
    let rb = t.req("downloadExport", &id).bearer_auth(&t.admin);
    t.probe("downloadExport", 410, rb).await;
}

/// The `/ext` and `/windev` operations: every documented status, with keys (a fresh one per
/// operation, so the 20-a-minute windows of this server hold).
async fn partner_statuses(t: &mut Table) {
    const EXT: &[&str] = &["ext:products:read", "ext:products:write"];
    const WINDEV: &[&str] = &["windev:read", "windev:write", "windev:sync"];
    let ean = |n: u64| {
        pixee_pim::domain::Ean::from_body(700_000_000_000 + n)
            .as_str()
            .to_owned()
    };
    let (a, b, unknown) = (ean(1), ean(2), ean(3));
    let none = t.key(&["products:read"]).await;
    let ops: Vec<(String, bool)> = t
        .ops
        .iter()
        .filter(|(_, o)| {
            o.path.starts_with("/api/v1/ext/") || o.path.starts_with("/api/v1/windev/")
        })
        .map(|(id, o)| (id.clone(), o.method != Method::GET))
        .collect();
    // What every authenticated operation answers the same way: 401, 403, 400, and for bodies
    // 413 and 415.
    for (op, writes) in &ops {
        if op == "windevStatus" {
            continue;
        }
        let statuses = t.ops[op.as_str()].statuses.clone();
        let (scopes, target) = if op.starts_with("ext") {
            (EXT, a.as_str())
        } else {
            (WINDEV, a.as_str())
        };
        let key = t.key(scopes).await;
        let body = || json!({"products": [], "items": []});
        let rb = t.req(op, target).json(&body());
        t.probe(op, 401, rb).await;
        let rb = t.req(op, target).header("X-API-Key", &none).json(&body());
        t.probe(op, 403, rb).await;
        let rb = t
            .req(op, target)
            .header("X-API-Key", &key)
            .header("X-Tenant-ID", "not-a-tenant-id")
            .json(&body());
        t.probe(op, 400, rb).await;
        if *writes && statuses.contains(&413) {
            let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(20 * 1024));
            let rb = t
                .req(op, target)
                .header("X-API-Key", &key)
                .header("content-type", "application/json")
                .body(huge);
            t.probe(op, 413, rb).await;
            let rb = t
                .req(op, target)
                .header("X-API-Key", &key)
                .header("content-type", "text/plain")
                .body("{}");
            t.probe(op, 415, rb).await;
            let rb = t
                .req(op, target)
                .header("X-API-Key", &key)
                .header("content-type", "application/json")
                .body("{");
            t.probe(op, 400, rb).await;
        }
    }

    // The answers themselves, and 404, 409 and 422.
    let ext = t.key(EXT).await;
    let with = |t: &Table, op: &str, id: &str, key: &str| t.req(op, id).header("X-API-Key", key);
    let rb = with(t, "extStatus", "", &ext);
    t.probe("extStatus", 200, rb).await;
    let rb = with(t, "extCreateProduct", "", &ext).json(&json!({"ean": a, "name": "Partner A"}));
    t.probe("extCreateProduct", 201, rb).await;
    let rb = with(t, "extCreateProduct", "", &ext).json(&json!({"ean": a, "name": "Again"}));
    t.probe("extCreateProduct", 409, rb).await;
    let rb = with(t, "extCreateProduct", "", &ext).json(&json!({"ean": "1", "name": "Bad"}));
    t.probe("extCreateProduct", 422, rb).await;
    let rb = with(t, "extListProducts", "", &ext);
    t.probe("extListProducts", 200, rb).await;
    let url = format!("{}/api/v1/ext/products?page_size=0", t.base);
    let rb = t.client.get(url).header("X-API-Key", &ext);
    t.probe("extListProducts", 422, rb).await;
    let rb = with(t, "extGetProduct", &a, &ext);
    t.probe("extGetProduct", 200, rb).await;
    let rb = with(t, "extGetProduct", &unknown, &ext);
    t.probe("extGetProduct", 404, rb).await;
    let rb = with(t, "extPatchProduct", &a, &ext).json(&json!({"reference": "PARTNER-A"}));
    t.probe("extPatchProduct", 200, rb).await;
    let rb = with(t, "extPatchProduct", &unknown, &ext).json(&json!({"stock": 1}));
    t.probe("extPatchProduct", 404, rb).await;
    let rb = with(t, "extPatchProduct", &a, &ext).json(&json!({"price": -1}));
    t.probe("extPatchProduct", 422, rb).await;
    let rb = with(t, "extPutProduct", &b, &ext).json(&json!({"name": "Partner B"}));
    t.probe("extPutProduct", 201, rb).await;
    let rb = with(t, "extPutProduct", &b, &ext).json(&json!({"name": "Partner B2"}));
    t.probe("extPutProduct", 200, rb).await;
    let rb = with(t, "extPutProduct", &b, &ext)
        .json(&json!({"name": "Clash", "reference": "PARTNER-A"}));
    t.probe("extPutProduct", 409, rb).await;
    let rb = with(t, "extPutProduct", &b, &ext).json(&json!({"ean": a, "name": "Moved"}));
    t.probe("extPutProduct", 422, rb).await;
    let rb = with(t, "extPatchProduct", &b, &ext).json(&json!({"reference": "PARTNER-A"}));
    t.probe("extPatchProduct", 409, rb).await;
    for op in ["extBatchUpsert", "extBatchPatch"] {
        let rb = with(t, op, "", &ext).json(&json!({"products": [{"ean": a, "stock": 2}]}));
        t.probe(op, 200, rb).await;
        let rb = with(t, op, "", &ext).json(&json!({"products": []}));
        t.probe(op, 422, rb).await;
    }

    let wd = t.key(WINDEV).await;
    let rb = t.req("windevStatus", "");
    t.probe("windevStatus", 200, rb).await;
    let rb = with(t, "windevListProducts", "", &wd);
    t.probe("windevListProducts", 200, rb).await;
    let url = format!("{}/api/v1/windev/products?per_page=0", t.base);
    let rb = t.client.get(url).header("X-API-Key", &wd);
    t.probe("windevListProducts", 422, rb).await;
    let rb = with(t, "windevSince", "0", &wd);
    t.probe("windevSince", 200, rb).await;
    let rb = with(t, "windevSince", "yesterday", &wd);
    t.probe("windevSince", 422, rb).await;
    for op in ["windevCategories", "windevSuppliers"] {
        let rb = with(t, op, "", &wd);
        t.probe(op, 200, rb).await;
    }
    for op in ["windevGetProduct", "windevActivate", "windevDeactivate"] {
        let rb = with(t, op, "PARTNER-A", &wd);
        t.probe(op, 200, rb).await;
        let rb = with(t, op, "PARTNER-NONE", &wd);
        t.probe(op, 404, rb).await;
    }
    let rb = with(t, "windevPatchProduct", "PARTNER-A", &wd).json(&json!({"stock": 4}));
    t.probe("windevPatchProduct", 200, rb).await;
    let rb = with(t, "windevPatchProduct", "PARTNER-NONE", &wd).json(&json!({"stock": 4}));
    t.probe("windevPatchProduct", 404, rb).await;
    let rb = with(t, "windevPatchProduct", &b, &wd).json(&json!({"reference": "PARTNER-A"}));
    t.probe("windevPatchProduct", 409, rb).await;
    let rb = with(t, "windevPatchProduct", "PARTNER-A", &wd).json(&json!({"price": -1}));
    t.probe("windevPatchProduct", 422, rb).await;
    let wd2 = t.key(WINDEV).await;
    for (op, line) in [
        (
            "windevStockUpdate",
            json!({"reference": "PARTNER-A", "stock": 3}),
        ),
        (
            "windevPricesUpdate",
            json!({"reference": "PARTNER-A", "price": 3.5}),
        ),
    ] {
        let rb = with(t, op, "", &wd2).json(&json!({"items": [line]}));
        t.probe(op, 200, rb).await;
        let rb = with(t, op, "", &wd2).json(&json!({"items": []}));
        t.probe(op, 422, rb).await;
    }
    let rb = with(t, "windevSync", "", &wd2)
        .json(&json!({"products": [{"reference": "PARTNER-A", "name": "Synced"}]}));
    t.probe("windevSync", 200, rb).await;
    let rb = with(t, "windevSync", "", &wd2).json(&json!({"products": []}));
    t.probe("windevSync", 422, rb).await;

    // 429: one key's read window, then its write window, spent.
    for (scopes, read_op, write_op) in [
        (EXT, "extStatus", "extBatchUpsert"),
        (WINDEV, "windevCategories", "windevStockUpdate"),
    ] {
        let key = t.key(scopes).await;
        for op in [read_op, write_op] {
            for _ in 0..20 {
                with(t, op, "", &key)
                    .json(&json!({"items": [], "products": []}))
                    .send()
                    .await
                    .unwrap();
            }
        }
        for (op, _) in ops.iter().filter(|(op, _)| {
            op.starts_with(if scopes == EXT { "ext" } else { "windev" }) && op != "windevStatus"
        }) {
            let rb = with(t, op, &a, &key).json(&json!({}));
            t.probe(op, 429, rb).await;
        }
    }
}

/// Every (operation, status) the document lists, except 500, is answered by the live server to
/// a request in this table; the table expects no status the document does not list. 500 is
/// the shape of an internal failure: no request can provoke it, and every request here and in
/// the schemathesis runs asserts that none happens.
/// Webhooks: created, read, changed, tested (a name that never resolves: the test's delivery
/// is pending with its error), delivered again, refused past 50, deleted.
async fn webhook_statuses(t: &mut Table) {
    let admin = t.admin.clone();
    let hook = |n: usize| {
        json!({"name": format!("contract {n}"), "url": "https://receiver.invalid/hook",
               "events": ["product.created", "test"]})
    };
    let rb = t
        .req("createWebhook", "")
        .bearer_auth(&admin)
        .json(&hook(0));
    let created = t.probe_json("createWebhook", 201, rb).await;
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["id"].as_str().unwrap().to_owned();
    let rb = t.req("listWebhooks", "").bearer_auth(&admin);
    t.probe("listWebhooks", 200, rb).await;
    let rb = t.req("getWebhook", &id).bearer_auth(&admin);
    t.probe("getWebhook", 200, rb).await;
    let rb = t
        .req("patchWebhook", &id)
        .bearer_auth(&admin)
        .json(&json!({"timeout_seconds": 5}));
    t.probe("patchWebhook", 200, rb).await;
    let rb = t.req("testWebhook", &id).bearer_auth(&admin);
    let delivery = t.probe_json("testWebhook", 200, rb).await;
    assert_eq!(delivery["status"], "pending", "{delivery}");
    assert!(delivery["error"].is_string(), "{delivery}");
    let rb = t.req("listWebhookDeliveries", &id).bearer_auth(&admin);
    t.probe("listWebhookDeliveries", 200, rb).await;
    let redeliver = format!(
        "{}/api/v1/webhooks/{id}/deliveries/{}/redeliver",
        t.base,
        delivery["id"].as_str().unwrap()
    );
    let rb = t.client.post(&redeliver).bearer_auth(&admin);
    t.probe("redeliverWebhookDelivery", 202, rb).await;
    for n in 1..pixee_pim::webhooks::MAX_WEBHOOKS {
        let rb = t
            .req("createWebhook", "")
            .bearer_auth(&admin)
            .json(&hook(n));
        t.probe("createWebhook", 201, rb).await;
    }
    let rb = t
        .req("createWebhook", "")
        .bearer_auth(&admin)
        .json(&hook(99));
    t.probe("createWebhook", 409, rb).await;
    let rb = t.req("deleteWebhook", &id).bearer_auth(&admin);
    t.probe("deleteWebhook", 204, rb).await;
}

/// Statuses no request to a healthy server can bring: a 500, `/readyz`'s 503 (a background
/// part stopped; tests/api/operations.rs stops one in-process and sees it), and `/metrics`'s
/// 401 (only with `--metrics-token`, which this server has not; operations.rs sets it).
fn unreachable_here(pair: &(String, u16)) -> bool {
    pair.1 == 500
        || (pair.0 == "getReadiness" && pair.1 == 503)
        || (pair.0 == "getMetrics" && pair.1 == 401)
}

#[actix_web::test]
async fn every_documented_status_is_reachable() {
    // Small limits so that 413, 423 and 429 take a few requests.
    let server = Server::start(&[
        "--json-limit-bytes",
        "1024",
        "--key-reads-per-minute",
        "20",
        "--key-writes-per-minute",
        "20",
        "--login-rate-per-minute",
        "30",
        "--lockout-threshold",
        "3",
        "--refresh-rate-per-minute",
        "3",
        "--export-retention",
        "4s",
    ])
    .await;
    let mut t = Table {
        base: server.base.clone(),
        client: client(),
        ops: operations(),
        reached: BTreeSet::new(),
        admin: String::new(),
        tenant: String::new(),
        spent_key: String::new(),
    };

    // Public routes and sessions.
    let rb = t.req("getHealth", "");
    t.probe("getHealth", 200, rb).await;
    let rb = t.req("getReadiness", "");
    t.probe("getReadiness", 200, rb).await;
    let rb = t.req("getMetrics", "");
    t.probe("getMetrics", 200, rb).await;
    let rb = t
        .req("getMetrics", "")
        .header("X-Forwarded-For", "198.51.100.4");
    t.probe("getMetrics", 403, rb).await;
    let rb = t.req("getApiDocs", "");
    t.probe("getApiDocs", 200, rb).await;
    let rb = t.req("getOpenApiDocument", "");
    t.probe("getOpenApiDocument", 200, rb).await;
    let (admin, _) = t.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    t.admin = admin.clone();
    let rb = t.req("getMe", "").bearer_auth(&admin);
    let me = t.probe_json("getMe", 200, rb).await;
    t.tenant = me["tenant"]["id"].as_str().unwrap().to_owned();
    let rb = t.req("listSessions", "").bearer_auth(&admin);
    t.probe("listSessions", 200, rb).await;
    let (_, cookie) = t.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let refresh = |t: &Table, cookie: &str| {
        t.req("refreshSession", "")
            .header("cookie", format!("refresh_token={cookie}"))
            .json(&json!({}))
    };
    let res = t.probe("refreshSession", 200, refresh(&t, &cookie)).await;
    let next = refresh_cookie(&res).unwrap();
    // The spent cookie again at once: within the grace period, 409 (the session goes on).
    t.probe("refreshSession", 409, refresh(&t, &cookie)).await;
    // The session's third refresh this minute fits its window of three; the fourth is 429.
    let res = t.probe("refreshSession", 200, refresh(&t, &next)).await;
    let next = refresh_cookie(&res).unwrap();
    t.probe("refreshSession", 429, refresh(&t, &next)).await;
    let (other, _) = t.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let rb = t.req("logout", "").bearer_auth(&other);
    t.probe("logout", 204, rb).await;
    let (other, _) = t.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let rb = t.req("listSessions", "").bearer_auth(&other);
    let sessions = t.probe_json("listSessions", 200, rb).await;
    let own = sessions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rb = t.req("endSession", &own).bearer_auth(&admin);
    t.probe("endSession", 204, rb).await;

    // Users and tenants.
    let member =
        json!({"email": "member@example.com", "password": "member password 1", "role": "viewer"});
    let rb = t.req("createUser", "").bearer_auth(&admin).json(&member);
    let user = t.probe_json("createUser", 201, rb).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let rb = t.req("createUser", "").bearer_auth(&admin).json(&member);
    t.probe("createUser", 409, rb).await;
    let racer =
        json!({"email": "racer@example.com", "password": "racer password 1", "role": "viewer"});
    let rb = t.req("createUser", "").bearer_auth(&admin).json(&racer);
    t.probe("createUser", 201, rb).await;
    let rb = t.req("listUsers", "").bearer_auth(&admin);
    t.probe("listUsers", 200, rb).await;
    let rb = t.req("unlockUser", &user_id).bearer_auth(&admin);
    t.probe("unlockUser", 200, rb).await;
    let (token, _) = t.login("member@example.com", "member password 1").await;
    let rb = t.req("logoutAll", "").bearer_auth(&token);
    t.probe("logoutAll", 204, rb).await;
    let (token, _) = t.login("member@example.com", "member password 1").await;
    let rb = t.req("changePassword", "").bearer_auth(&token).json(
        &json!({"current_password": "member password 1", "new_password": "member password 2"}),
    );
    t.probe("changePassword", 200, rb).await;
    let rb = t.req("listTenants", "").bearer_auth(&admin);
    t.probe("listTenants", 200, rb).await;
    let tenant = json!({"name": "contract tenant"});
    let rb = t.req("createTenant", "").bearer_auth(&admin).json(&tenant);
    let created = t.probe_json("createTenant", 201, rb).await;
    let rb = t.req("createTenant", "").bearer_auth(&admin).json(&tenant);
    t.probe("createTenant", 409, rb).await;
    let rb = t
        .req("addTenantMember", created["id"].as_str().unwrap())
        .bearer_auth(&admin)
        .json(&json!({"email": "member@example.com", "role": "viewer"}));
    t.probe("addTenantMember", 201, rb).await;
    let rb = t.req("listAuditEvents", "").bearer_auth(&admin);
    t.probe("listAuditEvents", 200, rb).await;

    // A key that also works in the new tenant, withdrawn from it by that tenant's admin (the
    // superadmin); the home tenant cannot be withdrawn.
    let second = created["id"].as_str().unwrap().to_owned();
    let rb = t
        .req("createApiKey", "")
        .bearer_auth(&admin)
        .json(&json!({"name": "two tenants", "scopes": ["products:read"], "tenant_ids": [second]}));
    let shared = t.probe_json("createApiKey", 201, rb).await;
    let withdraw = |tenant: &str| {
        format!(
            "{}/api/v1/api-keys/{}/tenants/{tenant}",
            t.base,
            shared["id"].as_str().unwrap()
        )
    };
    let (away, home) = (
        withdraw(&second),
        withdraw(shared["home_tenant_id"].as_str().unwrap()),
    );
    let rb = t.client.delete(&away).bearer_auth(&admin);
    t.probe("withdrawApiKeyTenant", 204, rb).await;
    let rb = t.client.delete(&home).bearer_auth(&admin);
    t.probe("withdrawApiKeyTenant", 409, rb).await;

    // API keys: a key rotates itself; a revoked key cannot be rotated.
    let rb = t.req("listApiKeys", "").bearer_auth(&admin);
    t.probe("listApiKeys", 200, rb).await;
    let new_key = json!({"name": "contract", "scopes": ["products:read"]});
    let rb = t.req("createApiKey", "").bearer_auth(&admin).json(&new_key);
    let key = t.probe_json("createApiKey", 201, rb).await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let rb = t.req("getApiKey", &key_id).bearer_auth(&admin);
    t.probe("getApiKey", 200, rb).await;
    let rb = t
        .req("rotateApiKey", &key_id)
        .header("X-API-Key", key["key"].as_str().unwrap());
    t.probe("rotateApiKey", 200, rb).await;
    let rb = t.req("revokeApiKey", &key_id).bearer_auth(&admin);
    t.probe("revokeApiKey", 204, rb).await;
    let rb = t.req("rotateApiKey", &key_id).bearer_auth(&admin);
    t.probe("rotateApiKey", 409, rb).await;
    let rb = t.req("createApiKey", "").bearer_auth(&admin).json(&new_key);
    let spent = t.probe_json("createApiKey", 201, rb).await;
    t.spent_key = spent["key"].as_str().unwrap().to_owned();

    // Products: EANs are unique per tenant and environment.
    let rb = t.req("listProducts", "").bearer_auth(&admin);
    t.probe("listProducts", 200, rb).await;
    let one = json!({"ean": "4006381333931", "name": "Contract one"});
    let rb = t.req("createProduct", "").bearer_auth(&admin).json(&one);
    let p1 = t.probe_json("createProduct", 201, rb).await;
    let p1 = p1["id"].as_str().unwrap().to_owned();
    let rb = t
        .req("createProduct", "")
        .bearer_auth(&admin)
        .json(&json!({"ean": "96385074", "name": "Contract two"}));
    let p2 = t.probe_json("createProduct", 201, rb).await;
    let p2 = p2["id"].as_str().unwrap().to_owned();
    let rb = t.req("createProduct", "").bearer_auth(&admin).json(&one);
    t.probe("createProduct", 409, rb).await;
    let rb = t.req("getProduct", &p1).bearer_auth(&admin);
    t.probe("getProduct", 200, rb).await;
    let rb = t.req("replaceProduct", &p1).bearer_auth(&admin).json(&one);
    t.probe("replaceProduct", 200, rb).await;
    let rb = t
        .req("patchProduct", &p1)
        .bearer_auth(&admin)
        .json(&json!({"stock": 7}));
    t.probe("patchProduct", 200, rb).await;
    let clash = json!({"ean": "96385074", "name": "Clash"});
    let rb = t
        .req("replaceProduct", &p1)
        .bearer_auth(&admin)
        .json(&clash);
    t.probe("replaceProduct", 409, rb).await;
    let rb = t.req("patchProduct", &p1).bearer_auth(&admin).json(&clash);
    t.probe("patchProduct", 409, rb).await;
    let rb = t
        .req("bulkDeleteProducts", "")
        .bearer_auth(&admin)
        .json(&json!({"ids": [p2, "no-such-id"]}));
    t.probe("bulkDeleteProducts", 200, rb).await;
    let rb = t.req("deleteProduct", &p1).bearer_auth(&admin);
    t.probe("deleteProduct", 204, rb).await;

    // Suppliers: unique codes; a referenced supplier is deleted only with `detach`.
    let rb = t.req("listSuppliers", "").bearer_auth(&admin);
    t.probe("listSuppliers", 200, rb).await;
    let acme = json!({"code": "ACME", "name": "Acme"});
    let rb = t.req("createSupplier", "").bearer_auth(&admin).json(&acme);
    let s1 = t.probe_json("createSupplier", 201, rb).await;
    let s1 = s1["id"].as_str().unwrap().to_owned();
    let rb = t.req("createSupplier", "").bearer_auth(&admin).json(&acme);
    t.probe("createSupplier", 409, rb).await;
    let rb = t
        .req("createSupplier", "")
        .bearer_auth(&admin)
        .json(&json!({"code": "BOLT", "name": "Bolt"}));
    t.probe("createSupplier", 201, rb).await;
    let rb = t.req("getSupplier", &s1).bearer_auth(&admin);
    t.probe("getSupplier", 200, rb).await;
    let rb = t
        .req("patchSupplier", &s1)
        .bearer_auth(&admin)
        .json(&json!({"lead_time_days": 4}));
    t.probe("patchSupplier", 200, rb).await;
    let rb = t
        .req("patchSupplier", &s1)
        .bearer_auth(&admin)
        .json(&json!({"code": "bolt"}));
    t.probe("patchSupplier", 409, rb).await;
    let rb = t
        .req("createProduct", "")
        .bearer_auth(&admin)
        .json(&json!({"ean": "4006381333931", "name": "Supplied", "supplier_code": "ACME"}));
    t.probe("createProduct", 201, rb).await;
    let rb = t.req("deleteSupplier", &s1).bearer_auth(&admin);
    t.probe("deleteSupplier", 409, rb).await;
    let rb = t
        .req("deleteSupplier", &s1)
        .query(&[("detach", "true")])
        .bearer_auth(&admin);
    t.probe("deleteSupplier", 204, rb).await;

    // Categories: sibling names are unique; a category with products or children is deleted
    // only with `cascade`; one mapping per category and channel.
    let rb = t.req("listCategories", "").bearer_auth(&admin);
    t.probe("listCategories", 200, rb).await;
    let garden = json!({"name": "Garden"});
    let rb = t
        .req("createCategory", "")
        .bearer_auth(&admin)
        .json(&garden);
    let c1 = t.probe_json("createCategory", 201, rb).await;
    let c1 = c1["id"].as_str().unwrap().to_owned();
    let rb = t
        .req("createCategory", "")
        .bearer_auth(&admin)
        .json(&garden);
    t.probe("createCategory", 409, rb).await;
    let rb = t
        .req("createCategory", "")
        .bearer_auth(&admin)
        .json(&json!({"name": "Tools", "parent_id": c1}));
    let c2 = t.probe_json("createCategory", 201, rb).await;
    let c2 = c2["id"].as_str().unwrap().to_owned();
    let rb = t.req("getCategory", &c1).bearer_auth(&admin);
    t.probe("getCategory", 200, rb).await;
    let rb = t
        .req("patchCategory", &c2)
        .bearer_auth(&admin)
        .json(&json!({"position": 3}));
    t.probe("patchCategory", 200, rb).await;
    let rb = t
        .req("patchCategory", &c2)
        .bearer_auth(&admin)
        .json(&json!({"parent_id": null, "name": "garden"}));
    t.probe("patchCategory", 409, rb).await;
    let mapping = format!("{}/api/v1/categories/{c2}/mappings/shopify", t.base);
    for status in [201, 200] {
        let rb = t
            .client
            .put(&mapping)
            .bearer_auth(&admin)
            .json(&json!({"external_id": "gid://shopify/Collection/7"}));
        t.probe("putCategoryMapping", status, rb).await;
    }
    let rb = t.req("listCategoryMappings", "").bearer_auth(&admin);
    t.probe("listCategoryMappings", 200, rb).await;
    let rb = t.client.delete(&mapping).bearer_auth(&admin);
    t.probe("deleteCategoryMapping", 204, rb).await;
    let rb = t
        .req("createProduct", "")
        .bearer_auth(&admin)
        .json(&json!({"ean": "96385074", "name": "Filed", "category_ids": [c2]}));
    t.probe("createProduct", 201, rb).await;
    let rb = t.req("deleteCategory", &c1).bearer_auth(&admin);
    t.probe("deleteCategory", 409, rb).await;
    let rb = t
        .req("deleteCategory", &c1)
        .query(&[("cascade", "true")])
        .bearer_auth(&admin);
    t.probe("deleteCategory", 204, rb).await;

    // Lockout: the 3rd failure locks the email; then even the right password gets 423.
    for _ in 0..3 {
        let rb = t
            .req("login", "")
            .json(&json!({"email": "locked@example.com", "password": "not the password"}));
        t.probe("login", 401, rb).await;
    }
    let rb = t
        .req("login", "")
        .json(&json!({"email": "locked@example.com", "password": "not the password"}));
    t.probe("login", 423, rb).await;
    password_change_meets_a_lock(
        &mut t,
        &server.addr,
        "racer@example.com",
        "racer password 1",
    )
    .await;

    // Rate limits: the login limit per address (a key's windows run out further down).
    for _ in 0..40 {
        let res = t
            .req("login", "")
            .json(&json!({"email": "", "password": "x"}))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            422 => t.reached.insert(("login".to_owned(), 422)),
            429 => break,
            other => panic!("login: expected 422 until the limit, got {other}"),
        };
    }
    let rb = t
        .req("login", "")
        .json(&json!({"email": "", "password": "x"}));
    t.probe("login", 429, rb).await;

    partner_statuses(&mut t).await;
    job_statuses(&mut t).await;
    webhook_statuses(&mut t).await;

    // Both windows of the spent key run out last, so they are still full (a minute long)
    // when the generic requests below use it for 429.
    for (op, body) in [("getMe", None), ("logout", Some(json!({})))] {
        for _ in 0..21 {
            let mut rb = t.req(op, "").header("X-API-Key", &t.spent_key);
            if let Some(body) = &body {
                rb = rb.json(body);
            }
            rb.send().await.unwrap();
        }
    }

    // Whatever is left: the generic request for each status.
    let pending: Vec<(String, u16)> = t
        .ops
        .iter()
        .flat_map(|(id, op)| op.statuses.iter().map(move |s| (id.clone(), *s)))
        .filter(|pair| !unreachable_here(pair) && !t.reached.contains(pair))
        .collect();
    for (op, status) in pending {
        if let Some(rb) = t.generic(&op, status) {
            t.probe(&op, status, rb).await;
        }
    }

    let missing: Vec<String> = t
        .ops
        .iter()
        .flat_map(|(id, op)| op.statuses.iter().map(move |s| (id.clone(), *s)))
        .filter(|pair| !unreachable_here(pair) && !t.reached.contains(pair))
        .map(|(id, s)| format!("{id} {s}"))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not reached: {missing:?}"
    );
    eprintln!(
        "{} documented (operation, status) pairs reached",
        t.reached.len()
    );
}
