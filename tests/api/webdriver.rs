//! A minimal W3C WebDriver client over reqwest, driving Debian's headless Chromium through
//! chromedriver, for the settings page test.
//!
//! Only what the browser tests need: sessions, navigation, elements, scripts, dialogs and
//! screenshots. Chromedriver runs on a free local port and is killed (its browser session ended
//! first) when the [`WebDriver`] is dropped, also when a test panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const POLL_EVERY: Duration = Duration::from_millis(100);
const WAIT_AT_MOST: Duration = Duration::from_secs(15);
const CHROMIUM: &str = "/usr/bin/chromium";
/// Headless and quiet: no GPU, no sandbox (tests may run as root), no calls home.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

pub struct WebDriver {
    base: String,
    session: String,
    http: reqwest::Client,
    child: Child,
    profile: tempfile::TempDir,
    /// Where `wait_until` saves a screenshot when it gives up.
    failure_screenshot: Option<PathBuf>,
}

/// A reference to an element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port for chromedriver");
    listener.local_addr().expect("local addr").port()
}

fn require_file(path: &Path, what: &str) {
    assert!(
        path.is_file(),
        "{what} not found at {}: install it with `scripts/test` \
         (it installs Debian's chromium and chromium-driver), then run the tests again",
        path.display()
    );
}

