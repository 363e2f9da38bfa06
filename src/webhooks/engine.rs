//! The delivery engine: one thread with its own async runtime, off the request workers. It
//! fans the outbox out into deliveries, then sends each due delivery with at most
//! [`PER_WEBHOOK`] in flight per webhook and [`IN_FLIGHT`] in all, so a receiver that never
//! answers holds a few slots of its own and nothing else.
use super::{Shared, policy, render};
use crate::store::{Attempt, BodyRecord, DeliveryRecord, Namespace, Recorded, WebhookRecord};
use rand::RngExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Deliveries in flight to one webhook.
pub const PER_WEBHOOK: usize = 4;
/// Deliveries in flight in all.
pub const IN_FLIGHT: usize = 64;
/// Bytes of a receiver's answer read (the status is what counts; the rest is dropped).
pub const READ_AT_MOST: usize = 4096;
/// Events fanned out per store transaction.
const FAN_OUT_BATCH: usize = 256;
/// Longest wait between two looks at the due deliveries.
const IDLE: Duration = Duration::from_secs(1);
/// How long the engine lets events gather before fanning them out.
const FAN_OUT_GATHER: Duration = Duration::from_millis(20);
/// Attempt outcomes recorded per store transaction, at most.
const RECORD_BATCH: usize = 256;
/// Longest wait before a retry, whatever the attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// A delivery to attempt now, whatever its webhook's state (`POST /webhooks/{id}/test`); its
/// slot is already taken.
pub(super) struct SendNow {
    pub ns: Namespace,
    pub hook: WebhookRecord,
    pub delivery: DeliveryRecord,
    pub reply: oneshot::Sender<DeliveryRecord>,
}

/// What an attempt found, on its way to the recorder.
pub(super) struct Outcome {
    ns: Namespace,
    hook: Uuid,
    delivery: Uuid,
    attempt: Attempt,
    reply: Option<oneshot::Sender<DeliveryRecord>>,
}

/// The wait before attempt `made + 1`, after `made` failed ones: `base`, then four times
/// longer each time, each within ±20 % so receivers that failed together are not retried
/// together.
pub fn backoff(base: Duration, made: u32) -> Duration {
    let exp = 4u32.saturating_pow(made.saturating_sub(1).min(15));
    let plain = base.saturating_mul(exp).min(MAX_BACKOFF);
    plain.mul_f64(rand::rng().random_range(0.8..1.2))
}

pub(super) async fn run(
    shared: Arc<Shared>,
    mut now_rx: tokio::sync::mpsc::UnboundedReceiver<SendNow>,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<Outcome>,
) {
    tokio::spawn(record(shared.clone(), outcomes));
    loop {
        if shared.stopping() {
            break;
        }
        if !shared.store.runs_background() {
            // Another node of the cluster delivers; this one sends only what a client asks
            // for now (a test or a redelivery), and takes over when that node goes.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                Some(now) = now_rx.recv() => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        attempt(&shared, now.ns, now.hook, now.delivery, Some(now.reply)).await;
                    });
                }
            }
            continue;
        }
        if let Err(e) = fan_out(&shared) {
            tracing::error!(error = %e, "webhook events could not be fanned out");
        }
        let next = dispatch(&shared);
        let wait = next.map_or(IDLE, |at| {
            let left = at - shared.clock.now();
            Duration::try_from(left)
                .unwrap_or_default()
                .clamp(Duration::from_millis(5), IDLE)
        });
        tokio::select! {
            () = shared.store.events_notified() => {
                // Let the events of writes in flight join this one: one fan-out transaction
                // for a burst of writes, not one per write (each takes sled's write lock
                // that product writes wait for).
                tokio::time::sleep(FAN_OUT_GATHER).await;
            }
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(now) = now_rx.recv() => {
                // The sender took its slot before storing it.
                let shared = shared.clone();
                tokio::spawn(async move {
                    attempt(&shared, now.ns, now.hook, now.delivery, Some(now.reply)).await;
                });
            }
        }
    }
}

/// Records the outcomes of attempts, all those that ended together in one transaction (a
/// store transaction per attempt cost more than the attempt), then hands the deliveries back.
async fn record(shared: Arc<Shared>, mut outcomes: tokio::sync::mpsc::UnboundedReceiver<Outcome>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while let Some(first) = outcomes.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match outcomes.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let items: Vec<_> = batch
            .iter()
            .map(|o| (o.ns, o.hook, o.delivery, o.attempt.clone()))
            .collect();
        let base = shared.config.retry_base;
        let recorded = shared
            .store
            .record_attempts(&items, |at, made| at + backoff(base, made));
        let recorded = match recorded {
            Ok(r) => r,
            Err(e) => {
                // Left as they were: the deliveries are due again and are sent again.
                tracing::error!(error = %e, "webhook delivery outcomes could not be recorded");
                Vec::new()
            }
        };
        let mut recorded = recorded.into_iter();
        for o in batch.drain(..) {
            shared.recorded(o.delivery);
            let Some(Some(Recorded { delivery, disabled })) = recorded.next() else {
                continue;
            };
            if let Some(off) = disabled {
                shared.disabled(o.ns, off);
            }
            if let Some(reply) = o.reply {
                let _ = reply.send(delivery);
            }
        }
    }
}

