//! Group buys (拼团): a group holds `size` units of its campaign; each member holds one.

use super::{CampaignId, Millis, ReservationId, ReservationStatus, UserId};

scoped_id_type!(
    /// A group id: `grp_<ULID>_<campaign id>`; like a reservation id, it names its campaign.
    GroupId,
    "grp_",
    "group"
);

/// The contract's group `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupStatus {
    /// Taking members; holds `size` units.
    Open,
    /// `size` members confirmed; its units are sold.
    Formed,
    /// The window closed first; every member was released and the units returned.
    Failed,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Open => "open",
            GroupStatus::Formed => "formed",
            GroupStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "open" => GroupStatus::Open,
            "formed" => GroupStatus::Formed,
            "failed" => GroupStatus::Failed,
            _ => return None,
        })
    }
}

/// One member: the latest reservation the user has in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: UserId,
    pub reservation_id: ReservationId,
    pub status: ReservationStatus,
}

/// A group with its members, in the order they joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub campaign_id: CampaignId,
    pub leader_user_id: UserId,
    pub size: u32,
    pub status: GroupStatus,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub members: Vec<GroupMember>,
}

impl Group {
    /// Members whose reservation still takes a slot (held or confirmed).
    pub fn active_members(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.status.takes_units())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_id_carries_its_campaign() {
        let campaign = CampaignId::parse("team-buy").expect("valid");
        let id = GroupId::generate(&campaign);
        assert_eq!(
            GroupId::parse(id.as_str()).map(|g| g.campaign_id()),
            Ok(campaign)
        );
        assert!(GroupId::parse("grp_nope").is_err());
        assert!(GroupId::parse(&id.as_str().replace("grp_", "res_")).is_err());
    }
}
