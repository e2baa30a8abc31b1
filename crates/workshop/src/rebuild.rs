//! A read store's side of a projection rebuild (the kernel drives it: see
//! `santa_cqrs::Rebuilder`).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use santa_cqrs::{Projection, ProjectionError, Rebuild};

/// Fresh, empty tables beside a store's live ones, reachable as a store of the same kind.
/// Dropping it without [`StoreRebuild::switch`] abandons them.
#[async_trait]
pub trait StoreRebuild<S: ?Sized>: Send + Sync + Debug {
    /// The store over the fresh tables.
    fn fresh(&self) -> Arc<S>;

    /// The replay is done: completes what the fresh tables left out to replay faster.
    async fn replayed(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Holds the live tables' writers off until the switch; readers go on.
    async fn freeze(&mut self) -> Result<(), ProjectionError>;

    /// Makes the fresh tables the live ones atomically and drops the old ones.
    async fn switch(self: Box<Self>) -> Result<(), ProjectionError>;
}

/// A store rebuild seen as the kernel's [`Rebuild`], with the projection built on the
/// fresh store.
#[derive(Debug)]
pub(crate) struct ProjectionRebuild<S: ?Sized> {
    pub(crate) store: Box<dyn StoreRebuild<S>>,
    pub(crate) projection: Arc<dyn Projection>,
}

#[async_trait]
impl<S: ?Sized + Send + Sync + Debug + 'static> Rebuild for ProjectionRebuild<S> {
    fn projection(&self) -> Arc<dyn Projection> {
        self.projection.clone()
    }

    async fn replayed(&mut self) -> Result<(), ProjectionError> {
        self.store.replayed().await
    }

    async fn freeze(&mut self) -> Result<(), ProjectionError> {
        self.store.freeze().await
    }

    async fn switch(self: Box<Self>) -> Result<(), ProjectionError> {
        self.store.switch().await
    }
}

/// The answer of a store that cannot be rebuilt.
pub(crate) fn unsupported(what: &str) -> ProjectionError {
    ProjectionError::Store(format!("this {what} cannot be rebuilt"))
}
