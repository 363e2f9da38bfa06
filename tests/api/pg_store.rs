//! What only the PostgreSQL store does (SPEC §12), whatever `PIXEE_TEST_STORE` says: `migrate`
//! from sled and `check` on PostgreSQL through the compiled binary, commands that need the
//! database alone, and a database that goes away and comes back under a running server.
use crate::helpers::*;
use crate::postgres::{Cluster, fresh_database};
use pixee_pim::config::ServeArgs;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pixee-pim");

fn on_sled() -> ServeArgs {
    // An empty URL is no URL: the store stays in sled whatever the run selected.
    ServeArgs {
        database_url: Some(String::new()),
        ..Default::default()
    }
}

fn on(url: &str) -> ServeArgs {
    ServeArgs {
        database_url: Some(url.to_string()),
        ..Default::default()
    }
}

fn pixee(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .env_remove("PIXEE_ADMIN_PASSWORD")
        .env_remove("PIXEE_DATABASE_URL")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The per-tree lines of `check` (the search-index lines differ: each data dir has its own).
fn tree_counts(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains('\t') && !l.starts_with("search index"))
        .map(str::to_owned)
        .collect()
}

/// The `total` of the first page of products the key sees.
async fn total(app: &TestApp, key: &str) -> Value {
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products?per_page=100", key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    list["total"].clone()
}

fn ean(i: u32) -> String {
    pixee_pim::domain::Ean::from_body(400_000_000_000 + u64::from(i))
        .as_str()
        .to_owned()
}

