//! Webhooks (SPEC §13): the records tenant admins manage, and the delivery engine that sends
//! the outbox's events to them at least once, signed.
//!
//! The events themselves are written by the store, in the transaction of the change that
//! causes them (`store/webhooks.rs`); this service keeps the store told which event types the
//! active webhooks of each namespace subscribe to, and runs the engine (`engine.rs`) on a
//! thread of its own.
pub mod engine;
pub mod policy;
pub mod sign;

use crate::clock::SharedClock;
use crate::domain::{Environment, Invalid, TenantId};
use crate::error::{Error, ErrorKind};
use crate::store::{
    AuditEvent, BodyRecord, DeliveryRecord, EventData, EventKind, Namespace, Store, WebhookRecord,
};
use crate::views::{DeletedOut, ImportJobOut, ProductOut, SupplierOut};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;
use uuid::Uuid;

pub const MAX_RETRIES: u32 = 5;
pub const DEFAULT_RETRIES: u32 = 3;
pub const MAX_TIMEOUT: u32 = 30;
pub const DEFAULT_TIMEOUT: u32 = 10;
/// How long finished deliveries stay listed (pending ones stay until they end).
pub const DELIVERY_RETENTION: time::Duration = time::Duration::days(30);
/// Webhooks per tenant and environment.
pub const MAX_WEBHOOKS: usize = 50;
/// Extra headers per webhook, and the longest value.
const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE: usize = 1024;
/// Headers a webhook may not set: the transport's, and the ones that carry the signature.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "expect",
];

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub allow_private: bool,
    /// The wait before the first retry (see [`engine::backoff`]).
    pub retry_base: std::time::Duration,
}

/// A webhook as created or patched: every field optional, checked by [`Webhooks::create`] and
/// [`Webhooks::patch`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "opt_whole")]
    pub max_retries: Option<i64>,
    #[serde(default, deserialize_with = "opt_whole")]
    pub timeout_seconds: Option<i64>,
    pub is_active: Option<bool>,
    /// `live` (the default) or `test`: whose events the webhook receives. Sessions act in the
    /// live environment, so this is how an admin subscribes to the events of test keys.
    pub environment: Option<String>,
}

fn opt_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    crate::catalog::field::whole(d).map(Some)
}

/// What the engine and the service share.
pub(crate) struct Shared {
    store: Store,
    clock: SharedClock,
    config: WebhooksConfig,
    /// Every webhook, as stored: the engine's view.
    hooks: RwLock<Vec<(Namespace, WebhookRecord)>>,
    slots: Mutex<engine::Slots>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    client: reqwest::Client,
    /// Attempts that ended, to the engine's recorder.
    outcomes: tokio::sync::mpsc::UnboundedSender<engine::Outcome>,
    /// Held from counting a namespace's webhooks to storing a new one, so concurrent creates
    /// cannot pass [`MAX_WEBHOOKS`] together (one process owns the store).
    creating: Mutex<()>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn hooks_snapshot(&self) -> Vec<(Namespace, WebhookRecord)> {
        self.hooks.read().map(|h| h.clone()).unwrap_or_default()
    }

    fn room(&self, hook: Uuid) -> usize {
        self.slots.lock().map(|s| s.room(hook)).unwrap_or(0)
    }

    fn is_busy(&self, delivery: Uuid) -> bool {
        self.slots
            .lock()
            .map(|s| s.is_busy(delivery))
            .unwrap_or(true)
    }

    fn claim(&self, hook: Uuid, delivery: Uuid, forced: bool) -> bool {
        self.slots
            .lock()
            .map(|mut s| s.claim(hook, delivery, forced))
            .unwrap_or(false)
    }

    fn sent(&self, hook: Uuid) {
        if let Ok(mut s) = self.slots.lock() {
            s.sent(hook);
        }
        self.wake.notify_one();
    }

    fn recorded(&self, delivery: Uuid) {
        if let Ok(mut s) = self.slots.lock() {
            s.recorded(delivery);
        }
        self.wake.notify_one();
    }