impl WebDriver {
    /// Starts chromedriver and opens a headless Chromium session.
    pub async fn start() -> WebDriver {
        let driver_path =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        require_file(Path::new(&driver_path), "chromedriver");
        require_file(Path::new(CHROMIUM), "chromium");

        let port = free_port();
        let child = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start {driver_path}: {e}; run `scripts/test` to install it")
            });
        let profile = tempfile::tempdir().expect("temporary Chromium profile dir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client for WebDriver");
        let mut driver = WebDriver {
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            child,
            profile,
            failure_screenshot: None,
        };
        driver.wait_for_driver().await;
        driver.session = driver.new_session().await;
        driver
    }

    async fn wait_for_driver(&mut self) {
        let deadline = Instant::now() + WAIT_AT_MOST;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited at start with {status}; run `scripts/test` to install chromium and chromium-driver"
                );
            }
            let status = self.try_call(Method::GET, "/status", None).await;
            if status.is_ok_and(|v| v["ready"] == json!(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready within {WAIT_AT_MOST:?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn new_session(&self) -> String {
        let profile = self.profile.path().display().to_string();
        let mut args = CHROMIUM_ARGS.map(String::from).to_vec();
        args.push(format!("--user-data-dir={profile}"));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "unhandledPromptBehavior": "ignore",
                }
            }
        });
        let value = self.call(Method::POST, "/session", Some(caps)).await;
        value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver gave no session id: {value}"))
            .to_owned()
    }

    /// Where to save a screenshot if a wait times out.
    pub fn screenshot_on_failure(&mut self, path: PathBuf) {
        self.failure_screenshot = Some(path);
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e}"))
    }

    /// One WebDriver command; `Err` carries the W3C error code and message.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request
            .send()
            .await
            .map_err(|e| format!("request error: {e}"))?;
        let ok = resp.status().is_success();
        let value: Value = resp
            .json()
            .await
            .map_err(|e| format!("unreadable answer: {e}"))?;
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(format!("{}: {}", value["error"], value["message"]))
        }
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    async fn post(&self, tail: &str, body: Value) -> Value {
        self.call(Method::POST, &self.session_path(tail), Some(body))
            .await
    }

    async fn get(&self, tail: &str) -> Value {
        self.call(Method::GET, &self.session_path(tail), None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn reload(&self) {
        self.post("/refresh", json!({})).await;
    }

    /// The first element matching a CSS selector, or `None`.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self
            .try_call(Method::POST, &self.session_path("/element"), Some(body))
            .await
            .ok()?;
        value[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned()))
    }

    /// Waits until an element matching the CSS selector exists.
    pub async fn find(&self, css: &str) -> Element {
        let mut found = None;
        self.wait_until(&format!("an element matching `{css}`"), async || {
            found = self.try_find(css).await;
            found.is_some()
        })
        .await;
        found.expect("found by wait_until")
    }

    pub async fn click(&self, el: &Element) {
        self.post(&format!("/element/{}/click", el.0), json!({}))
            .await;
    }

    pub async fn send_keys(&self, el: &Element, text: &str) {
        self.post(&format!("/element/{}/value", el.0), json!({ "text": text }))
            .await;
    }

    pub async fn clear(&self, el: &Element) {
        self.post(&format!("/element/{}/clear", el.0), json!({}))
            .await;
    }

    /// The rendered text of an element (empty when it is not displayed).
    pub async fn text(&self, el: &Element) -> String {
        let value = self.get(&format!("/element/{}/text", el.0)).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    pub async fn attribute(&self, el: &Element, name: &str) -> Option<String> {
        let value = self
            .get(&format!("/element/{}/attribute/{name}", el.0))
            .await;
        value.as_str().map(str::to_owned)
    }

    /// A DOM property of an element, such as a checkbox's `checked`.
    pub async fn property(&self, el: &Element, name: &str) -> Value {
        self.get(&format!("/element/{}/property/{name}", el.0))
            .await
    }

    /// Runs a synchronous script in the page; `arguments[i]` are `args`.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Whether an element matching the selector exists and is rendered.
    pub async fn is_visible(&self, css: &str) -> bool {
        let script = "const e = document.querySelector(arguments[0]); \
                      return !!e && e.getClientRects().length > 0;";
        self.execute(script, vec![json!(css)]).await == json!(true)
    }

    /// Waits until an element matching the selector is rendered.
    pub async fn wait_visible(&self, css: &str) {
        let what = format!("`{css}` to be visible");
        self.wait_until(&what, async || self.is_visible(css).await)
            .await;
    }

    /// Waits until no element matching the selector is rendered.
    pub async fn wait_hidden(&self, css: &str) {
        let what = format!("`{css}` to be hidden");
        self.wait_until(&what, async || !self.is_visible(css).await)
            .await;
    }

    /// The rendered text of the first element matching the selector, "" when it is not
    /// rendered. Waits for the element to exist; read in one script, so a page re-rendering
    /// meanwhile cannot make it stale.
    pub async fn text_of(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); \
                      return !e ? null : e.getClientRects().length ? e.innerText : '';";
        let mut text = Value::Null;
        let what = format!("an element matching `{css}`");
        let exists = async || {
            text = self.execute(script, vec![json!(css)]).await;
            !text.is_null()
        };
        self.wait_until(&what, exists).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the first element matching the selector; waits for it to exist and finds it
    /// again if the page replaced it between finding and clicking.
    pub async fn click_on(&self, css: &str) {
        let what = format!("a click on `{css}`");
        let clicked = async || {
            let Some(el) = self.try_find(css).await else {
                return false;
            };
            let path = self.session_path(&format!("/element/{}/click", el.0));
            match self.try_call(Method::POST, &path, Some(json!({}))).await {
                Ok(_) => true,
                Err(e) if e.contains("stale element") => false,
                Err(e) => panic!("WebDriver click on `{css}` failed: {e}"),
            }
        };
        self.wait_until(&what, clicked).await;
    }

    /// Waits for a `window.alert`/`confirm` dialog, accepts it and returns its text.
    pub async fn accept_dialog(&self) -> String {
        let mut text = String::new();
        self.wait_until("a confirm dialog", async || {
            match self
                .try_call(Method::GET, &self.session_path("/alert/text"), None)
                .await
            {
                Ok(value) => {
                    text = value.as_str().unwrap_or_default().to_owned();
                    true
                }
                Err(_) => false,
            }
        })
        .await;
        self.post("/alert/accept", json!({})).await;
        text
    }

    /// The browser console since the last call (chromedriver's log extension), one
    /// "LEVEL message" line per entry.
    pub async fn console_log(&self) -> Vec<String> {
        let value = self.post("/se/log", json!({ "type": "browser" })).await;
        let entries = value.as_array().cloned().unwrap_or_default();
        let line = |e: &Value| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]);
        entries.iter().map(line).collect()
    }

    pub async fn screenshot(&self, path: &Path) {
        let png = decode_png(&self.get("/screenshot").await).expect("a base64 PNG screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot directory");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Polls `check` every 100 ms for up to 15 s; panics with `what` when it never holds.
    pub async fn wait_until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + WAIT_AT_MOST;
        loop {
            if check().await {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let context = self.failure_context().await;
        panic!("timed out after {WAIT_AT_MOST:?} waiting for {what}{context}");
    }

    /// What a failed wait reports besides its own message: the page's error area and a
    /// screenshot. Best effort: an open dialog, say, makes both fail, which must not hide
    /// the original failure.
    async fn failure_context(&self) -> String {
        let mut context = String::new();
        let script = "const e = document.getElementById('error'); return e ? e.textContent : '';";
        let body = json!({ "script": script, "args": [] });
        let path = self.session_path("/execute/sync");
        match self.try_call(Method::POST, &path, Some(body)).await {
            Ok(text) => context.push_str(&format!("; the page's #error says {text}")),
            Err(e) => context.push_str(&format!("; the page could not be read: {e}")),
        }
        if let Some(file) = &self.failure_screenshot {
            let path = self.session_path("/screenshot");
            if let Ok(value) = self.try_call(Method::GET, &path, None).await
                && let Some(png) = decode_png(&value)
                && std::fs::write(file, png).is_ok()
            {
                context.push_str(&format!("; screenshot: {}", file.display()));
            }
        }
        context
    }

    /// Ends the browser session and chromedriver.
    pub async fn quit(mut self) {
        let _ = self
            .try_call(Method::DELETE, &self.session_path(""), None)
            .await;
        self.session.clear();
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        // Drop cannot await: end the browser session with a plain blocking HTTP request so
        // Chromium does not outlive chromedriver, then kill chromedriver.
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_owned();
            let _ = blocking_delete(&addr, &self.session_path(""));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_png(value: &Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()
}

fn blocking_delete(addr: &str, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink)?;
    Ok(())
}
