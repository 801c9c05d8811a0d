//! The key schema's Rust side (the table is in `src/engine/redis/scripts/README.md`). Every key of a campaign
//! carries the hash tag `{c:<campaign id>}`, so every script touches one slot.

use crate::domain::{CampaignId, ReservationId};

/// The namespace (key prefix) when none is configured.
pub const DEFAULT_NAMESPACE: &str = "fs";

/// The keys of one campaign.
pub struct Keys {
    pub campaign: String,
}

impl Keys {
    /// `v3`: per-user counts and idempotency records inside the campaign hash, a list of
    /// holds, a list of records for the sold-out gate, length-prefixed scoped keys.
    /// Campaigns kept under an older layout are invisible to this one and are rebuilt from
    /// the database on first use (see `src/engine/redis/scripts/README.md`).
    pub fn of(namespace: &str, id: &CampaignId) -> Self {
        Keys {
            campaign: format!("{namespace}:v3:{{c:{id}}}"),
        }
    }

    pub fn records(&self) -> String {
        format!("{}:recs", self.campaign)
    }

    pub fn expiries(&self) -> String {
        format!("{}:exp", self.campaign)
    }

    pub fn group_idempotency(&self) -> String {
        format!("{}:gidem", self.campaign)
    }

    pub fn group_expiries(&self) -> String {
        format!("{}:gexp", self.campaign)
    }

    pub fn events(&self) -> String {
        format!("{}:events", self.campaign)
    }

    /// A shard's open outgoing transfers (`engine::sharded`).
    pub fn transfers(&self) -> String {
        format!("{}:xout", self.campaign)
    }

    /// Store idempotency keys claimed in a shard (`engine::sharded`).
    pub fn claims(&self) -> String {
        format!("{}:claims", self.campaign)
    }

    /// The transfer ids a shard received.
    pub fn received(&self) -> String {
        format!("{}:xin", self.campaign)
    }

    /// A key that never exists, declared by a script that makes new keys of the campaign
    /// (a group and its lists): while the campaign's slot is half moved to another cluster
    /// node, Redis refuses a script with a declared key it lacks (TRYAGAIN, ASK) instead of
    /// letting it fail half way at the first new key, after its first writes.
    pub fn fresh(&self, id: &ReservationId) -> String {
        format!("{}:new:{id}", self.campaign)
    }

    /// Every reservation of the campaign (shard), one packed field each (see
    /// `scripts/lib.lua`, `get_reservation`).
    pub fn reservations(&self) -> String {
        format!("{}:rs", self.campaign)
    }
}

/// The set of every campaign id. It spans campaigns, so no script touches it.
pub fn campaign_index(namespace: &str) -> String {
    format!("{namespace}:campaigns")
}

/// The id of the namespace's data (see `Backend::dataset`): made when missing, so a Redis
/// that restarted empty gets a new one. Until load epochs were kept per campaign, it was also
/// every campaign's epoch (see `RedisEngine::adopt_legacy_epochs`).
pub fn dataset(namespace: &str) -> String {
    format!("{namespace}:epoch")
}
