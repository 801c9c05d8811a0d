//! The event log on Redis streams: one stream per campaign (same slot as the campaign), read
//! by consumer groups with `XREADGROUP`, reclaimed with `XAUTOCLAIM`, acknowledged with `XACK`.

use super::codec::events_from;
use super::scripts::Timed;
use super::{Connection, RedisEngine};
use crate::domain::{CampaignId, Event, Millis, StreamPosition};
use crate::engine::work::WorkIndex;
use crate::engine::{Backlog, Consumer, EngineError, EventBatch, EventLog};
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

/// Parses stream entries `[[id, ["e", events]], ...]` into events (an entry carries one
/// event or several); entries deleted meanwhile come back as nil and are skipped.
fn entries(campaign: &CampaignId, list: &redis::Value) -> Result<Vec<Event>, EngineError> {
    let redis::Value::Array(list) = list else {
        return Ok(Vec::new());
    };
    let mut events = Vec::with_capacity(list.len());
    for entry in list {
        let redis::Value::Array(entry) = entry else {
            continue;
        };
        let [id, fields] = entry.as_slice() else {
            continue;
        };
        let redis::Value::Array(fields) = fields else {
            continue;
        };
        let (redis::Value::BulkString(id), [_, redis::Value::BulkString(event)]) =
            (id, fields.as_slice())
        else {
            return Err(EngineError::Corrupt(format!(
                "stream entry of {campaign}: {entry:?}"
            )));
        };
        let text = |bytes| {
            std::str::from_utf8(bytes)
                .map_err(|_| EngineError::Corrupt(format!("stream entry of {campaign}: not UTF-8")))
        };
        events.extend(events_from(campaign, text(id)?, text(event)?)?);
    }
    Ok(events)
}

