//! Campaigns: what is on sale, how much, for whom and when.

use super::{CampaignId, Millis, ParseError};
use serde::Serialize;

/// How a campaign's stock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    /// Units are reserved one reservation at a time (秒杀, or plain inventory without a window).
    FlashSale,
    /// Units are taken only through groups (拼团).
    GroupBuy,
}

impl CampaignKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignKind::FlashSale => "flash_sale",
            CampaignKind::GroupBuy => "group_buy",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "flash_sale" => Ok(CampaignKind::FlashSale),
            "group_buy" => Ok(CampaignKind::GroupBuy),
            other => Err(ParseError(format!(
                "kind must be flash_sale or group_buy, got {other:?}"
            ))),
        }
    }
}

/// The group-buy rule of a `group_buy` campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GroupRule {
    /// Members (and units) that form a group: 2 to 100.
    pub size: u32,
    /// How long a group may stay open before it fails.
    pub window_seconds: u32,
}

/// The waiting room of a campaign that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueRule {
    /// Waiting users let through per second (while units are left for them).
    pub admit_per_second: u32,
    /// How long a pass stays valid after its ticket is admitted.
    pub pass_seconds: u32,
}

impl QueueRule {
    pub const DEFAULT_PASS_SECONDS: u32 = 120;
    /// A million admissions a second is past any sale; the bound keeps the arithmetic small.
    pub const MAX_ADMIT_PER_SECOND: u64 = 1_000_000;
}

/// A campaign's configuration. Immutable once created, except `stock`, which operators tune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub kind: CampaignKind,
    /// The main store's product reference; opaque here.
    pub sku: String,
    /// Units the campaign started with plus every stock delta since.
    pub stock: u64,
    pub per_user_limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Millis>,
    /// How long a reservation stays held before it expires unpaid.
    pub hold_seconds: u32,
    /// How far past `created_at + hold_seconds` the store may extend a hold while a payment
    /// is in progress.
    pub max_extend_seconds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRule>,
    /// The waiting room, when the campaign has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueRule>,
    /// Shards the stock is spread over (1: one, the campaign itself); each decides on its
    /// own, a user's attempts go to the shard their id hashes to, and units move between
    /// shards when one runs dry (`engine::sharded`).
    pub shards: u8,
    pub created_at: Millis,
}

/// The unchecked fields of a campaign, as a request carries them.
#[derive(Debug, Clone)]
pub struct CampaignDraft {
    pub id: Option<String>,
    pub kind: String,
    pub sku: String,
    pub stock: u64,
    pub per_user_limit: Option<u64>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub hold_seconds: Option<u64>,
    pub max_extend_seconds: Option<u64>,
    pub group: Option<(u64, u64)>,
    /// `(admit_per_second, pass_seconds)`.
    pub queue: Option<(u64, Option<u64>)>,
    pub shards: Option<u64>,
}

impl Campaign {
    /// Stock beyond this is certainly a typo; the bound keeps all sums far from overflow.
    pub const MAX_STOCK: u64 = 1_000_000_000;
    pub const DEFAULT_HOLD_SECONDS: u32 = 900;
    pub const DEFAULT_MAX_EXTEND_SECONDS: u32 = 300;
    /// Thirty days: a hold longer than that is not a hold.
    pub const MAX_HOLD_SECONDS: u64 = 30 * 24 * 3600;
    pub const MAX_SHARDS: u64 = 64;

