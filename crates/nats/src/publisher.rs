//! Appends' publishes sent in groups: at most one group per linger, so that under load
//! JetStream takes many messages per read of the connection and answers them together.
//!
//! A publish that finds the last group gone more than a linger ago goes at once: a lone
//! command waits for nothing. One that arrives sooner waits for the linger to pass and
//! goes with every publish that gathered meanwhile. Each caller then awaits its own
//! acknowledgement, so a slow answer holds up no other group.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use santa_cqrs::LogError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::message::unavailable;

/// See [`crate::NatsOptions::publish_linger`]. Scaled out (API, projector, NATS and
/// PostgreSQL on two cores) at 4,400 letters/s, two runs each in turn with no linger, this
/// one and 2 ms: every process's CPU per letter 281/284, 208/217 and 215/208 µs (NATS's
/// 110/117, 64/68 and 71/68); acknowledgement p50 0.44/0.46, 1.99/2.06 and 2.81/2.72 ms,
/// p99 10.9/9.8, 12.3/10.9 and 19.0/12.6 ms. Highest rate sustained (find-max, 10 s
/// steps, p99 within 50 ms): 5,184 and 5,184/s, 6,221 and 6,221/s, 7,466 and 6,221/s. A
/// longer linger saved no more CPU and waits longer; the timer's granularity (1 ms) makes
/// a wait of up to about two.
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
    sent: oneshot::Sender<Result<PublishAckFuture, PublishError>>,
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

    /// Publishes with its group and returns the acknowledgement to await.
    pub(crate) async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<PublishAckFuture, LogError> {
        let stopped = || LogError::Unavailable("the publisher has stopped".into());
        let (sent, ack) = oneshot::channel();
        let publish = Publish {
            subject,
            headers,
            payload,
            sent,
        };
        self.queue.send(publish).await.map_err(|_| stopped())?;
        ack.await.map_err(|_| stopped())?.map_err(unavailable)
    }
}

async fn send_groups(jetstream: Context, linger: Duration, mut waiting: mpsc::Receiver<Publish>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut last_sent: Option<Instant> = None;
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        if let Some(due) = last_sent.map(|at| at + linger)
            && due > Instant::now()
        {
            tokio::time::sleep_until(due).await;
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
            let _ = publish.sent.send(ack);
        }
        last_sent = Some(Instant::now());
    }
}
