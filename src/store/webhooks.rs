//! Webhooks (SPEC §13): their records, the outbox of events and the deliveries.
//!
//! - `webhooks`: namespace + id → [`WebhookRecord`].
//! - `webhook_events`, the outbox: event id (UUID v7, so time order) + namespace →
//!   [`EventRecord`]. An event is written in the same transaction as the change that causes it
//!   ([`Store::product_tx`], [`Store::update_job`]), and only while an active webhook of its
//!   namespace subscribes to its type ([`EventSwitch`]); the delivery engine fans it out and
//!   removes it.
//! - `webhook_bodies`: event id → [`BodyRecord`], the exact body every delivery of the event
//!   sends, kept once for all its webhooks (swept with old deliveries).
//! - `webhook_deliveries`: namespace + webhook id + delivery id (UUID v7) → [`DeliveryRecord`],
//!   one per event and webhook, kept with the outcome of its latest attempt.
//! - `webhook_due`: namespace + webhook id + due time (ms, BE) + delivery id → nothing: the
//!   deliveries still to attempt, per webhook in due order, so one slow receiver never stands
//!   in front of another webhook's deliveries.
use super::kv::Transactional;
use super::kv::TxTree;
use super::{JobRecord, ProductRecord, SupplierRecord, Tombstone};
use super::{Namespace, Store, StoreError, StoreResult, abort, codec, from_tx, keys};
use serde::{Deserialize, Serialize};
use sled::transaction::UnabortableTransactionError;
use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;
use time::OffsetDateTime;
use uuid::Uuid;

/// Consecutive failed events after which a webhook is turned off (SPEC §13).
pub const DISABLE_AFTER_FAILED_EVENTS: u32 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    /// Event type names (`product.created`, …).
    pub events: Vec<String>,
    /// Signs every delivery; shown to the admin once, at creation.
    pub secret: String,
    pub headers: BTreeMap<String, String>,
    pub max_retries: u32,
    pub timeout_seconds: u32,
    pub is_active: bool,
    /// Events in a row whose delivery failed for good; a success sets it back to 0.
    pub failed_events: u32,
    /// When and why the webhook was turned off by its failures (cleared when turned on again).
    pub disabled_at: Option<OffsetDateTime>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    ProductCreated,
    ProductUpdated,
    ProductDeleted,
    ImportStarted,
    ImportCompleted,
    ImportFailed,
    SupplierCreated,
    SupplierUpdated,
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::ProductCreated,
        EventKind::ProductUpdated,
        EventKind::ProductDeleted,
        EventKind::ImportStarted,
        EventKind::ImportCompleted,
        EventKind::ImportFailed,
        EventKind::SupplierCreated,
        EventKind::SupplierUpdated,
        EventKind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ProductCreated => "product.created",
            EventKind::ProductUpdated => "product.updated",
            EventKind::ProductDeleted => "product.deleted",
            EventKind::ImportStarted => "import.started",
            EventKind::ImportCompleted => "import.completed",
            EventKind::ImportFailed => "import.failed",
            EventKind::SupplierCreated => "supplier.created",
            EventKind::SupplierUpdated => "supplier.updated",
            EventKind::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What an event carries; rendered as the API shows it when the event is fanned out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventData {
    Product(Box<ProductRecord>),
    Deleted(Tombstone),
    Job(Box<JobRecord>),
    Supplier(Box<SupplierRecord>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: Uuid,
    pub kind: EventKind,
    pub at: OffsetDateTime,
    pub data: EventData,
}

/// The body of an event's deliveries, rendered once at fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BodyRecord {
    /// The event's time (by the server's clock): what the sweep goes by.
    pub at: OffsetDateTime,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Sent as `X-PM-Delivery`: the same on every attempt.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event: EventKind,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts made before the latest redelivery: the retry budget counts from here.
    pub budget_from: u32,
    pub status: DeliveryStatus,
    pub status_code: Option<u16>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub last_attempt_at: Option<OffsetDateTime>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

impl DeliveryRecord {
    /// A new delivery of `event` to `webhook`, due at `now`.
    pub fn new(webhook: Uuid, event_id: Uuid, event: EventKind, now: OffsetDateTime) -> Self {
        DeliveryRecord {
            id: Uuid::now_v7(),
            webhook_id: webhook,
            event_id,
            event,
            attempts: 0,
            budget_from: 0,
            status: DeliveryStatus::Pending,
            status_code: None,
            duration_ms: None,
            error: None,
            last_attempt_at: None,
            next_attempt_at: Some(now),
            created_at: now,
        }
    }
}

/// The outbox's oldest events (key, namespace, event), and the keys of unreadable ones.
#[derive(Debug, Default)]
pub struct PendingEvents {
    pub events: Vec<(Vec<u8>, Namespace, EventRecord)>,
    pub unreadable: Vec<Vec<u8>>,
}

/// What one attempt found.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: OffsetDateTime,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// `None` for a success (any 2xx).
    pub error: Option<String>,
    /// The event's body is no longer kept (swept after its retention): the delivery ends as
    /// failed at once, and the webhook's run of failed events does not count it (the receiver
    /// is not at fault).
    pub expired: bool,
}