    /// Gives up a slot taken for a delivery that is not sent after all.
    fn release(&self, hook: Uuid, delivery: Uuid) {
        self.sent(hook);
        self.recorded(delivery);
    }

    /// Reloads the engine's view of the webhooks and tells the store which event types each
    /// namespace writes.
    fn reload(&self) -> Result<(), Error> {
        // The engine's list first, then the store's switch: an event the new switch lets
        // through always meets a list that knows its webhook.
        let all = self.store.all_webhooks()?;
        if let Ok(mut hooks) = self.hooks.write() {
            *hooks = all;
        }
        self.store.refresh_wanted_events()?;
        self.wake.notify_one();
        Ok(())
    }

    /// A webhook just turned off by its tenth failed event in a row: say so in the audit log.
    fn disabled(&self, ns: Namespace, hook: WebhookRecord) {
        tracing::warn!(webhook = %hook.id, "webhook turned off after consecutive failed events");
        let event = AuditEvent {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            kind: "webhook.disabled".into(),
            actor: "system".into(),
            ip: None,
            detail: format!(
                "webhook {} ({}, {}) turned off after {} failed events in a row",
                hook.id,
                hook.name,
                ns.environment.as_str(),
                hook.failed_events
            ),
        };
        if let Err(e) = self.store.append_audit(ns.tenant, &event) {
            tracing::error!(error = %e, "the audit event could not be written");
        }
        if let Err(e) = self.reload() {
            tracing::error!(error = %e.detail, "webhooks could not be reloaded");
        }
    }
}

/// The body of a delivery (SPEC §13): `data` is the record as the API returns it.
pub(crate) fn render(
    ns: Namespace,
    id: Uuid,
    kind: EventKind,
    at: OffsetDateTime,
    data: &EventData,
) -> String {
    let data = match data {
        EventData::Product(p) => serde_json::to_value(ProductOut::from((**p).clone())),
        EventData::Deleted(t) => serde_json::to_value(DeletedOut::from(t.clone())),
        EventData::Job(j) => serde_json::to_value(ImportJobOut::from((**j).clone())),
        EventData::Supplier(s) => serde_json::to_value(SupplierOut::from((**s).clone())),
    };
    body(ns, id, kind, at, data.unwrap_or_default())
}

fn body(
    ns: Namespace,
    id: Uuid,
    kind: EventKind,
    at: OffsetDateTime,
    data: serde_json::Value,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        id: Uuid,
        #[serde(rename = "type")]
        kind: &'a str,
        created_at: String,
        tenant_id: String,
        environment: &'a str,
        data: serde_json::Value,
    }
    serde_json::to_string(&Body {
        id,
        kind: kind.as_str(),
        created_at: crate::web::rfc3339(at),
        tenant_id: ns.tenant.to_string(),
        environment: ns.environment.as_str(),
        data,
    })
    .unwrap_or_default()
}

