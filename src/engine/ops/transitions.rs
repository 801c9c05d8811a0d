//! Confirming and cancelling a reservation, and reading one.

use crate::domain::{Millis, Reservation, ReservationId, ReservationStatus};
use crate::engine::{CancelScope, Engine, EngineError, Transition};
use tracing::Instrument;

impl Engine {
    /// held → confirmed. A hold found past `expires_at` expires instead (`NotHeld`); one
    /// the backend forgot is answered from the database.
    pub async fn confirm(
        &self,
        id: &ReservationId,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.decidable()?;
        let missing = |t: &Transition| *t == Transition::NotFound;
        let confirm = || async {
            let outcome = self
                .backing
                .decisions()
                .confirm(id, now)
                .instrument(tracing::debug_span!("engine.confirm", reservation = %id))
                .await?;
            if let Transition::NotHeld(r) = &outcome {
                if r.status == ReservationStatus::Expired {
                    self.units_returned(&id.campaign_id());
                }
            }
            Ok(outcome)
        };
        let outcome = self.retrying(&id.campaign_id(), missing, confirm).await?;
        let outcome = self
            .or_stored(id, outcome, ReservationStatus::Confirmed)
            .await?;
        self.committed(&id.shard_campaign(), changes(&outcome))
            .await?;
        Ok(outcome)
    }

    /// → cancelled, units return. A hold found past `expires_at` expires instead
    /// (`NotHeld`). The store may cancel a confirmed reservation (a refund), also of a
    /// campaign that left the backend (the database records it).
    pub async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.decidable()?;
        let missing = |t: &Transition| *t == Transition::NotFound;
        let cancel = || async {
            let outcome = self
                .backing
                .decisions()
                .cancel(id, scope, now)
                .instrument(tracing::debug_span!("engine.cancel", reservation = %id))
                .await?;
            if matches!(outcome, Transition::Done(_) | Transition::NotHeld(_)) {
                self.units_returned(&id.campaign_id());
            }
            Ok(outcome)
        };
        let outcome = self.retrying(&id.campaign_id(), missing, cancel).await?;
        let outcome = self
            .or_stored(id, outcome, ReservationStatus::Cancelled)
            .await?;
        let outcome = match outcome {
            Transition::NotHeld(r)
                if r.status == ReservationStatus::Confirmed
                    && scope == CancelScope::HeldOrConfirmed =>
            {
                self.refund_archived(r, now).await?
            }
            other => other,
        };
        self.committed(&id.shard_campaign(), changes(&outcome))
            .await?;
        Ok(outcome)
    }

    /// A reservation: the backend's, rebuilding its campaign if the backend lost it; one it
    /// forgot after the retention, from the database.
    pub async fn reservation(
        &self,
        id: &ReservationId,
    ) -> Result<Option<Reservation>, EngineError> {
        let reads = self.backing.reads();
        let found = self
            .retrying(&id.campaign_id(), Option::is_none, || reads.reservation(id))
            .await?;
        match found {
            Some(reservation) => Ok(Some(reservation)),
            // Ended and forgotten by the backend after the retention: the database has it.
            None => self.stored(id).await,
        }
    }
}

/// Whether a confirm or cancel answer reports a state the database must hold first (an
/// `Unchanged` answer may repeat a change not committed yet; `NotHeld` may follow an expiry
/// made on the spot).
fn changes(outcome: &Transition) -> bool {
    !matches!(outcome, Transition::NotFound)
}
