//! The work index on Redis (`engine::work`): two sorted sets under one hash tag of their own
//! (`<ns>:{w:<ns>}:active`, `…:due`, and the birth mark `…:born`), each touched by one small
//! script; campaign scripts never touch them, so nothing spans slots on a cluster.

use super::{Connection, RedisEngine};
use crate::domain::{CampaignId, Millis};
use crate::engine::work::{Active, Incarnation, Leases, Leftover, WorkIndex, CLAIM};
use crate::engine::EngineError;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A connection that counts the commands (and pipelines) sent through it: background work's
/// calls, for [`WorkIndex::background_calls`].
#[derive(Clone)]
pub struct Counting<C> {
    pub connection: C,
    pub calls: Arc<AtomicU64>,
}

impl<C: redis::aio::ConnectionLike + Send> redis::aio::ConnectionLike for Counting<C> {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.connection.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.connection.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

/// The index's keys: one hash tag, so its scripts touch one slot.
pub struct WorkKeys {
    pub active: String,
    pub due: String,
    pub born: String,
    pub filed: String,
}

impl WorkKeys {
    pub fn of(namespace: &str) -> Self {
        let base = format!("{namespace}:{{w:{namespace}}}");
        WorkKeys {
            active: format!("{base}:active"),
            due: format!("{base}:due"),
            born: format!("{base}:born"),
            filed: format!("{base}:filed"),
        }
    }
}

fn millis(due: Option<Millis>) -> String {
    due.map(|due| due.0.to_string()).unwrap_or_default()
}

#[async_trait]
impl<C: Connection> WorkIndex for RedisEngine<C> {
    async fn announce(&self, campaign: &CampaignId) -> Result<(), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let _: i64 = self
            .scripts
            .work_announce
            .key(&keys.active)
            .arg(campaign.as_str())
            .arg(self.leases.lease.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }

    async fn active(&self) -> Result<Active, EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let reply: Vec<String> = self
            .scripts
            .work_active
            .key(&keys.active)
            .key(&keys.born)
            .arg(format!("born-{}", ulid::Ulid::new()))
            .invoke_async(&mut self.background())
            .await?;
        let corrupt = || EngineError::Corrupt(format!("work_active answered {reply:?}"));
        let [now, born, pairs @ ..] = reply.as_slice() else {
            return Err(corrupt());
        };
        let mut active = Active {
            now: now.parse().map_err(|_| corrupt())?,
            born: born.clone(),
            leases: Vec::with_capacity(pairs.len() / 2),
        };
        for pair in pairs.chunks(2) {
            let [campaign, ends] = pair else {
                return Err(corrupt());
            };
            let Ok(campaign) = CampaignId::parse_shard(campaign) else {
                continue;
            };
            let ends: f64 = ends.parse().map_err(|_| corrupt())?;
            active.leases.push((campaign, ends as i64));
        }
        Ok(active)
    }

