//! The reference model extended to group buys: random sequences of opens, joins, confirms,
//! cancels, time passing and reaping, compared answer by answer on every engine.

use crate::engines::{make, Kind};
use crate::groups::{group_campaign, request};
use flashsale::domain::{
    Campaign, GroupId, GroupStatus, Millis, Refusal, ReservationId, ReservationStatus,
};
use flashsale::engine::{CampaignSnapshot, CancelScope, Engine, GroupOutcome, Transition};
use proptest::prelude::*;
use std::collections::HashMap;

const STOCK: u64 = 9;
const SIZE: u64 = 3;
const LIMIT: u64 = 2;
const HOLD_MS: i64 = 30_000;
const WINDOW_MS: i64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    Open { user: u8 },
    Join { pick: usize, user: u8 },
    Confirm { pick: usize },
    Cancel { pick: usize, store: bool },
    Advance { ms: i64 },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..6).prop_map(|user| Op::Open { user }),
        4 => (any::<usize>(), 0u8..6).prop_map(|(pick, user)| Op::Join { pick, user }),
        3 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, store)| Op::Cancel { pick, store }),
        1 => (0i64..40_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Done(usize, usize),
    Refused(Refusal),
    Confirm(&'static str, ReservationStatus),
    Ended(u32),
}

struct MGroup {
    status: GroupStatus,
    expires: i64,
    members: Vec<usize>,
    confirmed: u64,
}

struct MRes {
    user: u8,
    group: usize,
    status: ReservationStatus,
    expires: i64,
}

#[derive(Default)]
struct Model {
    available: u64,
    held: u64,
    confirmed: u64,
    users: HashMap<u8, u64>,
    groups: Vec<MGroup>,
    res: Vec<MRes>,
    now: i64,
}

impl Model {
    fn active(&self, g: usize) -> usize {
        self.groups[g]
            .members
            .iter()
            .filter(|&&r| self.res[r].status.takes_units())
            .count()
    }

    fn fail_if_due(&mut self, g: usize) -> u32 {
        let group = &self.groups[g];
        if group.status != GroupStatus::Open || self.now < group.expires {
            return 0;
        }
        let confirmed = group.confirmed;
        self.available += SIZE;
        self.held -= SIZE - confirmed;
        self.confirmed -= confirmed;
        let mut released = 0;
        for r in self.groups[g].members.clone() {
            if self.res[r].status.takes_units() {
                self.res[r].status = ReservationStatus::Released;
                *self.users.entry(self.res[r].user).or_default() -= 1;
                released += 1;
            }
        }
        self.groups[g].status = GroupStatus::Failed;
        self.groups[g].confirmed = 0;
        released
    }

    fn release(&mut self, r: usize, to: ReservationStatus) {
        let g = self.res[r].group;
        if self.res[r].status == ReservationStatus::Confirmed {
            self.groups[g].confirmed -= 1;
            self.confirmed -= 1;
            self.held += 1;
        }
        *self.users.entry(self.res[r].user).or_default() -= 1;
        self.res[r].status = to;
    }

    fn add(&mut self, g: usize, user: u8) -> usize {
        self.res.push(MRes {
            user,
            group: g,
            status: ReservationStatus::Held,
            expires: self.now + HOLD_MS,
        });
        let r = self.res.len() - 1;
        self.groups[g].members.push(r);
        *self.users.entry(user).or_default() += 1;
        r
    }

    fn apply(&mut self, op: &Op) -> Option<Answer> {
        Some(match *op {
            Op::Open { user } => {
                if self.available < SIZE {
                    return Some(Answer::Refused(Refusal::SoldOut));
                }
                if self.users.get(&user).copied().unwrap_or(0) + 1 > LIMIT {
                    return Some(Answer::Refused(Refusal::LimitExceeded));
                }
                self.available -= SIZE;
                self.held += SIZE;
                self.groups.push(MGroup {
                    status: GroupStatus::Open,
                    expires: self.now + WINDOW_MS,
                    members: vec![],
                    confirmed: 0,
                });
                let g = self.groups.len() - 1;
                let r = self.add(g, user);
                Answer::Done(g, r)
            }
            Op::Join { pick, user } => {
                if self.groups.is_empty() {
                    return None;
                }
                let g = pick % self.groups.len();
                self.fail_if_due(g);
                if self.groups[g].status != GroupStatus::Open {
                    return Some(Answer::Refused(Refusal::GroupClosed));
                }
                let mine = self.groups[g]
                    .members
                    .iter()
                    .rev()
                    .find(|&&r| self.res[r].user == user)
                    .copied();
                if mine.is_some_and(|r| self.res[r].status.takes_units()) {
                    return Some(Answer::Refused(Refusal::AlreadyMember));
                }
                if self.active(g) >= SIZE as usize {
                    return Some(Answer::Refused(Refusal::GroupFull));
                }
                if self.users.get(&user).copied().unwrap_or(0) + 1 > LIMIT {
                    return Some(Answer::Refused(Refusal::LimitExceeded));
                }
                let r = self.add(g, user);
                Answer::Done(g, r)
            }
            Op::Confirm { pick } => {
                if self.res.is_empty() {
                    return None;
                }
                let r = pick % self.res.len();
                self.fail_if_due(self.res[r].group);
                if self.res[r].status == ReservationStatus::Held && self.res[r].expires <= self.now
                {
                    self.release(r, ReservationStatus::Expired);
                }
                match self.res[r].status {
                    ReservationStatus::Confirmed => {
                        Answer::Confirm("unchanged", ReservationStatus::Confirmed)
                    }
                    ReservationStatus::Held => {
                        let g = self.res[r].group;
                        self.res[r].status = ReservationStatus::Confirmed;
                        self.held -= 1;
                        self.confirmed += 1;
                        self.groups[g].confirmed += 1;
                        if self.groups[g].confirmed == SIZE {
                            self.groups[g].status = GroupStatus::Formed;
                        }
                        Answer::Confirm("done", ReservationStatus::Confirmed)
                    }
                    other => Answer::Confirm("not_held", other),
                }
            }
            Op::Cancel { pick, store } => {
                if self.res.is_empty() {
                    return None;
                }
                let r = pick % self.res.len();
                let g = self.res[r].group;
                self.fail_if_due(g);
                if self.res[r].status == ReservationStatus::Held && self.res[r].expires <= self.now
                {
                    self.release(r, ReservationStatus::Expired);
                }
                let formed = self.groups[g].status == GroupStatus::Formed;
                match self.res[r].status {
                    ReservationStatus::Cancelled => {
                        Answer::Confirm("unchanged", ReservationStatus::Cancelled)
                    }
                    ReservationStatus::Held => {
                        self.release(r, ReservationStatus::Cancelled);
                        Answer::Confirm("done", ReservationStatus::Cancelled)
                    }
                    ReservationStatus::Confirmed if store && !formed => {
                        self.release(r, ReservationStatus::Cancelled);
                        Answer::Confirm("done", ReservationStatus::Cancelled)
                    }
                    other => Answer::Confirm("not_held", other),
                }
            }
            Op::Advance { ms } => {
                self.now += ms;
                return None;
            }
            Op::Expire => {
                let mut ended = 0;
                for g in 0..self.groups.len() {
                    ended += self.fail_if_due(g);
                }
                for r in 0..self.res.len() {
                    if self.res[r].status == ReservationStatus::Held
                        && self.res[r].expires <= self.now
                    {
                        self.release(r, ReservationStatus::Expired);
                        ended += 1;
                    }
                }
                Answer::Ended(ended)
            }
        })
    }
}

async fn play(engine: &Engine, c: &Campaign, ops: &[Op], start: i64) -> Result<(), TestCaseError> {
    let mut model = Model {
        available: STOCK,
        now: start,
        ..Model::default()
    };
    let mut groups: Vec<GroupId> = Vec::new();
    let mut reservations: Vec<ReservationId> = Vec::new();
    let mut now = start;
    for (step, op) in ops.iter().enumerate() {
        let at = Millis(now);
        let key = format!("k{step}");
        let mut record = |outcome: GroupOutcome, groups: &mut Vec<GroupId>| match outcome {
            GroupOutcome::Done(group) => {
                let g = match groups.iter().position(|id| *id == group.id) {
                    Some(g) => g,
                    None => {
                        groups.push(group.id.clone());
                        groups.len() - 1
                    }
                };
                let rid = group
                    .members
                    .last()
                    .expect("a member")
                    .reservation_id
                    .clone();
                reservations.push(rid);
                Some(Answer::Done(g, reservations.len() - 1))
            }
            GroupOutcome::Refused(r) => Some(Answer::Refused(r)),
            other => panic!("unexpected {other:?}"),
        };
        let answer = match *op {
            Op::Open { user } => {
                let outcome = engine
                    .open_group(&request(
                        &c.id,
                        &GroupId::generate(&c.id),
                        &format!("u{user}"),
                        &key,
                        at,
                    ))
                    .await
                    .expect("answers");
                record(outcome, &mut groups)
            }
            Op::Join { pick, user } if !groups.is_empty() => {
                let id = groups[pick % groups.len()].clone();
                let outcome = engine
                    .join_group(&request(&c.id, &id, &format!("u{user}"), &key, at))
                    .await
                    .expect("answers");
                record(outcome, &mut groups)
            }
            Op::Confirm { pick } if !reservations.is_empty() => Some(transition(
                engine
                    .confirm(&reservations[pick % reservations.len()], at)
                    .await
                    .expect("answers"),
            )),
            Op::Cancel { pick, store } if !reservations.is_empty() => {
                let scope = if store {
                    CancelScope::HeldOrConfirmed
                } else {
                    CancelScope::HeldOnly
                };
                Some(transition(
                    engine
                        .cancel(&reservations[pick % reservations.len()], scope, at)
                        .await
                        .expect("answers"),
                ))
            }
            Op::Join { .. } | Op::Confirm { .. } | Op::Cancel { .. } => None,
            Op::Advance { ms } => {
                now += ms;
                None
            }
            Op::Expire => Some(Answer::Ended(
                engine.expire_due(&c.id, at, 1_000).await.expect("answers"),
            )),
        };
        let expected = model.apply(op);
        prop_assert_eq!(&answer, &expected, "step {} {:?}", step, op);
        let s = engine
            .campaign(&c.id)
            .await
            .expect("answers")
            .expect("exists");
        prop_assert_eq!(
            (s.available, s.held, s.confirmed),
            (model.available, model.held, model.confirmed),
            "counts after step {} {:?}",
            step,
            op
        );
        for (g, id) in groups.iter().enumerate() {
            let group = engine.group(id).await.expect("answers").expect("exists");
            prop_assert_eq!(
                group.status,
                model.groups[g].status,
                "group {} after step {}",
                g,
                step
            );
        }
    }
    Ok(())
}

fn transition(outcome: Transition) -> Answer {
    match outcome {
        Transition::Done(r) => Answer::Confirm("done", r.status),
        Transition::Unchanged(r) => Answer::Confirm("unchanged", r.status),
        Transition::NotHeld(r) => Answer::Confirm("not_held", r.status),
        Transition::NotFound => Answer::Confirm("not_found", ReservationStatus::Held),
    }
}

fn check(kind: Kind, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = runtime.block_on(make(kind));
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        runtime.block_on(async {
            let c = group_campaign(STOCK, SIZE, LIMIT);
            assert_ne!(engine.load(CampaignSnapshot::fresh(&c)).await.expect("answers"), 0);
            play(&engine, &c, &ops, Millis::now().0).await
        })?;
    });
}

#[test]
fn the_memory_engine_follows_the_group_model() {
    check(Kind::Memory, 256);
}

#[test]
fn the_redis_engine_follows_the_group_model() {
    check(Kind::Redis, 64);
}

#[test]
fn the_gated_redis_engine_follows_the_group_model() {
    check(Kind::GatedRedis, 32);
}
