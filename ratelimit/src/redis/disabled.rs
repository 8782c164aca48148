//! The Redis backend in a build without the `redis` feature: a type with
//! no values, so the layer compiles unchanged and never holds one, and a
//! policy that asks for Redis fails at build time.

use std::convert::Infallible;
use std::sync::Arc;

use super::{BuildError, RedisSettings};
use crate::key::Key;
use crate::policy::LimitSet;
use crate::store::Checked;

/// Never constructed.
pub(crate) enum RedisBackend {}

impl RedisBackend {
    pub fn start(_: &RedisSettings, _: usize) -> Result<Arc<Self>, BuildError> {
        Err(BuildError::RedisDisabled)
    }

    pub async fn connect(_: &RedisSettings, _: usize) -> Result<Arc<Self>, BuildError> {
        Err(BuildError::RedisDisabled)
    }

    pub fn connected(&self) -> bool {
        match *self {}
    }

    pub fn near_cache(&self, _: u64, _: &LimitSet, _: u64, _: u64) -> Option<Checked> {
        match *self {}
    }

    pub async fn check(
        self: &Arc<Self>,
        _: &Key<'_>,
        _: u64,
        _: &LimitSet,
        _: u64,
        _: u64,
    ) -> Result<Checked, Infallible> {
        match **self {}
    }

    pub fn fallback(&self, _: u64, _: &LimitSet, _: u64, _: u64, _: Infallible) -> Checked {
        match *self {}
    }

    pub fn down_reason(&self) -> Infallible {
        match *self {}
    }
}
