//! The compiled binary as a user runs it: first start, the CLI, the data-dir lock, kill -9
//! durability, backup and restore, TLS.
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pixee-pim");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cli(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("PIXEE_ADMIN_PASSWORD")
        .env("PIXEE_DATA_DIR", dir)
        .env("RUST_LOG", "info");
    c
}

/// Starts `serve` and waits until /healthz answers.
pub(crate) async fn serve(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut cmd = cli(dir);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let scheme = if extra.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://127.0.0.1:{port}");
    let client = insecure_client();
    let started = Instant::now();
    loop {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited with {status}: {}", stderr.lock().unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        base,
        stderr,
    }
}

pub(crate) fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// Creates a products:read key with an admin token; returns the 201 body (with `key`).
pub(crate) async fn create_key(base: &str, token: &str, name: &str) -> Value {
    let res = insecure_client()
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": name, "scopes": ["products:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

pub(crate) async fn login(base: &str, email: &str, password: &str) -> String {
    let res = insecure_client()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[actix_web::test]
async fn first_start_prints_the_generated_password_once_and_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &[]).await;
    let out = server.stderr.lock().unwrap().clone();
    let password = out
        .lines()
        .find_map(|l| l.split("(shown once, store it now): ").nth(1))
        .unwrap_or_else(|| panic!("no password line in {out}"))
        .trim()
        .to_owned();
    assert!(
        out.contains("/settings/"),
        "the settings URL is printed: {out}"
    );
    login(&server.base, "admin@localhost", &password).await;
    let me = reqwest::get(format!("{}/api/v1/auth/me", server.base))
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    drop(server);
    let again = serve(dir.path(), &[], &[]).await;
    assert!(
        !again.stderr.lock().unwrap().contains("shown once"),
        "later starts print no password"
    );
}

