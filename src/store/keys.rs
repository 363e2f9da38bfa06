//! Byte-key layout of every tree. Fixed-width big-endian parts so range scans follow key order.
//!
//! | tree | key | value |
//! |---|---|---|
//! | tenants | tenant id (16) | TenantRecord |
//! | tenant_by_name | lower-cased name | tenant id |
//! | users | user id (16) | UserRecord |
//! | user_by_email | normalized email | user id |
//! | tenant_members | tenant id + user id (32) | role name |
//! | api_keys | key id (16) | ApiKeyRecord |
//! | api_key_by_digest | SHA-256 of the full key (32) | key id |
//! | api_keys_by_tenant | tenant id + key id (32) | empty (home and listed tenants) |
//! | api_key_tenants | key id + tenant id (32) | empty (the extra tenants a key reaches) |
//! | api_key_usage | key id (16) | KeyUsage |
//! | sessions | session id (16) | SessionRecord |
//! | sessions_by_user | user id + session id (32) | empty |
//! | refresh_tokens | SHA-256 of the token (32) | RefreshRecord |
//! | lockout | normalized submitted email | LockoutState |
//! | audit | tenant id + event id v7 (32) | AuditEvent |
//! | products | namespace (17) + product id v7 (16) | ProductRecord |
//! | product_by_ean | namespace + EAN | product id |
//! | product_by_ref | namespace + reference | product id |
//! | products_by_updated | namespace + updated_at nanos (16, BE) + product id | empty |
//! | counters | namespace (17); namespace + 0 + shard (19); namespace + `categories` | u64 BE: product count of bulk loads and of stores from before the shards; i64 BE: what creates and deletes moved it by, per shard; tree version |
//! | suppliers | namespace + supplier id (16) | SupplierRecord |
//! | supplier_by_code | namespace + lower-cased code | supplier id |
//! | products_by_supplier | namespace + supplier id + product id | empty |
//! | tombstone_chunks | namespace + the chunk's first tombstone's deleted_at nanos (16, BE) + product id; the cursor: namespace + 32 × `0xFF` | up to 32 Tombstones; the cursor: the open chunk's key + the last deletion's nanos (`tombstones.rs`) |
//! | categories | namespace + category id (16) | CategoryRecord |
//! | category_by_name | namespace + parent id (nil for a root) + lower-cased name | category id |
//! | products_by_category | namespace + category id + product id | empty |
//! | category_mappings | namespace + category id + channel | MappingRecord |
//! | products_inactive | namespace + product id (the products with `is_active` false) | empty |
//! | counters | namespace + `inactive` | u64 BE: how many products are inactive |
//! | jobs | namespace + job id v7 (16) | JobRecord (imports and exports) |
//! | job_logs | job id (16) + row (8, BE) + entry number (8, BE) | LogRecord |
//! | import_templates | namespace + template id (16) | TemplateRecord |
//!
//! A namespace is tenant id (16) + environment tag (`L` or `T`).
use super::Namespace;

pub fn namespace(ns: Namespace) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(ns.tenant.as_bytes());
    out[16] = ns.environment.tag();
    out
}

/// How many shards a namespace's product count is spread over, by engine: concurrent creates
/// and deletes in one namespace then rarely write the same counter record. On PostgreSQL two
/// transactions writing one record cannot both commit (one runs again after waiting for the
/// other's commit), so its count is spread wide; sled's transactions on one record conflict
/// too, but a conflict costs it a retry in memory, and a wider count costs every list answer
/// the walk over its shards.
pub const COUNT_SHARDS: u16 = 64;
pub const COUNT_SHARDS_SHARED: u16 = 256;

/// The shard of a namespace's product count that a product's creation and deletion move: the
/// namespace, a 0 byte, then the shard, from the last byte of the id's random tail, out of
/// `shards` ([`COUNT_SHARDS`] or [`COUNT_SHARDS_SHARED`]). A count is the sum of whatever
/// shards exist, so a store read by the other engine (a migration) counts the same.
pub fn count_shard(ns: Namespace, id: &[u8; 16], shards: u16) -> [u8; 19] {
    let mut out = [0u8; 19];
    out[..17].copy_from_slice(&namespace(ns));
    out[18] = (u16::from(id[15]) % shards.clamp(1, 256)) as u8;
    out
}

