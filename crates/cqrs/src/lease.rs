//! Who works on which partition. Leases spread partitions over projector processes; they
//! are not what keeps projections correct (the checkpoint compare-and-set is), only what
//! keeps processes from doing the same work twice.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::ProjectionError;

/// The right to work on one (projection, partition) while it is held.
pub trait Lease: Send + Sync + Debug {
    /// False once the lease was lost (its holder's connection dropped, say).
    fn is_held(&self) -> bool;
}

/// Hands out leases.
#[async_trait]
pub trait Leases: Send + Sync + Debug + 'static {
    /// Tries to take (projection, partition); `None` when another process holds it.
    async fn try_acquire(
        &self,
        projection: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn Lease>>, ProjectionError>;

    /// How many of `partitions` this process should hold at most, so that live processes
    /// share the work.
    async fn fair_share(&self, _projection: &str, partitions: u32) -> Result<u32, ProjectionError> {
        Ok(partitions)
    }
}

/// Leases for a single process: always granted.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalLeases;

#[derive(Debug)]
struct Held;

impl Lease for Held {
    fn is_held(&self) -> bool {
        true
    }
}

#[async_trait]
impl Leases for LocalLeases {
    async fn try_acquire(
        &self,
        _: &str,
        _: u32,
    ) -> Result<Option<Box<dyn Lease>>, ProjectionError> {
        Ok(Some(Box::new(Held)))
    }
}
