//! Group buys in memory: a group holds `size` units of its campaign from opening; each member
//! holds one of its slots. Twin of `src/engine/redis/scripts/open_group.lua`, `src/engine/redis/scripts/join_group.lua` and the group
//! parts of `src/engine/redis/scripts/lib.lua`.

use super::campaign::{take_from_user, NewHold, Slot};
use crate::domain::{
    CampaignKind, Change, Group, GroupId, GroupMember, GroupStatus, Millis, Quantity, Refusal,
    ReservationId, ReservationStatus, UserId, Window,
};
use crate::engine::{EngineError, GroupOutcome, GroupRequest};

/// One group: its quota is `size` units of the campaign, held from opening.
pub struct GroupSlot {
    pub leader: UserId,
    pub size: u32,
    pub status: GroupStatus,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// Latest reservation per member, in join order.
    pub members: Vec<(UserId, ReservationId)>,
    /// Members holding or confirmed.
    pub active: u32,
    /// Members confirmed.
    pub confirmed: u32,
}

impl Slot {
    pub fn group_view(&self, id: &GroupId) -> Option<Group> {
        let g = self.groups.get(id)?;
        Some(Group {
            id: id.clone(),
            campaign_id: self.campaign.id.clone(),
            leader_user_id: g.leader.clone(),
            size: g.size,
            status: g.status,
            created_at: g.created_at,
            expires_at: g.expires_at,
            members: g
                .members
                .iter()
                .filter_map(|(user, rid)| {
                    Some(GroupMember {
                        user_id: user.clone(),
                        reservation_id: rid.clone(),
                        status: self.reservations.get(rid)?.status,
                    })
                })
                .collect(),
        })
    }

    /// The replay of an open or join whose idempotency key was seen before.
    pub fn group_replay(&self, request: &GroupRequest) -> Option<GroupOutcome> {
        let (id, fingerprint) = self
            .group_idempotency
            .get(request.idempotency_key.as_str())?;
        if *fingerprint != request.fingerprint {
            return Some(GroupOutcome::KeyReused);
        }
        self.group_view(id).map(GroupOutcome::Replayed)
    }

    /// Gives the requester a slot of the group: a held reservation of one unit.
    pub fn add_member(&mut self, request: &GroupRequest) {
        if let Some(group) = self.groups.get_mut(&request.group_id) {
            group
                .members
                .push((request.user_id.clone(), request.reservation_id.clone()));
            group.active += 1;
        }
        self.group_idempotency.insert(
            request.idempotency_key.to_string(),
            (request.group_id.clone(), request.fingerprint.clone()),
        );
        self.hold(NewHold {
            id: &request.reservation_id,
            user: &request.user_id,
            quantity: Quantity::ONE,
            group: Some(request.group_id.clone()),
            key: &request.idempotency_key,
            fingerprint: &request.fingerprint,
            now: request.now,
        });
    }

    pub fn emit_group(&mut self, at: Millis, id: &GroupId) {
        if let Some(mut group) = self.group_view(id) {
            group.members.clear();
            self.emit(at, Change::Group { group });
        }
    }

    /// Fails the group if it is open past its window: every member with a slot is released,
    /// the whole quota returns to the campaign. Returns how many members were released.
    pub fn fail_group_if_due(&mut self, id: &GroupId, now: Millis) -> u32 {
        let Some(group) = self
            .groups
            .get_mut(id)
            .filter(|g| g.status == GroupStatus::Open && g.expires_at <= now)
        else {
            return 0;
        };
        group.status = GroupStatus::Failed;
        let size = u64::from(group.size);
        let confirmed = u64::from(group.confirmed);
        let expires_at = group.expires_at;
        let members: Vec<ReservationId> =
            group.members.iter().map(|(_, rid)| rid.clone()).collect();
        group.active = 0;
        group.confirmed = 0;
        self.group_expiries.remove(&(expires_at, id.clone()));
        self.available += size;
        self.held -= size - confirmed;
        self.confirmed -= confirmed;
        self.group_counts.open -= 1;
        self.group_counts.failed += 1;
        let mut released_members = 0;
        for rid in members {
            let Some(r) = self.reservations.get_mut(&rid) else {
                continue;
            };
            if !r.status.takes_units() {
                continue;
            }
            if r.status == ReservationStatus::Held {
                self.expiries.remove(&(r.expires_at, rid.clone()));
            }
            r.status = ReservationStatus::Released;
            let released = r.clone();
            take_from_user(&mut self.users, &released.user_id, 1);
            self.emit_reservation(now, released);
            released_members += 1;
        }
        self.emit_group(now, id);
        released_members
    }

