//! [`WaitingRoom`] on Redis: `lua/queue.lua`, one call per operation on the campaign's slot.

use super::{Connection, RedisEngine};
use crate::domain::{CampaignId, Millis, Refusal, Ticket, TicketId, TicketStatus, UserId};
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
    }))
}

#[async_trait]
impl<C: Connection> WaitingRoom for RedisEngine<C> {
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        let keys = self.keys(&request.campaign_id);
        let reply: Vec<String> = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("join")
            .arg(request.now.0)
            .arg(request.user_id.as_str())
            .arg(request.idempotency_key.as_str())
            .arg(request.ticket_id.as_str())
            .arg(request.draw)
            .invoke_async(&mut self.timed("queue_join"))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("queue join answered {reply:?}"));
        let ticket = || -> Result<Ticket, EngineError> {
            let id = reply
                .get(1)
                .and_then(|raw| TicketId::parse(raw).ok())
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

    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError> {
        let keys = self.keys(&id.campaign_id());
        let reply: Vec<String> = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("ticket")
            .arg(now.0)
            .arg(id.as_str())
            .invoke_async(&mut self.timed("queue_ticket"))
            .await?;
        ticket_from(id, &reply)
    }

    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError> {
        let keys = self.keys(campaign);
        let (admitted, waiting): (u64, u64) = self
            .scripts
            .queue
            .key(&keys.campaign)
            .arg("admit")
            .arg(now.0)
            .invoke_async(&mut self.background())
            .await?;
        Ok(Admission { admitted, waiting })
    }

    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError> {
        let keys = self.keys(&ticket.campaign_id());
        let _: i64 = redis::cmd("ZREM")
            .arg(format!("{}:qo", keys.campaign))
            .arg(ticket.as_str())
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}