    /// Checks every field and the rules between them.
    pub fn parse(draft: CampaignDraft, now: Millis) -> Result<Self, ParseError> {
        let id = match draft.id {
            Some(raw) => CampaignId::parse(&raw)?,
            None => CampaignId::generate(),
        };
        let kind = CampaignKind::parse(&draft.kind)?;
        let sku_chars = draft.sku.chars().count();
        if sku_chars == 0 || sku_chars > 128 || draft.sku.chars().any(char::is_control) {
            return Err(ParseError(
                "sku must be 1 to 128 characters without control characters".into(),
            ));
        }
        if !(1..=Self::MAX_STOCK).contains(&draft.stock) {
            return Err(ParseError(format!(
                "stock must be between 1 and {}, got {}",
                Self::MAX_STOCK,
                draft.stock
            )));
        }
        let per_user_limit = bounded(
            "per_user_limit",
            draft.per_user_limit.unwrap_or(1),
            1_000_000,
        )?;
        let hold_seconds = bounded(
            "hold_seconds",
            draft
                .hold_seconds
                .unwrap_or(u64::from(Self::DEFAULT_HOLD_SECONDS)),
            Self::MAX_HOLD_SECONDS,
        )?;
        let max_extend_seconds = match draft.max_extend_seconds {
            None => Self::DEFAULT_MAX_EXTEND_SECONDS,
            Some(n) if n <= Self::MAX_HOLD_SECONDS => n as u32,
            Some(n) => {
                return Err(ParseError(format!(
                    "max_extend_seconds must be between 0 and {}, got {n}",
                    Self::MAX_HOLD_SECONDS
                )))
            }
        };
        let starts_at = draft
            .starts_at
            .as_deref()
            .map(Millis::parse_rfc3339)
            .transpose()?;
        let ends_at = draft
            .ends_at
            .as_deref()
            .map(Millis::parse_rfc3339)
            .transpose()?;
        if let (Some(starts), Some(ends)) = (starts_at, ends_at) {
            if ends <= starts {
                return Err(ParseError("ends_at must be after starts_at".into()));
            }
        }
        let group = match (kind, draft.group) {
            (CampaignKind::GroupBuy, Some((size, window))) => {
                if !(2..=100).contains(&size) {
                    return Err(ParseError(format!(
                        "group.size must be between 2 and 100, got {size}"
                    )));
                }
                let window_seconds =
                    bounded("group.window_seconds", window, Self::MAX_HOLD_SECONDS)?;
                Some(GroupRule {
                    size: size as u32,
                    window_seconds,
                })
            }
            (CampaignKind::GroupBuy, None) => {
                return Err(ParseError(
                    "group is required for a group_buy campaign".into(),
                ))
            }
            (CampaignKind::FlashSale, Some(_)) => {
                return Err(ParseError(
                    "group is only allowed for a group_buy campaign".into(),
                ))
            }
            (CampaignKind::FlashSale, None) => None,
        };
        let queue = match draft.queue {
            None => None,
            Some((rate, pass)) => Some(QueueRule {
                admit_per_second: bounded(
                    "queue.admit_per_second",
                    rate,
                    QueueRule::MAX_ADMIT_PER_SECOND,
                )?,
                pass_seconds: bounded(
                    "queue.pass_seconds",
                    pass.unwrap_or(u64::from(QueueRule::DEFAULT_PASS_SECONDS)),
                    Self::MAX_HOLD_SECONDS,
                )?,
            }),
        };
        let shards = match draft.shards {
            None | Some(1) => 1,
            Some(n) if !(1..=Self::MAX_SHARDS).contains(&n) => {
                return Err(ParseError(format!(
                    "shards must be between 1 and {}, got {n}",
                    Self::MAX_SHARDS
                )))
            }
            Some(_) if kind == CampaignKind::GroupBuy => {
                return Err(ParseError(
                    "shards above 1 are only allowed for a flash_sale campaign".into(),
                ))
            }
            Some(_) if queue.is_some() => {
                return Err(ParseError(
                    "shards above 1 are not allowed with a waiting room".into(),
                ))
            }
            Some(n) => n as u8,
        };
        Ok(Campaign {
            id,
            kind,
            sku: draft.sku,
            stock: draft.stock,
            per_user_limit,
            starts_at,
            ends_at,
            hold_seconds,
            max_extend_seconds,
            group,
            queue,
            shards,
            created_at: now,
        })
    }

    /// Ends the campaign at `now` unless it ended earlier; one not started yet starts and
    /// ends at `now`.
    pub fn end_at(&mut self, now: Millis) {
        self.ends_at = Some(self.ends_at.map_or(now, |ends| ends.min(now)));
        self.starts_at = self.starts_at.map(|starts| starts.min(now));
    }

    /// Where `now` falls relative to the campaign's window.
    pub fn window(&self, now: Millis) -> Window {
        match (self.starts_at, self.ends_at) {
            (Some(starts), _) if now < starts => Window::Before,
            (_, Some(ends)) if now >= ends => Window::After,
            _ => Window::Open,
        }
    }
}

/// Where an instant falls relative to a campaign's `[starts_at, ends_at)` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Before,
    Open,
    After,
}

fn bounded(name: &str, value: u64, max: u64) -> Result<u32, ParseError> {
    if (1..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(ParseError(format!(
            "{name} must be between 1 and {max}, got {value}"
        )))
    }
}

/// A campaign with its live unit counts, as the engine knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignState {
    pub campaign: Campaign,
    /// Units nobody holds: `stock - held - confirmed` (conservation).
    pub available: u64,
    /// Units in held reservations. In a group buy: units open groups hold that no member has
    /// paid for yet (a group holds its whole `size`).
    pub held: u64,
    /// Units in confirmed (paid) reservations. In a group buy: units of open groups whose
    /// member paid, plus every unit of formed groups.
    pub confirmed: u64,
    /// Group counts by status (zero outside group buys).
    pub groups: GroupCounts,
}

/// How many groups a campaign has in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounts {
    pub open: u64,
    pub formed: u64,
    pub failed: u64,
}

impl CampaignState {
    pub fn status(&self, now: Millis) -> CampaignStatus {
        match self.campaign.window(now) {
            Window::Before => CampaignStatus::Scheduled,
            Window::After => CampaignStatus::Ended,
            Window::Open if self.available == 0 => CampaignStatus::SoldOut,
            Window::Open => CampaignStatus::Active,
        }
    }
}

/// The contract's campaign `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Scheduled,
    Active,
    SoldOut,
    Ended,
}
