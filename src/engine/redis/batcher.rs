//! Group commit for reserves. Attempts on one campaign that arrive while a call of
//! `lua/reserve.lua` for it is in flight wait in the campaign's queue and go together as the
//! next call, which decides each in arrival order with a lone attempt's rules (one read and
//! one write of the campaign, one stream entry, per batch). No timer: a lone attempt goes at
//! once; under load batches grow by themselves, up to [`MAX_BATCH`]. At most one call per
//! campaign is in flight from an instance; a queue longer than [`MAX_WAITING`] sheds new
//! attempts (`EngineError::Overloaded`, 503 `overloaded`).

use super::{Connection, RedisEngine};
use crate::domain::CampaignId;
use crate::engine::{EngineError, ReserveOutcome, ReserveRequest};
use crate::metrics as m;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Attempts per script call at most: a batch of 128 keeps one call well under a millisecond
/// of Redis time, so other campaigns' calls never wait long behind it.
pub const MAX_BATCH: usize = 128;

/// Attempts waiting for one campaign at most (beyond them: 503 `overloaded`).
pub const MAX_WAITING: usize = 8192;

type Answer = Result<ReserveOutcome, EngineError>;

struct Waiting {
    request: ReserveRequest,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// A driver task is sending this campaign's batches.
    running: bool,
}

type Shared = Arc<Mutex<Queue>>;

/// The queues of every campaign this instance reserves on.
#[derive(Default)]
pub struct Batcher {
    queues: DashMap<CampaignId, Shared>,
}

impl Batcher {
    pub fn forget(&self, campaign: &CampaignId) {
        self.queues.remove(campaign);
    }
}

fn lock(queue: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the queue idle if the driver panics: the waiting attempts are dropped (their
/// callers get an error), the next attempt starts a new driver. Only on a panic: after a
/// normal stop another driver may already own the queue (an attempt that arrived after the
/// queue was found empty started it), and its attempts are not this driver's to drop.
struct Running(Shared);

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = lock(&self.0);
            queue.running = false;
            queue.waiting.clear();
        }
    }
}

impl<C: Connection> RedisEngine<C> {
    /// Queues the attempt behind its campaign's call in flight, or sends it at once.
    pub(super) async fn reserve_queued(&self, request: &ReserveRequest) -> Answer {
        let queue = self
            .batcher
            .queues
            .entry(request.campaign_id.clone())
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
            tokio::spawn(self.clone().drive(queue));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(EngineError::Corrupt("a reserve batch was dropped".into())))
    }

    /// Sends the campaign's waiting attempts, a batch at a time, until none waits.
    async fn drive(self, queue: Shared) {
        let _running = Running(queue.clone());
        loop {
            let batch: Vec<Waiting> = {
                let mut q = lock(&queue);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                let n = q.waiting.len().min(MAX_BATCH);
                q.waiting.drain(..n).collect()
            };
            metrics::histogram!(m::RESERVE_BATCH_SIZE).record(batch.len() as f64);
            let (requests, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.answer)).unzip();
            match self.reserve_batch(&requests).await {
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
