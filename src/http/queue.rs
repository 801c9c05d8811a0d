//! The waiting room: take a ticket, read it (with the pass once admitted), and the pass check
//! that reservations and group opens/joins of a queued campaign go through.

use super::auth::Caller;
use super::creating;
use super::error::ApiError;
use super::json::{JsonBody, PathId};
use super::AppState;
use crate::domain::{
    Campaign, CampaignId, Millis, PassRefusal, Refusal, ScopedKey, Ticket, TicketId, TicketStatus,
    UserId,
};
use crate::domain::{Line, LinePoint, Window};
use crate::engine::{JoinOutcome, JoinRequest, PassClaim, PassUse};
use crate::metrics as m;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// How old a campaign's line may be when a poll is answered from [`LineCache`].
const LINE_FRESH: Duration = Duration::from_millis(50);

/// Waiting tickets remembered at most; past this the cache starts over.
const MAX_REMEMBERED: usize = 1_000_000;

/// Answers polls of waiting tickets without a round trip to the engine. A waiting ticket's
/// place only moves by the admissions since it was read (admission takes from the front;
/// later joins go behind), so a ticket read once at place p when its campaign had admitted a
/// is at p - (a' - a) once the campaign has admitted a' (and reads `sold_out` while no unit is
/// available) — one read of the campaign's line per [`LINE_FRESH`] per instance serves every
/// ticket's poll. Anything else — the ticket may have been admitted, the window closed, the
/// line was lost and rebuilt (another generation) — is read from the engine. So a poll is at most [`LINE_FRESH`]
/// behind; `admitted` answers (and their passes) always come from the engine.
#[derive(Default)]
pub struct LineCache {
    /// Ticket → (its user, its place, the line when it was read).
    tickets: DashMap<TicketId, (UserId, u64, LinePoint)>,
    lines: DashMap<CampaignId, (Instant, Line)>,
    /// Campaigns whose line is being read (one read at a time per campaign).
    reading: DashMap<CampaignId, ()>,
}

impl LineCache {
    /// The campaign's line, read at most every [`LINE_FRESH`]; `None` when not fresh and
    /// another task is reading it (the caller asks the engine about its ticket instead).
    async fn line(
        &self,
        state: &AppState,
        campaign: &CampaignId,
    ) -> Result<Option<Line>, ApiError> {
        if let Some(entry) = self.lines.get(campaign) {
            if entry.0.elapsed() < LINE_FRESH {
                return Ok(Some(entry.1.clone()));
            }
        }
        if self.reading.insert(campaign.clone(), ()).is_some() {
            return Ok(None);
        }
        // Done reading however this ends, a dropped request included.
        struct Reading<'a>(&'a DashMap<CampaignId, ()>, &'a CampaignId);
        impl Drop for Reading<'_> {
            fn drop(&mut self) {
                self.0.remove(self.1);
            }
        }
        let reading = Reading(&self.reading, campaign);
        let read = state.engine.backing().waiting_room().line(campaign).await;
        drop(reading);
        match read? {
            Some(line) => {
                self.lines
                    .insert(campaign.clone(), (Instant::now(), line.clone()));
                Ok(Some(line))
            }
            None => {
                self.lines.remove(campaign);
                Ok(None)
            }
        }
    }

    /// The ticket, still waiting, from what was read before; `None`: ask the engine.
    async fn waiting(
        &self,
        state: &AppState,
        id: &TicketId,
        campaign: &Campaign,
        now: Millis,
    ) -> Result<Option<Ticket>, ApiError> {
        let Some((user, place, then)) = self.tickets.get(id).map(|e| e.value().clone()) else {
            return Ok(None);
        };
        if campaign.window(now) != Window::Open {
            return Ok(None);
        }
        let Some(line) = self.line(state, &campaign.id).await? else {
            return Ok(None);
        };
        let same = line.point.generation == then.generation && line.point.admitted >= then.admitted;
        let moved = line.point.admitted.saturating_sub(then.admitted);
        if !same || moved >= place {
            self.tickets.remove(id);
            return Ok(None);
        }
        // Not admitted (everyone admitted since was ahead of it): waiting, or sold out while
        // no unit is available — kept, since the line comes back if holds end unpaid.
        let status = if line.available == 0 {
            TicketStatus::SoldOut
        } else {
            TicketStatus::Waiting {
                position: Some(place - moved),
            }
        };
        Ok(Some(Ticket {
            id: id.clone(),
            user_id: user,
            status,
            line: line.point,
        }))
    }

    /// Remembers a waiting ticket with a place (and forgets one that is not waiting).
    fn remember(&self, ticket: &Ticket) {
        match ticket.status {
            TicketStatus::Waiting {
                position: Some(place),
            } => {
                if self.tickets.len() >= MAX_REMEMBERED {
                    self.tickets.clear();
                }
                self.tickets.insert(
                    ticket.id.clone(),
                    (ticket.user_id.clone(), place, ticket.line.clone()),
                );
            }
            _ => {
                self.tickets.remove(&ticket.id);
            }
        }
    }
}

