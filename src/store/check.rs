//! The full integrity check: every value of every tree decodes into its record type, and every
//! index entry agrees with the record it points at (and the other way round).
//!
//! `pixee-pim check` runs it offline, `backup` runs it before copying, and the crash tests run
//! it after every `kill -9`. It reads the whole store once; a store of a million products takes
//! a few seconds.
use super::{
    ApiKeyRecord, AuditEvent, KeyUsage, ProductRecord, RefreshRecord, SessionRecord, Store,
    StoreError, StoreResult, TenantRecord, UserRecord, codec, keys,
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
}

fn corrupt(tree: &str, key: &[u8], what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{tree}[{}]: {what}", hex(key)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every (key, decoded value) of one tree.
fn records<T: DeserializeOwned>(tree: &sled::Tree, name: &str) -> StoreResult<Vec<(Vec<u8>, T)>> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let value = codec::decode(&v).map_err(|e| corrupt(name, &k, e))?;
        out.push((k.to_vec(), value));
    }
    Ok(out)
}

/// Every (key, raw payload) of one index tree.
fn index(tree: &sled::Tree, name: &str) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let payload = codec::unraw(&v).ok_or_else(|| corrupt(name, &k, "bad version byte"))?;
        out.push((k.to_vec(), payload.to_vec()));
    }
    Ok(out)
}

fn expect(ok: bool, tree: &str, key: &[u8], what: &str) -> StoreResult<()> {
    if ok {
        Ok(())
    } else {
        Err(corrupt(tree, key, what))
    }
}

