//! The middleware's integration tests, one module per subject, in one
//! binary (tests/events.rs has one of its own, for tracing's sake).

mod common;
mod local;
mod servers;

mod classes;
mod grpc;
mod http;
mod layer;
mod redis;
mod redis_cluster;
mod redis_tls;
