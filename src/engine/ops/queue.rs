//! Taking a ticket in a waiting room. (The waiting room's other steps need nothing beyond
//! the backend's own: `engine.backing().waiting_room()`.) Campaigns with a waiting room are
//! never sharded.

use crate::domain::Refusal;
use crate::engine::{Engine, EngineError, JoinOutcome, JoinRequest};

impl Engine {
    /// One ticket per user per campaign: a second join answers the first ticket. A campaign
    /// the backend lost is rebuilt first (its tickets are not: they live in the backend
    /// only); an archived one answers `ended`.
    pub async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        self.decidable()?;
        let missing = |o: &JoinOutcome| *o == JoinOutcome::Refused(Refusal::CampaignNotFound);
        let room = self.backing.waiting_room();
        let answer = self
            .retrying(&request.campaign_id, missing, || room.join_queue(request))
            .await?;
        if missing(&answer) && self.archived(&request.campaign_id).is_some() {
            return Ok(JoinOutcome::Refused(Refusal::Ended));
        }
        Ok(answer)
    }
}
