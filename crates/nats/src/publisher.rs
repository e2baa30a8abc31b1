//! Appends' publishes sent in groups while JetStream is busy, so that under load it takes
//! many messages per read of the connection and answers them together.
//!
//! A publish goes at once when everything sent before it has been answered, or when the
//! last group went more than a linger ago: with room to spare, a command waits for
//! nothing. While answers are pending, publishes gather until the last of them comes
//! back or the linger since the last group has passed, whichever is first, and then go
//! together. Each caller awaits its own answer, so a slow one holds up no other group
//! beyond the linger.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use santa_cqrs::LogError;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::message::unavailable;

/// See [`crate::NatsOptions::publish_linger`]. Scaled out (API, projector, NATS and
/// PostgreSQL on two cores), runs in turn with the same binary. Against publishing each at
/// once, a group at most every millisecond whether or not answers were pending: at 4,400
/// letters/s every process's CPU per letter 281/284 → 208/217 µs (NATS's 110/117 →
/// 64/68), but acknowledgement p50 0.44/0.46 → 1.99/2.06 ms (p99 10.9/9.8 → 12.3/10.9
/// ms), and at 2,583/s p50 1.66/1.77 ms; highest rate sustained (find-max, 10 s steps,
/// p99 within 50 ms) 5,184 and 5,184/s → 6,221 and 6,221/s. Waiting only while answers
/// are pending, as here: p50 0.34/0.36 ms at 2,583/s and 0.41/0.38 ms at 864/s (against
/// 1.66/1.77 and 0.58/1.02), for more CPU there (356/375 against 268/284 µs, where the
/// cores have room), and as high a rate by hand: 7,466 and 6,221/s against 7,466 and
/// 5,184/s. In one full run of `santa bench-suite` each, though, the rule without regard
/// to answers sustained 6,429/s at 214 µs per letter and this one 5,357/s at 258 µs (few
/// publishes gather at that rate): which gives more at the top is not settled. 2 ms saved
/// no more CPU than 1 ms and waited longer; the timer's granularity (1 ms) makes a linger
/// last up to about two.
pub const DEFAULT_PUBLISH_LINGER: Duration = Duration::from_millis(1);

/// Publishes sent in one group at most.
const MAX_GROUP: usize = 1024;

/// Publishes waiting for their group.
const QUEUE: usize = 4096;

/// One publish and where its pending acknowledgement goes.
struct Publish {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
    sent: oneshot::Sender<(Result<PublishAckFuture, PublishError>, Unanswered)>,
}

/// Publishes sent whose answers have not come back yet.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    /// Told when the count falls to zero.
    answered: Notify,
}

/// One publish sent and not yet answered; counted until dropped.
struct Unanswered(Arc<InFlight>);

impl Unanswered {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Self(in_flight.clone())
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.answered.notify_one();
        }
    }
}

/// Hands publishes to the task that sends them in groups.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    queue: mpsc::Sender<Publish>,
}

impl Publisher {
    /// Starts the sending task; it ends once every `Publisher` is dropped.
    pub(crate) fn start(jetstream: Context, linger: Duration) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(send_groups(jetstream, linger, waiting));
        Self { queue }
    }

    /// Publishes with its group and waits for JetStream's answer.
    pub(crate) async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<Result<PublishAck, PublishError>, LogError> {
        let stopped = || LogError::Unavailable("the publisher has stopped".into());
        let (sent, ack) = oneshot::channel();
        let publish = Publish {
            subject,
            headers,
            payload,
            sent,
        };
        self.queue.send(publish).await.map_err(|_| stopped())?;
        let (sent, unanswered) = ack.await.map_err(|_| stopped())?;
        let answer = sent.map_err(unavailable)?.await;
        drop(unanswered);
        Ok(answer)
    }
}

/// Waits while publishes sent are unanswered, until `due` at the latest.
async fn gather_while_unanswered(in_flight: &InFlight, due: Instant) {
    while in_flight.count.load(Ordering::Acquire) > 0 {
        tokio::select! {
            () = in_flight.answered.notified() => {}
            () = tokio::time::sleep_until(due) => return,
        }
    }
}

async fn send_groups(jetstream: Context, linger: Duration, mut waiting: mpsc::Receiver<Publish>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut last_sent: Option<Instant> = None;
    let in_flight = Arc::new(InFlight::default());
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        if let Some(due) = last_sent.map(|at| at + linger)
            && due > Instant::now()
        {
            gather_while_unanswered(&in_flight, due).await;
            while group.len() < MAX_GROUP {
                match waiting.try_recv() {
                    Ok(publish) => group.push(publish),
                    Err(_) => break,
                }
            }
        }
        for publish in group.drain(..) {
            let ack = jetstream
                .publish_with_headers(publish.subject, publish.headers, publish.payload.into())
                .await;
            // A caller that gave up no longer wants the acknowledgement.
            let _ = publish.sent.send((ack, Unanswered::new(&in_flight)));
        }
        last_sent = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(5);

    #[tokio::test(start_paused = true)]
    async fn a_group_goes_at_once_when_everything_sent_was_answered() {
        let in_flight = Arc::new(InFlight::default());
        drop(Unanswered::new(&in_flight));
        let started = Instant::now();
        gather_while_unanswered(&in_flight, started + LINGER).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_waits_for_the_linger_while_an_answer_is_pending() {
        let in_flight = Arc::new(InFlight::default());
        let _pending = Unanswered::new(&in_flight);
        let started = Instant::now();
        gather_while_unanswered(&in_flight, started + LINGER).await;
        assert_eq!(started.elapsed(), LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_goes_as_soon_as_the_last_pending_answer_comes() {
        let in_flight = Arc::new(InFlight::default());
        let first = Unanswered::new(&in_flight);
        let second = Unanswered::new(&in_flight);
        let started = Instant::now();
        let answers = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(first);
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(second);
        });
        gather_while_unanswered(&in_flight, started + LINGER).await;
        assert_eq!(started.elapsed(), Duration::from_millis(2));
        answers.await.unwrap();
    }
}
