//! The full integrity check: every value of every tree decodes into its record type, and every
//! index entry agrees with the record it points at (and the other way round).
//!
//! `pixee-pim check` runs it offline, `backup` runs it before copying, and the crash tests run
//! it after every `kill -9`. It reads the whole store once; a store of a million products takes
//! a few seconds.
use super::{
    ApiKeyRecord, AuditEvent, CategoryRecord, KeyUsage, MAX_DEPTH, MappingRecord, ProductRecord,
    RefreshRecord, SessionRecord, Store, StoreError, StoreResult, SupplierRecord, TenantRecord,
    UserRecord, codec, keys, products::read_count, suppliers::code_key,
};
use super::{
    BodyRecord, DeliveryRecord, EventRecord, JobRecord, LogRecord, TemplateRecord, WebhookRecord,
};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};

/// What the check read: records per tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub trees: Vec<(&'static str, usize)>,
}

impl CheckReport {
    pub fn total(&self) -> usize {
        self.trees.iter().map(|(_, n)| n).sum()
    }

    /// The count reported for one tree (0 when it is not listed).
    pub fn count(&self, tree: &str) -> usize {
        self.trees
            .iter()
            .find(|(name, _)| *name == tree)
            .map_or(0, |(_, n)| *n)
    }
}

fn corrupt(tree: &str, key: &[u8], what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{tree}[{}]: {what}", hex(key)))
}

use crate::domain::hex;

/// Every (key, decoded value) of one tree.
fn records<T: DeserializeOwned>(
    tree: &super::kv::Tree,
    name: &str,
) -> StoreResult<Vec<(Vec<u8>, T)>> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let value = codec::decode(&v).map_err(|e| corrupt(name, &k, e))?;
        out.push((k.to_vec(), value));
    }
    Ok(out)
}

/// An index tree must hold exactly `expected` (key → raw payload), built from the records:
/// no entry that points nowhere or at the wrong record, and no record without its entry.
/// Returns the tree's name and number of entries, for the report.
fn agrees(
    tree: &super::kv::Tree,
    name: &'static str,
    expected: &HashMap<Vec<u8>, Vec<u8>>,
) -> StoreResult<(&'static str, usize)> {
    let mut n = 0;
    for item in tree.iter() {
        let (k, v) = item?;
        let payload = codec::unraw(&v).ok_or_else(|| corrupt(name, &k, "bad version byte"))?;
        if expected.get(k.as_ref()).map(Vec::as_slice) != Some(payload) {
            return Err(corrupt(name, &k, "matches no record"));
        }
        n += 1;
    }
    if n != expected.len() {
        return Err(corrupt(name, b"", "a record has no entry"));
    }
    Ok((name, n))
}

/// Every record's key must be the id inside it.
fn keyed_by_id<T>(recs: &[(Vec<u8>, T)], name: &str, id: impl Fn(&T) -> &[u8]) -> StoreResult<()> {
    match recs.iter().find(|(k, r)| k.as_slice() != id(r)) {
        Some((k, _)) => Err(corrupt(name, k, "key is not the record's id")),
        None => Ok(()),
    }
}

