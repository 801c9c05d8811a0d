//! The waiting room: tickets, their status, and the signed passes admitted tickets get.
//!
//! A pass is `<ticket id>.<expires ms>.<hex HMAC-SHA256>` over the ticket, the user and the
//! expiry: any instance holding the key checks it without asking the engine, and it is good
//! only for its user on its campaign until it expires.

use super::{CampaignId, Millis, QueueRule, UserId};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

scoped_id_type!(
    /// A ticket id: `tkt_<ULID>_<campaign id>`; it names its campaign like a reservation id.
    TicketId,
    "tkt_",
    "ticket"
);

/// Crockford's base 32, as ULIDs spell it.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of a ULID that name a line (its time and 40 random bits); the other 8 are the
/// ticket's number in it.
pub const LINE_CHARS: usize = 18;

impl TicketId {
    /// A fresh line's generation: the first [`LINE_CHARS`] characters of a new ULID.
    pub fn new_line() -> String {
        ulid::Ulid::new().to_string()[..LINE_CHARS].to_owned()
    }

    /// Ticket `number` of the line `line` (see [`TicketId::new_line`]) in `campaign`: a ULID
    /// whose last 8 characters are the number, so an engine can keep tickets by number.
    /// `None` if `line` is not a line's generation or the number does not fit 40 bits.
    pub fn numbered(campaign: &CampaignId, line: &str, number: u64) -> Option<Self> {
        if line.len() != LINE_CHARS || number >= 1 << 40 {
            return None;
        }
        let mut digits = [b'0'; 8];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = CROCKFORD[((number >> (5 * (7 - i))) & 31) as usize];
        }
        let ulid = format!("{line}{}", std::str::from_utf8(&digits).ok()?);
        TicketId::parse(&format!("tkt_{ulid}_{campaign}")).ok()
    }

    /// The line and number of a ticket made by [`TicketId::numbered`] (any ticket id reads
    /// as some line's number; only the line's keeper knows whether it is one of its own).
    pub fn line_number(&self) -> (&str, u64) {
        let ulid = &self.0["tkt_".len().."tkt_".len() + 26];
        let number = ulid[LINE_CHARS..].bytes().fold(0u64, |n, c| {
            let digit = CROCKFORD.iter().position(|&d| d == c).unwrap_or(0) as u64;
            (n << 5) | digit
        });
        (&ulid[..LINE_CHARS], number)
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStatus {
    /// In line. `position` is 1 for the next to be admitted; `None` before the draw at
    /// `starts_at` (the order is not known yet).
    Waiting { position: Option<u64> },
    /// Let through: its pass is valid until `until`.
    Admitted { until: Millis },
    /// Still in line, but no unit is left (it may come back if holds end unpaid).
    SoldOut,
    /// Its pass lapsed, or the campaign ended before its turn.
    Expired,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Waiting { .. } => "waiting",
            TicketStatus::Admitted { .. } => "admitted",
            TicketStatus::SoldOut => "sold_out",
            TicketStatus::Expired => "expired",
        }
    }
}

/// One ticket as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: TicketId,
    pub user_id: UserId,
    pub status: TicketStatus,
    /// The campaign's line as of this read (atomically with `status`).
    pub line: LinePoint,
}

/// Where a campaign's line stood at one read: how many tickets it had admitted in all, in
/// which incarnation of the line. A waiting ticket at `position` p when `admitted` was a is
/// at p - (a' - a) when it is a' — admission takes from the front, later joins go behind —
/// as long as that is at least 1 and the generation is the same.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinePoint {
    pub admitted: u64,
    /// Changes when the engine lost the line (a Redis that restarted empty).
    pub generation: String,
}

/// A campaign's line now: where it stands, and the units available.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Line {
    pub point: LinePoint,
    pub available: u64,
}

impl Ticket {
    /// Seconds until the ticket's turn, as best known: the time to the draw, then the
    /// people ahead at the admission rate. Zero once admitted or done.
    pub fn eta_seconds(&self, rule: &QueueRule, starts_at: Option<Millis>, now: Millis) -> u64 {
        let until_start = starts_at
            .map_or(0, |s| (s.0 - now.0).max(0) as u64)
            .div_ceil(1000);
        match self.status {
            TicketStatus::Waiting { position: None } => until_start,
            TicketStatus::Waiting {
                position: Some(ahead),
            } => until_start + ahead.div_ceil(u64::from(rule.admit_per_second)),
            _ => 0,
        }
    }
}

/// Signs and checks passes with one key.
#[derive(Clone)]
pub struct PassKey(Hmac<Sha256>);