/// The counter of a namespace's inactive products.
pub fn inactive_counter(ns: Namespace) -> Vec<u8> {
    ns_str(ns, INACTIVE)
}

pub const INACTIVE: &str = "inactive";

/// The namespace a catalog key starts with.
pub fn namespace_of(key: &[u8]) -> Option<Namespace> {
    let tenant = crate::domain::TenantId::from_slice(key.get(..16)?)?;
    let environment = crate::domain::Environment::from_tag(*key.get(16)?)?;
    Some(Namespace {
        tenant,
        environment,
    })
}

/// The first key after every key that starts with `prefix` (for a bounded reverse walk).
/// `None` when no such key exists (the prefix is all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub fn ns_id(ns: Namespace, id: &[u8; 16]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[..17].copy_from_slice(&namespace(ns));
    out[17..].copy_from_slice(id);
    out
}

pub fn ns_str(ns: Namespace, s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + s.len());
    out.extend_from_slice(&namespace(ns));
    out.extend_from_slice(s.as_bytes());
    out
}

/// Namespace + an id + a text: a category's name under its parent, a mapping's channel.
pub fn ns_id_str(ns: Namespace, id: &[u8; 16], s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(33 + s.len());
    out.extend_from_slice(&ns_id(ns, id));
    out.extend_from_slice(s.as_bytes());
    out
}

pub fn ns_pair(ns: Namespace, a: &[u8; 16], b: &[u8; 16]) -> [u8; 49] {
    let mut out = [0u8; 49];
    out[..17].copy_from_slice(&namespace(ns));
    out[17..33].copy_from_slice(a);
    out[33..].copy_from_slice(b);
    out
}

pub fn pair(a: &[u8; 16], b: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(a);
    out[16..].copy_from_slice(b);
    out
}

/// The time inside a key built by `updated_key` (its inverse for the time part).
pub fn updated_key_nanos(k: &[u8]) -> Option<i128> {
    let ordered: [u8; 16] = k.get(17..33)?.try_into().ok()?;
    Some((u128::from_be_bytes(ordered) ^ (1u128 << 127)) as i128)
}

pub fn ns_updated(ns: Namespace, updated_nanos: i128, id: &[u8; 16]) -> [u8; 49] {
    updated_key(&namespace(ns), updated_nanos, id)
}

/// `ns_updated` from the namespace's bytes (the integrity check reads them off product keys).
pub fn updated_key(ns: &[u8], updated_nanos: i128, id: &[u8]) -> [u8; 49] {
    let mut out = [0u8; 49];
    out[..17].copy_from_slice(ns);
    // Flip the sign bit so negative times still sort before positive ones.
    let ordered = (updated_nanos as u128) ^ (1u128 << 127);
    out[17..33].copy_from_slice(&ordered.to_be_bytes());
    out[33..].copy_from_slice(id);
    out
}

#[cfg(test)]
mod tests {
    use super::{COUNT_SHARDS, COUNT_SHARDS_SHARED, Namespace, count_shard, namespace, prefix_end};

    /// Prefix scans on PostgreSQL end here (`kv::Tree::scan_prefix`), as reverse walks do.
    #[test]
    fn a_prefix_ends_at_the_next_key_that_does_not_start_with_it() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_count_shard_is_the_ids_last_byte_within_the_engines_width() {
        let ns = Namespace {
            tenant: crate::domain::TenantId::generate(),
            environment: crate::domain::Environment::Live,
        };
        let mut id = [7u8; 16];
        id[15] = 200;
        let wide = count_shard(ns, &id, COUNT_SHARDS_SHARED);
        let narrow = count_shard(ns, &id, COUNT_SHARDS);
        assert_eq!(wide[..17], namespace(ns));
        assert_eq!((wide[17], wide[18]), (0, 200));
        assert_eq!((narrow[17], narrow[18]), (0, 200 % 64));
    }
}