#[actix_web::test]
async fn migrate_moves_a_sled_store_into_an_empty_database_and_check_agrees_on_both() {
    let app = spawn_app_with(on_sled()).await;
    let (admin, key) = app
        .admin_and_key(&["products:read", "products:write", "products:delete"])
        .await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let res = app
            .create_product(&key.raw, &ean(i), &format!("Lamp {i}"))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    let gone = app
        .with_key(
            Method::DELETE,
            &format!("/api/v1/products/{}", ids[0]),
            &key.raw,
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let revoked = app
        .create_key(&admin.token, &["products:read"], "live")
        .await;
    let res = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", revoked.id),
            &admin.token,
        )
        .send()
        .await
        .expect("revoke");
    assert!(res.status().is_success(), "revoke: {}", res.status());
    let source = app.data_dir.clone();
    app.stop().await;

    let url = fresh_database();
    let sled_check = pixee(source.path(), &["check"]);
    assert!(sled_check.status.success(), "{}", text(&sled_check.stderr));
    // Into the data dir it copies from, as a service does (its data dir stays the same).
    let from = source.path().to_str().unwrap();
    let out = pixee(
        source.path(),
        &["migrate", "--from-data-dir", from, "--database-url", &url],
    );
    assert!(out.status.success(), "migrate: {}", text(&out.stderr));
    let pg_check = pixee(source.path(), &["check", "--database-url", &url]);
    assert!(pg_check.status.success(), "{}", text(&pg_check.stderr));
    let (sled_trees, pg_trees) = (
        tree_counts(&text(&sled_check.stdout)),
        tree_counts(&text(&pg_check.stdout)),
    );
    assert!(
        sled_trees.iter().any(|l| l == "products\t24"),
        "{sled_trees:?}"
    );
    assert_eq!(
        pg_trees, sled_trees,
        "the copy's check matches the source's"
    );

    // The data dir now says its records are in PostgreSQL: a command without the URL is
    // refused instead of opening the sled store left behind.
    let stale = pixee(source.path(), &["check"]);
    assert!(!stale.status.success());
    assert!(
        text(&stale.stderr).contains("--database-url"),
        "{}",
        text(&stale.stderr)
    );

    // A migrate into a database that holds records is refused and changes nothing.
    let other = tempfile::tempdir().expect("dir");
    let made = pixee(other.path(), &["tenant", "create", "--name", "other"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let again = pixee(
        other.path(),
        &[
            "migrate",
            "--from-data-dir",
            other.path().to_str().unwrap(),
            "--database-url",
            &url,
        ],
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already holds records"),
        "{}",
        text(&again.stderr)
    );

    // The server on the migrated database: the same admin, keys and catalog.
    let pg = spawn_app_with(on(&url)).await;
    assert_eq!(
        pg.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::OK
    );
    assert_eq!(
        pg.status_with_key(Method::GET, "/api/v1/auth/me", &revoked.raw)
            .await,
        StatusCode::UNAUTHORIZED,
        "a key revoked before the move stays revoked"
    );
    assert_eq!(total(&pg, &key.raw).await, 24);
    let deleted = pg
        .with_key(
            Method::GET,
            &format!("/api/v1/products/{}", ids[0]),
            &key.raw,
        )
        .send()
        .await
        .expect("get");
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    pg.admin().await;
}

#[actix_web::test]
async fn the_admin_commands_backup_and_restore_work_on_the_database_and_never_print_its_url() {
    let url = fresh_database().replace("postgres@", "postgres:not-a-secret-7@");
    let dir = tempfile::tempdir().expect("dir");
    let tenant = pixee(
        dir.path(),
        &["--database-url", &url, "tenant", "create", "--name", "acme"],
    );
    assert!(tenant.status.success(), "{}", text(&tenant.stderr));
    let key = pixee(
        dir.path(),
        &[
            "--database-url",
            &url,
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "cli",
            "--scopes",
            "products:read",
        ],
    );
    assert!(key.status.success(), "{}", text(&key.stderr));
    let raw = text(&key.stdout).trim().to_string();
    assert!(raw.starts_with("pm_live_"), "{raw}");
    // A failure names the database, never its URL (which may carry a password).
    let dup = pixee(
        dir.path(),
        &["--database-url", &url, "tenant", "create", "--name", "acme"],
    );
    assert!(!dup.status.success());
    // The offline backup walks the trees as on sled; it restores into another empty database.
    let file = dir.path().join("pixee.backup");
    let backup = pixee(
        dir.path(),
        &[
            "--database-url",
            &url,
            "backup",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    let copy = fresh_database();
    let other = tempfile::tempdir().expect("dir");
    let restore = pixee(
        other.path(),
        &[
            "--database-url",
            &copy,
            "restore",
            "--from",
            file.to_str().unwrap(),
        ],
    );
    assert!(restore.status.success(), "{}", text(&restore.stderr));
    for out in [&tenant, &key, &dup, &backup, &restore] {
        assert!(
            !text(&out.stderr).contains("not-a-secret-7"),
            "{}",
            text(&out.stderr)
        );
    }

    // The server on the restored database knows the tenant and accepts the key there.
    let app = spawn_app_with(on(&copy)).await;
    let tenant_id = text(&tenant.stdout).trim().to_string();
    let res = app
        .with_key(Method::GET, "/api/v1/auth/me", &raw)
        .header("X-Tenant-ID", &tenant_id)
        .send()
        .await
        .expect("me");
    assert_eq!(res.status(), StatusCode::OK);
}

#[actix_web::test]
async fn a_command_needing_the_database_alone_waits_for_the_nodes_and_migrate_needs_a_url() {
    let url = fresh_database();
    let app = spawn_app_with(on(&url)).await;
    let other = tempfile::tempdir().expect("dir");
    let out = pixee(other.path(), &["check", "--database-url", &url]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pixee-pim servers are using it"),
        "{}",
        text(&out.stderr)
    );
    let key = app.admin_and_key(&["products:read"]).await.1;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/auth/me", &key.raw)
            .await,
        StatusCode::OK
    );
    app.stop().await;
    let out = pixee(other.path(), &["check", "--database-url", &url]);
    assert!(
        out.status.success(),
        "check once the server stopped: {}",
        text(&out.stderr)
    );
    let out = pixee(
        other.path(),
        &["migrate", "--from-data-dir", other.path().to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--database-url"),
        "{}",
        text(&out.stderr)
    );
}

#[actix_web::test]
async fn a_database_that_goes_away_gives_503s_and_the_server_recovers_by_itself() {
    let cluster = Cluster::start();
    let url = cluster.fresh_database();
    let app = spawn_app_with(on(&url)).await;
    let (_, key) = app
        .admin_and_key(&["products:read", "products:write"])
        .await;
    let res = app.create_product(&key.raw, &ean(1), "Before").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let before: Value = res.json().await.expect("json");
    let path = format!("/api/v1/products/{}", before["id"].as_str().expect("id"));

    cluster.pg_ctl("stop");
    // Readiness says so too, for a load balancer to take the node out.
    let ready = app
        .req(Method::GET, "/readyz")
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = app.create_product(&key.raw, &ean(2), "While down").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "SERVICE_UNAVAILABLE").await;
    let res = app
        .with_key(Method::GET, &path, &key.raw)
        .send()
        .await
        .expect("get");
    assert_problem(res, 503, "SERVICE_UNAVAILABLE").await;

    cluster.pg_ctl("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let res = app.create_product(&key.raw, &ean(3), "After").await;
        if res.status() == StatusCode::CREATED {
            break res;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the server did not recover");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after.status(), StatusCode::CREATED);
    let ready = app
        .req(Method::GET, "/readyz")
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    let res = app
        .with_key(Method::GET, &path, &key.raw)
        .send()
        .await
        .expect("get");
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the write confirmed before is there"
    );
    assert_eq!(
        total(&app, &key.raw).await,
        2,
        "the write refused while down never landed"
    );
}
