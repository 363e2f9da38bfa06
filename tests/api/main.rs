//! The one integration-test binary: the real server on a loopback port, a temporary sled
//! store, a manual clock; plus end-to-end runs of the compiled binary and a real browser.
mod helpers;

mod accounts;
mod api_keys;
mod binary;
mod browser;
mod categories;
mod clients;
mod cluster;
mod contract;
mod crash;
mod errors;
mod hardening;
mod hostile;
mod jobs;
mod lockout;
mod openapi;
mod operations;
mod package;
mod partner;
mod pg_store;
mod postgres;
mod products;
mod rate_limits;
mod search;
mod sessions;
mod suppliers;
mod tenant_keys;
mod webdriver;
mod webhooks;
