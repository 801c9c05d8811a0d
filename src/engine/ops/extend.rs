//! Extending a hold.

use crate::domain::{Millis, ReservationId, ReservationStatus};
use crate::engine::{Engine, EngineError, Extension};
use tracing::Instrument;

impl Engine {
    /// held → held until `max(expires_at, now + seconds)`, at most `created_at +
    /// hold_seconds + max_extend_seconds` (beyond it: `Exceeded`, nothing changes). Atomic
    /// with expiry: a hold found past `expires_at` expires instead (`NotHeld`), so a hold is
    /// never both extended and expired. One the backend forgot is answered from the database.
    pub async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        self.decidable()?;
        let missing = |e: &Extension| *e == Extension::NotFound;
        let extend = || async {
            let outcome = self
                .backing
                .decisions()
                .extend(id, seconds, now)
                .instrument(tracing::debug_span!("engine.extend", reservation = %id))
                .await?;
            // Found past its expiry: it expired on the spot and its units came back.
            if let Extension::NotHeld(r) = &outcome {
                if r.status == ReservationStatus::Expired {
                    self.units_returned(&id.campaign_id());
                }
            }
            Ok(outcome)
        };
        let outcome = self.retrying(&id.campaign_id(), missing, extend).await?;
        // Gone from the backend (ended and forgotten, or archived): the database answers.
        let outcome = match outcome {
            Extension::NotFound => match self.stored(id).await? {
                Some(r) => Extension::NotHeld(r),
                None => Extension::NotFound,
            },
            other => other,
        };
        let changed = matches!(outcome, Extension::Extended(_) | Extension::NotHeld(_));
        self.committed(&id.shard_campaign(), changed).await?;
        Ok(outcome)
    }
}