impl fmt::Debug for PassKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PassKey(..)")
    }
}

/// Why a pass was not accepted (the caller sees one answer, 403 `queue_pass_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassRefusal {
    Malformed,
    OtherCampaign,
    Expired,
    /// Not signed with the key, or signed for another user.
    BadSignature,
}

impl PassKey {
    pub fn new(key: &[u8]) -> Self {
        PassKey(Hmac::new_from_slice(key).expect("HMAC takes any key length"))
    }

    fn mac(&self, ticket: &TicketId, user: &UserId, expires: Millis) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(ticket.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(user.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(expires.0.to_string().as_bytes());
        mac
    }

    /// The pass of an admitted ticket.
    pub fn sign(&self, ticket: &TicketId, user: &UserId, expires: Millis) -> String {
        let tag = self.mac(ticket, user, expires).finalize().into_bytes();
        format!("{ticket}.{}.{}", expires.0, hex::encode(tag))
    }

    /// The ticket of a pass that is good for `user` on `campaign` at `now`, and when the
    /// pass expires.
    pub fn check(
        &self,
        pass: &str,
        campaign: &CampaignId,
        user: &UserId,
        now: Millis,
    ) -> Result<(TicketId, Millis), PassRefusal> {
        let mut parts = pass.rsplitn(3, '.');
        let (Some(tag), Some(expires), Some(ticket)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(PassRefusal::Malformed);
        };
        let ticket = TicketId::parse(ticket).map_err(|_| PassRefusal::Malformed)?;
        let expires = Millis(expires.parse().map_err(|_| PassRefusal::Malformed)?);
        let tag = hex::decode(tag).map_err(|_| PassRefusal::Malformed)?;
        if ticket.campaign_id() != *campaign {
            return Err(PassRefusal::OtherCampaign);
        }
        self.mac(&ticket, user, expires)
            .verify_slice(&tag)
            .map_err(|_| PassRefusal::BadSignature)?;
        if expires <= now {
            return Err(PassRefusal::Expired);
        }
        Ok((ticket, expires))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_numbered_ticket_reads_back_its_line_and_number() {
        let campaign = CampaignId::parse("c1").expect("valid");
        let line = TicketId::new_line();
        for number in [1, 31, 32, 100, 123_456_789, (1 << 40) - 1] {
            let ticket = TicketId::numbered(&campaign, &line, number).expect("fits");
            assert_eq!(ticket.line_number(), (line.as_str(), number));
            assert_eq!(ticket.campaign_id(), campaign);
        }
        assert_eq!(TicketId::numbered(&campaign, &line, 1 << 40), None);
        assert_eq!(TicketId::numbered(&campaign, "short", 1), None);
    }

    use super::*;

    fn parts() -> (PassKey, TicketId, UserId, CampaignId) {
        let campaign = CampaignId::parse("c1").expect("valid");
        (
            PassKey::new(b"k"),
            TicketId::generate(&campaign),
            UserId::parse("u1").expect("valid"),
            campaign,
        )
    }

    #[test]
    fn a_pass_is_good_only_for_its_user_campaign_and_time() {
        let (key, ticket, user, campaign) = parts();
        let pass = key.sign(&ticket, &user, Millis(2_000));
        assert_eq!(
            key.check(&pass, &campaign, &user, Millis(1_999)),
            Ok((ticket.clone(), Millis(2_000)))
        );
        assert_eq!(
            key.check(&pass, &campaign, &user, Millis(2_000)),
            Err(PassRefusal::Expired)
        );
        let other = UserId::parse("u2").expect("valid");
        assert_eq!(
            key.check(&pass, &campaign, &other, Millis(1)),
            Err(PassRefusal::BadSignature)
        );
        let elsewhere = CampaignId::parse("c2").expect("valid");
        assert_eq!(
            key.check(&pass, &elsewhere, &user, Millis(1)),
            Err(PassRefusal::OtherCampaign)
        );
        assert_eq!(
            PassKey::new(b"other").check(&pass, &campaign, &user, Millis(1)),
            Err(PassRefusal::BadSignature)
        );
        // A later expiry with the old signature is not the same pass.
        let stretched = pass.replace(".2000.", ".9000.");
        assert_eq!(
            key.check(&stretched, &campaign, &user, Millis(1)),
            Err(PassRefusal::BadSignature)
        );
        for junk in ["", "x", "a.b.c", &format!("{ticket}.1.zz")] {
            assert_eq!(
                key.check(junk, &campaign, &user, Millis(1)),
                Err(PassRefusal::Malformed)
            );
        }
    }
}