#[async_trait]
impl<C: Connection> EventLog for RedisEngine<C> {
    async fn read(
        &self,
        consumer: &Consumer,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<EventBatch, EngineError> {
        // Only the active campaigns (`engine::work`): every campaign with events to persist
        // is on that list, whatever the catalogue's size.
        let active = self.active().await?;
        let campaigns: Vec<CampaignId> = active.campaigns().cloned().collect();
        if campaigns.is_empty() || max == 0 {
            return Ok(EventBatch::default());
        }
        let reclaim = {
            let mut last = self.last_reclaim.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= reclaim_after / 2);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        // Never past `max` (unless there are more campaigns than that: one each).
        let per_stream = (max / campaigns.len()).max(1);
        let reclaim_ms = if reclaim {
            (reclaim_after.as_millis() as u64).max(1)
        } else {
            0
        };
        // One script per campaign, all at once: each reads the campaign's epoch atomically
        // with its events (one slot each, so a cluster routes each to its node).
        let reads = campaigns.iter().map(|campaign| {
            let keys = self.keys(campaign);
            let mut connection = Timed {
                connection: self.background(),
                script: "read_events",
            };
            async move {
                let reply: redis::Value = self
                    .scripts
                    .read_events
                    .key(&keys.campaign)
                    .key(keys.events())
                    .arg(&consumer.group)
                    .arg(&consumer.name)
                    .arg(per_stream)
                    .arg(reclaim_ms)
                    .invoke_async(&mut connection)
                    .await?;
                Ok::<_, EngineError>((campaign, reply))
            }
        });
        let mut batch = EventBatch::default();
        let mut quiet = Vec::new();
        for (campaign, reply) in futures::future::try_join_all(reads).await? {
            let parts = match &reply {
                redis::Value::Array(parts) => parts.as_slice(),
                _ => &[],
            };
            let [epoch, claimed, read, available] = parts else {
                return Err(EngineError::Corrupt(format!(
                    "read_events of {campaign} answered {reply:?}"
                )));
            };
            let before = batch.events.len();
            batch.events.extend(entries(campaign, claimed)?);
            batch.events.extend(entries(campaign, read)?);
            if batch.events.len() > before {
                let epoch: Option<String> = redis::from_redis_value_ref(epoch)?;
                batch
                    .epochs
                    .set(campaign, epoch.as_deref().unwrap_or_default());
                let available: Option<u64> = redis::from_redis_value_ref(available)?;
                let last = batch.events[before..].iter().map(|e| e.position).max();
                if let (Some(available), Some(last)) = (available, last) {
                    batch.available.insert(campaign.clone(), (available, last));
                }
            } else {
                quiet.push(campaign.clone());
            }
        }
        // Campaigns whose lease ended and that had nothing new leave the active list once
        // their streams are empty (what was just read is not acknowledged yet, so a campaign
        // in this batch stays).
        let idle = crate::engine::work::Active {
            now: active.now,
            born: active.born.clone(),
            leases: active
                .expired()
                .filter(|(campaign, _)| quiet.contains(campaign))
                .cloned()
                .collect(),
        };
        if !idle.leases.is_empty() {
            crate::engine::work::retire_idle(self, &idle, crate::domain::Millis::now()).await?;
        }
        Ok(batch)
    }

    async fn backlog(&self, group: &str) -> Result<Backlog, EngineError> {
        // Inactive campaigns have empty streams (`engine::work`).
        let campaigns: Vec<CampaignId> = self.active().await?.campaigns().cloned().collect();
        // A pipeline per campaign (one slot each), all at once.
        let samples = campaigns.iter().map(|campaign| {
            let stream = self.keys(campaign).events();
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN").arg(&stream);
            pipe.cmd("XPENDING").arg(&stream).arg(group);
            pipe.cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
            let mut connection = self.background();
            async move { pipe.query_async::<Vec<redis::Value>>(&mut connection).await }
        });
        let replies = futures::future::try_join_all(samples).await?;
        let mut backlog = Backlog::default();
        for triple in &replies {
            if let [length, pending, first] = triple.as_slice() {
                backlog.events += redis::from_redis_value_ref::<u64>(length).unwrap_or(0);
                // XPENDING summary: [count, smallest id, greatest id, consumers]
                if let redis::Value::Array(summary) = pending {
                    if let Some(count) = summary.first() {
                        backlog.pending += redis::from_redis_value_ref::<u64>(count).unwrap_or(0);
                    }
                }
                // XRANGE: [[id, fields]]; the id's first part is its time in ms.
                let first_id = match first {
                    redis::Value::Array(entries) => match entries.first() {
                        Some(redis::Value::Array(entry)) => entry
                            .first()
                            .and_then(|id| redis::from_redis_value_ref::<String>(id).ok()),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(position) = first_id.as_deref().and_then(StreamPosition::parse) {
                    let at = Millis(position.ms);
                    backlog.oldest = Some(backlog.oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok(backlog)
    }

    async fn ack(&self, group: &str, events: &[Event]) -> Result<(), EngineError> {
        // Per entry, not per event: the events of one entry are read (and so written) together.
        let mut by_campaign: HashMap<&CampaignId, Vec<String>> = HashMap::new();
        for event in events.iter().filter(|e| e.position.index == 0) {
            by_campaign
                .entry(&event.campaign_id)
                .or_default()
                .push(event.position.entry());
        }
        // A pipeline per campaign (one slot each), all at once.
        let acks = by_campaign.iter().map(|(campaign, ids)| {
            let stream = self.keys(campaign).events();
            let mut pipe = redis::pipe();
            pipe.cmd("XACK").arg(&stream).arg(group).arg(ids).ignore();
            // Acknowledged entries are trimmed so streams stay bounded: at once while one
            // consumer group reads the streams (today's case). With more groups an entry
            // stays until the trimming consumer knows every group has it.
            if self.consumer_groups.len() == 1 {
                pipe.cmd("XDEL").arg(&stream).arg(ids).ignore();
            }
            let mut connection = self.background();
            async move { pipe.query_async::<()>(&mut connection).await }
        });
        futures::future::try_join_all(acks).await?;
        Ok(())
    }

    async fn acknowledged(&self, group: &str, campaign: &CampaignId) -> Result<(), EngineError> {
        let stream = self.keys(campaign).events();
        // The newest entry now; everything up to it must leave the group's pending list
        // after the group has been handed it.
        let newest: redis::Value = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.background())
            .await?;
        let Some(target) = first_entry_id(&newest) else {
            return Ok(());
        };
        loop {
            let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut self.background())
                .await?;
            let delivered = groups
                .iter()
                .find(|g| {
                    g.get("name")
                        .and_then(|n| redis::from_redis_value_ref::<String>(n).ok())
                        .as_deref()
                        == Some(group)
                })
                .and_then(|g| g.get("last-delivered-id"))
                .and_then(|id| redis::from_redis_value_ref::<String>(id).ok())
                .and_then(|id| StreamPosition::parse(&id));
            if delivered.is_some_and(|d| d >= target) {
                let pending: redis::Value = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(group)
                    .arg("-")
                    .arg(target.to_string())
                    .arg(1)
                    .query_async(&mut self.background())
                    .await?;
                if matches!(&pending, redis::Value::Array(entries) if entries.is_empty()) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The id of the first entry of an `XRANGE`-shaped reply.
fn first_entry_id(reply: &redis::Value) -> Option<StreamPosition> {
    let redis::Value::Array(entries) = reply else {
        return None;
    };
    let Some(redis::Value::Array(entry)) = entries.first() else {
        return None;
    };
    let id: String = redis::from_redis_value_ref(entry.first()?).ok()?;
    StreamPosition::parse(&id)
}