#[actix_web::test]
async fn logs_name_the_request_but_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[],
        &[("PIXEE_ADMIN_PASSWORD", "log test password 9")],
    )
    .await;
    let token = login(&server.base, "admin@localhost", "log test password 9").await;
    let client = insecure_client();
    let key: Value = create_key(&server.base, &token, "k").await;
    let raw = key["key"].as_str().unwrap();
    client
        .get(format!("{}/api/v1/products?x={raw}", server.base))
        .header("X-API-Key", raw)
        .send()
        .await
        .unwrap();
    // The access line is written as the response goes out: the client may see the answer
    // before the line reaches the pipe.
    let mut logs = String::new();
    for _ in 0..100 {
        logs = server.stderr.lock().unwrap().clone();
        if logs.contains("path=\"/api/v1/products\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        logs.contains("/api/v1/products") && logs.contains("status=200"),
        "{logs}"
    );
    for secret in [raw, token.as_str(), "log test password 9"] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[actix_web::test]
async fn the_cli_creates_a_working_test_key_for_offline_integration_tests() {
    let dir = tempfile::tempdir().unwrap();
    let created = cli(dir.path())
        .args(["tenant", "create", "--name", "acme"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let out = cli(dir.path())
        .args([
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ci",
            "--scopes",
            "products:read,products:write",
            "--test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let raw = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "the key alone on its line");
    assert!(raw.starts_with("pm_test_") && raw.len() == 46, "{raw}");
    let list = cli(dir.path())
        .args(["key", "list", "--tenant", "acme"])
        .output()
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(listed.contains("ci") && !listed.contains(raw), "{listed}");
    let server = serve(dir.path(), &[], &[]).await;
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/products", server.base))
        .header("X-API-Key", raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bad = cli(dir.path())
        .args([
            "key", "create", "--tenant", "acme", "--name", "x", "--scopes", "nope",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).lines().count(),
        1,
        "one readable line"
    );
}

#[actix_web::test]
async fn admin_commands_fail_at_once_while_a_server_holds_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(dir.path(), &[], &[]).await;
    let started = Instant::now();
    let out = cli(dir.path()).args(["tenant", "list"]).output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it must not hang"
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    let user = cli(dir.path())
        .args([
            "user", "create", "--email", "a@b.c", "--tenant", "default", "--role", "viewer",
        ])
        .env("PIXEE_PASSWORD", "a fine password 1")
        .output()
        .unwrap();
    assert_eq!(user.status.code(), Some(2));
}

#[actix_web::test]
async fn startup_failures_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = cli(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(dir.path())
        .args([
            "serve",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.pem",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(dir.path())
        .args(["serve", "--bogus-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses unknown flags");
}

/// Kills the server with SIGKILL right after each confirmed write, then checks the write held.
#[actix_web::test]
async fn confirmed_key_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [("PIXEE_ADMIN_PASSWORD", "durability pass 1")];
    let client = insecure_client();

    let mut server = serve(dir.path(), &[], &envs).await;
    let token = login(&server.base, "admin@localhost", "durability pass 1").await;
    let created: Value = create_key(&server.base, &token, "durable").await;
    let victim: Value = create_key(&server.base, &token, "victim").await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = serve(dir.path(), &[], &envs).await;
    let key = created["key"].as_str().unwrap();
    let ok = client
        .get(format!("{}/api/v1/products", server.base))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "a key answered 201 survives kill -9"
    );
    let revoke = client
        .delete(format!(
            "{}/api/v1/api-keys/{}",
            server.base,
            victim["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let rotated: Value = client
        .post(format!(
            "{}/api/v1/api-keys/{}/rotate",
            server.base,
            created["id"].as_str().unwrap()
        ))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = serve(dir.path(), &[], &envs).await;
    let status = |k: String| {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            client
                .get(format!("{base}/api/v1/products"))
                .header("X-API-Key", k)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        status(victim["key"].as_str().unwrap().to_owned()).await,
        StatusCode::UNAUTHORIZED,
        "revocation held"
    );
    assert_eq!(
        status(key.to_owned()).await,
        StatusCode::UNAUTHORIZED,
        "the rotated-away key stays dead"
    );
    assert_eq!(
        status(rotated["key"].as_str().unwrap().to_owned()).await,
        StatusCode::OK,
        "the rotated key survived"
    );
}

#[actix_web::test]
async fn backup_and_restore_carry_keys_and_users_to_a_new_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path())
        .args(["tenant", "create", "--name", "acme"])
        .output()
        .unwrap();
    let raw = String::from_utf8(
        cli(dir.path())
            .args([
                "key",
                "create",
                "--tenant",
                "acme",
                "--name",
                "b",
                "--scopes",
                "products:read",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let backup = dir.path().join("store.bak");
    let out = cli(dir.path())
        .args(["backup", "--out"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let target = tempfile::tempdir().unwrap();
    let out = cli(target.path())
        .args(["restore", "--from"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = cli(target.path())
        .args(["restore", "--from"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "restore refuses a non-empty data dir"
    );
    let server = serve(target.path(), &[], &[]).await;
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/products", server.base))
        .header("X-API-Key", &raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(server);

    let mut damaged = std::fs::read(&backup).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let damaged_path = dir.path().join("damaged.bak");
    std::fs::write(&damaged_path, damaged).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = cli(fresh.path())
        .args(["restore", "--from"])
        .arg(&damaged_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
}

#[actix_web::test]
async fn user_commands_read_the_password_from_stdin_and_unlock_works() {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path())
        .args(["tenant", "create", "--name", "acme"])
        .output()
        .unwrap();
    let mut child = cli(dir.path())
        .args([
            "user",
            "create",
            "--email",
            "Eve@Example.com",
            "--tenant",
            "acme",
            "--role",
            "editor",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"stdin password 42\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = serve(dir.path(), &["--lockout-threshold", "2"], &[]).await;
    for _ in 0..2 {
        reqwest::Client::new()
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&json!({"email": "eve@example.com", "password": "nope nope"}))
            .send()
            .await
            .unwrap();
    }
    let locked = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": "eve@example.com", "password": "stdin password 42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::LOCKED);
    drop(server);
    let out = cli(dir.path())
        .args(["user", "unlock", "--email", "eve@example.com"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = serve(dir.path(), &[], &[]).await;
    login(&server.base, "eve@example.com", "stdin password 42").await;
}

#[actix_web::test]
async fn serve_speaks_https_through_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let server = serve(
        &data,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
        &[("PIXEE_ADMIN_PASSWORD", "tls admin pass 7")],
    )
    .await;
    assert!(server.base.starts_with("https://"));
    let res = insecure_client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("strict-transport-security"));
    login(&server.base, "admin@localhost", "tls admin pass 7").await;
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", server.base.replace("https", "http")))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != StatusCode::OK,
        "plain HTTP is not served on the TLS port"
    );
}

#[actix_web::test]
async fn sigterm_shuts_down_cleanly_and_releases_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[], &[]).await;
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server did not stop on SIGTERM"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit, got {status}");
    // `--data-dir` is accepted after the subcommand too.
    let out = Command::new(BIN)
        .args(["tenant", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
}

/// For an admin locked out of the page: `user set-password` (stdin) ends the user's sessions
/// and lifts a lock; `key rotate` prints a new key once and the old one dies.
#[actix_web::test]
async fn set_password_and_key_rotate_work_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PIXEE_ADMIN_EMAIL", "root@example.com"),
        ("PIXEE_ADMIN_PASSWORD", "the first password 1"),
    ];
    let server = serve(dir.path(), &["--lockout-threshold", "2"], &env).await;
    let token = login(&server.base, env[0].1, env[1].1).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        client
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&json!({"email": env[0].1, "password": "not it at all"}))
            .send()
            .await
            .unwrap();
    }
    drop(server);
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = cli(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let said = run(
        &["user", "set-password", "--email", "ROOT@example.com"],
        b"the second password 2\n",
    );
    assert!(said.contains("every session ended"), "{said}");
    let short = cli(dir.path())
        .args(["user", "set-password", "--email", "root@example.com"])
        .env("PIXEE_PASSWORD", "short")
        .output()
        .unwrap();
    assert_eq!(
        short.status.code(),
        Some(1),
        "a password the policy refuses"
    );
    let created = run(
        &[
            "key",
            "create",
            "--tenant",
            "default",
            "--name",
            "cli",
            "--scopes",
            "products:read",
        ],
        b"",
    );
    let old_key = created.trim().to_owned();
    let listed = run(&["key", "list", "--tenant", "default"], b"");
    let id = listed.split('\t').next().unwrap().to_owned();
    let rotated = run(&["key", "rotate", &id], b"");
    let new_key = rotated.trim().to_owned();
    assert!(
        new_key.starts_with("pm_live_") && new_key != old_key,
        "{rotated}"
    );

    let server = serve(dir.path(), &[], &[]).await;
    let me = |auth: (&'static str, String)| {
        client
            .get(format!("{}/api/v1/auth/me", server.base))
            .header(auth.0, auth.1)
            .send()
    };
    let old_session = me(("Authorization", format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(
        old_session.status(),
        StatusCode::UNAUTHORIZED,
        "sessions ended"
    );
    let refused = client
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": env[0].1, "password": env[1].1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the old password"
    );
    // The lock is lifted: the new password logs in at once.
    login(&server.base, env[0].1, "the second password 2").await;
    let old = me(("X-API-Key", old_key)).await.unwrap();
    assert_eq!(
        old.status(),
        StatusCode::UNAUTHORIZED,
        "the rotated-out key"
    );
    let new = me(("X-API-Key", new_key)).await.unwrap();
    assert_eq!(new.status(), StatusCode::OK, "the rotated-in key");
}

/// `--log-format json`: every line is one JSON object with the same fields as the text lines
/// (the request id, method, path, status), and no secret.
#[actix_web::test]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--log-format", "json"],
        &[("PIXEE_ADMIN_PASSWORD", "json log password 9")],
    )
    .await;
    let token = login(&server.base, "admin@localhost", "json log password 9").await;
    let key: Value = create_key(&server.base, &token, "k").await;
    let raw = key["key"].as_str().unwrap();
    insecure_client()
        .get(format!("{}/api/v1/products", server.base))
        .header("X-API-Key", raw)
        .send()
        .await
        .unwrap();
    let mut logs = String::new();
    for _ in 0..100 {
        logs = server.stderr.lock().unwrap().clone();
        if logs.contains("\"/api/v1/products\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut request_lines = 0;
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["level"].is_string() && object["timestamp"].is_string(),
            "{line}"
        );
        if object["path"] == "/api/v1/products" {
            request_lines += 1;
            assert_eq!(object["method"], "GET", "{line}");
            assert_eq!(object["status"], 200, "{line}");
            assert!(
                object["request_id"]
                    .as_str()
                    .is_some_and(|id| id.len() == 32),
                "{line}"
            );
        }
    }
    assert_eq!(request_lines, 1, "{logs}");
    // Lines that are not JSON come only from the first start's banner (printed, not logged).
    for line in logs
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
    {
        assert!(line.starts_with("pixee-pim: "), "not a JSON line: {line}");
    }
    for secret in [raw, token.as_str(), "json log password 9"] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

/// Shell completions and the man page come from the same clap definitions as the parser: bash
/// loads its script and completes a subcommand; the man page names every subcommand.
#[test]
fn completions_and_the_man_page_cover_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = |args: &[&str]| {
        let o = cli(dir.path()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let bash = out(&["completions", "bash"]);
    let script = dir.path().join("pixee-pim.bash");
    std::fs::write(&script, &bash).unwrap();
    let completed = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; f=$(complete -p pixee-pim | sed -E 's/.*-F ([^ ]+).*/\\1/'); \
             COMP_WORDS=(pixee-pim healthc); COMP_CWORD=1; $f pixee-pim healthc pixee-pim; \
             echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        completed.status.success(),
        "{}",
        String::from_utf8_lossy(&completed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&completed.stdout).trim(),
        "healthcheck"
    );
    assert!(out(&["completions", "zsh"]).starts_with("#compdef pixee-pim"));
    assert!(out(&["completions", "fish"]).contains("complete -c pixee-pim"));
    let bad = cli(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let man = out(&["man"]);
    assert!(
        man.starts_with(".ie") || man.starts_with(".TH"),
        "{}",
        &man[..80.min(man.len())]
    );
    assert!(man.contains(".TH pixee-pim"), "roff title");
    for sub in [
        "serve",
        "backup",
        "healthcheck",
        "completions",
        "import",
        "export",
    ] {
        assert!(man.contains(sub), "the man page names {sub}");
    }
    // A page per subcommand, for the package.
    let pages = tempfile::tempdir().unwrap();
    out(&["man", "--out-dir", pages.path().to_str().unwrap()]);
    let serve = std::fs::read_to_string(pages.path().join("pixee-pim-serve.1")).unwrap();
    assert!(serve.contains(".TH pixee-pim-serve") && serve.contains("listen"));
    assert!(pages.path().join("pixee-pim-user-set-password.1").exists());
    assert!(
        !pages.path().join("pixee-pim-seed.1").exists(),
        "hidden commands get no page"
    );
}

/// SIGHUP reloads the TLS certificate: new connections get the new one, a connection opened
/// before goes on, and a key that does not fit its certificate is refused (the old pair stays).
#[actix_web::test]
async fn sighup_reloads_the_tls_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        rcgen::generate_simple_self_signed(vec![name.into(), "127.0.0.1".into()]).unwrap()
    };
    let (a, b) = (make("a.localhost"), make("b.localhost"));
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, a.cert.pem()).unwrap();
    std::fs::write(&key_path, a.signing_key.serialize_pem()).unwrap();
    let server = serve(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let base = server.base.clone();
    // A fresh connection each time, so each one shows the certificate served now.
    let peer = || async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let res = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|t| t.peer_certificate())
            .map(<[u8]>::to_vec)
            .unwrap()
    };
    let hangup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    assert_eq!(peer().await, a.cert.der().to_vec());
    let kept = insecure_client();
    let res = kept.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    std::fs::write(&cert_path, b.cert.pem()).unwrap();
    std::fs::write(&key_path, b.signing_key.serialize_pem()).unwrap();
    hangup();
    let started = Instant::now();
    while peer().await != b.cert.der().to_vec() {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = kept.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the earlier client goes on");

    // A's certificate with B's key: refused, B stays.
    std::fs::write(&cert_path, a.cert.pem()).unwrap();
    hangup();
    let started = Instant::now();
    while !server.stderr.lock().unwrap().contains("not reloaded") {
        assert!(started.elapsed() < Duration::from_secs(10), "no log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer().await, b.cert.der().to_vec());
    assert!(
        server.stderr.lock().unwrap().contains("does not fit"),
        "the log says why"
    );
}
