//! How records look on the wire: one serializer per record kind, shared by the HTTP answers
//! and the webhook bodies (SPEC §13 says an event's `data` is the record "as the API returns
//! it", so both must come from the same code).
use crate::store::{JobRecord, ProductRecord, SupplierRecord, Tombstone};
use crate::web::rfc3339;
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Serialize)]
pub struct ProductOut {
    id: String,
    ean: String,
    /// Read-only: always the EAN (older clients read this name).
    barcode: String,
    sku: Option<String>,
    reference: Option<String>,
    name: String,
    description: Option<String>,
    brand: Option<String>,
    price: Option<f64>,
    cost_price: Option<f64>,
    currency: String,
    weight: Option<f64>,
    stock: i64,
    is_active: bool,
    supplier_id: Option<Uuid>,
    supplier_code: Option<String>,
    category_ids: Vec<Uuid>,
    attributes: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<ProductRecord> for ProductOut {
    fn from(p: ProductRecord) -> Self {
        ProductOut {
            id: p.id.to_string(),
            barcode: p.ean.clone(),
            ean: p.ean,
            sku: p.sku,
            reference: p.reference,
            name: p.name,
            description: p.description,
            brand: p.brand,
            price: p.price,
            cost_price: p.cost_price,
            currency: p.currency,
            weight: p.weight,
            stock: p.stock,
            is_active: p.is_active,
            supplier_id: p.supplier_id,
            supplier_code: p.supplier_code,
            category_ids: p.category_ids,
            attributes: p.attributes,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A deleted product, as change feeds and `product.deleted` events show it.
#[derive(Serialize)]
pub struct DeletedOut {
    id: String,
    ean: String,
    reference: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    deleted_at: OffsetDateTime,
}

impl From<Tombstone> for DeletedOut {
    fn from(t: Tombstone) -> Self {
        DeletedOut {
            id: t.id.to_string(),
            ean: t.ean,
            reference: t.reference,
            deleted_at: t.deleted_at,
        }
    }
}

#[derive(Serialize)]
pub struct SupplierOut {
    id: Uuid,
    code: String,
    name: String,
    email: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    currency: Option<String>,
    lead_time_days: Option<u32>,
    is_active: bool,
    /// Products that reference this supplier.
    product_count: u64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<SupplierRecord> for SupplierOut {
    fn from(s: SupplierRecord) -> Self {
        SupplierOut {
            id: s.id,
            code: s.code,
            name: s.name,
            email: s.email,
            phone: s.phone,
            country: s.country,
            currency: s.currency,
            lead_time_days: s.lead_time_days,
            is_active: s.is_active,
            product_count: s.product_count,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct ImportJobOut {
    id: Uuid,
    status: &'static str,
    file_name: String,
    file_type: String,
    file_size: u64,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    total_rows: Option<u64>,
    processed_rows: u64,
    successful_rows: u64,
    failed_rows: u64,
    created_rows: u64,
    updated_rows: u64,
    warnings: u64,
    dry_run: bool,
    headers: Vec<String>,
    mapping: BTreeMap<String, String>,
    supplier_id: Option<Uuid>,
    supplier_code: Option<String>,
    template_id: Option<Uuid>,
    error: Option<String>,
    error_code: Option<String>,
}

impl From<JobRecord> for ImportJobOut {
    fn from(j: JobRecord) -> Self {
        ImportJobOut {
            id: j.id,
            status: j.status.as_str(),
            file_name: j.file_name,
            file_type: j.format,
            file_size: j.file_size,
            created_at: rfc3339(j.created_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            total_rows: j.total_rows,
            processed_rows: j.processed_rows,
            successful_rows: j.successful_rows,
            failed_rows: j.failed_rows,
            created_rows: j.created_rows,
            updated_rows: j.updated_rows,
            warnings: j.warnings,
            dry_run: j.import.dry_run,
            headers: j.import.headers,
            mapping: j.import.mapping,
            supplier_id: j.import.supplier_id,
            supplier_code: j.import.supplier_code,
            template_id: j.import.template_id,
            error: j.error,
            error_code: j.error_code,
        }
    }
}
