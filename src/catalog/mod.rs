//! The product catalog: business rules over the store, no HTTP. Every call takes a
//! [`Namespace`](crate::store::Namespace), so tenant and environment isolation is structural.
pub mod batch;
pub mod categories;
pub mod field;
pub mod import;
pub mod products;
pub mod suppliers;

use crate::store::StoreError;

/// Runs `attempt` again while it asks for a retry (the records it read before its transaction
/// changed meanwhile), at most `retries` more times.
pub(crate) fn retrying<T>(
    retries: usize,
    mut attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        match attempt() {
            Err(StoreError::Retry) if tries < retries => tries += 1,
            other => return other,
        }
    }
}

pub use categories::{Categories, CategoryNode, CategoryPatch, MappingBody};
pub use products::{Catalog, ListQuery, ProductPatch, SortBy};
pub use suppliers::{SupplierPatch, SupplierQuery, Suppliers};
