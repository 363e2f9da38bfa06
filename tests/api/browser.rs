//! The settings page in real headless Chromium (SPEC §5): an admin logs in, creates a key,
//! uses it, rotates and revokes it, a reload restores the session through the refresh
//! cookie, and a key shared with a second tenant is withdrawn from it there. Every key the page shows is checked against the API with reqwest.

use std::path::PathBuf;

use pixee_pim::clock::Clock;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};
use crate::webdriver::WebDriver;

fn target_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

/// `^pm_live_[0-9A-Za-z]{38}$`
fn is_live_key(key: &str) -> bool {
    key.strip_prefix("pm_live_")
        .is_some_and(|rest| rest.len() == 38 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

async fn products_status_with_key(app: &TestApp, key: &str) -> u16 {
    let url = format!("{}/api/v1/products", app.address);
    let resp = app.client.get(url).header("X-API-Key", key).send().await;
    resp.expect("GET /api/v1/products").status().as_u16()
}

async fn fill(driver: &WebDriver, css: &str, text: &str) {
    let input = driver.find(css).await;
    driver.clear(&input).await;
    driver.send_keys(&input, text).await;
}

async fn submit_login(driver: &WebDriver, email: &str, password: &str) {
    driver.wait_visible("#login-form").await;
    fill(driver, "#login-email", email).await;
    fill(driver, "#login-password", password).await;
    driver.click_on("#login-submit").await;
}

async fn wait_logged_in(driver: &WebDriver, app: &TestApp) {
    let what = format!("#whoami to show {}", app.admin_email);
    let shows_admin = async || driver.text_of("#whoami").await.contains(&app.admin_email);
    driver.wait_until(&what, shows_admin).await;
    assert!(
        !driver.is_visible("#login-form").await,
        "the login form is hidden once logged in"
    );
}

async fn raw_text(driver: &WebDriver, id: &str) -> String {
    let script = "return document.getElementById(arguments[0]).textContent;";
    let value = driver.execute(script, vec![json!(id)]).await;
    value.as_str().unwrap_or_default().to_owned()
}

/// Waits for the one-time key panel to show a live key other than `previous`; returns it.
async fn shown_key(driver: &WebDriver, previous: Option<&str>) -> String {
    let fresh_key_shown = async || {
        let key = driver.text_of("#new-key-value").await;
        !key.is_empty() && Some(key.as_str()) != previous
    };
    driver
        .wait_until("the new key panel to show a fresh key", fresh_key_shown)
        .await;
    let key = raw_text(driver, "new-key-value").await;
    assert!(
        is_live_key(&key),
        "#new-key-value holds exactly one live key, got {key:?}"
    );
    let panel = driver.text_of("#new-key-panel").await;
    assert!(
        panel.contains("not see"),
        "the panel warns that the key is shown once: {panel:?}"
    );
    key
}

async fn dismiss_key_panel(driver: &WebDriver) {
    driver.click_on("#dismiss-key-button").await;
    driver.wait_hidden("#new-key-panel").await;
    let leftover = raw_text(driver, "new-key-value").await;
    assert_eq!(leftover, "", "a dismissed key does not stay in the page");
}

/// The `data-key-id` of the one table row named `name`.
async fn row_id(driver: &WebDriver, name: &str) -> String {
    let script = "return [...document.querySelectorAll('#keys-table tr[data-key-id]')]\
                  .filter(r => r.querySelector('.key-name').textContent.trim() === arguments[0])\
                  .map(r => r.dataset.keyId);";
    let mut ids = json!([]);
    let what = format!("one row for the key {name:?} in #keys-table");
    let one_row = async || {
        ids = driver.execute(script, vec![json!(name)]).await;
        ids.as_array().is_some_and(|rows| rows.len() == 1)
    };
    driver.wait_until(&what, one_row).await;
    ids[0].as_str().expect("data-key-id is a string").to_owned()
}

fn in_row(id: &str, css: &str) -> String {
    format!("#keys-table tr[data-key-id=\"{id}\"] {css}")
}

async fn row_status(driver: &WebDriver, id: &str) -> String {
    driver
        .text_of(&in_row(id, ".key-status"))
        .await
        .trim()
        .to_owned()
}

/// The day 30 days ahead by the server's clock (tests set it apart from the browser's).
fn expiry_day(app: &TestApp) -> String {
    let day = (app.clock.now() + time::Duration::days(30)).date();
    let (year, month, day) = (day.year(), u8::from(day.month()), day.day());
    format!("{year:04}-{month:02}-{day:02}")
}

/// Creates a live key with products:read in the page, expiring on `day` if given; returns
/// the raw key the page shows once.
async fn create_key_in_page(driver: &WebDriver, name: &str, day: Option<&str>) -> String {
    fill(driver, "#key-name", name).await;
    let scope = driver
        .find("input[name=scope][value=\"products:read\"]")
        .await;
    driver.click(&scope).await;
    let checked = driver.property(&scope, "checked").await;
    assert_eq!(checked, json!(true), "the scope box is ticked");
    driver.click_on("#env-live").await;
    if let Some(day) = day {
        // Typing into a date input depends on the browser's locale: set its value instead.
        let script = "document.getElementById('key-expiry').value = arguments[0];";
        driver.execute(script, vec![json!(day)]).await;
    }
    driver.click_on("#create-key-submit").await;
    shown_key(driver, None).await
}

async fn assert_page_has_strict_csp(app: &TestApp, page: &str) {
    let resp = app.client.get(page).send().await.expect("GET /settings/");
    assert_eq!(resp.status().as_u16(), 200, "the settings page is served");
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok());
    let strict = csp.is_some_and(|c| c.contains("script-src 'self'"));
    assert!(
        strict,
        "the settings page is served with a strict CSP, got {csp:?}"
    );
}

async fn wrong_password_then_log_in(driver: &WebDriver, app: &TestApp) {
    driver.wait_visible("#login-form").await;
    let quiet = !driver.is_visible("#error").await;
    assert!(quiet, "a first visit shows the login form without an error");
    submit_login(driver, &app.admin_email, "certainly-not-the-password").await;
    let error = driver.find("#error").await;
    let reported = async || !driver.text(&error).await.trim().is_empty();
    driver
        .wait_until("#error to report the failed login", reported)
        .await;
    let stays = driver.is_visible("#login-form").await;
    assert!(stays, "the login form stays after a failed login");

    submit_login(driver, &app.admin_email, &app.admin_password).await;
    wait_logged_in(driver, app).await;
    let cleared = !driver.is_visible("#error").await;
    assert!(cleared, "a successful login clears the old error");
    let script = "return document.getElementById('tenant-select').value;";
    let tenant = driver.execute(script, vec![]).await;
    assert_eq!(
        tenant,
        json!(app.default_tenant_id),
        "the tenant picker shows the default tenant"
    );
}

/// Creates the key "browser" and checks it against the API; returns its id and raw key.
async fn create_and_use_a_key(driver: &WebDriver, app: &TestApp) -> (String, String) {
    let day = expiry_day(app);
    let key = create_key_in_page(driver, "browser", Some(&day)).await;
    let status = products_status_with_key(app, &key).await;
    assert_eq!(status, 200, "the created key reads products");
    let id = row_id(driver, "browser").await;
    assert_eq!(row_status(driver, &id).await, "active");
    let expires = driver.find(&in_row(&id, ".key-expires time")).await;
    let expires_at = driver
        .attribute(&expires, "datetime")
        .await
        .unwrap_or_default();
    let on_day = expires_at.starts_with(&day);
    assert!(
        on_day,
        "the key expires on the chosen day: {expires_at} vs {day}"
    );
    driver
        .screenshot(&target_file("settings-page-new-key.png"))
        .await;
    dismiss_key_panel(driver).await;
    (id, key)
}

/// Rotates the key in the page; the old key dies at once. Returns the new key.
async fn rotate_the_key(driver: &WebDriver, app: &TestApp, id: &str, old: &str) -> String {
    driver.click_on(&in_row(id, ".rotate-button")).await;
    let question = driver.accept_dialog().await;
    let names_it = question.contains("browser");
    assert!(
        names_it,
        "the rotate confirmation names the key: {question:?}"
    );
    let new = shown_key(driver, Some(old)).await;
    let old_status = products_status_with_key(app, old).await;
    assert_eq!(old_status, 401, "the rotated-out key is refused");
    let new_status = products_status_with_key(app, &new).await;
    assert_eq!(new_status, 200, "the rotated-in key works");
    dismiss_key_panel(driver).await;
    new
}

async fn revoke_the_key(driver: &WebDriver, app: &TestApp, id: &str, key: &str) {
    driver.click_on(&in_row(id, ".revoke-button")).await;
    driver.accept_dialog().await;
    let revoked = async || row_status(driver, id).await == "revoked";
    driver
        .wait_until("the key's row to say revoked", revoked)
        .await;
    let status = products_status_with_key(app, key).await;
    assert_eq!(status, 401, "the revoked key is refused");
}

/// Past the access token's lifetime the page refreshes it once and retries, unseen.
async fn an_expired_access_token_is_refreshed(driver: &WebDriver, app: &TestApp) {
    app.clock.advance(time::Duration::minutes(16));
    let key = create_key_in_page(driver, "after expiry", None).await;
    let status = products_status_with_key(app, &key).await;
    assert_eq!(status, 200, "a key created after a token refresh works");
    let no_error = !driver.is_visible("#error").await;
    assert!(no_error, "the refresh happens without bothering the user");
    dismiss_key_panel(driver).await;
}

async fn a_reload_restores_the_session(driver: &WebDriver, app: &TestApp, id: &str) {
    driver.reload().await;
    wait_logged_in(driver, app).await;
    let status = row_status(driver, id).await;
    assert_eq!(status, "revoked", "the revoked key stays listed");
    let no_key = !driver.is_visible("#new-key-panel").await;
    assert!(no_key, "no key is shown again after a reload");
    driver.screenshot(&target_file("settings-page.png")).await;
}

async fn products_status_in(app: &TestApp, key: &str, tenant: &str) -> u16 {
    let url = format!("{}/api/v1/products", app.address);
    let resp = app
        .client
        .get(url)
        .header("X-API-Key", key)
        .header("X-Tenant-ID", tenant)
        .send()
        .await;
    resp.expect("GET /api/v1/products").status().as_u16()
}

/// A key that also works in a second tenant: created with that tenant ticked, listed there as
/// the home tenant's key, and withdrawn from it in the page.
async fn share_a_key_and_withdraw_it(driver: &WebDriver, app: &TestApp, second: &str) {
    fill(driver, "#key-name", "shared").await;
    let scope = driver
        .find("input[name=scope][value=\"products:read\"]")
        .await;
    driver.click(&scope).await;
    let tenant = driver
        .find(&format!("input[name=tenant][value=\"{second}\"]"))
        .await;
    driver.click(&tenant).await;
    driver.click_on("#create-key-submit").await;
    let key = shown_key(driver, None).await;
    dismiss_key_panel(driver).await;
    assert_eq!(
        products_status_in(app, &key, second).await,
        200,
        "it works in the second tenant"
    );
    let id = row_id(driver, "shared").await;
    let reach = driver.text_of(&in_row(&id, ".key-tenants")).await;
    assert!(
        reach.contains("also in second"),
        "the row names the other tenant: {reach:?}"
    );

    let switch = "const s = document.getElementById('tenant-select'); \
                  s.value = arguments[0]; s.dispatchEvent(new Event('change'));";
    driver.execute(switch, vec![json!(second)]).await;
    let in_second = async || driver.text_of("#keys-title").await.contains("second");
    driver
        .wait_until("the page to show the second tenant's keys", in_second)
        .await;
    assert_eq!(row_id(driver, "shared").await, id);
    let from = driver.text_of(&in_row(&id, ".key-tenants")).await;
    assert!(
        from.contains("from default"),
        "the row names the key's home: {from:?}"
    );
    driver.click_on(&in_row(&id, ".withdraw-button")).await;
    let question = driver.accept_dialog().await;
    assert!(
        question.contains("shared"),
        "the confirmation names the key: {question:?}"
    );
    let rows = "return document.querySelectorAll(`#keys-table tr[data-key-id=\"${arguments[0]}\"]`).length;";
    let gone = async || driver.execute(rows, vec![json!(id)]).await == json!(0);
    driver
        .wait_until("the withdrawn key to leave the second tenant's list", gone)
        .await;
    assert_eq!(
        products_status_in(app, &key, second).await,
        403,
        "withdrawn: refused there"
    );
    assert_eq!(
        products_status_with_key(app, &key).await,
        200,
        "and still fine at home"
    );
}

async fn logging_out_ends_the_session(driver: &WebDriver) {
    driver.click_on("#logout-button").await;
    driver.wait_visible("#login-form").await;
    driver.reload().await;
    driver.wait_visible("#login-form").await;
    let nobody = !driver.is_visible("#whoami").await;
    assert!(nobody, "no one is shown as logged in after logout");
}

async fn assert_no_script_errors(driver: &WebDriver) {
    let log = driver.console_log().await;
    let bad =
        |line: &&String| line.contains("Content Security Policy") || line.contains("Uncaught");
    let problems: Vec<&String> = log.iter().filter(bad).collect();
    let clean = problems.is_empty();
    assert!(
        clean,
        "the page runs without CSP violations or script errors: {problems:#?}"
    );
}

#[actix_web::test]
async fn settings_page_lets_an_admin_create_use_rotate_and_revoke_a_key() {
    let app = spawn_app().await;
    let admin = app.login(&app.admin_email, &app.admin_password).await;
    let second = app
        .with_token(reqwest::Method::POST, "/api/v1/tenants", &admin.token)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .expect("create a second tenant")
        .json::<serde_json::Value>()
        .await
        .expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let page = format!("{}/settings/", app.address);
    assert_page_has_strict_csp(&app, &page).await;
    let mut driver = WebDriver::start().await;
    driver.screenshot_on_failure(target_file("settings-page-failure.png"));
    driver.goto(&page).await;

    wrong_password_then_log_in(&driver, &app).await;
    let (id, first_key) = create_and_use_a_key(&driver, &app).await;
    let second_key = rotate_the_key(&driver, &app, &id, &first_key).await;
    revoke_the_key(&driver, &app, &id, &second_key).await;
    an_expired_access_token_is_refreshed(&driver, &app).await;
    a_reload_restores_the_session(&driver, &app, &id).await;
    share_a_key_and_withdraw_it(&driver, &app, &second).await;
    logging_out_ends_the_session(&driver).await;
    assert_no_script_errors(&driver).await;
    driver.quit().await;
}

/// The webhooks section: add a webhook (its secret shown once), send a test to a real receiver
/// on loopback, read the delivery, turn the webhook off, delete it. Each step is checked
/// against the receiver or the API.
#[actix_web::test]
async fn settings_page_adds_a_webhook_tests_it_and_lists_its_deliveries() {
    use crate::webhooks::{Receiver, signature_ok};
    let app = crate::helpers::spawn_app_with(pixee_pim::config::ServeArgs {
        webhooks_allow_private: Some(true),
        ..Default::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let page = format!("{}/settings/", app.address);
    let mut driver = WebDriver::start().await;
    driver.screenshot_on_failure(target_file("settings-webhooks-failure.png"));
    driver.goto(&page).await;
    submit_login(&driver, &app.admin_email, &app.admin_password).await;
    wait_logged_in(&driver, &app).await;

    fill(&driver, "#webhook-name", "Shop").await;
    fill(&driver, "#webhook-url", &receiver.url).await;
    for event in ["product.created", "test"] {
        driver
            .click_on(&format!("input[name=event][value=\"{event}\"]"))
            .await;
    }
    driver.click_on("#create-webhook-submit").await;
    let secret_shown = async || {
        driver
            .text_of("#new-secret-value")
            .await
            .starts_with("whsec_")
    };
    driver
        .wait_until("the one-time secret panel", secret_shown)
        .await;
    let secret = raw_text(&driver, "new-secret-value").await;
    let script = "return [...document.querySelectorAll('#webhooks-table tr[data-webhook-id]')]\
                  .map(r => r.dataset.webhookId);";
    let ids = driver.execute(script, vec![]).await;
    let id = ids[0].as_str().expect("one webhook row").to_owned();
    let row = |css: &str| format!("#webhooks-table tr[data-webhook-id=\"{id}\"] {css}");
    driver.click_on("#dismiss-secret-button").await;
    driver.wait_hidden("#new-secret-panel").await;
    assert_eq!(raw_text(&driver, "new-secret-value").await, "");

    driver.click_on(&row(".test-webhook-button")).await;
    let reached = async || driver.text_of("#notice").await.contains("answered 200");
    driver.wait_until("the test's outcome", reached).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].event, "test");
    assert!(
        signature_ok(&secret, &got[0].signature, &got[0].body),
        "signed with the secret shown"
    );

    driver.click_on(&row(".deliveries-button")).await;
    let listed = async || {
        driver
            .text_of("#deliveries-body .delivery-status")
            .await
            .contains("succeeded")
    };
    driver.wait_until("the delivery in the list", listed).await;
    assert_eq!(
        driver
            .text_of("#deliveries-body .delivery-code")
            .await
            .trim(),
        "200"
    );
    // Sent again from the list: the same delivery id reaches the receiver a second time.
    driver.click_on("#deliveries-body .redeliver-button").await;
    let again = async || driver.text_of("#notice").await.contains("sent again");
    driver.wait_until("the redelivery notice", again).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].delivery, got[0].delivery, "the same X-PM-Delivery");
    assert!(signature_ok(&secret, &got[1].signature, &got[1].body));
    let attempts = async || {
        driver.click_on("#refresh-deliveries-button").await;
        driver
            .text_of("#deliveries-body .delivery-attempts")
            .await
            .trim()
            == "2"
    };
    driver
        .wait_until("two attempts in the list", attempts)
        .await;

    driver.click_on(&row(".toggle-webhook-button")).await;
    let off = async || {
        driver
            .text_of(&row(".webhook-status"))
            .await
            .contains("off")
    };
    driver.wait_until("the webhook to be off", off).await;
    let admin = app.admin().await;
    let stored: serde_json::Value = app
        .with_token(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{id}"),
            &admin.token,
        )
        .send()
        .await
        .expect("get the webhook")
        .json()
        .await
        .expect("json");
    assert_eq!(stored["is_active"], false);
    assert_eq!(stored["events"], json!(["product.created", "test"]));

    driver.click_on(&row(".delete-webhook-button")).await;
    let question = driver.accept_dialog().await;
    assert!(question.contains("Shop"), "{question:?}");
    let gone = async || driver.try_find(&row(".webhook-name")).await.is_none();
    driver.wait_until("the row to go", gone).await;
    let list: serde_json::Value = app
        .with_token(reqwest::Method::GET, "/api/v1/webhooks", &admin.token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 0);
    assert_no_script_errors(&driver).await;
    driver.quit().await;
    receiver.stop().await;
}

