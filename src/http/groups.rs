//! Group-buy endpoints: open a group, join one, read one.

use super::auth::Caller;
use super::creating;
use super::error::ApiError;
use super::json::{JsonBody, PathId};
use super::AppState;
use crate::domain::{
    CampaignId, Group, GroupId, IdempotencyKey, Millis, Refusal, ScopedKey, UserId,
};
use crate::engine::{GroupOutcome, GroupRequest};
use crate::metrics as m;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns/{id}/groups", post(open_group))
        .route("/v1/groups/{id}/members", post(join_group))
        .route("/v1/groups/{id}", get(get_group))
}

/// Who opens or joins.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberRequest {
    /// Required with a store token; taken from `sub` with a user token.
    user_id: Option<String>,
}

/// A group with its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    id: String,
    campaign_id: String,
    leader_user_id: String,
    size: u32,
    /// `open | formed | failed`
    status: &'static str,
    members: Vec<MemberView>,
    expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    user_id: String,
    reservation_id: String,
    /// The member's reservation status.
    status: &'static str,
}

impl From<Group> for GroupView {
    fn from(g: Group) -> Self {
        GroupView {
            id: g.id.to_string(),
            campaign_id: g.campaign_id.to_string(),
            leader_user_id: g.leader_user_id.to_string(),
            size: g.size,
            status: g.status.as_str(),
            members: g
                .members
                .into_iter()
                .map(|member| MemberView {
                    user_id: member.user_id.to_string(),
                    reservation_id: member.reservation_id.to_string(),
                    status: member.status.as_str(),
                })
                .collect(),
            expires_at: g.expires_at.to_rfc3339(),
        }
    }
}

/// The parts every open and join shares: key, acting user, rate.
fn member_request(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: GroupMemberRequest,
) -> Result<(IdempotencyKey, UserId), ApiError> {
    let key = creating::idempotency_key(headers)?;
    let user = creating::acting_user(caller, body.user_id)?;
    state.check_user_rate(user.as_str())?;
    Ok((key, user))
}

fn answer(outcome: GroupOutcome, operation: &'static str) -> Result<Response, ApiError> {
    let (group, replayed) = match outcome {
        GroupOutcome::Done(group) => (group, false),
        GroupOutcome::Replayed(group) => (group, true),
        GroupOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        GroupOutcome::Refused(refusal) => {
            metrics::counter!(m::GROUP_ATTEMPTS, "operation" => operation, "outcome" => refusal.code()).increment(1);
            return Err(ApiError::refused(refusal));
        }
    };
    metrics::counter!(m::GROUP_ATTEMPTS, "operation" => operation, "outcome" => if replayed { "replayed" } else { "done" })
        .increment(1);
    let location = format!("/v1/groups/{}", group.id);
    Ok(creating::created(
        location,
        GroupView::from(group),
        replayed,
    ))
}

/// Open a group buy: holds the group's whole quota; the opener takes the first slot.
#[utoipa::path(post, path = "/v1/campaigns/{id}/groups", tag = "groups", request_body = GroupMemberRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]")),
    responses((status = 201, body = GroupView),
        (status = 409, description = "`sold_out`, `limit_exceeded`, `not_started`, `ended`, `wrong_campaign_kind`", body = super::error::Problem),
        (status = 403, description = "`queue_pass_required` (a campaign with a waiting room)", body = super::error::Problem),
        (status = 422, description = "`idempotency_key_reused`, `invalid_request` (also: a store token must name the `user_id`; a user token acts for its own)", body = super::error::Problem),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem)))]
pub async fn open_group(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<GroupMemberRequest>,
) -> Result<Response, ApiError> {
    let campaign_id =
        CampaignId::parse(&id).map_err(|_| ApiError::refused(Refusal::CampaignNotFound))?;
    let (key, user) = member_request(&state, &caller, &headers, body)?;
    let now = Millis::now();
    let key = ScopedKey::new(&caller.idempotency_scope(), "open", &key);
    let decision = super::queue::Decision {
        quantity: 1,
        key: &key,
        group: true,
    };
    let pass = super::queue::admitted(&state, &campaign_id, &user, &headers, decision, now).await?;
    let request = GroupRequest::open(campaign_id, user, key, now);
    let outcome = state.engine.open_group(&request).await;
    let made = matches!(outcome, Ok(GroupOutcome::Done(_)));
    super::queue::used(&state, pass, made).await;
    answer(outcome?, "open")
}

/// Join an open group: one of its slots becomes the joiner's held reservation.
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups", request_body = GroupMemberRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]")),
    responses((status = 201, body = GroupView),
        (status = 409, description = "`group_full`, `group_closed`, `already_member`, `limit_exceeded`", body = super::error::Problem),
        (status = 403, description = "`queue_pass_required` (a campaign with a waiting room)", body = super::error::Problem),
        (status = 422, description = "`idempotency_key_reused`, `invalid_request` (also: a store token must name the `user_id`; a user token acts for its own)", body = super::error::Problem),
        (status = 404, description = "`group_not_found`", body = super::error::Problem)))]
pub async fn join_group(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<GroupMemberRequest>,
) -> Result<Response, ApiError> {
    let group_id = GroupId::parse(&id).map_err(|_| ApiError::refused(Refusal::GroupNotFound))?;
    let (key, user) = member_request(&state, &caller, &headers, body)?;
    let key = ScopedKey::new(
        &caller.idempotency_scope(),
        &format!("join:{group_id}"),
        &key,
    );
    let now = Millis::now();
    let campaign_id = group_id.campaign_id();
    let decision = super::queue::Decision {
        quantity: 1,
        key: &key,
        group: true,
    };
    let pass = super::queue::admitted(&state, &campaign_id, &user, &headers, decision, now).await?;
    let request = GroupRequest::join(group_id, user, key, now);
    let outcome = state.engine.join_group(&request).await;
    let made = matches!(outcome, Ok(GroupOutcome::Done(_)));
    super::queue::used(&state, pass, made).await;
    answer(outcome?, "join")
}

/// One group with its members: the store, or one of its members.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    responses((status = 200, body = GroupView),
        (status = 404, description = "`group_not_found`", body = super::error::Problem)))]
pub async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<GroupView>, ApiError> {
    let group_id = GroupId::parse(&id).map_err(|_| ApiError::refused(Refusal::GroupNotFound))?;
    let group = state
        .engine
        .group(&group_id)
        .await?
        .ok_or(ApiError::refused(Refusal::GroupNotFound))?;
    if let Caller::User(me) = &caller {
        if !group.members.iter().any(|member| member.user_id == *me) {
            return Err(ApiError::Forbidden(
                "only the group's members may read it".into(),
            ));
        }
    }
    Ok(Json(group.into()))
}