/// The header a reservation (or group open/join) of a queued campaign carries its pass in.
pub const PASS_HEADER: HeaderName = HeaderName::from_static("flashsale-pass");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns/{id}/queue", post(join))
        .route("/v1/queue/{ticket}", get(read))
}

/// Who takes a ticket.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    /// Required with a store token; taken from `sub` with a user token.
    user_id: Option<String>,
}

/// A ticket and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketView {
    ticket: String,
    /// `waiting | admitted | sold_out | expired`
    status: &'static str,
    /// 1 for the next to be admitted; null before the draw at `starts_at` and once not
    /// waiting.
    position: Option<u64>,
    /// Seconds until the ticket's turn, as best known (0 once admitted or done).
    eta_seconds: u64,
    /// With `admitted`: send it as the `Flashsale-Pass` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass_expires_at: Option<String>,
}

fn view(state: &AppState, ticket: &Ticket, campaign: &Campaign, now: Millis) -> TicketView {
    let eta_seconds = campaign
        .queue
        .map_or(0, |rule| ticket.eta_seconds(&rule, campaign.starts_at, now));
    let (position, pass, pass_expires_at) = match ticket.status {
        TicketStatus::Waiting { position } => (position, None, None),
        TicketStatus::Admitted { until } => (
            None,
            Some(state.pass_key.sign(&ticket.id, &ticket.user_id, until)),
            Some(until.to_rfc3339()),
        ),
        TicketStatus::SoldOut | TicketStatus::Expired => (None, None, None),
    };
    TicketView {
        ticket: ticket.id.to_string(),
        status: ticket.status.as_str(),
        position,
        eta_seconds,
        pass,
        pass_expires_at,
    }
}

/// Join the waiting room of a campaign: one ticket per user (a second join answers the first
/// ticket, marked `Idempotent-Replayed`).
#[utoipa::path(post, path = "/v1/campaigns/{id}/queue", tag = "queue",
    request_body = NewTicket, security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]")),
    responses((status = 201, body = TicketView),
        (status = 409, description = "`ended`, `no_waiting_room`", body = super::error::Problem),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem),
        (status = 422, description = "`idempotency_key_reused`, `invalid_request` (also: a store token must name the `user_id`; a user token acts for its own)", body = super::error::Problem)))]
pub async fn join(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewTicket>,
) -> Result<Response, ApiError> {
    let campaign_id =
        CampaignId::parse(&id).map_err(|_| ApiError::refused(Refusal::CampaignNotFound))?;
    let key = creating::idempotency_key(&headers)?;
    let user = creating::acting_user(&caller, body.user_id)?;
    // Joins count against the user's rate like reservations (contract v1.2): a user cannot
    // flood the line's records with new keys.
    state.check_user_rate(user.as_str())?;
    let key = ScopedKey::new(&caller.idempotency_scope(), "queue", &key);
    let now = Millis::now();
    let request = JoinRequest::new(campaign_id, user, key, now);
    let (ticket, replayed) = match state.engine.join_queue(&request).await? {
        JoinOutcome::Joined(ticket) => (ticket, false),
        JoinOutcome::Existing(ticket) => (ticket, true),
        JoinOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        JoinOutcome::Refused(refusal) => return Err(ApiError::refused(refusal)),
    };
    metrics::counter!(m::QUEUE_JOINS, "outcome" => if replayed { "existing" } else { "joined" })
        .increment(1);
    let campaign = state
        .engine
        .config(&request.campaign_id)
        .await?
        .ok_or(ApiError::refused(Refusal::CampaignNotFound))?;
    let location = format!("/v1/queue/{}", ticket.id);
    Ok(creating::created(
        location,
        view(&state, &ticket, &campaign, now),
        replayed,
    ))
}

