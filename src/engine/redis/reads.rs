//! [`Reads`] on Redis: one campaign's (or shard's) state, a reservation, a group, and the
//! sold-out gate's two reads.

use super::codec::{campaign_state, reservation_from, CAMPAIGN_FIELDS};
use super::{Connection, RedisEngine};
use crate::domain::{
    CampaignId, CampaignState, Group, GroupId, GroupMember, GroupStatus, Millis, Reservation,
    ReservationId, ReservationStatus, UserId,
};
use crate::engine::{EngineError, Probe, Reads, RecordsSince};
use async_trait::async_trait;
use std::collections::HashMap;

#[async_trait]
impl<C: Connection> Reads for RedisEngine<C> {
    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        // Named fields, not HGETALL: the hash also holds a field per user and per
        // idempotency record.
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys(id).campaign)
            .arg(&CAMPAIGN_FIELDS[..])
            .query_async(&mut self.connection())
            .await?;
        let hash: HashMap<String, String> = CAMPAIGN_FIELDS
            .iter()
            .zip(values)
            .filter_map(|(field, value)| Some(((*field).to_owned(), value?)))
            .collect();
        if hash.is_empty() {
            return Ok(None);
        }
        campaign_state(id, &hash).map(Some)
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        self.listed_campaigns().await
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        let campaign = id.shard_campaign();
        let fields: Vec<String> = self
            .scripts
            .read_reservation
            .key(self.keys(&campaign).campaign)
            .key(self.keys(&campaign).reservations())
            .arg(id.as_str())
            .invoke_async(&mut self.timed("read_reservation"))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        reservation_from(id, &campaign, &fields).map(Some)
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        let campaign = id.shard_campaign();
        let reply: Vec<String> = self
            .scripts
            .read_group
            .key(self.keys(&campaign).campaign)
            .arg(id.as_str())
            .invoke_async(&mut self.timed("read_group"))
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let corrupt = || EngineError::Corrupt(format!("group {id}: {reply:?}"));
        let [leader, size, status, created, expires, rest @ ..] = reply.as_slice() else {
            return Err(corrupt());
        };
        let mut members = Vec::new();
        for member in rest.chunks(3) {
            let [user, rid, status] = member else {
                return Err(corrupt());
            };
            members.push(GroupMember {
                user_id: UserId::parse(user).map_err(|_| corrupt())?,
                reservation_id: ReservationId::parse(rid).map_err(|_| corrupt())?,
                status: ReservationStatus::parse(status).ok_or_else(corrupt)?,
            });
        }
        Ok(Some(Group {
            id: id.clone(),
            campaign_id: campaign,
            leader_user_id: UserId::parse(leader).map_err(|_| corrupt())?,
            size: size.parse().map_err(|_| corrupt())?,
            status: GroupStatus::parse(status).ok_or_else(corrupt)?,
            created_at: Millis(created.parse().map_err(|_| corrupt())?),
            expires_at: Millis(expires.parse().map_err(|_| corrupt())?),
            members,
        }))
    }

    async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError> {
        let keys = self.keys(campaign);
        let reply: Vec<String> = self
            .scripts
            .sold_out_records
            .key(&keys.campaign)
            .key(keys.records())
            .arg(from)
            .arg(limit.max(1))
            .invoke_async(&mut self.timed("sold_out_records"))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("sold-out records of {campaign}"));
        match reply.as_slice() {
            [sold_out, total, records @ ..] if sold_out == "0" => {
                let mut since = RecordsSince {
                    total: total.parse().map_err(|_| corrupt())?,
                    records: Vec::with_capacity(records.len()),
                };
                for record in records {
                    let (key, value) = record
                        .split_once(super::codec::SEPARATOR)
                        .ok_or_else(corrupt)?;
                    let (id, fingerprint) = value.split_once('|').ok_or_else(corrupt)?;
                    let id = ReservationId::parse(id).map_err(|_| corrupt())?;
                    since
                        .records
                        .push((key.to_owned(), id, fingerprint.to_owned()));
                }
                Ok(Some(since))
            }
            _ => Ok(None),
        }
    }

    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError> {
        let keys = self.keys(campaign);
        let (available, records): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&keys.campaign)
            .arg(&["available", "records"])
            .query_async(&mut self.connection())
            .await?;
        Ok(available.map(|available| Probe {
            available,
            idempotency_records: records.unwrap_or_default(),
        }))
    }
}
