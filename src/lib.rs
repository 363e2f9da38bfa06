//! pixee-pim: the Pixee PIM API in one self-hosted binary.
//!
//! Layering (dependencies point one way): `api` (actix handlers, DTOs) → `auth`, `catalog`
//! (business rules, no HTTP) → `store` (sled trees and byte-key layout) → sled. `jobs` runs
//! imports and exports on background threads over `catalog` and `store`. `domain` holds
//! validated newtypes and knows nothing of the others.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod search;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod views;
pub mod web;
pub mod webhooks;
