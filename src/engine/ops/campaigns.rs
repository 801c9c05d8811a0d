//! Creating, loading, reading, ending and forgetting a campaign.

use crate::domain::{Campaign, CampaignId, CampaignState, CampaignStatus, Millis};
use crate::engine::recovery::RecoveryError;
use crate::engine::{CampaignSnapshot, Engine, EngineError};

impl Engine {
    /// Creates a campaign: the database first — it is the durable source of campaigns, and
    /// the one that decides whether the id is taken — then the backend, where loading
    /// nothing means recovery loaded it from the database already, which is the same
    /// campaign. `false` if the id was taken.
    pub async fn create_campaign(&self, campaign: &Campaign) -> Result<bool, RecoveryError> {
        self.decidable()?;
        let snapshot = CampaignSnapshot::fresh(campaign);
        if let Some(recovery) = &self.recovery {
            if !recovery.insert(campaign, &snapshot.epoch).await? {
                return Ok(false);
            }
        }
        self.load(snapshot).await?;
        Ok(true)
    }

    /// Loads a campaign — new, or rebuilt from the database — with the counters its
    /// reservations and groups imply: whichever of its shards are missing (the whole
    /// campaign when it is not sharded). A bit per shard this call loaded (bit 0 alone for
    /// an unsharded campaign; 0: it was there), so the database records the new epoch for
    /// those only. For a sharded campaign an error means no shard was loaded (one that may
    /// have been is reported as loaded).
    pub async fn load(&self, snapshot: CampaignSnapshot<'_>) -> Result<u64, EngineError> {
        let campaign = snapshot.campaign;
        let loaded = if campaign.shards <= 1 {
            u64::from(self.backing.decisions().load_campaign(snapshot).await?)
        } else {
            self.remember_shards(campaign);
            self.load_missing(snapshot).await?
        };
        if loaded != 0 {
            self.units_returned(&campaign.id);
        }
        Ok(loaded)
    }

    /// The campaign as the backend holds it now, its shards summed (`None`: missing, or a
    /// shard is); never rebuilt from the database.
    pub async fn loaded_campaign(
        &self,
        id: &CampaignId,
    ) -> Result<Option<CampaignState>, EngineError> {
        let Some(first) = self.backing.reads().campaign(id).await? else {
            return Ok(None);
        };
        let n = self.remember_shards(&first.campaign);
        let state = if n == 1 {
            Some(first)
        } else {
            self.whole(id, n, first).await?
        };
        if let Some(state) = &state {
            self.remember_config(&state.campaign);
        }
        Ok(state)
    }

    /// The campaign's state: rebuilt first if the backend lost it; an archived one as the
    /// database counts it.
    pub async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        let found = self
            .retrying(id, Option::is_none, || self.loaded_campaign(id))
            .await?;
        if found.is_some() {
            return Ok(found);
        }
        let (Some(campaign), Some(recovery)) = (self.archived(id), &self.recovery) else {
            return Ok(None);
        };
        // Archived: its units as the database counts them (no live holds are left).
        let counts = recovery
            .store()
            .counts(&campaign)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))?;
        Ok(Some(CampaignState {
            available: counts.stock.saturating_sub(counts.held + counts.confirmed),
            held: counts.held,
            confirmed: counts.confirmed,
            groups: Default::default(),
            campaign,
        }))
    }

    /// Campaigns the backend holds, each once; a sharded one only while every shard is
    /// listed (one the backend holds but does not list is not visited by the persister: the
    /// recovery pass finds the campaign missing from this list and lists its shards again).
    pub async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        let mut listed: std::collections::BTreeMap<CampaignId, u8> = Default::default();
        for id in self.backing.reads().campaign_ids().await? {
            *listed.entry(id.parent()).or_default() += 1;
        }
        Ok(listed
            .into_iter()
            .filter(|(id, count)| self.shards.known(id).is_none_or(|n| *count >= n))
            .map(|(id, _)| id)
            .collect())
    }

    /// A campaign's config (`stock` may be stale): the gate's cache first, else the backend,
    /// rebuilding the campaign if the backend lost it, else the archive.
    pub async fn config(&self, id: &CampaignId) -> Result<Option<Campaign>, EngineError> {
        if let Some(campaign) = self.cached_config(id).await? {
            return Ok(Some(campaign));
        }
        Ok(self.campaign(id).await?.map(|state| state.campaign))
    }

    /// Whether the campaign has a waiting room (`false` for an unknown one).
    pub async fn queued(&self, id: &CampaignId) -> Result<bool, EngineError> {
        if let Some(queued) = self.gate.as_ref().and_then(|g| g.cached_queue(id)) {
            return Ok(queued);
        }
        Ok(self.config(id).await?.is_some_and(|c| c.queue.is_some()))
    }

    /// `status` and `available` for the public availability endpoint.
    pub async fn availability(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<(CampaignStatus, u64)>, EngineError> {
        let found = self
            .retrying(id, Option::is_none, || self.availability_here(id, now))
            .await?;
        if found.is_none() && self.archived(id).is_some() {
            return Ok(Some((CampaignStatus::Ended, 0)));
        }
        Ok(found)
    }

    /// Ends the campaign at `now` unless it ended earlier (a campaign not started yet starts
    /// and ends at `now`): attempts from then on are refused `ended`; live holds end as they
    /// would have. Idempotent. The database first (it is the source a rebuild reads), then
    /// the backend, every shard. Its state after, `None` when unknown.
    pub async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        self.decidable()?;
        if let Some(recovery) = &self.recovery {
            let known = recovery
                .store()
                .end_campaign(id, now)
                .await
                .map_err(|error| EngineError::Recovering(error.to_string()))?;
            if !known {
                return Ok(None);
            }
        }
        match self
            .retrying(id, Option::is_none, || self.end_here(id, now))
            .await?
        {
            Some(state) => Ok(Some(state)),
            // Archived: it ended long ago; the database answers.
            None => self.campaign(id).await,
        }
    }

    /// Ends every shard; each shard's state as its end left it, summed (not read again).
    async fn end_here(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        let decisions = self.backing.decisions();
        let n = self.shards_of(id).await?.unwrap_or(1);
        let mut ended = Vec::with_capacity(usize::from(n));
        for k in 0..n {
            match decisions.end_campaign(&id.shard(k), now).await? {
                Some(state) => ended.push(Some(state)),
                None => return Ok(None),
            }
        }
        let mut ended = ended.into_iter();
        let Some(Some(first)) = ended.next() else {
            return Ok(None);
        };
        let state = crate::engine::shards::summed(id, first, ended);
        if let Some(state) = &state {
            self.remember_config(&state.campaign);
        }
        Ok(state)
    }

    /// Removes everything the engine holds of a campaign the database archived (ended, no
    /// live holds, every event persisted), shard 0 last: until it goes, the shard count stays
    /// readable for a retry. Requests about it are answered from the database from then on.
    pub async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        let n = self.shards_of(id).await?.unwrap_or(1);
        for k in (0..n).rev() {
            self.backing.backend().forget_campaign(&id.shard(k)).await?;
        }
        self.shards.forget(id);
        if let Some(gate) = &self.gate {
            gate.forget(id);
        }
        Ok(())
    }
}