/// Turns outbox events into deliveries for the active webhooks of their namespace that
/// subscribe to them, a batch per transaction, until the outbox is empty.
fn fan_out(shared: &Shared) -> Result<(), crate::store::StoreError> {
    loop {
        let pending = shared.store.pending_events(FAN_OUT_BATCH)?;
        if pending.events.is_empty() && pending.unreadable.is_empty() {
            return Ok(());
        }
        let events = pending.events;
        let hooks = shared.hooks_snapshot();
        let now = shared.clock.now();
        // Unreadable events leave the outbox with this batch (logged by the store).
        let mut keys = pending.unreadable;
        keys.reserve(events.len());
        let mut bodies = Vec::new();
        let mut deliveries = Vec::new();
        for (key, ns, event) in events {
            keys.push(key);
            let targets: Vec<&WebhookRecord> = hooks
                .iter()
                .filter(|(hns, h)| {
                    *hns == ns && h.is_active && h.events.iter().any(|e| e == event.kind.as_str())
                })
                .map(|(_, h)| h)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let body = render(ns, event.id, event.kind, event.at, &event.data);
            bodies.push((event.id, BodyRecord { at: event.at, body }));
            for hook in targets {
                deliveries.push((ns, DeliveryRecord::new(hook.id, event.id, event.kind, now)));
            }
        }
        shared.store.fan_out(&keys, &bodies, &deliveries)?;
    }
}

/// Starts the due deliveries each active webhook has room for; returns when the engine should
/// look again (the earliest due time left).
fn dispatch(shared: &Arc<Shared>) -> Option<OffsetDateTime> {
    let now = shared.clock.now();
    let mut next: Option<OffsetDateTime> = None;
    for (ns, hook) in shared.hooks_snapshot() {
        if !hook.is_active {
            continue;
        }
        let room = shared.room(hook.id);
        if room == 0 {
            continue;
        }
        let due = shared
            .store
            .due_deliveries(ns, hook.id, now, room, |id| shared.is_busy(id));
        let (deliveries, later) = match due {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "due webhook deliveries could not be read");
                continue;
            }
        };
        if let Some(at) = later {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        for d in deliveries {
            if !shared.claim(hook.id, d.id, false) {
                next = Some(now);
                break;
            }
            let (shared, hook) = (shared.clone(), hook.clone());
            tokio::spawn(async move {
                attempt(&shared, ns, hook, d, None).await;
            });
        }
    }
    next
}

/// One attempt: send, free the sending slot, hand the outcome to the recorder.
async fn attempt(
    shared: &Arc<Shared>,
    ns: Namespace,
    hook: WebhookRecord,
    d: DeliveryRecord,
    reply: Option<oneshot::Sender<DeliveryRecord>>,
) {
    let at = shared.clock.now();
    let started = Instant::now();
    let (status_code, error, expired) = match send(shared, &hook, &d, at).await {
        Ok(code) if (200..300).contains(&code) => (Some(code), None, false),
        Ok(code) => (
            Some(code),
            Some(format!("the receiver answered {code}")),
            false,
        ),
        Err(NotSent::Expired) => (
            None,
            Some("the event's body is no longer kept (older than 30 days)".to_owned()),
            true,
        ),
        Err(NotSent::Failed(e)) => (None, Some(e), false),
    };
    shared.sent(hook.id);
    let outcome = Outcome {
        ns,
        hook: hook.id,
        delivery: d.id,
        attempt: Attempt {
            at,
            status_code,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
            expired,
        },
        reply,
    };
    if shared.outcomes.send(outcome).is_err() {
        shared.recorded(d.id);
    }
}

/// Why an attempt got no status code.
enum NotSent {
    /// The event's body was swept: nothing to send, ever.
    Expired,
    Failed(String),
}

impl From<String> for NotSent {
    fn from(e: String) -> NotSent {
        NotSent::Failed(e)
    }
}

