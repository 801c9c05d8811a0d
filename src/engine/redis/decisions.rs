//! [`Decisions`] on Redis: each decision's keys and arguments go in, its script runs atomically,
//! its answer comes back as a domain value. The rules themselves live in `src/engine/redis/scripts/`.

use super::codec::{campaign_fields, reservation_from};
use super::scripts::Timed;
use super::{Connection, RedisEngine};
use crate::domain::{
    CampaignId, CampaignState, GroupId, Millis, Refusal, Reservation, ReservationId,
    ReservationStatus,
};
use crate::engine::{
    CampaignSnapshot, CancelScope, Decisions, EngineError, Extension, GroupOutcome, GroupRequest,
    Reads, ReserveOutcome, ReserveRequest, StockOutcome, StockRequest, Transition,
};
use async_trait::async_trait;
use redis::Script;

impl<C: Connection> RedisEngine<C> {
    /// Strict durability with replicas: an answer that reports a change (or replays one)
    /// waits until a replica has it.
    async fn replicated_if(&self, answer: Option<&String>) -> Result<(), EngineError> {
        let changed = matches!(
            answer.map(String::as_str),
            Some("reserved" | "replay" | "replay_gone" | "done" | "unchanged" | "adjusted")
        );
        if changed {
            self.replicated().await?;
        }
        Ok(())
    }

    /// Decides attempts on one campaign with one call of `reserve.lua`, in the order given,
    /// each as a lone attempt would be decided (the batcher's call; public so tests can
    /// build batches with chosen interleavings).
    pub async fn reserve_batch(
        &self,
        requests: &[ReserveRequest],
    ) -> Result<Vec<ReserveOutcome>, EngineError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        if requests.iter().any(|r| r.campaign_id != first.campaign_id) {
            return Err(EngineError::Corrupt(
                "a reserve batch spans campaigns".into(),
            ));
        }
        self.leased(&first.campaign_id).await?;
        let keys = self.keys(&first.campaign_id);
        let mut invocation = self.scripts.reserve.prepare_invoke();
        invocation
            .key(&keys.campaign)
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.records())
            .key(keys.reservations())
            .arg(self.user_rate_per_second);
        for request in requests {
            invocation
                .arg(request.now.0)
                .arg(request.user_id.as_str())
                .arg(request.quantity.get())
                .arg(request.idempotency_key.as_str())
                .arg(&request.fingerprint)
                .arg(request.reservation_id.as_str());
        }
        let replies: Vec<Vec<String>> = invocation.invoke_async(&mut self.timed("reserve")).await?;
        if replies.len() != requests.len() {
            return Err(EngineError::Corrupt(format!(
                "reserve answered {} times for {} attempts",
                replies.len(),
                requests.len()
            )));
        }
        if let Some(changed) = replies.iter().find(|r| {
            matches!(
                r.first().map(String::as_str),
                Some("reserved" | "replay" | "replay_gone")
            )
        }) {
            self.replicated_if(changed.first()).await?;
        }
        requests
            .iter()
            .zip(&replies)
            .map(|(request, reply)| reserve_outcome(request, reply))
            .collect()
    }

    /// Runs `open_group.lua` or `join_group.lua` (same keys and arguments).
    async fn group_decision(
        &self,
        script: &Script,
        name: &'static str,
        request: &GroupRequest,
    ) -> Result<GroupOutcome, EngineError> {
        self.leased(&request.campaign_id).await?;
        let keys = self.keys(&request.campaign_id);
        let reply: Vec<String> = script
            .key(&keys.campaign)
            .key(keys.group_idempotency())
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.fresh(&request.reservation_id))
            .key(keys.group_expiries())
            .arg(request.now.0)
            .arg(request.user_id.as_str())
            .arg(request.idempotency_key.as_str())
            .arg(&request.fingerprint)
            .arg(request.group_id.as_str())
            .arg(request.reservation_id.as_str())
            .invoke_async(&mut self.timed(name))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("group decision answered {reply:?}"));
        let named = reply.get(1).and_then(|raw| GroupId::parse(raw).ok());
        let group = || async {
            match &named {
                Some(id) => self
                    .group(id)
                    .await?
                    .ok_or_else(|| EngineError::Corrupt(format!("{id} vanished"))),
                None => Err(EngineError::Corrupt("group decision named no group".into())),
            }
        };
        self.replicated_if(reply.first()).await?;
        match reply.first().map(String::as_str) {
            Some("done") => Ok(GroupOutcome::Done(group().await?)),
            Some("replay") => Ok(GroupOutcome::Replayed(group().await?)),
            Some("key_reused") => Ok(GroupOutcome::KeyReused),
            Some(code) => Refusal::from_code(code)
                .map(GroupOutcome::Refused)
                .ok_or_else(corrupt),
            None => Err(corrupt()),
        }
    }

    async fn transition(
        &self,
        script: &Script,
        name: &'static str,
        id: &ReservationId,
        now: Millis,
        scope: Option<CancelScope>,
    ) -> Result<Transition, EngineError> {
        let campaign = id.shard_campaign();
        self.leased(&campaign).await?;
        let keys = self.keys(&campaign);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.campaign)
            .key(keys.reservations())
            .key(keys.events())
            .key(keys.group_expiries())
            .arg(now.0)
            .arg(id.as_str());
        if let Some(scope) = scope {
            invocation.arg(match scope {
                CancelScope::HeldOnly => "held",
                CancelScope::HeldOrConfirmed => "any",
            });
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.timed(name)).await?;
        let outcome = reply.first().map(String::as_str).unwrap_or_default();
        self.replicated_if(reply.first()).await?;
        if outcome == "not_found" {
            return Ok(Transition::NotFound);
        }
        let reservation = reservation_from(id, &campaign, reply.get(1..).unwrap_or_default())?;
        match outcome {
            "done" => Ok(Transition::Done(reservation)),
            "unchanged" => Ok(Transition::Unchanged(reservation)),
            "not_held" => Ok(Transition::NotHeld(reservation)),
            other => Err(EngineError::Corrupt(format!(
                "transition answered {other:?}"
            ))),
        }
    }
}