impl Store {
    /// Jobs keyed by namespace + their id, logs of existing jobs only, templates keyed by
    /// namespace + their id.
    fn check_jobs(&self, trees: &mut Vec<(&'static str, usize)>) -> StoreResult<()> {
        let jobs = records::<JobRecord>(&self.jobs, "jobs")?;
        let mut ids = HashSet::new();
        for (k, j) in &jobs {
            if k.len() != 33 || keys::namespace_of(k).is_none() || &k[17..] != j.id.as_bytes() {
                return Err(corrupt("jobs", k, "key is not namespace + the record's id"));
            }
            ids.insert(j.id);
        }
        trees.push(("jobs", jobs.len()));
        let logs = records::<LogRecord>(&self.job_logs, "job_logs")?;
        for (k, log) in &logs {
            let job = k.get(..16).and_then(|b| uuid::Uuid::from_slice(b).ok());
            let row = k
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if k.len() != 32 || !job.is_some_and(|j| ids.contains(&j)) || row != Some(log.row) {
                return Err(corrupt(
                    "job_logs",
                    k,
                    "no such job, or not the entry's row",
                ));
            }
        }
        trees.push(("job_logs", logs.len()));
        let templates = records::<TemplateRecord>(&self.import_templates, "import_templates")?;
        if let Some((k, _)) = templates
            .iter()
            .find(|(k, t)| k.len() != 33 || &k[17..] != t.id.as_bytes())
        {
            return Err(corrupt(
                "import_templates",
                k,
                "key is not namespace + the record's id",
            ));
        }
        trees.push(("import_templates", templates.len()));
        Ok(())
    }

    /// Webhooks keyed by namespace + id; outbox events that decode; deliveries of existing
    /// webhooks; exactly one due entry per pending delivery, at its next attempt.
    fn check_webhooks(&self, trees: &mut Vec<(&'static str, usize)>) -> StoreResult<()> {
        let hooks = records::<WebhookRecord>(&self.webhooks, "webhooks")?;
        let mut ids = HashSet::new();
        for (k, w) in &hooks {
            if k.len() != 33 || keys::namespace_of(k).is_none() || &k[17..] != w.id.as_bytes() {
                return Err(corrupt(
                    "webhooks",
                    k,
                    "key is not namespace + the record's id",
                ));
            }
            ids.insert(k.clone());
        }
        trees.push(("webhooks", hooks.len()));
        let events = records::<EventRecord>(&self.webhook_events, "webhook_events")?;
        if let Some((k, _)) = events.iter().find(|(k, e)| {
            k.len() != 33 || &k[..16] != e.id.as_bytes() || keys::namespace_of(&k[16..]).is_none()
        }) {
            return Err(corrupt(
                "webhook_events",
                k,
                "key is not the event id + namespace",
            ));
        }
        trees.push(("webhook_events", events.len()));
        let bodies = records::<BodyRecord>(&self.webhook_bodies, "webhook_bodies")?;
        if let Some((k, _)) = bodies.iter().find(|(k, _)| k.len() != 16) {
            return Err(corrupt("webhook_bodies", k, "key is not an event id"));
        }
        trees.push(("webhook_bodies", bodies.len()));
        let deliveries = records::<DeliveryRecord>(&self.webhook_deliveries, "webhook_deliveries")?;
        let mut due = HashMap::new();
        for (k, d) in &deliveries {
            if k.len() != 49
                || !ids.contains(&k[..33])
                || &k[17..33] != d.webhook_id.as_bytes()
                || &k[33..] != d.id.as_bytes()
            {
                return Err(corrupt(
                    "webhook_deliveries",
                    k,
                    "no such webhook, or not the delivery's id",
                ));
            }
            if let Some(at) = d.next_attempt_at {
                let mut entry = k[..33].to_vec();
                let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                entry.extend_from_slice(&ms.to_be_bytes());
                entry.extend_from_slice(d.id.as_bytes());
                due.insert(entry, Vec::new());
            }
        }
        trees.push(("webhook_deliveries", deliveries.len()));
        trees.push(agrees(&self.webhook_due, "webhook_due", &due)?);
        Ok(())
    }

    /// Runs the full check. `L` is the lockout state type (owned by the auth layer).
    pub fn check_integrity<L: DeserializeOwned>(&self) -> StoreResult<CheckReport> {
        let mut trees = Vec::new();

        let mut meta = 0;
        for item in self.meta.iter() {
            let (k, v) = item?;
            codec::unraw(&v).ok_or_else(|| corrupt("meta", &k, "bad version byte"))?;
            meta += 1;
        }
        trees.push(("meta", meta));

        let tenants = records::<TenantRecord>(&self.tenants, "tenants")?;
        keyed_by_id(&tenants, "tenants", |t| t.id.as_bytes())?;
        trees.push(("tenants", tenants.len()));
        let by_name = tenants
            .iter()
            .map(|(k, t)| (t.name.to_lowercase().into_bytes(), k.clone()))
            .collect();
        trees.push(agrees(&self.tenant_by_name, "tenant_by_name", &by_name)?);

        let tenant_ids: HashSet<&[u8]> = tenants.iter().map(|(k, _)| k.as_slice()).collect();
        let users = records::<UserRecord>(&self.users, "users")?;
        keyed_by_id(&users, "users", |u| u.id.as_bytes())?;
        trees.push(("users", users.len()));
        let mut by_email = HashMap::new();
        let mut members = HashMap::new();
        for (k, u) in &users {
            by_email.insert(u.email.as_bytes().to_vec(), k.clone());
            for m in &u.memberships {
                if !tenant_ids.contains(m.tenant.as_bytes().as_slice()) {
                    return Err(corrupt("users", k, "member of a missing tenant"));
                }
                members.insert(
                    keys::pair(m.tenant.as_bytes(), u.id.as_bytes()).to_vec(),
                    m.role.as_str().as_bytes().to_vec(),
                );
            }
        }
        trees.push(agrees(&self.user_by_email, "user_by_email", &by_email)?);
        trees.push(agrees(&self.tenant_members, "tenant_members", &members)?);

        let api_keys = records::<ApiKeyRecord>(&self.api_keys, "api_keys")?;
        keyed_by_id(&api_keys, "api_keys", |k| k.id.as_bytes())?;
        trees.push(("api_keys", api_keys.len()));
        // The digests that must resolve: the current secret (and a secret kept alive by a
        // grace period) of every key not revoked. A revoked key has no digest entry at all.
        let mut by_digest = HashMap::new();
        let mut by_tenant = HashMap::new();
        for (k, key) in &api_keys {
            if key.revoked_at.is_none() {
                by_digest.insert(key.digest.to_vec(), k.clone());
                if let Some((previous, _)) = &key.previous {
                    by_digest.insert(previous.to_vec(), k.clone());
                }
            }
            by_tenant.insert(
                keys::pair(key.tenant.as_bytes(), key.id.as_bytes()).to_vec(),
                Vec::new(),
            );
        }
        trees.push(agrees(
            &self.api_key_by_digest,
            "api_key_by_digest",
            &by_digest,
        )?);
        // A key's extra tenants: each names a key and a tenant that exist, and puts the key in
        // that tenant's list too.
        let mut reaches = 0;
        let key_ids: HashSet<&[u8]> = api_keys.iter().map(|(k, _)| k.as_slice()).collect();
        for item in self.api_key_tenants.iter() {
            let (k, v) = item?;
            codec::unraw(&v).ok_or_else(|| corrupt("api_key_tenants", &k, "bad version byte"))?;
            let known =
                k.len() == 32 && key_ids.contains(&k[..16]) && tenant_ids.contains(&k[16..]);
            if !known {
                return Err(corrupt(
                    "api_key_tenants",
                    &k,
                    "names a key or tenant that does not exist",
                ));
            }
            by_tenant.insert([&k[16..], &k[..16]].concat(), Vec::new());
            reaches += 1;
        }
        trees.push(("api_key_tenants", reaches));
        trees.push(agrees(
            &self.api_keys_by_tenant,
            "api_keys_by_tenant",
            &by_tenant,
        )?);
        trees.push((
            "api_key_usage",
            records::<KeyUsage>(&self.api_key_usage, "api_key_usage")?.len(),
        ));

        let sessions = records::<SessionRecord>(&self.sessions, "sessions")?;
        keyed_by_id(&sessions, "sessions", |s| s.id.as_bytes())?;
        trees.push(("sessions", sessions.len()));
        // The per-user index holds exactly the sessions not yet ended by a revocation or by
        // the sweep (which marks sessions that ran out of time as revoked).
        let by_user = sessions
            .iter()
            .filter(|(_, s)| s.revoked_at.is_none())
            .map(|(_, s)| {
                (
                    keys::pair(s.user.as_bytes(), s.id.as_bytes()).to_vec(),
                    Vec::new(),
                )
            })
            .collect();
        trees.push(agrees(
            &self.sessions_by_user,
            "sessions_by_user",
            &by_user,
        )?);
        let session_ids: HashSet<&[u8]> = sessions.iter().map(|(k, _)| k.as_slice()).collect();
        let refresh = records::<RefreshRecord>(&self.refresh_tokens, "refresh_tokens")?;
        if let Some((k, _)) = refresh
            .iter()
            .find(|(_, r)| !session_ids.contains(r.session.as_bytes().as_slice()))
        {
            return Err(corrupt("refresh_tokens", k, "belongs to no session"));
        }
        trees.push(("refresh_tokens", refresh.len()));

        trees.push(("lockout", records::<L>(&self.lockout, "lockout")?.len()));
        trees.push(("audit", records::<AuditEvent>(&self.audit, "audit")?.len()));

        let products = records::<ProductRecord>(&self.products, "products")?;
        let mut per_ns: HashMap<Vec<u8>, u64> = HashMap::new();
        let (mut by_ean, mut by_ref, mut by_updated) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut by_supplier = HashMap::new();
        let mut references: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut by_category = HashMap::new();
        let mut memberships: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut inactive = HashMap::new();
        let mut inactive_per_ns: HashMap<Vec<u8>, u64> = HashMap::new();
        for (k, p) in &products {
            if k.len() != 33 || &k[17..] != p.id.as_bytes() {
                return Err(corrupt(
                    "products",
                    k,
                    "key is not namespace + the record's id",
                ));
            }
            let ns = &k[..17];
            *per_ns.entry(ns.to_vec()).or_default() += 1;
            let id = p.id.as_bytes().to_vec();
            by_ean.insert([ns, p.ean.as_bytes()].concat(), id.clone());
            if let Some(r) = &p.reference {
                by_ref.insert([ns, r.as_bytes()].concat(), id.clone());
            }
            if !p.is_active {
                inactive.insert(k.to_vec(), Vec::new());
                *inactive_per_ns.entry(ns.to_vec()).or_default() += 1;
            }
            let updated = keys::updated_key(ns, p.updated_at.unix_timestamp_nanos(), &id);
            by_updated.insert(updated.to_vec(), Vec::new());
            if let Some(sid) = p.supplier_id {
                let supplier = [ns, sid.as_bytes()].concat();
                by_supplier.insert([supplier.as_slice(), &id].concat(), Vec::new());
                *references.entry(supplier).or_default() += 1;
            }
            for c in &p.category_ids {
                let category = [ns, c.as_bytes()].concat();
                by_category.insert([category.as_slice(), &id].concat(), Vec::new());
                *memberships.entry(category).or_default() += 1;
            }
        }
        trees.push(("products", products.len()));
        trees.push(agrees(&self.product_by_ean, "product_by_ean", &by_ean)?);
        trees.push(agrees(&self.product_by_ref, "product_by_ref", &by_ref)?);
        trees.push(agrees(
            &self.products_by_updated,
            "products_by_updated",
            &by_updated,
        )?);

        // A namespace without products may keep a counter at 0; one with products must count
        // them exactly.
        let mut counters = 0;
        let mut counted: std::collections::BTreeMap<Vec<u8>, i64> = Default::default();
        for item in self.counters.iter() {
            let (k, v) = item?;
            codec::unraw(&v).ok_or_else(|| corrupt("counters", &k, "bad version byte"))?;
            if k.len() == 17 + b"categories".len() && k.ends_with(b"categories") {
                // A namespace's category tree version: any value will do.
                counters += 1;
                continue;
            }
            if k.len() == 17 + keys::INACTIVE.len() && k.ends_with(keys::INACTIVE.as_bytes()) {
                let stored = read_count(&v);
                let actual = inactive_per_ns.remove(&k[..17]).unwrap_or(0);
                if stored != actual {
                    return Err(corrupt(
                        "counters",
                        &k,
                        format!("says {stored} inactive products, the namespace holds {actual}"),
                    ));
                }
                counters += 1;
                continue;
            }
            // The product count: the base record and the shards' deltas, summed per namespace.
            let stored = match k.len() {
                17 => read_count(&v) as i64,
                19 if k[17] == 0 => super::products::read_delta(&v),
                _ => return Err(corrupt("counters", &k, "not a counter key")),
            };
            *counted.entry(k[..17].to_vec()).or_insert(0i64) += stored;
            counters += 1;
        }
        for (ns, stored) in &counted {
            let actual = per_ns.remove(ns.as_slice()).unwrap_or(0);
            if *stored != actual as i64 {
                return Err(corrupt(
                    "counters",
                    ns,
                    format!("says {stored} products, the namespace holds {actual}"),
                ));
            }
        }
        if let Some(ns) = per_ns.keys().next() {
            return Err(corrupt(
                "counters",
                ns,
                "a namespace with products has no counter",
            ));
        }
        if let Some(ns) = inactive_per_ns.keys().next() {
            return Err(corrupt(
                "counters",
                ns,
                "a namespace with inactive products has no inactive counter",
            ));
        }
        trees.push(("counters", counters));
        trees.push(agrees(
            &self.products_inactive,
            "products_inactive",
            &inactive,
        )?);
        trees.push(agrees(
            &self.products_by_supplier,
            "products_by_supplier",
            &by_supplier,
        )?);

        let suppliers = records::<SupplierRecord>(&self.suppliers, "suppliers")?;
        let mut by_code = HashMap::new();
        for (k, s) in &suppliers {
            if k.len() != 33 || &k[17..] != s.id.as_bytes() {
                return Err(corrupt(
                    "suppliers",
                    k,
                    "key is not namespace + the record's id",
                ));
            }
            let code = [&k[..17], code_key(&s.code).as_bytes()].concat();
            by_code.insert(code, s.id.as_bytes().to_vec());
            let actual = references.get(k.as_slice()).copied().unwrap_or(0);
            if s.product_count != actual {
                return Err(corrupt(
                    "suppliers",
                    k,
                    format!(
                        "counts {} referencing products, {actual} reference it",
                        s.product_count
                    ),
                ));
            }
        }
        trees.push(("suppliers", suppliers.len()));
        trees.push(agrees(
            &self.supplier_by_code,
            "supplier_by_code",
            &by_code,
        )?);

        trees.push(("tombstone_chunks", self.check_tombstones()?));
        // One record per tombstone: moved into chunks by every open, so empty here.
        let legacy = self.db.open_tree("tombstones")?;
        if let Some(item) = legacy.iter().keys().next() {
            return Err(corrupt(
                "tombstones",
                &item?,
                "a tombstone left outside the chunks",
            ));
        }
        trees.push(("tombstones", 0));
        self.check_categories(&mut trees, &memberships, &by_category)?;
        self.check_jobs(&mut trees)?;
        self.check_webhooks(&mut trees)?;
        Ok(CheckReport { trees })
    }

    /// Tombstone chunks (`tombstones.rs`): each holds 1 to `TOMBSTONE_CHUNK` tombstones under a
    /// catalog key no later than its first tombstone's and after the previous chunk's last; a
    /// namespace's tombstones strictly increase (deletion time, then id) from chunk to chunk;
    /// its cursor follows its chunks, names a key of the namespace, and no tombstone is later
    /// than the last deletion time it holds. Returns how many tombstones there are (the report
    /// counts tombstones, not chunks).
    fn check_tombstones(&self) -> StoreResult<usize> {
        use super::tombstones::{Cursor, decode_chunk, is_cursor};
        let mut count = 0;
        // The namespace walked, its last tombstone's key and position.
        type Last = ([u8; 17], [u8; 49], (i128, crate::domain::ProductId));
        let mut last: Option<Last> = None;
        for item in self.tombstones.iter() {
            let (k, v) = item?;
            let bad = |what: &str| corrupt("tombstones", &k, what);
            let ns: [u8; 17] = k
                .get(..17)
                .and_then(|p| p.try_into().ok())
                .filter(|p: &[u8; 17]| keys::namespace_of(p).is_some() && k.len() == 49)
                .ok_or_else(|| bad("key is not a namespace + deletion time + id"))?;
            let previous = last.filter(|(n, _, _)| *n == ns);
            if is_cursor(&k) {
                let cursor = Cursor::decode(&v).map_err(|e| bad(&e.to_string()))?;
                if cursor.open[..17] != ns {
                    return Err(bad("the cursor names another namespace's chunk"));
                }
                if previous.is_some_and(|(_, _, pos)| pos.0 > cursor.last_nanos) {
                    return Err(bad("a tombstone is later than the cursor's last deletion"));
                }
                continue;
            }
            let chunk = decode_chunk(&v).map_err(|e| bad(&e.to_string()))?;
            let Some(first) = chunk.first() else {
                return Err(bad("empty chunk"));
            };
            if chunk.len() > super::TOMBSTONE_CHUNK {
                return Err(bad("chunk holds too many tombstones"));
            }
            if k[..] > first.key(&ns)[..] || previous.is_some_and(|(_, key, _)| k[..] <= key[..]) {
                return Err(bad(
                    "key is not between the previous chunk's last tombstone and this one's first",
                ));
            }
            let mut pos = previous.map(|(_, _, pos)| pos);
            for t in &chunk {
                if pos.is_some_and(|p| t.position() <= p) {
                    return Err(bad("tombstones out of order"));
                }
                pos = Some(t.position());
            }
            if let (Some(pos), Some(t)) = (pos, chunk.last()) {
                last = Some((ns, t.key(&ns), pos));
            }
            count += chunk.len();
        }
        Ok(count)
    }

    /// Categories: keys, the name index, paths and depths that follow the parents, product
    /// counts and the product index against the products, mappings that name a category.
    fn check_categories(
        &self,
        trees: &mut Vec<(&'static str, usize)>,
        memberships: &HashMap<Vec<u8>, u64>,
        by_category: &HashMap<Vec<u8>, Vec<u8>>,
    ) -> StoreResult<()> {
        let categories = records::<CategoryRecord>(&self.categories, "categories")?;
        let all: HashMap<&[u8], &CategoryRecord> =
            categories.iter().map(|(k, c)| (k.as_slice(), c)).collect();
        let mut by_name = HashMap::new();
        for (k, c) in &categories {
            if k.len() != 33 || &k[17..] != c.id.as_bytes() {
                return Err(corrupt(
                    "categories",
                    k,
                    "key is not namespace + the record's id",
                ));
            }
            let ns = &k[..17];
            let parent = c.parent_id.unwrap_or(uuid::Uuid::nil());
            by_name.insert(
                [ns, parent.as_bytes(), c.name.to_lowercase().as_bytes()].concat(),
                c.id.as_bytes().to_vec(),
            );
            let (path, depth) = match c.parent_id {
                None => (c.name.clone(), 1),
                Some(pid) => match all.get([ns, pid.as_bytes()].concat().as_slice()) {
                    Some(p) => (format!("{}/{}", p.path, c.name), p.depth + 1),
                    None => return Err(corrupt("categories", k, "its parent does not exist")),
                },
            };
            if c.path != path || c.depth != depth || depth > MAX_DEPTH {
                return Err(corrupt(
                    "categories",
                    k,
                    format!(
                        "path {:?} at depth {} does not follow its parent",
                        c.path, c.depth
                    ),
                ));
            }
            let actual = memberships.get(k.as_slice()).copied().unwrap_or(0);
            if c.product_count != actual {
                return Err(corrupt(
                    "categories",
                    k,
                    format!("counts {} products, {actual} list it", c.product_count),
                ));
            }
        }
        // A product may still list a category id from before categories were records (none
        // is refused until a write changes it); the index covers those too.
        trees.push(("categories", categories.len()));
        trees.push(agrees(
            &self.category_by_name,
            "category_by_name",
            &by_name,
        )?);
        trees.push(agrees(
            &self.products_by_category,
            "products_by_category",
            by_category,
        )?);
        let mappings = records::<MappingRecord>(&self.category_mappings, "category_mappings")?;
        for (k, m) in &mappings {
            let category = [&k[..17.min(k.len())], m.category_id.as_bytes()].concat();
            if k.len() != 33 + m.channel.len()
                || k[..33] != category[..]
                || &k[33..] != m.channel.as_bytes()
                || !all.contains_key(category.as_slice())
            {
                return Err(corrupt(
                    "category_mappings",
                    k,
                    "key is not namespace + an existing category + the channel",
                ));
            }
        }
        trees.push(("category_mappings", mappings.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::lockout::LockoutState;
    use crate::domain::{Environment, TenantId};
    use crate::store::Namespace;
    use time::OffsetDateTime;

    fn seeded() -> (tempfile::TempDir, Store, Namespace) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let now = OffsetDateTime::now_utc();
        let tenant = TenantRecord {
            id: TenantId::generate(),
            name: "default".into(),
            created_at: now,
        };
        store.insert_tenant(&tenant).unwrap();
        let ns = Namespace {
            tenant: tenant.id,
            environment: Environment::Live,
        };
        crate::seed::keys(&store, tenant.id, Environment::Live, 3, now).unwrap();
        crate::seed::products(&store, ns, 5, now).unwrap();
        (dir, store, ns)
    }

    #[test]
    fn a_consistent_store_passes_and_every_tree_is_counted() {
        let (_dir, store, ns) = seeded();
        let keys = store.list_api_keys(ns.tenant).unwrap();
        store
            .revoke_api_key(ns.tenant, keys[0].id, OffsetDateTime::now_utc())
            .unwrap();
        let report = store.check_integrity::<LockoutState>().unwrap();
        assert_eq!(report.trees.len(), crate::store::TREES.len());
        let count = |name| report.trees.iter().find(|(t, _)| *t == name).unwrap().1;
        assert_eq!(count("api_keys"), 3);
        assert_eq!(
            count("api_key_by_digest"),
            2,
            "the revoked key has no digest"
        );
        assert_eq!(count("products"), 5);
        assert_eq!(count("product_by_ean"), 5);
    }

    #[test]
    fn a_digest_left_behind_by_a_revocation_is_caught() {
        let (_dir, store, ns) = seeded();
        let key = store.list_api_keys(ns.tenant).unwrap().remove(0);
        let mut revoked = key.clone();
        revoked.revoked_at = Some(OffsetDateTime::now_utc());
        // The record says revoked, but the digest still resolves: a key that would work again.
        store
            .api_keys
            .set(key.id.as_bytes(), codec::encode(&revoked))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("api_key_by_digest"), "{err}");
    }

    #[test]
    fn a_half_written_record_a_dangling_index_and_a_wrong_count_are_caught() {
        let (_dir, store, ns) = seeded();
        let (k, v) = store.products.iter().next().unwrap().unwrap();
        store.products.set(&k, &v[..v.len() / 2]).unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("products["), "{err}");

        let (_dir, store, ns2) = seeded();
        assert_ne!(ns, ns2);
        store
            .product_by_ean
            .set(keys::ns_str(ns2, "96385074"), codec::raw(&[7; 16]))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("product_by_ean"), "{err}");

        let (_dir, store, ns3) = seeded();
        store
            .counters
            .set(&keys::namespace(ns3)[..], codec::raw(&9u64.to_be_bytes()))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("says 9 products"), "{err}");
    }
}
