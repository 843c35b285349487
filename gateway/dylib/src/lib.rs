//! Every crate the gateway links, as one Rust shared library. Only
//! `scripts/dev` asks for it (the gateway's `dylib` feature): a save then
//! recompiles the gateway's own crate and links its binary against this
//! library instead of statically against every dependency, which was most
//! of a rebuild's link. Release builds, the tests and the packaged
//! binaries link statically as always.
//!
//! A crate is put in the library by naming it here and in Cargo.toml;
//! rustc then links the gateway against this copy, never a second one. A
//! dependency of the gateway missing here would still work, linked
//! statically into each build; `tests/dev_loop.rs` checks that the two
//! lists stay the same.
#![forbid(unsafe_code)]

pub use anyhow;
pub use axum;
pub use bytes;
pub use clap;
pub use futures;
pub use gateway_grpc_proto;
pub use gateway_host_client;
pub use gateway_imaging;
pub use half;
pub use http_body_util;
pub use hyper;
pub use hyper_util;
pub use image;
pub use listenfd;
pub use metrics;
pub use metrics_exporter_prometheus;
pub use multer;
pub use nix;
pub use protocol;
pub use serde;
pub use serde_json;
pub use service;
pub use thiserror;
pub use tokio;
pub use tonic;
pub use tonic_health;
pub use tonic_types;
pub use tower;
pub use tower_http;
pub use tracing;
pub use tracing_subscriber;
pub use utoipa;
pub use utoipa_axum;
pub use utoipa_swagger_ui;