/// What recording an attempt did.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub delivery: DeliveryRecord,
    /// This failure was the webhook's tenth failed event in a row: it is now off.
    pub disabled: Option<WebhookRecord>,
}

/// Which event types some active webhook of a namespace subscribes to, so only those changes
/// write events (an event nobody would receive costs a write and a removal for nothing). Kept
/// by the webhook service from the records (at start and after every webhook write); a write
/// reads it inside its transaction, which costs a read lock.
#[derive(Default)]
pub(crate) struct EventSwitch {
    wanted: RwLock<HashSet<(Namespace, EventKind)>>,
    written: tokio::sync::Notify,
}

impl EventSwitch {
    fn on(&self, ns: Namespace, kind: EventKind) -> bool {
        self.wanted
            .read()
            .map(|set| !set.is_empty() && set.contains(&(ns, kind)))
            .unwrap_or(true)
    }

    fn any(&self) -> bool {
        self.wanted.read().map(|s| !s.is_empty()).unwrap_or(true)
    }
}

type Tx<T> = Result<T, UnabortableTransactionError>;

fn event_key(ns: Namespace, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(&keys::namespace(ns));
    k
}

fn delivery_key(ns: Namespace, webhook: Uuid, delivery: Uuid) -> [u8; 49] {
    keys::ns_pair(ns, webhook.as_bytes(), delivery.as_bytes())
}

fn due_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn due_key(ns: Namespace, webhook: Uuid, at: OffsetDateTime, delivery: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(57);
    k.extend_from_slice(&keys::ns_id(ns, webhook.as_bytes()));
    k.extend_from_slice(&due_ms(at).to_be_bytes());
    k.extend_from_slice(delivery.as_bytes());
    k
}

/// Writes an event into the outbox inside the caller's transaction, when an active webhook of
/// `ns` subscribes to `kind`. `data` is only built then.
pub(super) fn emit(
    outbox: &TxTree,
    switch: &EventSwitch,
    ns: Namespace,
    kind: EventKind,
    at: OffsetDateTime,
    data: impl FnOnce() -> EventData,
) -> Tx<()> {
    if !switch.on(ns, kind) {
        return Ok(());
    }
    let event = EventRecord {
        id: Uuid::now_v7(),
        kind,
        at,
        data: data(),
    };
    outbox.set(event_key(ns, event.id), codec::encode(&event))?;
    Ok(())
}

/// Puts `d` (with its due entry, when it has a next attempt) inside a transaction.
fn put_delivery(deliveries: &TxTree, due: &TxTree, ns: Namespace, d: &DeliveryRecord) -> Tx<()> {
    deliveries.set(&delivery_key(ns, d.webhook_id, d.id)[..], codec::encode(d))?;
    if let Some(at) = d.next_attempt_at {
        due.set(due_key(ns, d.webhook_id, at, d.id), codec::raw(&[]))?;
    }
    Ok(())
}

fn drop_due(due: &TxTree, ns: Namespace, d: &DeliveryRecord) -> Tx<()> {
    if let Some(at) = d.next_attempt_at {
        due.unset(due_key(ns, d.webhook_id, at, d.id))?;
    }
    Ok(())
}

impl Store {
    pub(super) fn event_switch(&self) -> &EventSwitch {
        &self.events_on
    }

