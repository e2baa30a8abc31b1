//! Group apply: batches that a projection's partition workers hand to one store at about
//! the same time are written in one transaction.
//!
//! A projection has a worker per partition (eight by default on JetStream), and each
//! committed its own small batch: at 1,200 letters/s, sixteen workers made some 800
//! transactions a second of a handful of statements each, for one or two letters apiece.
//! Here a batch waits while the store's previous transaction is in flight and then goes
//! with every batch that gathered meanwhile, as a log's group commit does; the runner's
//! workers wake together (`ProjectionRunner::with_linger_on_clock`), so their batches
//! arrive together. Nothing waits for a timer here: a lone batch goes at once.

use std::future::Future;
use std::sync::Mutex;

use santa_cqrs::{Position, Progress, ProjectionError};
use tokio::sync::oneshot;

/// A job waiting, and where its result goes.
type Waiting<J> = (J, oneshot::Sender<Result<(), ProjectionError>>);

/// Batches waiting for the store's next transaction, and who writes it.
pub(crate) struct Group<J> {
    waiting: Mutex<Vec<Waiting<J>>>,
    /// Held by the worker writing a transaction for everyone waiting.
    writer: tokio::sync::Mutex<()>,
}

impl<J> Default for Group<J> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

impl<J> std::fmt::Debug for Group<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl<J> Group<J> {
    /// Hands `job` over and waits for its result. Whoever gets the writer's turn takes
    /// every job waiting and runs them with `write`, which returns one result per job, in
    /// order.
    pub(crate) async fn submit<F, Fut>(&self, job: J, write: F) -> Result<(), ProjectionError>
    where
        F: FnOnce(Vec<J>) -> Fut,
        Fut: Future<Output = Vec<Result<(), ProjectionError>>>,
    {
        let (done, mut result) = oneshot::channel();
        self.lock().push((job, done));
        let turn = self.writer.lock().await;
        match result.try_recv() {
            // An earlier writer took the job and answered it.
            Ok(answer) => return answer,
            Err(oneshot::error::TryRecvError::Closed) => return Err(abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Let the workers that woke with this one hand their batches over first.
        tokio::task::yield_now().await;
        // Not answered, so not taken: the job is among these.
        let (jobs, answers): (Vec<J>, Vec<_>) =
            std::mem::take(&mut *self.lock()).into_iter().unzip();
        let results = write(jobs).await;
        for (answer, outcome) in answers.into_iter().zip(results) {
            let _ = answer.send(outcome);
        }
        drop(turn);
        result.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<J>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The writer holding the job stopped before answering it (its task was cancelled): the
/// transaction, if any, rolled back or committed with its checkpoint, so a retry is safe.
fn abandoned() -> ProjectionError {
    ProjectionError::Store("the batch's group transaction was abandoned; retry".into())
}

/// Writes the jobs that gathered: all in one transaction with `shared` (not started
/// unless used) when they `may_share` one; else, or when that transaction fails, each in its own with `one`, in order, so that
/// a failure is its own job's. One result per job, in order.
pub(crate) async fn write_jobs<'a, J, One>(
    jobs: &'a [J],
    may_share: bool,
    shared: impl Future<Output = Result<Vec<Result<(), ProjectionError>>, ProjectionError>>,
    one: impl Fn(&'a J) -> One,
) -> Vec<Result<(), ProjectionError>>
where
    One: Future<Output = Result<(), ProjectionError>>,
{
    if jobs.len() > 1 && may_share {
        match shared.await {
            Ok(results) => return results,
            Err(error) => {
                tracing::debug!(%error, batches = jobs.len(), "group transaction failed; writing its batches one by one");
            }
        }
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        results.push(one(job).await);
    }
    results
}

/// What the checkpoints of a group's batches allow: for each batch, what [`admitted`]
/// says.
pub(crate) fn admit(
    progresses: &[Progress],
    stored: &[(u32, Position)],
) -> Vec<Result<Position, ProjectionError>> {
    progresses
        .iter()
        .map(|progress| admitted(*progress, stored))
        .collect()
}

/// What the checkpoints read allow a batch: the position its events must lie past to be
/// applied, or why it cannot go in.
///
/// `stored` are the checkpoints read (and locked) for the batches' partitions, as
/// (partition, position); a partition without a row is at zero.
pub(crate) fn admitted(
    progress: Progress,
    stored: &[(u32, Position)],
) -> Result<Position, ProjectionError> {
    match progress {
        Progress::Advance {
            partition,
            expected,
            ..
        } => {
            let actual = stored
                .iter()
                .find(|(p, _)| *p == partition)
                .map_or(Position::ZERO, |(_, position)| *position);
            if actual == expected {
                Ok(actual)
            } else {
                Err(ProjectionError::Moved { expected, actual })
            }
        }
        Progress::Redrive => Ok(Position::ZERO),
    }
}

/// Whether `progresses` can share one transaction: all advances, of different partitions.
pub(crate) fn can_share(progresses: &[Progress]) -> bool {
    let mut seen = Vec::with_capacity(progresses.len());
    progresses.iter().all(|progress| match progress {
        Progress::Advance { partition, .. } if !seen.contains(partition) => {
            seen.push(*partition);
            true
        }
        _ => false,
    })
}

/// The partitions of a group's batches (advances only).
pub(crate) fn partitions(progresses: &[Progress]) -> Vec<u32> {
    progresses
        .iter()
        .filter_map(|progress| match progress {
            Progress::Advance { partition, .. } => Some(*partition),
            Progress::Redrive => None,
        })
        .collect()
}

/// The checkpoints a group's transaction moves: each admitted advance's, to its `upto`.
pub(crate) fn moves(
    progresses: &[Progress],
    admitted: &[Result<Position, ProjectionError>],
) -> Vec<(u32, Position)> {
    progresses
        .iter()
        .zip(admitted)
        .filter_map(|(progress, admitted)| match (progress, admitted) {
            (
                Progress::Advance {
                    partition,
                    expected,
                    upto,
                },
                Ok(_),
            ) if upto > expected => Some((*partition, *upto)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance(partition: u32, expected: u64) -> Progress {
        Progress::Advance {
            partition,
            expected: Position::new(expected),
            upto: Position::new(expected + 10),
        }
    }

    #[test]
    fn a_batch_whose_checkpoint_moved_is_refused_alone() {
        let admitted = admit(
            &[advance(0, 5), advance(1, 7), advance(2, 0)],
            &[(0, Position::new(5)), (1, Position::new(9))],
        );
        assert_eq!(admitted[0].as_ref().ok(), Some(&Position::new(5)));
        assert!(matches!(
            admitted[1],
            Err(ProjectionError::Moved { expected, actual })
                if expected == Position::new(7) && actual == Position::new(9)
        ));
        assert_eq!(admitted[2].as_ref().ok(), Some(&Position::ZERO));
    }

    #[test]
    fn only_advances_of_different_partitions_share_a_transaction() {
        assert!(can_share(&[advance(0, 1), advance(3, 1)]));
        assert!(!can_share(&[advance(0, 1), advance(0, 2)]));
        assert!(!can_share(&[advance(0, 1), Progress::Redrive]));
    }

    #[tokio::test]
    async fn jobs_that_wait_go_together_and_each_gets_its_own_result() {
        let group = std::sync::Arc::new(Group::<u32>::default());
        // Hold the writer's turn so that the jobs below gather.
        let turn = group.writer.lock().await;
        let sizes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for job in 0..4u32 {
            let (group, sizes) = (group.clone(), sizes.clone());
            tasks.spawn(async move {
                let outcome = group
                    .submit(job, |jobs| async move {
                        sizes.lock().unwrap().push(jobs.len());
                        jobs.iter()
                            .map(|j| {
                                if j % 2 == 0 {
                                    Ok(())
                                } else {
                                    Err(ProjectionError::Store(format!("job {j}")))
                                }
                            })
                            .collect()
                    })
                    .await;
                (job, outcome)
            });
        }
        while group.lock().len() < 4 {
            tokio::task::yield_now().await;
        }
        drop(turn);
        let mut outcomes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.unwrap());
        }
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![4],
            "one transaction for all four"
        );
        for (job, outcome) in outcomes {
            match outcome {
                Ok(()) => assert_eq!(job % 2, 0),
                Err(ProjectionError::Store(message)) => assert_eq!(message, format!("job {job}")),
                Err(other) => panic!("job {job}: {other}"),
            }
        }
    }
}
