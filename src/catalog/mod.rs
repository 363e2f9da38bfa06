//! The product catalog: business rules over the store, no HTTP. Every call takes a
//! [`Namespace`](crate::store::Namespace), so tenant and environment isolation is structural.
pub mod categories;
pub mod field;
pub mod products;
pub mod suppliers;

pub use categories::{Categories, CategoryNode, CategoryPatch, MappingBody};
pub use products::{Catalog, ListQuery, ProductPatch, SortBy};
pub use suppliers::{SupplierPatch, SupplierQuery, Suppliers};
