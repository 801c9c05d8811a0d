//! The persister: reads events with a consumer group, writes each batch in one database
//! transaction (idempotent by stream position), and acknowledges only after the commit. A
//! batch is written when it is full or `delay` after its first event, whichever comes first.
//! Database failures are retried with backoff while the hot path keeps serving; events wait
//! in the streams meanwhile.
//!
//! A batch holds events of one load (epoch) per campaign only: the database applies a
//! campaign's events only if they were read under its current load (see `store::batch`), so
//! what the persister read from a Redis that has since lost the campaign is written as soon
//! as possible — also while Redis is unreachable — before a rebuild fences it out.

use crate::engine::safety::Safety;
use crate::engine::{Consumer, EventBatch, EventLog};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the persister batches.
#[derive(Debug, Clone)]
pub struct PersisterSettings {
    /// Events per transaction at most.
    pub batch: usize,
    /// Longest wait between a batch's first event and its write.
    pub delay: Duration,
    /// Events another consumer took this long ago without acknowledging are taken over.
    pub reclaim_after: Duration,
}

/// Runs until shutdown; then writes what is buffered and what still waits in the log (see
/// [`drain`]).
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Store,
    consumer: Consumer,
    settings: PersisterSettings,
    safety: Arc<Safety>,
    mut shutdown: Shutdown,
) {
    let sink = Sink {
        log: &*log,
        group: &consumer.group,
        store: &store,
        safety: &safety,
    };
    metrics::gauge!(m::DATABASE_WRITABLE).set(1.0);
    let mut buffer = EventBatch::default();
    let mut first_at: Option<Instant> = None;
    // Reads in a row that found nothing: the idle pause grows with them (see below).
    let mut empty_reads: u32 = 0;
    loop {
        let room = settings.batch.saturating_sub(buffer.events.len());
        let read = tokio::select! {
            _ = shutdown.recv() => {
                drain(&sink, &consumer, buffer, &settings).await;
                return;
            }
            read = log.read(&consumer, room, settings.reclaim_after) => read,
        };
        let fresh = match read {
            Ok(fresh) => fresh,
            Err(error) => {
                metrics::counter!(m::PERSIST_FAILURES, "stage" => "read").increment(1);
                tracing::warn!(%error, "persister could not read events");
                // What is already read must not wait for the log to answer again: after a
                // Redis loss it is the last copy, and a rebuild fences it out later.
                if !buffer.events.is_empty() {
                    if !write_with_retry(&sink, &buffer, &mut shutdown).await {
                        return;
                    }
                    buffer = EventBatch::default();
                    first_at = None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !buffer.events.is_empty() && buffer.epochs.conflicts(&fresh.epochs) {
            // A campaign loaded again since: the buffered batch goes alone, with its epochs.
            if !write_with_retry(&sink, &buffer, &mut shutdown).await {
                return;
            }
            buffer = EventBatch::default();
            first_at = None;
        }
        let got_any = !fresh.events.is_empty();
        if got_any && first_at.is_none() {
            first_at = Some(Instant::now());
        }
        buffer.epochs.extend(fresh.epochs);
        for (campaign, seen) in fresh.available {
            // The read with the later event knows the later availability.
            let kept = buffer.available.entry(campaign).or_insert(seen);
            if seen.1 > kept.1 {
                *kept = seen;
            }
        }
        buffer.events.extend(fresh.events);
        let due = first_at.is_some_and(|at| at.elapsed() >= settings.delay);
        if !buffer.events.is_empty() && (buffer.events.len() >= settings.batch || due) {
            if !write_with_retry(&sink, &buffer, &mut shutdown).await {
                return;
            }
            buffer = EventBatch::default();
            first_at = None;
        } else if !got_any {
            // Nothing new: poll again after a short pause while a batch is open (so it still
            // flushes on time); when idle, after a whole delay, doubling with every empty read
            // up to [`IDLE_PAUSE`] (keeps Redis and this process quiet between sales; the first
            // events of the next burst wait that long at most).
            empty_reads = empty_reads.saturating_add(1);
            // (With no delay — answers wait for the commit — the read itself waits for the
            // next decision, and no pause may hold one up.)
            let pause = if buffer.events.is_empty() && !settings.delay.is_zero() {
                let grown = settings.delay.saturating_mul(1 << empty_reads.min(8));
                grown.min(IDLE_PAUSE.max(settings.delay))
            } else if buffer.events.is_empty() {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(2)
            };
            tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
        }
        if got_any {
            empty_reads = 0;
        }
    }
}

/// The longest pause between two reads while nothing arrives.
const IDLE_PAUSE: Duration = Duration::from_millis(100);

/// How long a stopping persister keeps writing what is still waiting.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// At shutdown: writes what is buffered and everything still waiting in the log (with the
/// embedded engine nothing else would ever write it), for at most [`DRAIN_LIMIT`]. What is
/// left unwritten stays unacknowledged (in Redis, for the next persister).
async fn drain(
    sink: &Sink<'_>,
    consumer: &Consumer,
    mut buffer: EventBatch,
    settings: &PersisterSettings,
) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        if !buffer.events.is_empty() && write_once(sink, &buffer).await.is_err() {
            tracing::warn!(
                events = buffer.events.len(),
                "could not write the last batch at shutdown"
            );
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        buffer = match sink
            .log
            .read(consumer, settings.batch, settings.reclaim_after)
            .await
        {
            Ok(batch) if !batch.events.is_empty() => batch,
            _ => return,
        };
    }
}

/// Writes and acknowledges, retrying with backoff until it succeeds; `false` if shutdown
/// came first (the events stay unacknowledged for the next persister).
async fn write_with_retry(sink: &Sink<'_>, batch: &EventBatch, shutdown: &mut Shutdown) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        match write_once(sink, batch).await {
            Ok(()) => return true,
            Err(stage) => {
                metrics::counter!(m::PERSIST_FAILURES, "stage" => stage).increment(1);
                tokio::select! {
                    _ = shutdown.recv() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Where a batch goes, and who hears whether it got there.
struct Sink<'a> {
    log: &'a dyn EventLog,
    group: &'a str,
    store: &'a Store,
    /// Told whether writes reach the database (`/readyz`, and answers that wait for it).
    safety: &'a Safety,
}

async fn write_once(sink: &Sink<'_>, batch: &EventBatch) -> Result<(), &'static str> {
    let Sink {
        log,
        group,
        store,
        safety,
    } = sink;
    let started = Instant::now();
    let events = &batch.events;
    match store.persist(&batch.epochs, events).await {
        Ok(set_aside) => {
            safety.store_written();
            metrics::gauge!(m::DATABASE_WRITABLE).set(1.0);
            for (reason, count) in set_aside {
                metrics::counter!(m::DEAD_EVENTS, "reason" => reason).increment(count);
            }
        }
        Err(error) => {
            tracing::warn!(%error, events = events.len(), "persisting a batch failed; will retry");
            safety.store_failed(&error);
            metrics::gauge!(m::DATABASE_WRITABLE).set(0.0);
            return Err("write");
        }
    }
    // The campaigns' availability as read with these events, for the campaign list's
    // status filter: a failure only leaves the filter a little behind.
    if let Err(error) = store
        .record_available(&batch.epochs, &batch.available)
        .await
    {
        tracing::warn!(%error, "recording the campaigns' availability failed");
    }
    // Only after the commit: a crash before this line means redelivery, which the database
    // absorbs (ON CONFLICT DO NOTHING), never loss. A failed ack is harmless too (the events
    // come back and are absorbed); after a Redis loss there is nothing left to ack.
    if let Err(error) = log.ack(group, events).await {
        tracing::warn!(%error, "acknowledging a persisted batch failed");
        metrics::counter!(m::PERSIST_FAILURES, "stage" => "ack").increment(1);
    }
    metrics::counter!(m::PERSISTED_EVENTS).increment(events.len() as u64);
    metrics::histogram!(m::PERSIST_BATCH_SIZE).record(events.len() as f64);
    metrics::histogram!(m::PERSIST_BATCH_DURATION).record(started.elapsed().as_secs_f64());
    Ok(())
}
