//! Integration tests against real servers on loopback, real clients and a real browser.

mod api;
mod binary;
mod client;
mod dashboard;
mod js_client;
mod replication;
mod support;
