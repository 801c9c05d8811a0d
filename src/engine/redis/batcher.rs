//! Group commit. Calls on one campaign that arrive while a script call for it is in flight
//! wait in the campaign's queue and go together as the next call, which answers each as a
//! lone call would. No timer: a lone call goes at once; under load batches grow by
//! themselves, up to [`MAX_BATCH`]. At most one call per campaign and kind is in flight from
//! an instance; a queue longer than [`MAX_WAITING`] sheds new calls
//! (`EngineError::Overloaded`, 503 `overloaded`).
//!
//! Two kinds go through it ([`BatchKind`]): reserves (`src/engine/redis/scripts/reserve.lua` decides a batch in
//! arrival order with one read and one write of the campaign and one stream entry) and
//! waiting-room ticket reads (`src/engine/redis/scripts/queue.lua` reads a batch of tickets with one read of the
//! campaign).

use super::{Connection, RedisEngine};
use crate::domain::CampaignId;
use crate::engine::EngineError;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Calls per script call at most: a batch of 128 reserves keeps one call well under a
/// millisecond of Redis time, so other campaigns' calls never wait long behind it.
pub const MAX_BATCH: usize = 128;

/// Calls waiting for one campaign at most (beyond them: 503 `overloaded`).
pub const MAX_WAITING: usize = 8192;

/// A kind of call that goes in batches: how a batch is sent, and where its queues are.
pub(super) trait BatchKind<C: Connection>: Clone + Send + Sync + 'static {
    type Outcome: Send + 'static;
    /// What errors call it.
    const NAME: &'static str;
    /// The batch-size histogram.
    const HISTOGRAM: &'static str;

    fn queues(engine: &RedisEngine<C>) -> &Batcher<Self, Self::Outcome>;

    /// One script call for the batch (all of one campaign): an outcome per call, in order.
    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send;
}

type Answer<O> = Result<O, EngineError>;

struct Waiting<R, O> {
    request: R,
    answer: oneshot::Sender<Answer<O>>,
}

struct Queue<R, O> {
    waiting: VecDeque<Waiting<R, O>>,
    /// A driver task is sending this campaign's batches.
    running: bool,
}

impl<R, O> Default for Queue<R, O> {
    fn default() -> Self {
        Queue {
            waiting: VecDeque::new(),
            running: false,
        }
    }
}

type Shared<R, O> = Arc<Mutex<Queue<R, O>>>;

/// The queues of every campaign this instance sends one kind of call for.
pub struct Batcher<R, O> {
    queues: DashMap<CampaignId, Shared<R, O>>,
}

impl<R, O> Default for Batcher<R, O> {
    fn default() -> Self {
        Batcher {
            queues: DashMap::new(),
        }
    }
}

impl<R, O> Batcher<R, O> {
    pub fn forget(&self, campaign: &CampaignId) {
        self.queues.remove(campaign);
    }
}

fn lock<R, O>(queue: &Shared<R, O>) -> std::sync::MutexGuard<'_, Queue<R, O>> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the queue idle if the driver panics: the waiting attempts are dropped (their
/// callers get an error), the next attempt starts a new driver. Only on a panic: after a
/// normal stop another driver may already own the queue (an attempt that arrived after the
/// queue was found empty started it), and its attempts are not this driver's to drop.
struct Running<R, O>(Shared<R, O>);

impl<R, O> Drop for Running<R, O> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = lock(&self.0);
            queue.running = false;
            queue.waiting.clear();
        }
    }
}

impl<C: Connection> RedisEngine<C> {
    /// Queues the call behind its campaign's call in flight, or sends it at once.
    pub(super) async fn batched<K: BatchKind<C>>(
        &self,
        campaign: &CampaignId,
        request: &K,
    ) -> Answer<K::Outcome> {
        let queue = K::queues(self)
            .queues
            .entry(campaign.clone())
            .or_default()
            .clone();
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut q = lock(&queue);
            if q.waiting.len() >= MAX_WAITING {
                return Err(EngineError::Overloaded);
            }
            q.waiting.push_back(Waiting {
                request: request.clone(),
                answer,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            tokio::spawn(self.clone().drive::<K>(queue));
        }
        answered.await.unwrap_or_else(|_| {
            Err(EngineError::Corrupt(format!(
                "a {} batch was dropped",
                K::NAME
            )))
        })
    }

    /// Sends the campaign's waiting calls, a batch at a time, until none waits.
    async fn drive<K: BatchKind<C>>(self, queue: Shared<K, K::Outcome>) {
        let _running = Running(queue.clone());
        loop {
            let batch: Vec<Waiting<K, K::Outcome>> = {
                let mut q = lock(&queue);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                let n = q.waiting.len().min(MAX_BATCH);
                q.waiting.drain(..n).collect()
            };
            metrics::histogram!(K::HISTOGRAM).record(batch.len() as f64);
            let (requests, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.answer)).unzip();
            match K::send(&self, &requests).await {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    for answer in answers {
                        let _ = answer.send(Err(error.share()));
                    }
                }
            }
        }
    }
}

impl<C: Connection> BatchKind<C> for crate::engine::ReserveRequest {
    type Outcome = crate::engine::ReserveOutcome;
    const NAME: &'static str = "reserve";
    const HISTOGRAM: &'static str = crate::metrics::RESERVE_BATCH_SIZE;

    fn queues(engine: &RedisEngine<C>) -> &Batcher<Self, Self::Outcome> {
        &engine.batcher
    }

    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send {
        engine.reserve_batch(batch)
    }
}
