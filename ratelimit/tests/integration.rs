//! The middleware's integration tests, one module per subject, in one
//! binary (tests/events.rs has one of its own, for tracing's sake).

mod common;
mod local;
#[cfg(feature = "redis")]
mod servers;

mod classes;
mod grpc;
mod http;
mod layer;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_tls;
