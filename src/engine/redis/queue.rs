//! [`WaitingRoom`] on Redis: `src/engine/redis/scripts/queue.lua`, one call per operation on the campaign's slot.

use super::batcher::{BatchKind, Batcher};
use super::{Connection, RedisEngine};
use crate::domain::{
    CampaignId, Line, LinePoint, Millis, Refusal, Ticket, TicketId, TicketStatus, UserId,
};
use crate::engine::{Admission, EngineError, JoinOutcome, JoinRequest, WaitingRoom};
use async_trait::async_trait;

/// A ticket from its status as `queue.lua` answers it (`{status, user, ...}`).
fn ticket_from(id: &TicketId, reply: &[String]) -> Result<Option<Ticket>, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("queue.lua answered {reply:?} for {id}"));
    let Some(kind) = reply.first() else {
        return Ok(None);
    };
    let user = reply
        .get(1)
        .and_then(|raw| UserId::parse(raw).ok())
        .ok_or_else(corrupt)?;
    let number = |i: usize| reply.get(i).and_then(|raw| raw.parse::<i64>().ok());
    let line = LinePoint {
        admitted: number(3).ok_or_else(corrupt)? as u64,
        generation: reply.get(4).cloned().ok_or_else(corrupt)?,
    };
    let status = match kind.as_str() {
        "admitted" => TicketStatus::Admitted {
            until: Millis(number(2).ok_or_else(corrupt)?),
        },
        "expired" => TicketStatus::Expired,
        "sold_out" => TicketStatus::SoldOut,
        "waiting" => TicketStatus::Waiting {
            position: number(2).map(|p| p as u64),
        },
        _ => return Err(corrupt()),
    };
    Ok(Some(Ticket {
        id: id.clone(),
        user_id: user,
        status,
        line,
    }))
}

/// One ticket read, as the batcher queues it.
#[derive(Debug, Clone)]
pub struct TicketRead {
    id: TicketId,
    now: Millis,
}

impl<C: Connection> RedisEngine<C> {
    /// Reads tickets of one campaign with one call of `queue.lua`, as of the latest `now`.
    async fn read_tickets(&self, batch: &[TicketRead]) -> Result<Vec<Option<Ticket>>, EngineError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let campaign = first.id.campaign_id();
        let now = batch.iter().map(|r| r.now).max().unwrap_or(first.now);
        let mut invocation = self.scripts.queue.prepare_invoke();
        invocation
            .key(self.keys(&campaign).campaign)
            .arg("tickets")
            .arg(now.0);
        for read in batch {
            if read.id.campaign_id() != campaign {
                return Err(EngineError::Corrupt(
                    "a ticket batch spans campaigns".into(),
                ));
            }
            let (line, number) = read.id.line_number();
            invocation.arg(line).arg(number);
        }
        let replies: Vec<Vec<String>> = invocation
            .invoke_async(&mut self.timed("queue_tickets"))
            .await?;
        if replies.len() != batch.len() {
            return Err(EngineError::Corrupt(format!(
                "queue.lua answered {} reads for {}",
                replies.len(),
                batch.len()
            )));
        }
        batch
            .iter()
            .zip(&replies)
            .map(|(read, reply)| ticket_from(&read.id, reply))
            .collect()
    }
}

impl<C: Connection> RedisEngine<C> {
    /// Decides joins of one campaign with one call of `queue.lua`, in arrival order.
    async fn join_batch(&self, batch: &[JoinRequest]) -> Result<Vec<JoinOutcome>, EngineError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let mut invocation = self.scripts.queue.prepare_invoke();
        invocation
            .key(self.keys(&first.campaign_id).campaign)
            .arg("joins")
            .arg(first.now.0)
            // The generation and the draw's secret of the line, should this call start one.
            .arg(TicketId::new_line())
            .arg(hex::encode(rand::random::<[u8; 16]>()));
        for request in batch {
            if request.campaign_id != first.campaign_id {
                return Err(EngineError::Corrupt("a join batch spans campaigns".into()));
            }
            invocation
                .arg(request.now.0)
                .arg(request.user_id.as_str())
                .arg(request.idempotency_key.as_str());
        }
        let replies: Vec<Vec<String>> = invocation
            .invoke_async(&mut self.timed("queue_join"))
            .await?;
        if replies.len() != batch.len() {
            return Err(EngineError::Corrupt(format!(
                "queue.lua answered {} joins for {}",
                replies.len(),
                batch.len()
            )));
        }
        replies
            .iter()
            .map(|reply| join_outcome(&first.campaign_id, reply))
            .collect()
    }
}

