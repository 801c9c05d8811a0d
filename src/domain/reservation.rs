//! Reservations: units held for one user until paid, cancelled or expired.

use super::{CampaignId, GroupId, Millis, Quantity, UserId};
use serde::Serialize;

scoped_id_type!(
    /// A reservation id: `res_<ULID>_<campaign id>` (see `scoped_id`): any instance finds the
    /// reservation's campaign from the id alone, without a global index that would span slots.
    ReservationId,
    "res_",
    "reservation"
);

/// The contract's reservation `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Cancelled,
    Expired,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Held => "held",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Cancelled => "cancelled",
            ReservationStatus::Expired => "expired",
            ReservationStatus::Released => "released",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "held" => ReservationStatus::Held,
            "confirmed" => ReservationStatus::Confirmed,
            "cancelled" => ReservationStatus::Cancelled,
            "expired" => ReservationStatus::Expired,
            "released" => ReservationStatus::Released,
            _ => return None,
        })
    }

    /// Whether the reservation still takes units from the campaign.
    pub fn takes_units(self) -> bool {
        matches!(self, ReservationStatus::Held | ReservationStatus::Confirmed)
    }
}

/// One reservation, as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    pub quantity: Quantity,
    pub status: ReservationStatus,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// The group this reservation is a member's slot of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_id_carries_its_campaign() {
        let campaign = CampaignId::parse("spring_sale-1").expect("valid id");
        let id = ReservationId::generate(&campaign);
        let parsed = ReservationId::parse(id.as_str()).expect("generated ids parse");
        assert_eq!(parsed.campaign_id(), campaign);
    }

    #[test]
    fn malformed_reservation_ids_are_rejected() {
        for raw in [
            "",
            "res_",
            "res_01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "res_not-a-ulid-at-all-xxxxxxx_c",
            "res_01ARZ3NDEKTSV4RRFFQ69G5FAV_UP",
            "xyz_01ARZ3NDEKTSV4RRFFQ69G5FAV_c",
            "res_01ARZ3NDEKTSV4RRFFQ69G5Fé_c",
        ] {
            assert!(
                ReservationId::parse(raw).is_err(),
                "{raw:?} should not parse"
            );
        }
    }
}
