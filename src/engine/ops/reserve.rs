//! Reserving: one attempt, to at most one new reservation.

use crate::domain::{Refusal, Reservation, ReservationStatus};
use crate::engine::shards::{key_shard, REFILL_FOR};
use crate::engine::{Claim, Engine, EngineError, ReserveOutcome, ReserveRequest};
use std::time::{Duration, Instant};
use tracing::Instrument;

impl Engine {
    /// Never creates a reservation that would oversell or pass the user's limit; one
    /// idempotency key yields at most one reservation. A replay answers the first outcome,
    /// read back from the database once the backend forgot it; a campaign that left the
    /// backend (archived) answers `ended`.
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        self.decidable()?;
        let missing = |o: &ReserveOutcome| *o == ReserveOutcome::Refused(Refusal::CampaignNotFound);
        let mut outcome = self
            .retrying(&request.campaign_id, missing, || self.reserve_here(request))
            .await?;
        if let ReserveOutcome::ReplayOf(id) = &outcome {
            // The first outcome left the backend after the retention: read it back.
            let first = self.stored(id).await?.ok_or_else(|| {
                EngineError::Corrupt(format!("{id} is in an idempotency record but nowhere"))
            })?;
            outcome = ReserveOutcome::Replayed(Reservation {
                status: ReservationStatus::Held,
                group_id: None,
                ..first
            });
        }
        if let ReserveOutcome::Refused(refusal) = outcome {
            let campaign = &request.campaign_id;
            let missing = Refusal::CampaignNotFound;
            outcome = ReserveOutcome::Refused(self.or_archived(
                campaign,
                refusal,
                missing,
                Refusal::Ended,
            ));
        }
        // A replay waits too: its original may not be committed yet. (The events are its
        // shard's, for a sharded campaign.)
        match &outcome {
            ReserveOutcome::Reserved { reservation, .. }
            | ReserveOutcome::Replayed(reservation) => {
                self.committed(&reservation.id.shard_campaign(), true)
                    .await?
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// The gate, else the backend (the user's shard, refilled from the others when dry);
    /// the gate arms when the campaign sold out.
    async fn reserve_here(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        if let Some(answer) = self.gate_answer(request).await? {
            return Ok(answer);
        }
        let outcome = self
            .reserve_in_shards(request)
            .instrument(tracing::debug_span!("engine.reserve", campaign = %request.campaign_id))
            .await?;
        self.gate_saw(request, &outcome);
        Ok(outcome)
    }

    /// A sharded campaign: a store's key is claimed in its shard first (one key, one body,
    /// across shards); the attempt goes to the user's shard; a dry shard is refilled.
    async fn reserve_in_shards(
        &self,
        request: &ReserveRequest,
    ) -> Result<ReserveOutcome, EngineError> {
        let decisions = self.backing.decisions();
        let n = match self.shards_of(&request.campaign_id).await? {
            Some(n) if n > 1 => n,
            Some(_) => return decisions.reserve(request).await,
            None => return Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound)),
        };
        if request.idempotency_key.is_store() {
            let shard = request
                .campaign_id
                .shard(key_shard(&request.idempotency_key, n));
            let claim = self
                .backing
                .shard_ops()
                .claim_key(&shard, &request.idempotency_key, &request.fingerprint)
                .await?;
            match claim {
                Claim::Mine => {}
                Claim::Other => return Ok(ReserveOutcome::KeyReused),
                Claim::Missing => return Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound)),
            }
        }
        let routed = Self::routed(request, n);
        let to = routed.campaign_id.shard_index();
        let target = u64::from(request.quantity);
        let outcome = decisions.reserve(&routed).await?;
        if outcome != ReserveOutcome::Refused(Refusal::SoldOut) {
            return Ok(outcome);
        }
        // Short of units: one gatherer of this campaign at a time (on this instance) moves
        // units into its shard and asks again before the next moves any; sold out only once
        // the campaign as a whole has too few. Gatherers on other instances can still take
        // what this one moved: it gathers again, for at most [`REFILL_FOR`].
        let turn = self.gathering(&request.campaign_id);
        let _one_at_a_time = turn.lock().await;
        let deadline = Instant::now() + REFILL_FOR;
        loop {
            let outcome = decisions.reserve(&routed).await?;
            if outcome != ReserveOutcome::Refused(Refusal::SoldOut)
                || !self.refill(&request.campaign_id, n, to, target).await?
            {
                return Ok(outcome);
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Overloaded);
            }
            // What it moved went to another instance's gatherer, or is still moving.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