/// Sends one delivery; the status code, or why there is none. Everything (connection, request,
/// the first [`READ_AT_MOST`] bytes of the answer) must finish within the webhook's timeout.
async fn send(
    shared: &Shared,
    hook: &WebhookRecord,
    d: &DeliveryRecord,
    at: OffsetDateTime,
) -> Result<u16, NotSent> {
    let url = policy::check_url(&hook.url, shared.config.allow_private)
        .map_err(|e| format!("the URL {e}"))?;
    let t = at.unix_timestamp();
    let body = match shared.store.event_body(d.event_id) {
        Ok(Some(b)) => b.body,
        Ok(None) => return Err(NotSent::Expired),
        Err(e) => return Err(format!("the event's body could not be read: {e}").into()),
    };
    let mut request = shared
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::USER_AGENT,
            concat!("pixee-pim/", env!("CARGO_PKG_VERSION"), " (webhooks)"),
        )
        .header("X-PM-Event", d.event.as_str())
        .header("X-PM-Delivery", d.id.to_string())
        .header(
            "X-PM-Signature",
            super::sign::header(&hook.secret, t, body.as_bytes()),
        );
    for (name, value) in &hook.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(body);
    let exchange = async {
        let mut response = request
            .send()
            .await
            .map_err(|e| NotSent::Failed(describe(&e)))?;
        let code = response.status().as_u16();
        let mut read = 0;
        while read < READ_AT_MOST {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                // The status is in: a broken body after it changes nothing.
                Ok(None) | Err(_) => break,
            }
        }
        Ok::<_, NotSent>(code)
    };
    let limit = Duration::from_secs(u64::from(hook.timeout_seconds));
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(NotSent::Failed(format!(
            "no answer within {} s (the webhook's timeout)",
            hook.timeout_seconds
        ))),
    }
}

/// An error with its causes, which is where reqwest puts what actually happened.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text.chars().take(500).collect()
}

/// In-flight bookkeeping. A delivery is *busy* from the moment it is taken until its outcome
/// is recorded (the engine's rounds skip it, though the store still says it is due); it holds
/// a *sending* slot of its webhook only while its request is out, so recording, which waits for
/// a batch, does not slow the next requests down.
#[derive(Default)]
pub(super) struct Slots {
    busy: std::collections::HashSet<Uuid>,
    per_hook: HashMap<Uuid, usize>,
    sending: usize,
}

impl Slots {
    pub(super) fn room(&self, hook: Uuid) -> usize {
        let own = PER_WEBHOOK.saturating_sub(self.per_hook.get(&hook).copied().unwrap_or(0));
        own.min(IN_FLIGHT.saturating_sub(self.sending))
    }

    pub(super) fn is_busy(&self, delivery: Uuid) -> bool {
        self.busy.contains(&delivery)
    }

    /// Takes a sending slot for `delivery` (`forced`: even past the limits, for a test sent by
    /// hand).
    pub(super) fn claim(&mut self, hook: Uuid, delivery: Uuid, forced: bool) -> bool {
        if self.busy.contains(&delivery) || (!forced && self.room(hook) == 0) {
            return false;
        }
        self.busy.insert(delivery);
        *self.per_hook.entry(hook).or_default() += 1;
        self.sending += 1;
        true
    }

    /// The request is over: its sending slot is free (the delivery stays busy).
    pub(super) fn sent(&mut self, hook: Uuid) {
        if let Some(n) = self.per_hook.get_mut(&hook) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_hook.remove(&hook);
            }
            self.sending = self.sending.saturating_sub(1);
        }
    }

    /// The outcome is recorded (or given up): the delivery is the store's again.
    pub(super) fn recorded(&mut self, delivery: Uuid) {
        self.busy.remove(&delivery);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_within_its_jitter() {
        let base = Duration::from_secs(30);
        for (made, plain) in [(1, 30.0), (2, 120.0), (3, 480.0), (4, 1920.0)] {
            for _ in 0..50 {
                let d = backoff(base, made).as_secs_f64();
                assert!(d >= plain * 0.8 && d <= plain * 1.2, "{made}: {d}");
            }
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF.mul_f64(1.2));
    }

    #[test]
    fn slots_bound_each_webhook_and_the_total() {
        let mut s = Slots::default();
        let a = Uuid::now_v7();
        for _ in 0..PER_WEBHOOK {
            assert!(s.claim(a, Uuid::now_v7(), false));
        }
        assert_eq!(s.room(a), 0);
        assert!(!s.claim(a, Uuid::now_v7(), false));
        let forced = Uuid::now_v7();
        assert!(s.claim(a, forced, true));
        s.sent(a);
        assert_eq!(s.room(a), 0, "the forced one is over, four are still out");
        assert!(s.is_busy(forced), "busy until recorded");
        s.recorded(forced);
        assert!(!s.is_busy(forced));
        assert!(!s.claim(a, Uuid::now_v7(), false));
        s.sent(a);
        assert_eq!(s.room(a), 1);
        let b = Uuid::now_v7();
        assert_eq!(s.room(b), PER_WEBHOOK);
    }
}