/// The API reference page renders every operation of the OpenAPI document in the browser, under
/// the page's strict CSP (so nothing comes from outside the server).
#[actix_web::test]
async fn the_api_reference_page_renders_every_operation_offline() {
    let app = spawn_app().await;
    let page = format!("{}/api/v1/docs", app.address);
    assert_page_has_strict_csp(&app, &page).await;
    let doc: serde_json::Value = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .expect("the document")
        .json()
        .await
        .expect("json");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| {
            item.as_object()
                .expect("item")
                .keys()
                .filter(|k| *k != "parameters")
                .count()
        })
        .sum();
    let mut driver = WebDriver::start().await;
    driver.screenshot_on_failure(target_file("api-docs-failure.png"));
    driver.goto(&page).await;
    let expected = operations.to_string();
    let rendered = async || {
        let n = driver
            .execute("return document.body.dataset.operations || '';", vec![])
            .await;
        n.as_str() == Some(expected.as_str())
    };
    driver
        .wait_until("every operation rendered", rendered)
        .await;
    let title = driver.text_of("#api-title").await;
    assert!(title.contains("Pixee"), "{title}");
    let webhook = driver.text_of("#createWebhook summary").await;
    assert!(webhook.contains("/api/v1/webhooks"), "{webhook}");
    assert!(driver.is_visible("#schema-Webhook").await);
    assert_no_script_errors(&driver).await;
    driver.quit().await;
}