#[async_trait]
impl<C: Connection> Decisions for RedisEngine<C> {
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError> {
        let CampaignSnapshot {
            campaign,
            reservations,
            groups,
            epoch,
            total,
        } = snapshot;
        // A new campaign brings no events and nothing due: the work index learns of it with
        // its first change. A rebuilt one may bring holds and groups that fall due.
        if !reservations.is_empty() || !groups.is_empty() {
            self.leased(&campaign.id).await?;
        }
        let keys = self.keys(&campaign.id);
        let mut config = campaign_fields(campaign);
        config.push(("epoch", epoch));
        if let Some(total) = total {
            config.push(("total", total.to_string()));
        }
        let mut invocation = self.scripts.load_campaign.prepare_invoke();
        invocation
            .key(&keys.campaign)
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.group_idempotency())
            .key(keys.group_expiries())
            .key(keys.records())
            .arg(config.len() * 2)
            .arg(reservations.len())
            .arg(self.consumer_groups.len());
        for group in self.consumer_groups.iter() {
            invocation.arg(group);
        }
        for (field, value) in config {
            invocation.arg(field).arg(value);
        }
        for restored in reservations {
            let r = &restored.reservation;
            invocation
                .arg(r.id.as_str())
                .arg(r.user_id.as_str())
                .arg(r.quantity.get())
                .arg(r.status.as_str())
                .arg(r.created_at.0)
                .arg(r.expires_at.0)
                .arg(r.group_id.as_ref().map_or("", |g| g.as_str()))
                .arg(restored.idempotency_key.as_ref().map_or("", |k| k.as_str()))
                .arg(restored.fingerprint.clone().unwrap_or_default());
        }
        for group in groups {
            invocation
                .arg(group.id.as_str())
                .arg(group.leader_user_id.as_str())
                .arg(group.size)
                .arg(group.status.as_str())
                .arg(group.created_at.0)
                .arg(group.expires_at.0);
        }
        let loaded: i64 = invocation
            .invoke_async(&mut Timed {
                connection: self.background(),
                script: "load_campaign",
            })
            .await?;
        // Outside the script on purpose: the index spans campaigns (another slot). A crash in
        // between leaves the campaign out of the index until the next recovery pass lists it
        // again (`recovery::restore_all`, every reconcile interval); meanwhile confirm and
        // cancel still expire its holds on the spot.
        self.index(&campaign.id).await?;
        Ok(loaded == 1)
    }

    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        self.leased(id).await?;
        let found: i64 = self
            .scripts
            .end_campaign
            .key(self.keys(id).campaign)
            .arg(now.0)
            .invoke_async(&mut self.timed("end_campaign"))
            .await?;
        if found == 0 {
            return Ok(None);
        }
        self.replicated().await?;
        self.campaign(id).await
    }

    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        self.leased(&request.campaign_id).await?;
        let keys = self.keys(&request.campaign_id);
        let reply: Vec<String> = self
            .scripts
            .adjust_stock
            .key(&keys.campaign)
            .key(keys.events())
            .arg(request.delta.get())
            .arg(request.idempotency_key.as_str())
            .invoke_async(&mut self.timed("adjust_stock"))
            .await?;
        let number = |i: usize| -> Result<u64, EngineError> {
            reply
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| EngineError::Corrupt(format!("adjust_stock answered {reply:?}")))
        };
        self.replicated_if(reply.first()).await?;
        match reply.first().map(String::as_str) {
            Some("adjusted") => Ok(StockOutcome::Adjusted {
                stock: number(1)?,
                available: number(2)?,
            }),
            Some("replay") => Ok(StockOutcome::Replayed {
                stock: number(1)?,
                available: number(2)?,
            }),
            Some("key_reused") => Ok(StockOutcome::KeyReused),
            Some("insufficient") => Ok(StockOutcome::Insufficient {
                available: number(1)?,
            }),
            Some("not_found") => Ok(StockOutcome::NotFound),
            _ => Err(EngineError::Corrupt(format!(
                "adjust_stock answered {reply:?}"
            ))),
        }
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        self.batched(&request.campaign_id, request).await
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        self.transition(&self.scripts.confirm, "confirm", id, now, None)
            .await
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.transition(&self.scripts.cancel, "cancel", id, now, Some(scope))
            .await
    }

    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        let campaign = id.shard_campaign();
        self.leased(&campaign).await?;
        let keys = self.keys(&campaign);
        let reply: Vec<String> = self
            .scripts
            .extend
            .key(&keys.campaign)
            .key(keys.reservations())
            .key(keys.events())
            .key(keys.group_expiries())
            .arg(now.0)
            .arg(id.as_str())
            .arg(seconds)
            .invoke_async(&mut self.timed("extend"))
            .await?;
        let outcome = reply.first().map(String::as_str).unwrap_or_default();
        if outcome == "not_found" {
            return Ok(Extension::NotFound);
        }
        if outcome == "done" || outcome == "not_held" {
            self.replicated().await?;
        }
        let reservation = reservation_from(id, &campaign, reply.get(1..).unwrap_or_default())?;
        match outcome {
            "done" | "unchanged" => Ok(Extension::Extended(reservation)),
            "not_held" => Ok(Extension::NotHeld(reservation)),
            "exceeded" => Ok(Extension::Exceeded(reservation)),
            other => Err(EngineError::Corrupt(format!("extend answered {other:?}"))),
        }
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        self.leased(campaign).await?;
        let keys = self.keys(campaign);
        let mut expired = 0;
        // The script walks the expiry list's head; ids no longer held leave it without
        // ending anything, so keep walking while whole pages left.
        loop {
            let (ended, walked, forgotten): (u32, u32, u32) = self
                .scripts
                .expire
                .key(&keys.campaign)
                .key(keys.expiries())
                .key(keys.events())
                .key(keys.group_expiries())
                .key(keys.reservations())
                .arg(now.0)
                .arg(limit)
                .arg(self.retention.as_millis() as u64)
                .invoke_async(&mut Timed {
                    connection: self.background(),
                    script: "expire",
                })
                .await?;
            expired += ended;
            // Whole pages walked or forgotten: there may be more of either.
            if (walked < limit && forgotten < limit) || expired >= limit {
                return Ok(expired);
            }
        }
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.group_decision(&self.scripts.open_group, "open_group", request)
            .await
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.group_decision(&self.scripts.join_group, "join_group", request)
            .await
    }
}