    /// Opens a group: holds its whole quota, the opener takes the first self.
    pub fn open_group(&mut self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        if let Some(outcome) = self.group_replay(request) {
            return Ok(outcome);
        }
        let Some(rule) = self
            .campaign
            .group
            .filter(|_| self.campaign.kind == CampaignKind::GroupBuy)
        else {
            return Ok(GroupOutcome::Refused(Refusal::WrongCampaignKind));
        };
        match self.campaign.window(request.now) {
            Window::Before => return Ok(GroupOutcome::Refused(Refusal::NotStarted)),
            Window::After => return Ok(GroupOutcome::Refused(Refusal::Ended)),
            Window::Open => {}
        }
        let size = u64::from(rule.size);
        if self.available < size {
            return Ok(GroupOutcome::Refused(Refusal::SoldOut));
        }
        if self.users.get(&request.user_id).copied().unwrap_or(0) + 1
            > u64::from(self.campaign.per_user_limit)
        {
            return Ok(GroupOutcome::Refused(Refusal::LimitExceeded));
        }
        let expires_at = request.now.plus_seconds(rule.window_seconds);
        self.available -= size;
        self.held += size;
        self.group_counts.open += 1;
        self.groups.insert(
            request.group_id.clone(),
            GroupSlot {
                leader: request.user_id.clone(),
                size: rule.size,
                status: GroupStatus::Open,
                created_at: request.now,
                expires_at,
                members: Vec::new(),
                active: 0,
                confirmed: 0,
            },
        );
        self.group_expiries
            .insert((expires_at, request.group_id.clone()));
        self.emit_group(request.now, &request.group_id);
        self.add_member(request);
        Ok(GroupOutcome::Done(
            self.group_view(&request.group_id)
                .ok_or_else(|| EngineError::Corrupt(format!("{} vanished", request.group_id)))?,
        ))
    }

    /// Joins an open group: one of its slots becomes the joiner's held reservation.
    pub fn join_group(&mut self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        if let Some(outcome) = self.group_replay(request) {
            return Ok(outcome);
        }
        self.fail_group_if_due(&request.group_id, request.now);
        let Some(group) = self.groups.get(&request.group_id) else {
            return Ok(GroupOutcome::Refused(Refusal::GroupNotFound));
        };
        if group.status != GroupStatus::Open {
            return Ok(GroupOutcome::Refused(Refusal::GroupClosed));
        }
        let member = group
            .members
            .iter()
            .rev()
            .find(|(user, _)| *user == request.user_id)
            .and_then(|(_, rid)| self.reservations.get(rid))
            .is_some_and(|r| r.status.takes_units());
        if member {
            return Ok(GroupOutcome::Refused(Refusal::AlreadyMember));
        }
        if group.active >= group.size {
            return Ok(GroupOutcome::Refused(Refusal::GroupFull));
        }
        if self.users.get(&request.user_id).copied().unwrap_or(0) + 1
            > u64::from(self.campaign.per_user_limit)
        {
            return Ok(GroupOutcome::Refused(Refusal::LimitExceeded));
        }
        self.add_member(request);
        Ok(GroupOutcome::Done(
            self.group_view(&request.group_id)
                .ok_or_else(|| EngineError::Corrupt(format!("{} vanished", request.group_id)))?,
        ))
    }
}