    /// Reads every webhook and sets, from the active ones, the event types each namespace's
    /// changes write. Run at every open (so the CLI's offline writes emit too; their events
    /// wait in the outbox for the server) and after every webhook write; returns the webhooks.
    pub fn refresh_wanted_events(&self) -> StoreResult<Vec<(Namespace, WebhookRecord)>> {
        let all = self.all_webhooks()?;
        let wanted: HashSet<(Namespace, EventKind)> = all
            .iter()
            .filter(|(_, h)| h.is_active)
            .flat_map(|(ns, h)| {
                h.events
                    .iter()
                    .filter_map(|e| EventKind::parse(e))
                    .map(move |k| (*ns, k))
            })
            .collect();
        if let Ok(mut set) = self.events_on.wanted.write() {
            *set = wanted;
        }
        Ok(all)
    }

    /// Wakes the delivery engine after a commit that may have written events.
    pub(super) fn events_written(&self) {
        if self.events_on.any() {
            self.events_on.written.notify_one();
        }
    }

    /// Resolves when a write may have put events in the outbox since the last call.
    pub async fn events_notified(&self) {
        self.events_on.written.notified().await
    }

    pub fn put_webhook(&self, ns: Namespace, w: &WebhookRecord) -> StoreResult<()> {
        self.webhooks
            .set(&keys::ns_id(ns, w.id.as_bytes())[..], codec::encode(w))?;
        Ok(())
    }

