//! The reaper's work on one campaign: expiring due holds, failing groups past their window,
//! forgetting what ended past the retention, completing transfers whose mover died.

use crate::domain::{CampaignId, Millis};
use crate::engine::{Engine, EngineError};
use tracing::Instrument;

impl Engine {
    /// Fails the campaign's open groups whose window passed (their members are released and
    /// their units return), then expires up to `limit` held reservations per shard whose
    /// `expires_at <= now`, returning their units (a group member's slot returns to its
    /// group), then forgets up to `limit` reservations (outside groups) that ended more than
    /// the backend's retention ago — their idempotency records stay, so replays find them in
    /// the database. For a sharded campaign, every shard's, and the transfers whose mover
    /// died. Safe to run from many instances at once. Returns how many reservations ended.
    pub async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let n = self.shards_of(campaign).await?.unwrap_or(1);
        let decisions = self.backing.decisions();
        let mut ended = 0;
        for k in 0..n {
            ended += decisions
                .expire_due(&campaign.shard(k), now, limit)
                .instrument(tracing::debug_span!("engine.expire_due", campaign = %campaign))
                .await?;
        }
        if n > 1 {
            self.complete_stale(campaign, n, now).await?;
        }
        if ended > 0 {
            self.units_returned(campaign);
        }
        Ok(ended)
    }
}
