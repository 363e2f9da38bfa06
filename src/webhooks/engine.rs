//! The delivery engine: one thread with its own async runtime, off the request workers. It
//! fans the outbox out into deliveries, then sends each due delivery with at most
//! [`PER_WEBHOOK`] in flight per webhook and [`IN_FLIGHT`] in all, so a receiver that never
//! answers holds a few slots of its own and nothing else.
use super::{Shared, policy, render};
use crate::store::{
    Attempt, DeliveryRecord, DeliveryStatus, EventKind, Namespace, Recorded, WebhookRecord,
};
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
/// Longest wait before a retry, whatever the attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// A delivery to attempt now, whatever its webhook's state (`POST /webhooks/{id}/test`).
pub(super) struct SendNow {
    pub ns: Namespace,
    pub hook: WebhookRecord,
    pub delivery: DeliveryRecord,
    pub reply: oneshot::Sender<DeliveryRecord>,
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
) {
    loop {
        if shared.stopping() {
            break;
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
            () = shared.store.events_notified() => {}
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(now) = now_rx.recv() => {
                if shared.claim(now.hook.id, now.delivery.id, true) {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let done = attempt(&shared, now.ns, now.hook, now.delivery).await;
                        if let Some(d) = done {
                            let _ = now.reply.send(d);
                        }
                    });
                }
            }
        }
    }
}

/// Turns outbox events into deliveries for the active webhooks of their namespace that
/// subscribe to them, a batch per transaction, until the outbox is empty.
fn fan_out(shared: &Shared) -> Result<(), crate::store::StoreError> {
    loop {
        let events = shared.store.pending_events(FAN_OUT_BATCH)?;
        if events.is_empty() {
            return Ok(());
        }
        let hooks = shared.hooks_snapshot();
        let now = shared.clock.now();
        let mut keys = Vec::with_capacity(events.len());
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
            for hook in targets {
                deliveries.push((ns, new_delivery(hook.id, event.id, event.kind, &body, now)));
            }
        }
        shared.store.fan_out(&keys, &deliveries)?;
    }
}

pub(super) fn new_delivery(
    webhook: Uuid,
    event_id: Uuid,
    kind: EventKind,
    body: &str,
    now: OffsetDateTime,
) -> DeliveryRecord {
    DeliveryRecord {
        id: Uuid::now_v7(),
        webhook_id: webhook,
        event_id,
        event: kind,
        body: body.to_owned(),
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
                attempt(&shared, ns, hook, d).await;
            });
        }
    }
    next
}

/// One attempt: send, record the outcome (and the next attempt), free the slot.
async fn attempt(
    shared: &Arc<Shared>,
    ns: Namespace,
    hook: WebhookRecord,
    d: DeliveryRecord,
) -> Option<DeliveryRecord> {
    let at = shared.clock.now();
    let started = Instant::now();
    let (status_code, error) = match send(shared, &hook, &d, at).await {
        Ok(code) if (200..300).contains(&code) => (Some(code), None),
        Ok(code) => (Some(code), Some(format!("the receiver answered {code}"))),
        Err(e) => (None, Some(e)),
    };
    let outcome = Attempt {
        at,
        status_code,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error,
    };
    let base = shared.config.retry_base;
    let recorded = shared
        .store
        .record_attempt(ns, hook.id, d.id, &outcome, |made| at + backoff(base, made));
    shared.release(hook.id, d.id);
    match recorded {
        Ok(Recorded { delivery, disabled }) => {
            if let Some(off) = disabled {
                shared.disabled(ns, off);
            }
            Some(delivery)
        }
        // The webhook or the delivery was deleted meanwhile.
        Err(crate::store::StoreError::NotFound) => None,
        Err(e) => {
            tracing::error!(error = %e, "a webhook delivery's outcome could not be recorded");
            None
        }
    }
}

/// Sends one delivery; the status code, or why there is none. Everything (connection, request,
/// the first [`READ_AT_MOST`] bytes of the answer) must finish within the webhook's timeout.
async fn send(
    shared: &Shared,
    hook: &WebhookRecord,
    d: &DeliveryRecord,
    at: OffsetDateTime,
) -> Result<u16, String> {
    let url = policy::check_url(&hook.url, shared.config.allow_private)
        .map_err(|e| format!("the URL {e}"))?;
    let t = at.unix_timestamp();
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
            super::sign::header(&hook.secret, t, d.body.as_bytes()),
        );
    for (name, value) in &hook.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(d.body.clone());
    let exchange = async {
        let mut response = request.send().await.map_err(|e| describe(&e))?;
        let code = response.status().as_u16();
        let mut read = 0;
        while read < READ_AT_MOST {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                // The status is in: a broken body after it changes nothing.
                Ok(None) | Err(_) => break,
            }
        }
        Ok(code)
    };
    let limit = Duration::from_secs(u64::from(hook.timeout_seconds));
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {} s (the webhook's timeout)",
            hook.timeout_seconds
        )),
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

/// In-flight bookkeeping: delivery ids being attempted, and counts per webhook.
#[derive(Default)]
pub(super) struct Slots {
    busy: std::collections::HashSet<Uuid>,
    per_hook: HashMap<Uuid, usize>,
}

impl Slots {
    pub(super) fn room(&self, hook: Uuid) -> usize {
        let own = PER_WEBHOOK.saturating_sub(self.per_hook.get(&hook).copied().unwrap_or(0));
        own.min(IN_FLIGHT.saturating_sub(self.busy.len()))
    }

    pub(super) fn is_busy(&self, delivery: Uuid) -> bool {
        self.busy.contains(&delivery)
    }

    /// Takes a slot for `delivery` (`forced`: even past the limits, for a test sent by hand).
    pub(super) fn claim(&mut self, hook: Uuid, delivery: Uuid, forced: bool) -> bool {
        if self.busy.contains(&delivery) || (!forced && self.room(hook) == 0) {
            return false;
        }
        self.busy.insert(delivery);
        *self.per_hook.entry(hook).or_default() += 1;
        true
    }

    pub(super) fn release(&mut self, hook: Uuid, delivery: Uuid) {
        if self.busy.remove(&delivery)
            && let Some(n) = self.per_hook.get_mut(&hook)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_hook.remove(&hook);
            }
        }
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
        s.release(a, forced);
        let b = Uuid::now_v7();
        assert_eq!(s.room(b), PER_WEBHOOK);
    }
}