impl Store {
    /// Runs the full check. `L` is the lockout state type (owned by the auth layer).
    pub fn check_integrity<L: DeserializeOwned>(&self) -> StoreResult<CheckReport> {
        let mut report = CheckReport::default();
        let mut count = |name: &'static str, n: usize| report.trees.push((name, n));

        let meta = index(&self.meta, "meta")?;
        count("meta", meta.len());

        let tenants = records::<TenantRecord>(&self.tenants, "tenants")?;
        for (k, t) in &tenants {
            expect(
                k == t.id.as_bytes(),
                "tenants",
                k,
                "key is not the record's id",
            )?;
        }
        let tenant_ids: HashSet<Vec<u8>> = tenants.iter().map(|(k, _)| k.clone()).collect();
        count("tenants", tenants.len());
        let by_name = index(&self.tenant_by_name, "tenant_by_name")?;
        for (k, id) in &by_name {
            expect(
                tenant_ids.contains(id),
                "tenant_by_name",
                k,
                "names no tenant",
            )?;
        }
        expect(
            by_name.len() == tenants.len(),
            "tenant_by_name",
            b"",
            "not one entry per tenant",
        )?;
        count("tenant_by_name", by_name.len());

        let users = records::<UserRecord>(&self.users, "users")?;
        let mut user_ids = HashSet::new();
        let mut memberships = HashSet::new();
        for (k, u) in &users {
            expect(
                k == u.id.as_bytes(),
                "users",
                k,
                "key is not the record's id",
            )?;
            user_ids.insert(k.clone());
            for m in &u.memberships {
                expect(
                    tenant_ids.contains(m.tenant.as_bytes().as_slice()),
                    "users",
                    k,
                    "member of a missing tenant",
                )?;
                memberships.insert(keys::pair(m.tenant.as_bytes(), u.id.as_bytes()).to_vec());
            }
        }
        count("users", users.len());
        let emails: HashMap<&[u8], &[u8]> = users
            .iter()
            .map(|(k, u)| (u.email.as_bytes(), k.as_slice()))
            .collect();
        let by_email = index(&self.user_by_email, "user_by_email")?;
        for (k, id) in &by_email {
            expect(
                emails.get(k.as_slice()) == Some(&id.as_slice()),
                "user_by_email",
                k,
                "does not match the user's email",
            )?;
        }
        expect(
            by_email.len() == users.len(),
            "user_by_email",
            b"",
            "not one entry per user",
        )?;
        count("user_by_email", by_email.len());
        let members = index(&self.tenant_members, "tenant_members")?;
        for (k, _) in &members {
            expect(
                memberships.contains(k),
                "tenant_members",
                k,
                "no user has this membership",
            )?;
        }
        expect(
            members.len() == memberships.len(),
            "tenant_members",
            b"",
            "a membership has no entry",
        )?;
        count("tenant_members", members.len());

        let api_keys = records::<ApiKeyRecord>(&self.api_keys, "api_keys")?;
        // The digests that must resolve: the current secret (and a secret kept alive by a
        // grace period) of every key not revoked. A revoked key has no digest entry at all.
        let mut live_digests: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut by_tenant_expected = HashSet::new();
        for (k, key) in &api_keys {
            expect(
                k == key.id.as_bytes(),
                "api_keys",
                k,
                "key is not the record's id",
            )?;
            if key.revoked_at.is_none() {
                live_digests.insert(key.digest.to_vec(), k.clone());
                if let Some((previous, _)) = &key.previous {
                    live_digests.insert(previous.to_vec(), k.clone());
                }
            }
            by_tenant_expected
                .insert(keys::pair(key.tenant.as_bytes(), key.id.as_bytes()).to_vec());
        }
        count("api_keys", api_keys.len());
        let by_digest = index(&self.api_key_by_digest, "api_key_by_digest")?;
        for (k, id) in &by_digest {
            expect(
                live_digests.get(k) == Some(id),
                "api_key_by_digest",
                k,
                "resolves to a key that is revoked, replaced or missing",
            )?;
        }
        expect(
            by_digest.len() == live_digests.len(),
            "api_key_by_digest",
            b"",
            "a live key's secret has no entry",
        )?;
        count("api_key_by_digest", by_digest.len());
        let by_tenant = index(&self.api_keys_by_tenant, "api_keys_by_tenant")?;
        for (k, _) in &by_tenant {
            expect(
                by_tenant_expected.contains(k),
                "api_keys_by_tenant",
                k,
                "names no key",
            )?;
        }
        expect(
            by_tenant.len() == by_tenant_expected.len(),
            "api_keys_by_tenant",
            b"",
            "a key has no entry",
        )?;
        count("api_keys_by_tenant", by_tenant.len());
        let usage = records::<KeyUsage>(&self.api_key_usage, "api_key_usage")?;
        count("api_key_usage", usage.len());

        let sessions = records::<SessionRecord>(&self.sessions, "sessions")?;
        let mut session_ids = HashSet::new();
        for (k, s) in &sessions {
            expect(
                k == s.id.as_bytes(),
                "sessions",
                k,
                "key is not the record's id",
            )?;
            session_ids.insert(k.clone());
        }
        count("sessions", sessions.len());
        let by_user = index(&self.sessions_by_user, "sessions_by_user")?;
        for (k, _) in &by_user {
            expect(
                k.len() == 32 && session_ids.contains(&k[16..]),
                "sessions_by_user",
                k,
                "names no session",
            )?;
        }
        count("sessions_by_user", by_user.len());
        let refresh = records::<RefreshRecord>(&self.refresh_tokens, "refresh_tokens")?;
        for (k, r) in &refresh {
            expect(
                session_ids.contains(r.session.as_bytes().as_slice()),
                "refresh_tokens",
                k,
                "belongs to no session",
            )?;
        }
        count("refresh_tokens", refresh.len());

        count("lockout", records::<L>(&self.lockout, "lockout")?.len());
        count("audit", records::<AuditEvent>(&self.audit, "audit")?.len());

        let products = records::<ProductRecord>(&self.products, "products")?;
        let mut per_ns: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut expected_ean = HashMap::new();
        let mut expected_ref = HashMap::new();
        let mut expected_updated = HashSet::new();
        for (k, p) in &products {
            expect(
                k.len() == 33 && &k[17..] == p.id.as_bytes(),
                "products",
                k,
                "key is not namespace + the record's id",
            )?;
            let ns = &k[..17];
            *per_ns.entry(ns.to_vec()).or_default() += 1;
            let with_ns = |s: &str| [ns, s.as_bytes()].concat();
            expected_ean.insert(with_ns(&p.ean), p.id.as_bytes().to_vec());
            if let Some(r) = &p.reference {
                expected_ref.insert(with_ns(r), p.id.as_bytes().to_vec());
            }
            expected_updated.insert(
                keys::updated_key(ns, p.updated_at.unix_timestamp_nanos(), p.id.as_bytes())
                    .to_vec(),
            );
        }
        count("products", products.len());
        for (name, tree, expected) in [
            ("product_by_ean", &self.product_by_ean, &expected_ean),
            ("product_by_ref", &self.product_by_ref, &expected_ref),
        ] {
            let entries = index(tree, name)?;
            for (k, id) in &entries {
                expect(
                    expected.get(k) == Some(id),
                    name,
                    k,
                    "does not match a product",
                )?;
            }
            expect(
                entries.len() == expected.len(),
                name,
                b"",
                "a product has no entry",
            )?;
            count(name, entries.len());
        }
        let by_updated = index(&self.products_by_updated, "products_by_updated")?;
        for (k, _) in &by_updated {
            expect(
                expected_updated.contains(k),
                "products_by_updated",
                k,
                "does not match a product",
            )?;
        }
        expect(
            by_updated.len() == expected_updated.len(),
            "products_by_updated",
            b"",
            "a product has no entry",
        )?;
        count("products_by_updated", by_updated.len());
        let counters = index(&self.counters, "counters")?;
        for (k, v) in &counters {
            let stored = v.as_slice().try_into().map_or(u64::MAX, u64::from_be_bytes);
            let actual = per_ns.get(k).copied().unwrap_or(0);
            expect(
                stored == actual,
                "counters",
                k,
                &format!("says {stored} products, the namespace holds {actual}"),
            )?;
        }
        for ns in per_ns.keys() {
            expect(
                counters.iter().any(|(k, _)| k == ns),
                "counters",
                ns,
                "a namespace with products has no counter",
            )?;
        }
        count("counters", counters.len());
        Ok(report)
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
            .insert(key.id.as_bytes(), codec::encode(&revoked))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("api_key_by_digest"), "{err}");
    }

    #[test]
    fn a_half_written_record_a_dangling_index_and_a_wrong_count_are_caught() {
        let (_dir, store, ns) = seeded();
        let (k, v) = store.products.iter().next().unwrap().unwrap();
        store.products.insert(&k, &v[..v.len() / 2]).unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("products["), "{err}");

        let (_dir, store, ns2) = seeded();
        assert_ne!(ns, ns2);
        store
            .product_by_ean
            .insert(keys::ns_str(ns2, "96385074"), codec::raw(&[7; 16]))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("product_by_ean"), "{err}");

        let (_dir, store, ns3) = seeded();
        store
            .counters
            .insert(&keys::namespace(ns3)[..], codec::raw(&9u64.to_be_bytes()))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("says 9 products"), "{err}");
    }
}