/// Where a ticket stands; once admitted, its pass. The store, or the ticket's user.
#[utoipa::path(get, path = "/v1/queue/{ticket}", tag = "queue", security(("bearer" = [])),
    responses((status = 200, body = TicketView),
        (status = 404, description = "`ticket_not_found`", body = super::error::Problem)))]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    PathId(raw): PathId,
) -> Result<Json<TicketView>, ApiError> {
    let not_found = || ApiError::TicketNotFound(raw.clone());
    let id = TicketId::parse(&raw).map_err(|_| not_found())?;
    let now = Millis::now();
    let campaign = state
        .engine
        .config(&id.campaign_id())
        .await?
        .ok_or_else(not_found)?;
    let cache = &state.line_cache;
    let ticket = match cache.waiting(&state, &id, &campaign, now).await? {
        Some(ticket) => ticket,
        None => {
            let read = state
                .engine
                .backing()
                .waiting_room()
                .ticket(&id, now)
                .await?;
            let Some(ticket) = read else {
                cache.tickets.remove(&id);
                return Err(not_found());
            };
            cache.remember(&ticket);
            ticket
        }
    };
    caller.may_act_for(&ticket.user_id)?;
    Ok(Json(view(&state, &ticket, &campaign, now)))
}

/// A decision asked for with a pass: what it takes, under which key.
pub struct Decision<'a> {
    pub quantity: u64,
    pub key: &'a ScopedKey,
    /// A group decision rather than a reservation.
    pub group: bool,
}

/// A pass that was claimed for a decision (see [`used`]).
pub struct Claimed {
    ticket: TicketId,
    claim: PassClaim,
}

/// For a campaign with a waiting room, the request's valid pass for `user` (403
/// `queue_pass_required` without one), claimed for the decision: a unit its holder gave
/// back went to the line, so a pass used before takes only units no unused pass is owed (409
/// `sold_out` if none is left). `None` for a campaign without a waiting room.
pub async fn admitted(
    state: &AppState,
    campaign: &CampaignId,
    user: &UserId,
    headers: &HeaderMap,
    decision: Decision<'_>,
    now: Millis,
) -> Result<Option<Claimed>, ApiError> {
    if !state.engine.queued(campaign).await? {
        return Ok(None);
    }
    let refused = |reason: &'static str| {
        metrics::counter!(m::QUEUE_PASS_REFUSALS, "reason" => reason).increment(1);
        ApiError::QueuePassRequired(match reason {
            "missing" => {
                "the campaign has a waiting room: send the Flashsale-Pass of an admitted ticket"
            }
            "expired" => "the pass has expired",
            _ => "the pass is not valid for this user and campaign",
        })
    };
    let pass = headers
        .get(PASS_HEADER)
        .ok_or_else(|| refused("missing"))?
        .to_str()
        .map_err(|_| refused("malformed"))?;
    let (ticket, expires) = state
        .pass_key
        .check(pass, campaign, user, now)
        .map_err(|refusal| {
            refused(match refusal {
                PassRefusal::Malformed => "malformed",
                PassRefusal::OtherCampaign => "other_campaign",
                PassRefusal::Expired => "expired",
                PassRefusal::BadSignature => "bad_signature",
            })
        })?;
    let claim = state
        .engine
        .backing()
        .waiting_room()
        .claim_pass(&PassUse {
            ticket: &ticket,
            expires,
            quantity: decision.quantity,
            key: decision.key,
            group: decision.group,
            now,
        })
        .await?;
    match claim {
        Some(claim) => Ok(Some(Claimed { ticket, claim })),
        None => {
            metrics::counter!(m::QUEUE_PASS_REFUSALS, "reason" => "given_back").increment(1);
            Err(ApiError::refused(Refusal::SoldOut))
        }
    }
}

/// After the decision a pass was claimed for: once it `made` a change the pass no longer
/// needs a unit kept for it; a unit kept for a pass used before is given up either way. Best
/// effort — if this fails, the pass still lapses at its expiry, and until then admission is
/// only more careful.
pub async fn used(state: &AppState, pass: Option<Claimed>, made: bool) {
    let Some(Claimed { ticket, claim }) = pass else {
        return;
    };
    if made || claim == PassClaim::Owed {
        if let Err(error) = state
            .engine
            .backing()
            .waiting_room()
            .pass_used(&ticket)
            .await
        {
            tracing::warn!(%error, "could not mark a waiting-room pass used");
        }
    }
}