/// The webhook service: records, deliveries, and the engine thread.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
    now_tx: tokio::sync::mpsc::UnboundedSender<engine::SendNow>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Webhooks {
    /// Loads the webhooks and starts the engine, which first resumes what a previous run left
    /// (outbox events, pending deliveries and their retries).
    pub fn start(
        store: Store,
        clock: SharedClock,
        config: WebhooksConfig,
    ) -> Result<Webhooks, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy::CheckedResolver {
                allow_private: config.allow_private,
            })
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(engine::PER_WEBHOOK)
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (outcomes, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            clock,
            config,
            hooks: RwLock::default(),
            slots: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            client,
            outcomes,
            creating: Mutex::new(()),
        });
        shared.reload().map_err(|e| e.detail)?;
        let (now_tx, now_rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the webhook runtime: {e}"))?;
        let engine_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || {
                // Deliveries are background work: when the cores are busy, requests go
                // first and deliveries catch up afterwards (docs/PERFORMANCE.md, "Webhooks").
                crate::startup::background_priority("webhook engine");
                runtime.block_on(engine::run(engine_shared, now_rx, outcomes_rx));
                // Requests in flight are dropped (sent again at the next start); a name lookup
                // still running on the blocking pool is not waited for long.
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Webhooks {
            shared,
            now_tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Whether the engine thread is running.
    /// Another node of the cluster changed webhooks (`store/cluster.rs`): the engine's list
    /// and the store's switch are read again, as after a change made here.
    pub fn apply_remote(&self, changes: &crate::store::cluster::Changes) {
        if changes.touches("webhooks")
            && let Err(e) = self.shared.reload()
        {
            tracing::warn!(error = %e.detail, "could not reload the webhooks another node changed");
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.thread
            .lock()
            .is_ok_and(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
    }

    /// Stops the engine; attempts in flight are dropped and sent again at the next start.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::warn!("the webhook thread ended with a panic");
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.shared.clock.now()
    }

    /// Removes finished deliveries older than [`DELIVERY_RETENTION`], and event bodies a day
    /// later; returns how many deliveries.
    pub fn sweep(&self) -> Result<usize, Error> {
        let before = self.now() - DELIVERY_RETENTION;
        let removed = self.shared.store.sweep_deliveries(before)?;
        self.shared
            .store
            .sweep_bodies(before - time::Duration::days(1))?;
        Ok(removed)
    }

    /// The tenant's webhooks of both environments, oldest first.
    pub fn list(&self, tenant: TenantId) -> Result<Vec<(Environment, WebhookRecord)>, Error> {
        let mut out = Vec::new();
        for environment in [Environment::Live, Environment::Test] {
            let ns = Namespace {
                tenant,
                environment,
            };
            out.extend(
                self.shared
                    .store
                    .webhooks(ns)?
                    .into_iter()
                    .map(|w| (environment, w)),
            );
        }
        out.sort_by_key(|(_, w)| w.created_at);
        Ok(out)
    }

    /// Finds a webhook of the tenant, in whichever environment it is.
    pub fn get(&self, tenant: TenantId, id: Uuid) -> Result<(Namespace, WebhookRecord), Error> {
        for environment in [Environment::Live, Environment::Test] {
            let ns = Namespace {
                tenant,
                environment,
            };
            if let Some(w) = self.shared.store.webhook(ns, id)? {
                return Ok((ns, w));
            }
        }
        Err(Error::not_found("webhook"))
    }

    pub async fn create(
        &self,
        tenant: TenantId,
        actor: &str,
        input: WebhookInput,
    ) -> Result<(Environment, WebhookRecord), Error> {
        let mut errors = Vec::new();
        let environment = match input.environment.as_deref().map(str::trim) {
            None | Some("live") => Environment::Live,
            Some("test") => Environment::Test,
            Some(_) => {
                errors.push(Invalid::new("environment", "must be live or test"));
                Environment::Live
            }
        };
        let ns = Namespace {
            tenant,
            environment,
        };
        for (field, absent) in [
            ("name", input.name.is_none()),
            ("url", input.url.is_none()),
            ("events", input.events.is_none()),
        ] {
            if absent {
                errors.push(Invalid::new(field, "is required"));
            }
        }
        let now = self.now();
        let mut hook = WebhookRecord {
            id: Uuid::now_v7(),
            name: String::new(),
            url: String::new(),
            events: Vec::new(),
            secret: new_secret(),
            headers: BTreeMap::new(),
            max_retries: DEFAULT_RETRIES,
            timeout_seconds: DEFAULT_TIMEOUT,
            is_active: true,
            failed_events: 0,
            disabled_at: None,
            created_by: actor.to_owned(),
            created_at: now,
            updated_at: now,
        };
        errors.extend(self.apply(&mut hook, input));
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        {
            let _one_at_a_time =
                self.shared.creating.lock().map_err(|_| {
                    Error::new(ErrorKind::Internal, "webhook creation lock poisoned")
                })?;
            if self.shared.store.webhooks(ns)?.len() >= MAX_WEBHOOKS {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("a tenant has at most {MAX_WEBHOOKS} webhooks per environment"),
                ));
            }
            self.shared.store.put_webhook(ns, &hook)?;
        }
        self.shared.store.flush().await?;
        self.shared.reload()?;
        Ok((environment, hook))
    }

    pub async fn patch(
        &self,
        tenant: TenantId,
        id: Uuid,
        input: WebhookInput,
    ) -> Result<(Environment, WebhookRecord), Error> {
        if input.environment.is_some() {
            return Err(Error::invalid(vec![Invalid::new(
                "environment",
                "cannot change; create a webhook in the other environment instead",
            )]));
        }
        let now = self.now();
        // Checked on the current record first, so a bad input answers 422 and writes nothing;
        // then applied in a compare-and-swap (the engine may be counting a failure meanwhile).
        let (ns, mut probe) = self.get(tenant, id)?;
        let errors = self.apply(&mut probe, input.clone());
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let hook = self
            .shared
            .store
            .update_webhook(ns, id, |hook| {
                let was_active = hook.is_active;
                // Already checked: applying the same input again finds nothing new.
                let _ = self.apply(hook, input.clone());
                if hook.is_active && !was_active {
                    // Turned on again by hand: its failures start over.
                    hook.failed_events = 0;
                    hook.disabled_at = None;
                }
                hook.updated_at = now;
                Ok(())
            })
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => Error::not_found("webhook"),
                e => e.into(),
            })?;
        self.shared.store.flush().await?;
        self.shared.reload()?;
        Ok((ns.environment, hook))
    }

    pub async fn delete(&self, tenant: TenantId, id: Uuid) -> Result<(), Error> {
        let (ns, _) = self.get(tenant, id)?;
        if !self.shared.store.delete_webhook(ns, id)? {
            return Err(Error::not_found("webhook"));
        }
        self.shared.store.flush().await?;
        self.shared.reload()?;
        Ok(())
    }

    /// Sends a `test` event to the webhook now (whether or not it is active) and answers with
    /// the delivery once its first attempt is over; a failed test is retried like any event.
    pub async fn test(&self, tenant: TenantId, id: Uuid) -> Result<DeliveryRecord, Error> {
        let (ns, hook) = self.get(tenant, id)?;
        let now = self.now();
        let event = Uuid::now_v7();
        let data = serde_json::json!({
            "webhook_id": hook.id,
            "message": "A test event sent from the settings page or the API.",
        });
        let text = body(ns, event, EventKind::Test, now, data);
        let delivery = DeliveryRecord::new(hook.id, event, EventKind::Test, now);
        let kept = BodyRecord {
            at: now,
            body: text,
        };
        // Its slot is taken before it is stored, so the engine's own rounds leave it to us.
        self.shared.claim(hook.id, delivery.id, true);
        let stored = self.shared.store.insert_delivery(ns, &delivery, &kept);
        let stored = match stored {
            Ok(()) => self.shared.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            self.shared.release(hook.id, delivery.id);
            return Err(e.into());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let wait = std::time::Duration::from_secs(u64::from(hook.timeout_seconds) + 5);
        let hook_id = hook.id;
        let sent = self.now_tx.send(engine::SendNow {
            ns,
            hook,
            delivery: delivery.clone(),
            reply,
        });
        if sent.is_err() {
            self.shared.release(hook_id, delivery.id);
            return Err(Error::new(
                ErrorKind::Internal,
                "the webhook engine is not running",
            ));
        }
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(done)) => Ok(done),
            // Still in flight, or already being sent by the engine: answer with what is stored.
            _ => Ok(self
                .shared
                .store
                .delivery(ns, id, delivery.id)?
                .unwrap_or(delivery)),
        }
    }

    pub fn deliveries(
        &self,
        tenant: TenantId,
        id: Uuid,
        skip: usize,
        take: usize,
    ) -> Result<(Vec<DeliveryRecord>, usize), Error> {
        let (ns, _) = self.get(tenant, id)?;
        Ok(self.shared.store.deliveries_page(ns, id, skip, take)?)
    }

    pub async fn redeliver(
        &self,
        tenant: TenantId,
        id: Uuid,
        delivery: Uuid,
    ) -> Result<DeliveryRecord, Error> {
        let (ns, _) = self.get(tenant, id)?;
        let d = match self.shared.store.redeliver(ns, id, delivery, self.now()) {
            Err(crate::store::StoreError::NotFound) => {
                return Err(Error::not_found("delivery"));
            }
            other => other?,
        };
        self.shared.store.flush().await?;
        self.shared.wake.notify_one();
        Ok(d)
    }

    /// Checks `input` and applies what it sets to `hook`; the problems found.
    fn apply(&self, hook: &mut WebhookRecord, input: WebhookInput) -> Vec<Invalid> {
        let mut errors = Vec::new();
        if let Some(name) = input.name {
            match crate::domain::display_name("name", &name) {
                Ok(name) => hook.name = name,
                Err(e) => errors.push(e),
            }
        }
        if let Some(url) = input.url {
            match policy::check_url(&url, self.shared.config.allow_private) {
                Ok(u) => hook.url = u.to_string(),
                Err(e) => errors.push(Invalid::new("url", e)),
            }
        }
        if let Some(events) = input.events {
            let mut kinds = Vec::new();
            for e in &events {
                match EventKind::parse(e.trim()) {
                    Some(k) if !kinds.contains(&k) => kinds.push(k),
                    Some(_) => {}
                    None => errors.push(Invalid::new(
                        "events",
                        format!(
                            "{e:?} is not an event type; known: {}",
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        ),
                    )),
                }
            }
            if kinds.is_empty() && errors.iter().all(|e| e.field != "events") {
                errors.push(Invalid::new("events", "must name at least one event type"));
            }
            hook.events = kinds.iter().map(|k| k.as_str().to_owned()).collect();
        }
        if let Some(secret) = input.secret {
            if secret.len() < 16
                || secret.len() > 256
                || !secret.bytes().all(|b| b.is_ascii_graphic())
            {
                errors.push(Invalid::new(
                    "secret",
                    "must be 16 to 256 printable ASCII characters without spaces",
                ));
            } else {
                hook.secret = secret;
            }
        }
        if let Some(headers) = input.headers {
            match check_headers(headers) {
                Ok(h) => hook.headers = h,
                Err(e) => errors.push(e),
            }
        }
        if let Some(n) = input.max_retries {
            match u32::try_from(n) {
                Ok(n) if n <= MAX_RETRIES => hook.max_retries = n,
                _ => errors.push(Invalid::new(
                    "max_retries",
                    format!("must be 0 to {MAX_RETRIES}"),
                )),
            }
        }
        if let Some(n) = input.timeout_seconds {
            match u32::try_from(n) {
                Ok(n) if (1..=MAX_TIMEOUT).contains(&n) => hook.timeout_seconds = n,
                _ => errors.push(Invalid::new(
                    "timeout_seconds",
                    format!("must be 1 to {MAX_TIMEOUT}"),
                )),
            }
        }
        if let Some(active) = input.is_active {
            hook.is_active = active;
        }
        errors
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", crate::domain::hex(&bytes))
}

fn check_headers(headers: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Invalid> {
    if headers.len() > MAX_HEADERS {
        return Err(Invalid::new(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Invalid::new(
                "headers",
                format!("{name:?} is not a valid header name"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-pm-") {
            return Err(Invalid::new(
                "headers",
                format!("{name} is set by the delivery itself"),
            ));
        }
        if value.len() > MAX_HEADER_VALUE || reqwest::header::HeaderValue::from_str(&value).is_err()
        {
            return Err(Invalid::new(
                "headers",
                format!(
                    "the value of {name} is not a valid header value of at most {MAX_HEADER_VALUE} bytes"
                ),
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}