    pub fn webhook(&self, ns: Namespace, id: Uuid) -> StoreResult<Option<WebhookRecord>> {
        self.webhooks
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Applies `edit` to a webhook (compare-and-swap, so a concurrent attempt's failure count
    /// is never lost).
    pub fn update_webhook(
        &self,
        ns: Namespace,
        id: Uuid,
        edit: impl Fn(&mut WebhookRecord) -> Result<(), StoreError>,
    ) -> StoreResult<WebhookRecord> {
        let key = keys::ns_id(ns, id.as_bytes());
        loop {
            let Some(old) = self.webhooks.get(key)? else {
                return Err(StoreError::NotFound);
            };
            let mut w: WebhookRecord = codec::decode(&old)?;
            edit(&mut w)?;
            if self
                .webhooks
                .compare_and_swap(key, Some(old), Some(codec::encode(&w)))?
                .is_ok()
            {
                return Ok(w);
            }
        }
    }

    /// The namespace's webhooks, oldest first.
    pub fn webhooks(&self, ns: Namespace) -> StoreResult<Vec<WebhookRecord>> {
        let mut out: Vec<WebhookRecord> = self
            .webhooks
            .scan_prefix(keys::namespace(ns))
            .values()
            .map(|v| codec::decode(&v?))
            .collect::<StoreResult<_>>()?;
        out.sort_by_key(|w| w.created_at);
        Ok(out)
    }

    pub fn all_webhooks(&self) -> StoreResult<Vec<(Namespace, WebhookRecord)>> {
        let mut out = Vec::new();
        for item in self.webhooks.iter() {
            let (k, v) = item?;
            let ns = keys::namespace_of(&k)
                .ok_or_else(|| StoreError::Corrupt("webhooks: short key".into()))?;
            out.push((ns, codec::decode(&v)?));
        }
        Ok(out)
    }

    /// Deletes a webhook with its deliveries, in one transaction (a crash leaves all or
    /// nothing); `false` when there was none. A delivery fanned out meanwhile is not lost to a
    /// race: fan-out checks the webhook inside its own transaction.
    pub fn delete_webhook(&self, ns: Namespace, id: Uuid) -> StoreResult<bool> {
        let prefix = keys::ns_id(ns, id.as_bytes());
        let gather = |tree: &super::kv::Tree| -> StoreResult<Vec<sled::IVec>> {
            tree.scan_prefix(prefix)
                .keys()
                .map(|k| k.map_err(StoreError::from))
                .collect()
        };
        let (deliveries, due) = (
            gather(&self.webhook_deliveries)?,
            gather(&self.webhook_due)?,
        );
        let deleted = (&self.webhooks, &self.webhook_deliveries, &self.webhook_due)
            .transaction(|(hooks, stored, pending)| {
                if hooks.remove(&prefix[..])?.is_none() {
                    return Ok(false);
                }
                for k in &deliveries {
                    stored.unset(k)?;
                }
                for k in &due {
                    pending.unset(k)?;
                }
                Ok(true)
            })
            .map_err(from_tx)?;
        if deleted {
            // The engine may have committed a fan-out or a retry between the scan above and
            // the transaction; nothing new can come now (both check the webhook inside their
            // transaction), so what is left is removed.
            for tree in [&self.webhook_due, &self.webhook_deliveries] {
                for k in gather(tree)? {
                    tree.unset(k)?;
                }
            }
        }
        Ok(deleted)
    }

    /// Finished deliveries (succeeded or failed for good) created before `before` are removed;
    /// returns how many. Pending ones stay whatever their age.
    pub fn sweep_deliveries(&self, before: OffsetDateTime) -> StoreResult<usize> {
        let mut removed = 0;
        for item in self.webhook_deliveries.iter() {
            let (k, v) = item?;
            let Ok(d) = codec::decode::<DeliveryRecord>(&v) else {
                continue;
            };
            if d.status != DeliveryStatus::Pending
                && d.created_at < before
                && self
                    .webhook_deliveries
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The oldest events of the outbox, at most `limit`.
    /// The oldest `limit` outbox events, and the keys of those that cannot be read (a damaged
    /// record, or one written by a newer version): those are logged here and dropped by the
    /// caller's fan-out, so one bad record cannot stop every later event's delivery.
    pub fn pending_events(&self, limit: usize) -> StoreResult<PendingEvents> {
        let mut out = PendingEvents::default();
        for item in self.webhook_events.iter().take(limit) {
            let (k, v) = item?;
            let decoded = k
                .get(16..)
                .and_then(keys::namespace_of)
                .ok_or_else(|| StoreError::Corrupt("webhook_events: short key".into()))
                .and_then(|ns| Ok((ns, codec::decode::<EventRecord>(&v)?)));
            match decoded {
                Ok((ns, event)) => out.events.push((k.to_vec(), ns, event)),
                Err(e) => {
                    tracing::error!(
                        key = %crate::domain::hex(&k),
                        error = %e,
                        "an outbox event cannot be read; it is dropped, its change stays stored"
                    );
                    out.unreadable.push(k.to_vec());
                }
            }
        }
        Ok(out)
    }

    /// Replaces the outbox events `events` by `deliveries`, with the body of each event they
    /// send, in one transaction: a crash leaves either the events (fanned out again) or the
    /// deliveries.
    pub fn fan_out(
        &self,
        events: &[Vec<u8>],
        bodies: &[(Uuid, BodyRecord)],
        deliveries: &[(Namespace, DeliveryRecord)],
    ) -> StoreResult<()> {
        (
            &self.webhook_events,
            &self.webhook_deliveries,
            &self.webhook_due,
            &self.webhooks,
            &self.webhook_bodies,
        )
            .transaction(|(outbox, stored, due, hooks, kept)| {
                for k in events {
                    outbox.unset(&k[..])?;
                }
                for (event, body) in bodies {
                    kept.set(event.as_bytes(), codec::encode(body))?;
                }
                for (ns, d) in deliveries {
                    // Read inside the transaction: a webhook deleted meanwhile gets nothing.
                    if hooks
                        .get(keys::ns_id(*ns, d.webhook_id.as_bytes()))?
                        .is_some()
                    {
                        put_delivery(stored, due, *ns, d)?;
                    }
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    /// Stores a new delivery (a `test` event) with its body, due at its `next_attempt_at`.
    pub fn insert_delivery(
        &self,
        ns: Namespace,
        d: &DeliveryRecord,
        body: &BodyRecord,
    ) -> StoreResult<()> {
        self.fan_out(&[], &[(d.event_id, body.clone())], &[(ns, d.clone())])
    }

    /// The body the deliveries of `event` send; `None` once swept.
    pub fn event_body(&self, event: Uuid) -> StoreResult<Option<BodyRecord>> {
        self.webhook_bodies
            .get(event.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Removes the bodies of events older than `before`; returns how many.
    pub fn sweep_bodies(&self, before: OffsetDateTime) -> StoreResult<usize> {
        let mut removed = 0;
        for item in self.webhook_bodies.iter() {
            let (k, v) = item?;
            let Ok(b) = codec::decode::<BodyRecord>(&v) else {
                continue;
            };
            if b.at < before
                && self
                    .webhook_bodies
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn delivery(
        &self,
        ns: Namespace,
        webhook: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<DeliveryRecord>> {
        self.webhook_deliveries
            .get(delivery_key(ns, webhook, id))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// A webhook's deliveries, newest first: `skip`, then at most `take`; and the total.
    pub fn deliveries_page(
        &self,
        ns: Namespace,
        webhook: Uuid,
        skip: usize,
        take: usize,
    ) -> StoreResult<(Vec<DeliveryRecord>, usize)> {
        let prefix = keys::ns_id(ns, webhook.as_bytes());
        let total = self.webhook_deliveries.scan_prefix(prefix).count();
        let items = self
            .webhook_deliveries
            .scan_prefix(prefix)
            .values()
            .rev()
            .skip(skip)
            .take(take)
            .map(|v| codec::decode(&v?))
            .collect::<StoreResult<_>>()?;
        Ok((items, total))
    }

    /// The deliveries of one webhook due at `now` or before, in due order, leaving out those
    /// `busy` names, at most `limit`; and the due time of the first one left out by the time
    /// (when the engine should look again).
    pub fn due_deliveries(
        &self,
        ns: Namespace,
        webhook: Uuid,
        now: OffsetDateTime,
        limit: usize,
        busy: impl Fn(Uuid) -> bool,
    ) -> StoreResult<(Vec<DeliveryRecord>, Option<OffsetDateTime>)> {
        let now_ms = due_ms(now);
        let mut out = Vec::new();
        for k in self
            .webhook_due
            .scan_prefix(keys::ns_id(ns, webhook.as_bytes()))
            .keys()
        {
            let k = k?;
            let (Some(at), Some(id)) = (
                k.get(33..41)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                k.get(41..57).and_then(|b| Uuid::from_slice(b).ok()),
            ) else {
                return Err(StoreError::Corrupt("webhook_due: short key".into()));
            };
            if at > now_ms {
                let next =
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000).ok();
                return Ok((out, next));
            }
            if out.len() >= limit {
                return Ok((out, Some(now)));
            }
            if busy(id) {
                continue;
            }
            match self.delivery(ns, webhook, id)? {
                Some(d) => out.push(d),
                // A due entry without its delivery (the webhook was deleted meanwhile).
                None => {
                    self.webhook_due.unset(&k)?;
                }
            }
        }
        Ok((out, None))
    }

    /// Records attempts, all in one transaction over the webhooks, the deliveries and their
    /// due entries (the engine gathers the attempts that ended together). A success ends its
    /// delivery; a failure schedules the next attempt at `retry_at(attempt time, attempts
    /// made)`, or, past the webhook's `max_retries`, ends it as failed and counts a failed
    /// event against the webhook, which the tenth in a row turns off. `None` for an attempt
    /// whose webhook or delivery no longer exists.
    pub fn record_attempts(
        &self,
        attempts: &[(Namespace, Uuid, Uuid, Attempt)],
        retry_at: impl Fn(OffsetDateTime, u32) -> OffsetDateTime,
    ) -> StoreResult<Vec<Option<Recorded>>> {
        (&self.webhooks, &self.webhook_deliveries, &self.webhook_due)
            .transaction(|(hooks, deliveries, due)| {
                let mut out = Vec::with_capacity(attempts.len());
                for (ns, webhook, id, attempt) in attempts {
                    let wkey = keys::ns_id(*ns, webhook.as_bytes());
                    let dkey = delivery_key(*ns, *webhook, *id);
                    let (Some(hook), Some(d)) = (hooks.get(wkey)?, deliveries.get(dkey)?) else {
                        out.push(None);
                        continue;
                    };
                    let mut hook: WebhookRecord = codec::decode(&hook).or_else(abort)?;
                    let old: DeliveryRecord = codec::decode(&d).or_else(abort)?;
                    let mut d = old.clone();
                    d.attempts += 1;
                    d.last_attempt_at = Some(attempt.at);
                    d.status_code = attempt.status_code;
                    d.duration_ms = Some(attempt.duration_ms);
                    d.error = attempt.error.clone();
                    let mut disabled = None;
                    let hook_before = hook.clone();
                    if attempt.error.is_none() {
                        d.status = DeliveryStatus::Succeeded;
                        d.next_attempt_at = None;
                        hook.failed_events = 0;
                    } else if attempt.expired {
                        d.status = DeliveryStatus::Failed;
                        d.next_attempt_at = None;
                    } else if d.attempts - d.budget_from > hook.max_retries {
                        d.status = DeliveryStatus::Failed;
                        d.next_attempt_at = None;
                        hook.failed_events = hook.failed_events.saturating_add(1);
                        if hook.failed_events >= DISABLE_AFTER_FAILED_EVENTS && hook.is_active {
                            hook.is_active = false;
                            hook.disabled_at = Some(attempt.at);
                            hook.updated_at = attempt.at;
                            disabled = Some(hook.clone());
                        }
                    } else {
                        d.status = DeliveryStatus::Pending;
                        d.next_attempt_at = Some(retry_at(attempt.at, d.attempts));
                    }
                    drop_due(due, *ns, &old)?;
                    put_delivery(deliveries, due, *ns, &d)?;
                    if hook != hook_before {
                        hooks.set(&wkey[..], codec::encode(&hook))?;
                    }
                    out.push(Some(Recorded {
                        delivery: d,
                        disabled,
                    }));
                }
                Ok(out)
            })
            .map_err(from_tx)
    }

    /// Sends a delivery again at `now`, with a fresh retry budget; the id stays, so a receiver
    /// that has already processed it can tell.
    pub fn redeliver(
        &self,
        ns: Namespace,
        webhook: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> StoreResult<DeliveryRecord> {
        self.edit_delivery(ns, webhook, id, |d| {
            d.status = DeliveryStatus::Pending;
            d.budget_from = d.attempts;
            d.next_attempt_at = Some(now);
            Ok(())
        })
    }

    fn edit_delivery(
        &self,
        ns: Namespace,
        webhook: Uuid,
        id: Uuid,
        edit: impl Fn(&mut DeliveryRecord) -> Result<(), StoreError>,
    ) -> StoreResult<DeliveryRecord> {
        let dkey = delivery_key(ns, webhook, id);
        (&self.webhook_deliveries, &self.webhook_due)
            .transaction(|(deliveries, due)| {
                let Some(d) = deliveries.get(dkey)? else {
                    return abort(StoreError::NotFound);
                };
                let old: DeliveryRecord = codec::decode(&d).or_else(abort)?;
                let mut d = old.clone();
                edit(&mut d).or_else(abort)?;
                drop_due(due, ns, &old)?;
                put_delivery(deliveries, due, ns, &d)?;
                Ok(d)
            })
            .map_err(from_tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Environment, TenantId};

    fn hook(now: OffsetDateTime) -> WebhookRecord {
        WebhookRecord {
            id: Uuid::now_v7(),
            name: "h".into(),
            url: "https://example.com/".into(),
            events: vec!["product.created".into()],
            secret: "whsec_0123456789abcdef".into(),
            headers: BTreeMap::new(),
            max_retries: 1,
            timeout_seconds: 10,
            is_active: true,
            failed_events: 0,
            disabled_at: None,
            created_by: "test".into(),
            created_at: now,
            updated_at: now,
        }
    }

    fn delivery(webhook: Uuid, now: OffsetDateTime) -> DeliveryRecord {
        DeliveryRecord::new(webhook, Uuid::now_v7(), EventKind::Test, now)
    }

    fn body(now: OffsetDateTime) -> BodyRecord {
        BodyRecord {
            at: now,
            body: "{}".into(),
        }
    }

    fn check(store: &Store) -> StoreResult<crate::store::CheckReport> {
        store.check_integrity::<crate::auth::lockout::LockoutState>()
    }

    #[test]
    fn attempts_retry_then_end_and_every_state_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Live,
        };
        let now = OffsetDateTime::now_utc();
        let w = hook(now);
        store.put_webhook(ns, &w).unwrap();
        let d = delivery(w.id, now);
        store.insert_delivery(ns, &d, &body(now)).unwrap();
        check(&store).unwrap();
        let (due, _) = store.due_deliveries(ns, w.id, now, 10, |_| false).unwrap();
        assert_eq!(due.len(), 1);
        let failed = Attempt {
            at: now,
            status_code: Some(500),
            duration_ms: 3,
            error: Some("500".into()),
            expired: false,
        };
        let later = now + time::Duration::seconds(30);
        let r = store
            .record_attempts(&[(ns, w.id, d.id, failed.clone())], |_, _| later)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(r.delivery.status, DeliveryStatus::Pending);
        assert_eq!(r.delivery.next_attempt_at, Some(later));
        check(&store).unwrap();
        let (due, next) = store.due_deliveries(ns, w.id, now, 10, |_| false).unwrap();
        assert!(due.is_empty(), "not due before its time");
        assert_eq!(
            next.map(|t| t.unix_timestamp()),
            Some(later.unix_timestamp())
        );
        // max_retries 1: the second failure ends it and counts a failed event.
        let r = store
            .record_attempts(&[(ns, w.id, d.id, failed.clone())], |_, _| later)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(r.delivery.status, DeliveryStatus::Failed);
        assert_eq!(r.delivery.next_attempt_at, None);
        assert_eq!(store.webhook(ns, w.id).unwrap().unwrap().failed_events, 1);
        check(&store).unwrap();
        // A delivery whose body was swept ends at its first attempt, and the receiver is not
        // blamed: the webhook's run of failed events stays where it was.
        let stale = delivery(w.id, now);
        store.insert_delivery(ns, &stale, &body(now)).unwrap();
        let expired = Attempt {
            status_code: None,
            error: Some("gone".into()),
            expired: true,
            ..failed.clone()
        };
        let r = store
            .record_attempts(&[(ns, w.id, stale.id, expired)], |_, _| later)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(r.delivery.status, DeliveryStatus::Failed);
        assert_eq!(r.delivery.next_attempt_at, None);
        assert!(r.disabled.is_none());
        assert_eq!(store.webhook(ns, w.id).unwrap().unwrap().failed_events, 1);
        check(&store).unwrap();
        // Old finished deliveries (the two above) are swept; pending ones stay.
        let pending = delivery(w.id, now - time::Duration::days(60));
        store.insert_delivery(ns, &pending, &body(now)).unwrap();
        assert_eq!(
            store
                .sweep_deliveries(now + time::Duration::days(1))
                .unwrap(),
            2
        );
        assert_eq!(store.deliveries_page(ns, w.id, 0, 10).unwrap().1, 1);
        check(&store).unwrap();
        // Deleting the webhook takes its deliveries and due entries; a fan-out for it after
        // that writes nothing.
        assert!(store.delete_webhook(ns, w.id).unwrap());
        store
            .insert_delivery(ns, &delivery(w.id, now), &body(now))
            .unwrap();
        assert_eq!(store.webhook_deliveries.len(), 0);
        assert_eq!(store.webhook_due.len(), 0);
        check(&store).unwrap();
        assert!(!store.delete_webhook(ns, w.id).unwrap());
    }

    #[test]
    fn an_unreadable_outbox_event_is_set_aside_and_the_next_ones_still_come() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Live,
        };
        let now = OffsetDateTime::now_utc();
        let bad = event_key(ns, Uuid::now_v7());
        store
            .webhook_events
            .set(&bad[..], &b"\xff\x00not a record"[..])
            .unwrap();
        let good = EventRecord {
            id: Uuid::now_v7(),
            kind: EventKind::ProductDeleted,
            at: now,
            data: EventData::Deleted(crate::store::Tombstone {
                id: crate::domain::ProductId::generate(),
                ean: "4006381333931".into(),
                reference: None,
                deleted_at: now,
            }),
        };
        let good_key = event_key(ns, good.id);
        store
            .webhook_events
            .set(&good_key[..], codec::encode(&good))
            .unwrap();
        let pending = store.pending_events(10).unwrap();
        assert_eq!(pending.unreadable, vec![bad.clone()]);
        assert_eq!(pending.events.len(), 1);
        assert_eq!(pending.events[0].2.id, good.id);
        // The fan-out takes both out of the outbox.
        store.fan_out(&[bad, good_key], &[], &[]).unwrap();
        let pending = store.pending_events(10).unwrap();
        assert!(pending.events.is_empty() && pending.unreadable.is_empty());
    }

    #[test]
    fn the_check_finds_a_pending_delivery_without_its_due_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Test,
        };
        let now = OffsetDateTime::now_utc();
        let w = hook(now);
        store.put_webhook(ns, &w).unwrap();
        store
            .insert_delivery(ns, &delivery(w.id, now), &body(now))
            .unwrap();
        store.webhook_due.clear().unwrap();
        assert!(check(&store).is_err());
    }
}