/// One attempt's answer from `reserve.lua`, as a domain value.
fn reserve_outcome(
    request: &ReserveRequest,
    reply: &[String],
) -> Result<ReserveOutcome, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("reserve answered {reply:?}"));
    let number = |i: usize| -> Result<i64, EngineError> {
        reply
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(corrupt)
    };
    match reply.first().map(String::as_str) {
        Some("reserved") => Ok(ReserveOutcome::Reserved {
            reservation: Reservation {
                id: request.reservation_id.clone(),
                campaign_id: request.campaign_id.parent(),
                user_id: request.user_id.clone(),
                quantity: request.quantity,
                status: ReservationStatus::Held,
                created_at: Millis(number(1)?),
                expires_at: Millis(number(2)?),
                group_id: None,
            },
            available: u64::try_from(number(3)?).map_err(|_| corrupt())?,
        }),
        Some("replay") => {
            let id = reply
                .get(1)
                .and_then(|raw| ReservationId::parse(raw).ok())
                .ok_or_else(corrupt)?;
            let mut fields: Vec<String> = reply.get(2..).unwrap_or_default().to_vec();
            // The first outcome is the reservation as created: held, outside any group.
            fields.insert(2, "held".into());
            fields.push(String::new());
            Ok(ReserveOutcome::Replayed(reservation_from(
                &id,
                &request.campaign_id,
                &fields,
            )?))
        }
        Some("replay_gone") => reply
            .get(1)
            .and_then(|raw| ReservationId::parse(raw).ok())
            .map(ReserveOutcome::ReplayOf)
            .ok_or_else(corrupt),
        Some("key_reused") => Ok(ReserveOutcome::KeyReused),
        Some("rate_limited") => Ok(ReserveOutcome::RateLimited),
        Some(code) => Refusal::from_code(code)
            .map(ReserveOutcome::Refused)
            .ok_or_else(corrupt),
        None => Err(corrupt()),
    }
}