    async fn leftover(&self, campaign: &CampaignId, now: Millis) -> Result<Leftover, EngineError> {
        let keys = self.keys(campaign);
        let (exists, events, due): (i64, u64, i64) = self
            .scripts
            .leftover
            .key(&keys.campaign)
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.group_expiries())
            .arg(now.0)
            .arg(self.retention.as_millis() as u64)
            .invoke_async(&mut self.background())
            .await?;
        Ok(Leftover {
            exists: exists == 1,
            events,
            next_due: (due >= 0).then_some(Millis(due)),
        })
    }

    async fn retire(
        &self,
        campaign: &CampaignId,
        lease_end: i64,
        next_due: Option<Millis>,
    ) -> Result<bool, EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let retired: i64 = self
            .scripts
            .work_retire
            .key(&keys.active)
            .key(&keys.due)
            .arg(campaign.as_str())
            .arg(lease_end)
            .arg(millis(next_due))
            .invoke_async(&mut self.background())
            .await?;
        Ok(retired == 1)
    }

    async fn claim_due(
        &self,
        now: Millis,
        max: usize,
    ) -> Result<(i64, Vec<CampaignId>), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let reply: Vec<String> = self
            .scripts
            .work_claim
            .key(&keys.active)
            .key(&keys.due)
            .arg(now.0)
            .arg(CLAIM.as_millis() as u64)
            .arg(max.max(1))
            .invoke_async(&mut self.background())
            .await?;
        let Some((until, campaigns)) = reply.split_first() else {
            return Err(EngineError::Corrupt("work_claim answered nothing".into()));
        };
        let until = until
            .parse()
            .map_err(|_| EngineError::Corrupt(format!("work_claim answered {reply:?}")))?;
        let campaigns = campaigns
            .iter()
            .filter_map(|c| CampaignId::parse_shard(c).ok())
            .collect();
        Ok((until, campaigns))
    }

    async fn file_due(
        &self,
        campaign: &CampaignId,
        claimed_until: i64,
        now: Millis,
        next_due: Option<Millis>,
    ) -> Result<(), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let _: i64 = self
            .scripts
            .work_settle
            .key(&keys.active)
            .key(&keys.due)
            .arg(campaign.as_str())
            .arg(claimed_until)
            .arg(now.0)
            .arg(millis(next_due))
            .invoke_async(&mut self.background())
            .await?;
        Ok(())
    }

    async fn file(&self, campaign: &CampaignId, due: Millis) -> Result<(), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let _: i64 = redis::cmd("ZADD")
            .arg(&keys.due)
            .arg("LT")
            .arg(due.0)
            .arg(campaign.as_str())
            .query_async(&mut self.background())
            .await?;
        Ok(())
    }

    async fn relist(&self, campaign: &CampaignId) -> Result<(), EngineError> {
        self.index(campaign).await
    }

    fn background_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn leases(&self) -> &Leases {
        &self.leases
    }
}

#[async_trait]
impl<C: Connection> Incarnation for RedisEngine<C> {
    /// The index's birth mark and every master's `run_id` (a restart changes it).
    async fn incarnation(&self) -> Result<String, EngineError> {
        let mut ids = vec![self.active().await?.born];
        // On a cluster redis-rs sends INFO to every master and answers a map node → text.
        let reply: redis::Value = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.background())
            .await?;
        let answers: Vec<String> = match &reply {
            redis::Value::Map(answers) => answers
                .iter()
                .filter_map(|(_, answer)| redis::from_redis_value_ref(answer).ok())
                .collect(),
            single => vec![redis::from_redis_value_ref(single)?],
        };
        for answer in answers {
            if let Some(id) = answer
                .lines()
                .find_map(|line| line.trim().strip_prefix("run_id:"))
            {
                ids.push(id.to_owned());
            }
        }
        ids[1..].sort();
        Ok(ids.join(","))
    }

    async fn filed(&self) -> Result<Option<String>, EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        Ok(redis::cmd("GET")
            .arg(&keys.filed)
            .query_async(&mut self.background())
            .await?)
    }

    async fn set_filed(&self, incarnation: &str) -> Result<(), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let _: () = redis::cmd("SET")
            .arg(&keys.filed)
            .arg(incarnation)
            .query_async(&mut self.background())
            .await?;
        Ok(())
    }
}

impl<C: Connection> RedisEngine<C> {
    /// Before a change of `campaign`: a lease on the active list (one call per campaign per
    /// few seconds; see `engine::work`).
    pub(super) async fn leased(&self, campaign: &CampaignId) -> Result<(), EngineError> {
        self.leases.ensure(self, campaign, self.cluster).await
    }

    /// Takes an archived campaign off both lists.
    pub(super) async fn unlist_work(&self, campaign: &CampaignId) -> Result<(), EngineError> {
        let keys = WorkKeys::of(&self.namespace);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(&keys.active)
            .arg(campaign.as_str())
            .ignore();
        pipe.cmd("ZREM")
            .arg(&keys.due)
            .arg(campaign.as_str())
            .ignore();
        pipe.query_async::<()>(&mut self.background()).await?;
        self.leases.forget(campaign);
        Ok(())
    }
}
