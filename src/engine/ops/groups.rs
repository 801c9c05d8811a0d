//! Group buys: opening and joining a group, and reading one. Group-buy campaigns are never
//! sharded.

use crate::domain::{Group, GroupId, Refusal};
use crate::engine::{Engine, EngineError, GroupOutcome, GroupRequest};
use std::future::Future;
use tracing::Instrument;

impl Engine {
    /// Opens a group: holds `size` units of a group-buy campaign and gives the opener the
    /// first slot (a held reservation of one unit).
    pub async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let open = || {
            self.backing.decisions().open_group(request).instrument(
                tracing::debug_span!("engine.open_group", campaign = %request.campaign_id),
            )
        };
        self.group_decision(request, Refusal::CampaignNotFound, Refusal::Ended, open)
            .await
    }

    /// Joins an open group: one of its slots becomes the joiner's held reservation.
    pub async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let join = || {
            self.backing
                .decisions()
                .join_group(request)
                .instrument(tracing::debug_span!("engine.join_group", group = %request.group_id))
        };
        self.group_decision(request, Refusal::GroupNotFound, Refusal::GroupClosed, join)
            .await
    }

    /// A group, rebuilding its campaign if the backend lost it.
    pub async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        let reads = self.backing.reads();
        self.retrying(&id.campaign_id(), Option::is_none, || reads.group(id))
            .await
    }

    /// Opening or joining: recovery when the backend answers `missing`, `archived` instead
    /// of it for a campaign that left the backend, the commit wait for a change.
    async fn group_decision<F, Fut>(
        &self,
        request: &GroupRequest,
        missing: Refusal,
        archived: Refusal,
        call: F,
    ) -> Result<GroupOutcome, EngineError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<GroupOutcome, EngineError>>,
    {
        self.decidable()?;
        let is_missing = |o: &GroupOutcome| *o == GroupOutcome::Refused(missing);
        let mut outcome = self
            .retrying(&request.campaign_id, is_missing, call)
            .await?;
        if let GroupOutcome::Refused(refusal) = outcome {
            let campaign = &request.campaign_id;
            outcome = GroupOutcome::Refused(self.or_archived(campaign, refusal, missing, archived));
        }
        let joined = matches!(outcome, GroupOutcome::Done(_) | GroupOutcome::Replayed(_));
        self.committed(&request.campaign_id, joined).await?;
        Ok(outcome)
    }
}
