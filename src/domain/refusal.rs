//! Refusals: why a decision did not happen, each with its stable `code`.

/// Why a reservation attempt was refused. Refusals are answers, not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    CampaignNotFound,
    WrongCampaignKind,
    NotStarted,
    Ended,
    /// Fewer units are available than asked for.
    SoldOut,
    /// The user's held + confirmed + asked would pass the campaign's `per_user_limit`.
    LimitExceeded,
    /// No such group.
    GroupNotFound,
    /// The group already has `size` members holding or confirmed.
    GroupFull,
    /// The group formed or failed, or its window passed.
    GroupClosed,
    /// The user already holds or confirmed a slot in this group.
    AlreadyMember,
    /// A ticket was asked of a campaign without a waiting room.
    NoWaitingRoom,
}

impl Refusal {
    /// Every refusal, in declaration order (`refusal as usize` indexes it).
    pub const ALL: [Refusal; 11] = [
        Refusal::CampaignNotFound,
        Refusal::WrongCampaignKind,
        Refusal::NotStarted,
        Refusal::Ended,
        Refusal::SoldOut,
        Refusal::LimitExceeded,
        Refusal::GroupNotFound,
        Refusal::GroupFull,
        Refusal::GroupClosed,
        Refusal::AlreadyMember,
        Refusal::NoWaitingRoom,
    ];

    /// The contract's stable `code`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::CampaignNotFound => "campaign_not_found",
            Refusal::WrongCampaignKind => "wrong_campaign_kind",
            Refusal::NotStarted => "not_started",
            Refusal::Ended => "ended",
            Refusal::SoldOut => "sold_out",
            Refusal::LimitExceeded => "limit_exceeded",
            Refusal::GroupNotFound => "group_not_found",
            Refusal::GroupFull => "group_full",
            Refusal::GroupClosed => "group_closed",
            Refusal::AlreadyMember => "already_member",
            Refusal::NoWaitingRoom => "no_waiting_room",
        }
    }

    /// Inverse of [`Refusal::code`], used where an engine answers with the code string.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "campaign_not_found" => Refusal::CampaignNotFound,
            "wrong_campaign_kind" => Refusal::WrongCampaignKind,
            "not_started" => Refusal::NotStarted,
            "ended" => Refusal::Ended,
            "sold_out" => Refusal::SoldOut,
            "limit_exceeded" => Refusal::LimitExceeded,
            "group_not_found" => Refusal::GroupNotFound,
            "group_full" => Refusal::GroupFull,
            "no_waiting_room" => Refusal::NoWaitingRoom,
            "group_closed" => Refusal::GroupClosed,
            "already_member" => Refusal::AlreadyMember,
            _ => return None,
        })
    }
}