/// A join's outcome as `queue.lua` answers it: the ticket by its number in the line whose
/// generation its status names.
fn join_outcome(campaign: &CampaignId, reply: &[String]) -> Result<JoinOutcome, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("queue join answered {reply:?}"));
    let ticket = || -> Result<Ticket, EngineError> {
        let number = reply.get(1).and_then(|raw| raw.parse::<u64>().ok());
        let line = reply.get(6);
        let id = number
            .zip(line)
            .and_then(|(number, line)| TicketId::numbered(campaign, line, number))
            .ok_or_else(corrupt)?;
        ticket_from(&id, &reply[2..])?.ok_or_else(corrupt)
    };
    match reply.first().map(String::as_str) {
        Some("joined") => Ok(JoinOutcome::Joined(ticket()?)),
        Some("existing") => Ok(JoinOutcome::Existing(ticket()?)),
        Some("key_reused") => Ok(JoinOutcome::KeyReused),
        Some(code) => Refusal::from_code(code)
            .map(JoinOutcome::Refused)
            .ok_or_else(corrupt),
        None => Err(corrupt()),
    }
}

impl<C: Connection> BatchKind<C> for JoinRequest {
    type Outcome = JoinOutcome;
    const NAME: &'static str = "join";
    const HISTOGRAM: &'static str = crate::metrics::JOIN_BATCH_SIZE;

    fn queues(engine: &RedisEngine<C>) -> &Batcher<Self, Self::Outcome> {
        &engine.joins
    }

    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send {
        engine.join_batch(batch)
    }
}

impl<C: Connection> BatchKind<C> for TicketRead {
    type Outcome = Option<Ticket>;
    const NAME: &'static str = "ticket read";
    const HISTOGRAM: &'static str = crate::metrics::TICKET_BATCH_SIZE;

    fn queues(engine: &RedisEngine<C>) -> &Batcher<Self, Self::Outcome> {
        &engine.ticket_reads
    }

    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send {
        engine.read_tickets(batch)
    }
}

#[async_trait]
impl<C: Connection> WaitingRoom for RedisEngine<C> {
    /// Batched per campaign like reserves: joins that arrive while a call is in flight go
    /// together as the next one.
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        self.batched(&request.campaign_id, request).await
    }

    /// Batched per campaign: polls that arrive while a read is in flight go as the next one.
    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError> {
        let read = TicketRead {
            id: id.clone(),
            now,
        };
        self.batched(&id.campaign_id(), &read).await
    }

    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError> {
        let keys = self.keys(campaign);
        let (admitted, waiting, room): (u64, u64, u64) = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("admit")
            .arg(now.0)
            .invoke_async(&mut self.background())
            .await?;
        Ok(Admission {
            admitted,
            waiting,
            room,
        })
    }

    async fn line(&self, campaign: &CampaignId) -> Result<Option<Line>, EngineError> {
        let keys = self.keys(campaign);
        let reply: Vec<String> = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("line")
            .arg(0)
            .invoke_async(&mut self.timed("queue_line"))
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let corrupt = || EngineError::Corrupt(format!("queue line answered {reply:?}"));
        let number = |i: usize| {
            reply
                .get(i)
                .and_then(|raw| raw.parse::<u64>().ok())
                .ok_or_else(corrupt)
        };
        Ok(Some(Line {
            available: number(0)?,
            point: LinePoint {
                admitted: number(1)?,
                generation: reply.get(2).cloned().ok_or_else(corrupt)?,
            },
        }))
    }

    async fn claim_pass(
        &self,
        pass: &crate::engine::PassUse<'_>,
    ) -> Result<Option<crate::engine::PassClaim>, EngineError> {
        let keys = self.keys(&pass.ticket.campaign_id());
        let (line, number) = pass.ticket.line_number();
        let claim: String = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("claim")
            .arg(pass.now.0)
            .arg(line)
            .arg(number)
            .arg(pass.expires.0)
            .arg(pass.quantity)
            .arg(pass.key.as_str())
            .arg(if pass.group { "g" } else { "k" })
            .invoke_async(&mut self.timed("queue_claim"))
            .await?;
        match claim.as_str() {
            "replay" => Ok(Some(crate::engine::PassClaim::Replay)),
            "unknown" => Ok(Some(crate::engine::PassClaim::Unchecked)),
            "kept" => Ok(Some(crate::engine::PassClaim::Kept)),
            "owed" => Ok(Some(crate::engine::PassClaim::Owed)),
            "refused" => Ok(None),
            other => Err(EngineError::Corrupt(format!(
                "queue claim answered {other:?}"
            ))),
        }
    }

    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError> {
        let keys = self.keys(&ticket.campaign_id());
        let (line, number) = ticket.line_number();
        let _: i64 = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("used")
            .arg(0)
            .arg(line)
            .arg(number)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }
}
