//! [`ShardOps`](crate::engine::ShardOps) on Redis: moving units between shards, and a
//! store key's claim in its shard (batched per shard like reserves).

use super::*;

#[async_trait]
impl<C: Connection> crate::engine::backend::ShardOps for RedisEngine<C> {
    async fn shard_state(
        &self,
        shard: &CampaignId,
    ) -> Result<Option<crate::engine::backend::ShardState>, EngineError> {
        let keys = self.keys(shard);
        let reply: Vec<String> = self
            .scripts
            .shard_state
            .key(&keys.campaign)
            .invoke_async(&mut self.timed("shard_state"))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("shard state of {shard}: {reply:?}"));
        let number = |raw: &String| raw.parse::<u64>().map_err(|_| corrupt());
        match reply.as_slice() {
            [] => Ok(None),
            [stock, available, outgoing, version, total, records] => {
                Ok(Some(crate::engine::backend::ShardState {
                    stock: number(stock)?,
                    available: number(available)?,
                    outgoing: number(outgoing)?,
                    version: number(version)?,
                    total: match total.as_str() {
                        "" => None,
                        raw => Some(raw.parse().map_err(|_| corrupt())?),
                    },
                    records: number(records)?,
                }))
            }
            _ => Err(corrupt()),
        }
    }

    async fn take_units(
        &self,
        shard: &CampaignId,
        transfer: &crate::engine::backend::Transfer,
    ) -> Result<u64, EngineError> {
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let reply: Vec<String> = self
            .scripts
            .transfer_take
            .key(&keys.campaign)
            .key(keys.transfers())
            .arg(&transfer.id)
            .arg(transfer.to)
            .arg(transfer.want)
            .arg(transfer.least)
            .arg(transfer.now.0)
            .invoke_async(&mut self.timed("transfer_take"))
            .await?;
        // Strict durability: the take on a replica before the units go anywhere (a failover
        // that lost it must not find them given).
        self.replicated().await?;
        match reply.as_slice() {
            [taken, units] if taken == "taken" => units
                .parse()
                .map_err(|_| EngineError::Corrupt(format!("transfer_take answered {reply:?}"))),
            [short, _] if short == "short" => Ok(0),
            [missing] if missing == "not_found" => Ok(0),
            _ => Err(EngineError::Corrupt(format!(
                "transfer_take answered {reply:?}"
            ))),
        }
    }

    async fn give_units(
        &self,
        shard: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<crate::engine::backend::Given, EngineError> {
        use crate::engine::backend::Given;
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let given: i64 = self
            .scripts
            .transfer_give
            .key(&keys.campaign)
            .key(keys.received())
            .arg(transfer)
            .arg(units)
            .invoke_async(&mut self.timed("transfer_give"))
            .await?;
        // ... and the give before the transfer closes (until then the reaper may give again:
        // once per transfer id).
        self.replicated().await?;
        Ok(match given {
            1 => Given::Now,
            0 => Given::Before,
            _ => Given::Missing,
        })
    }

    async fn transfer_done(&self, shard: &CampaignId, transfer: &str) -> Result<(), EngineError> {
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let _: i64 = self
            .scripts
            .transfer_done
            .key(&keys.campaign)
            .key(keys.transfers())
            .arg(transfer)
            .invoke_async(&mut self.timed("transfer_done"))
            .await?;
        Ok(())
    }

    async fn relist(&self, shard: &CampaignId) -> Result<(), EngineError> {
        self.index(shard).await
    }

    /// Batched per shard like reserves: claims that arrive while a call is in flight go
    /// together as the next one.
    async fn claim_key(
        &self,
        shard: &CampaignId,
        key: &crate::domain::ScopedKey,
        fingerprint: &str,
    ) -> Result<crate::engine::backend::Claim, EngineError> {
        let claim = ClaimRequest {
            shard: shard.clone(),
            key: key.clone(),
            fingerprint: fingerprint.to_owned(),
        };
        self.batched(shard, &claim).await
    }

    async fn open_transfers(
        &self,
        shard: &CampaignId,
    ) -> Result<Vec<crate::engine::backend::OpenTransfer>, EngineError> {
        let keys = self.keys(shard);
        let open: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.transfers())
            .query_async(&mut self.background())
            .await?;
        open.into_iter()
            .map(|(id, record)| {
                let corrupt =
                    || EngineError::Corrupt(format!("transfer {id} of {shard}: {record:?}"));
                let mut parts = record.split('|');
                let mut next = || parts.next().ok_or_else(corrupt);
                let to = next()?.parse().map_err(|_| corrupt())?;
                let units = next()?.parse().map_err(|_| corrupt())?;
                let at = next()?.parse().map_err(|_| corrupt())?;
                Ok(crate::engine::backend::OpenTransfer {
                    id: id.clone(),
                    to,
                    units,
                    at: crate::domain::Millis(at),
                })
            })
            .collect()
    }
}

/// A store key's claim in its shard (see `ShardOps::claim_key`).
#[derive(Clone)]
pub(super) struct ClaimRequest {
    shard: CampaignId,
    key: crate::domain::ScopedKey,
    fingerprint: String,
}

impl<C: Connection> RedisEngine<C> {
    /// One `claim_key.lua` call for a batch of claims in one shard.
    async fn claim_batch(
        &self,
        batch: &[ClaimRequest],
    ) -> Result<Vec<crate::engine::backend::Claim>, EngineError> {
        use crate::engine::backend::Claim;
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let keys = self.keys(&first.shard);
        let mut invocation = self.scripts.claim_key.prepare_invoke();
        invocation.key(&keys.campaign).key(keys.claims());
        for claim in batch {
            invocation.arg(claim.key.as_str()).arg(&claim.fingerprint);
        }
        let answers: Vec<i64> = invocation
            .invoke_async(&mut self.timed("claim_key"))
            .await?;
        if answers == [-2] {
            return Ok(vec![Claim::Missing; batch.len()]);
        }
        if answers.len() != batch.len() {
            return Err(EngineError::Corrupt(format!(
                "claim_key answered {} claims for {}",
                answers.len(),
                batch.len()
            )));
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                -1 => Claim::Other,
                _ => Claim::Mine,
            })
            .collect())
    }
}

impl<C: Connection> batcher::BatchKind<C> for ClaimRequest {
    type Outcome = crate::engine::backend::Claim;
    const NAME: &'static str = "key claim";
    const HISTOGRAM: &'static str = crate::metrics::CLAIM_BATCH_SIZE;

    fn queues(engine: &RedisEngine<C>) -> &batcher::Batcher<Self, Self::Outcome> {
        &engine.claims
    }

    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send {
        engine.claim_batch(batch)
    }
}
