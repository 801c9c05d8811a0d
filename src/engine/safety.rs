//! Whether changes can be decided safely just now, as the parts that find out say it:
//!
//! - the persister says whether its writes reach the database (a full disk, a database that
//!   refuses writes): while they fail, changes cannot be made durable;
//! - the engine watch says, under strict durability, whether the stock engine's configuration
//!   can lose data (a Redis that may evict keys).
//!
//! the [`Engine`](super::Engine) asks before every change, `/readyz` shows it, the
//! metrics carry it. Asking costs one atomic load while all is well.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long the database may refuse writes before changes that wait for their commit are
/// refused instead of decided: one failed batch that the next retry writes refuses nothing.
pub const NOT_DURABLE_GRACE: Duration = Duration::from_secs(1);

/// Why a change must not be decided now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    /// The database has refused writes for this long, for this reason.
    NotDurable(String),
    /// The stock engine's configuration can lose data (strict durability only).
    Engine(String),
}

/// Shared by the persister, the engine watch, the engine as requests see it and `/readyz`.
#[derive(Debug, Default)]
pub struct Safety {
    /// Whether anything below is set: the hot path's only read while all is well.
    troubled: AtomicBool,
    state: Mutex<State>,
    /// Woken whenever the database starts refusing writes.
    failing: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Since when the database refuses the persister's writes, and its last word.
    not_durable: Option<(Instant, String)>,
    /// What makes the engine unsafe.
    engine: Option<String>,
}

impl Safety {
    /// The persister could not write a batch.
    pub fn store_failed(&self, reason: impl std::fmt::Display) {
        let mut state = self.lock();
        let since = state
            .not_durable
            .as_ref()
            .map_or_else(Instant::now, |s| s.0);
        state.not_durable = Some((since, reason.to_string()));
        self.troubled.store(true, Ordering::Release);
        drop(state);
        self.failing.notify_waiters();
    }

    /// The persister wrote a batch.
    pub fn store_written(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        state.not_durable = None;
        self.troubled
            .store(state.engine.is_some(), Ordering::Release);
    }

    /// What the engine watch found: `Some(reason)` while the engine can lose data.
    pub fn engine_checked(&self, unsafe_because: Option<String>) {
        let mut state = self.lock();
        state.engine = unsafe_because;
        self.troubled.store(
            state.engine.is_some() || state.not_durable.is_some(),
            Ordering::Release,
        );
    }

    /// Why a change must not be decided now, if it must not: the engine is unsafe, or —
    /// when the change's answer waits for its commit (`waits_for_commit`) — the database has
    /// refused writes for [`NOT_DURABLE_GRACE`] or longer.
    pub fn refusal(&self, waits_for_commit: bool) -> Option<Unsafe> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        if let Some(reason) = &state.engine {
            return Some(Unsafe::Engine(reason.clone()));
        }
        match &state.not_durable {
            Some((since, reason)) if waits_for_commit && since.elapsed() >= NOT_DURABLE_GRACE => {
                Some(Unsafe::NotDurable(reason.clone()))
            }
            _ => None,
        }
    }

    /// Resolves once the database has refused writes for [`NOT_DURABLE_GRACE`], with its
    /// last word: a change waiting for its commit stops waiting then.
    pub async fn not_durable(&self) -> String {
        loop {
            let failing = self.failing.notified();
            tokio::pin!(failing);
            failing.as_mut().enable();
            // The usual case, with no lock: nothing is wrong (`store_failed` marks trouble
            // before it wakes the waiters, which were registered above).
            if !self.troubled.load(Ordering::Acquire) {
                failing.await;
                continue;
            }
            let since = self.lock().not_durable.as_ref().map(|s| s.0);
            match since {
                Some(since) => {
                    tokio::time::sleep_until(since + NOT_DURABLE_GRACE).await;
                    if let Some((still, reason)) = &self.lock().not_durable {
                        if *still == since {
                            return reason.clone();
                        }
                    }
                }
                None => failing.await,
            }
        }
    }

    /// For `/readyz`: what keeps changes from being made durable, and what makes the engine
    /// unsafe.
    pub fn report(&self) -> (Option<String>, Option<String>) {
        let state = self.lock();
        (
            state
                .not_durable
                .as_ref()
                .map(|(_, reason)| format!("changes cannot be made durable: {reason}")),
            state.engine.clone(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_short_failure_refuses_nothing_a_long_one_refuses_what_waits_for_its_commit() {
        let safety = Safety::default();
        assert_eq!(safety.refusal(true), None);
        safety.store_failed("disk full");
        assert_eq!(safety.refusal(true), None, "within the grace");
        tokio::time::advance(NOT_DURABLE_GRACE).await;
        assert_eq!(
            safety.refusal(true),
            Some(Unsafe::NotDurable("disk full".into()))
        );
        assert_eq!(safety.refusal(false), None, "Redis keeps what it decides");
        safety.store_written();
        assert_eq!(safety.refusal(true), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_hears_of_a_failure_that_lasts() {
        let safety = std::sync::Arc::new(Safety::default());
        let waiter = tokio::spawn({
            let safety = std::sync::Arc::clone(&safety);
            async move { safety.not_durable().await }
        });
        tokio::task::yield_now().await;
        safety.store_failed("first");
        tokio::time::advance(Duration::from_millis(500)).await;
        safety.store_written();
        safety.store_failed("second");
        tokio::time::advance(Duration::from_millis(600)).await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second failure is 600 ms old");
        tokio::time::advance(NOT_DURABLE_GRACE).await;
        assert_eq!(waiter.await.expect("joined"), "second");
    }

    #[test]
    fn an_unsafe_engine_refuses_every_change_until_fixed() {
        let safety = Safety::default();
        safety.engine_checked(Some("redis: allkeys-lru".into()));
        assert_eq!(
            safety.refusal(false),
            Some(Unsafe::Engine("redis: allkeys-lru".into()))
        );
        safety.engine_checked(None);
        assert_eq!(safety.refusal(false), None);
    }
}
