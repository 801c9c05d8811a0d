//! Adding and withdrawing units.

use crate::engine::{Engine, EngineError, StockOutcome, StockRequest};

impl Engine {
    /// Adds or withdraws units; never below what is available. One idempotency key changes
    /// the stock at most once. A sharded campaign's stock changes on shard 0, which keeps the
    /// total; a withdrawal first moves units there when it has too few.
    pub async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        self.decidable()?;
        let id = &request.campaign_id;
        let missing = |o: &StockOutcome| *o == StockOutcome::NotFound;
        let outcome = self
            .retrying(id, missing, || self.adjust_here(request))
            .await?;
        let changed = matches!(
            outcome,
            StockOutcome::Adjusted { .. } | StockOutcome::Replayed { .. }
        );
        self.committed(id, changed).await?;
        Ok(outcome)
    }

    async fn adjust_here(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        let id = &request.campaign_id;
        let decisions = self.backing.decisions();
        let n = self.shards_of(id).await?.unwrap_or(1);
        let mut outcome = decisions.adjust_stock(request).await?;
        if n > 1 {
            if let StockOutcome::Insufficient { .. } = outcome {
                let target = request.delta.get().unsigned_abs();
                let turn = self.gathering(id);
                let _one_at_a_time = turn.lock().await;
                if self.refill(id, n, 0, target).await? {
                    outcome = decisions.adjust_stock(request).await?;
                }
            }
            // The whole campaign's available units, not shard 0's.
            let whole = || async {
                let states = self.states(id, n).await?;
                Ok::<u64, EngineError>(states.iter().flatten().map(|s| s.available).sum())
            };
            outcome = match outcome {
                StockOutcome::Adjusted { stock, .. } => StockOutcome::Adjusted {
                    stock,
                    available: whole().await?,
                },
                StockOutcome::Replayed { stock, .. } => StockOutcome::Replayed {
                    stock,
                    available: whole().await?,
                },
                StockOutcome::Insufficient { .. } => StockOutcome::Insufficient {
                    available: whole().await?,
                },
                other => other,
            };
        }
        if let StockOutcome::Adjusted { available, .. } = outcome {
            if available > 0 {
                self.units_returned(id);
            }
        }
        Ok(outcome)
    }
}
