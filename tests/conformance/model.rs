//! A small reference model of the reservation rules, and a randomized test that drives every
//! engine with random operation sequences and compares each answer with the model's.

use crate::engines::{attempt, campaign, make, stock, Kind};
use flashsale::domain::{Campaign, Millis, Refusal, ReservationId, ReservationStatus};
use flashsale::engine::{
    CampaignSnapshot, CancelScope, Engine, ReserveOutcome, StockOutcome, Transition,
};
use proptest::prelude::*;
use std::collections::HashMap;

const STOCK: u64 = 5;
const LIMIT: u64 = 3;
const HOLD_MS: i64 = 10_000;

#[derive(Debug, Clone)]
enum Op {
    Reserve { user: u8, quantity: u64, key: u8 },
    Confirm { pick: usize },
    Cancel { pick: usize, store: bool },
    Advance { ms: i64 },
    Expire,
    Stock { delta: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 1u64..=3, 0u8..8).prop_map(|(user, quantity, key)| Op::Reserve { user, quantity, key }),
        2 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, store)| Op::Cancel { pick, store }),
        1 => (0i64..12_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        1 => prop_oneof![-3i64..=-1, 1i64..=3].prop_map(|delta| Op::Stock { delta }),
    ]
}

/// What any answer is reduced to for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Reserved(usize),
    Replayed(usize),
    KeyReused,
    Refused(Refusal),
    Done(ReservationStatus),
    Unchanged(ReservationStatus),
    NotHeld(ReservationStatus),
    NotFound,
    Expired(u32),
    Adjusted(u64, u64),
    Insufficient(u64),
}

struct ModelReservation {
    user: u8,
    quantity: u64,
    status: ReservationStatus,
    expires: i64,
}

/// The rules, as plainly as they can be written.
struct Model {
    stock: u64,
    available: u64,
    held: u64,
    confirmed: u64,
    users: HashMap<u8, u64>,
    keys: HashMap<u8, (usize, (u8, u64))>,
    reservations: Vec<ModelReservation>,
    now: i64,
}

impl Model {
    fn new(now: i64) -> Self {
        Model {
            stock: STOCK,
            available: STOCK,
            held: 0,
            confirmed: 0,
            users: HashMap::new(),
            keys: HashMap::new(),
            reservations: Vec::new(),
            now,
        }
    }

    fn give_back(&mut self, index: usize, to: ReservationStatus) {
        let r = &mut self.reservations[index];
        match r.status {
            ReservationStatus::Held => self.held -= r.quantity,
            ReservationStatus::Confirmed => self.confirmed -= r.quantity,
            _ => unreachable!("only held or confirmed reservations give units back"),
        }
        self.available += r.quantity;
        *self.users.entry(r.user).or_default() -= r.quantity;
        r.status = to;
    }

    fn expire_if_due(&mut self, index: usize) {
        let r = &self.reservations[index];
        if r.status == ReservationStatus::Held && r.expires <= self.now {
            self.give_back(index, ReservationStatus::Expired);
        }
    }

    fn apply(&mut self, op: &Op) -> Option<Answer> {
        Some(match *op {
            Op::Reserve {
                user,
                quantity,
                key,
            } => {
                if let Some(&(index, body)) = self.keys.get(&key) {
                    return Some(if body == (user, quantity) {
                        Answer::Replayed(index)
                    } else {
                        Answer::KeyReused
                    });
                }
                if self.available < quantity {
                    return Some(Answer::Refused(Refusal::SoldOut));
                }
                if self.users.get(&user).copied().unwrap_or(0) + quantity > LIMIT {
                    return Some(Answer::Refused(Refusal::LimitExceeded));
                }
                self.available -= quantity;
                self.held += quantity;
                *self.users.entry(user).or_default() += quantity;
                self.reservations.push(ModelReservation {
                    user,
                    quantity,
                    status: ReservationStatus::Held,
                    expires: self.now + HOLD_MS,
                });
                let index = self.reservations.len() - 1;
                self.keys.insert(key, (index, (user, quantity)));
                Answer::Reserved(index)
            }
            Op::Confirm { pick } => {
                if self.reservations.is_empty() {
                    return None;
                }
                let index = pick % self.reservations.len();
                self.expire_if_due(index);
                let r = &mut self.reservations[index];
                match r.status {
                    ReservationStatus::Confirmed => Answer::Unchanged(r.status),
                    ReservationStatus::Held => {
                        r.status = ReservationStatus::Confirmed;
                        self.held -= r.quantity;
                        self.confirmed += r.quantity;
                        Answer::Done(ReservationStatus::Confirmed)
                    }
                    other => Answer::NotHeld(other),
                }
            }
            Op::Cancel { pick, store } => {
                if self.reservations.is_empty() {
                    return None;
                }
                let index = pick % self.reservations.len();
                self.expire_if_due(index);
                match self.reservations[index].status {
                    ReservationStatus::Cancelled => Answer::Unchanged(ReservationStatus::Cancelled),
                    ReservationStatus::Held => {
                        self.give_back(index, ReservationStatus::Cancelled);
                        Answer::Done(ReservationStatus::Cancelled)
                    }
                    ReservationStatus::Confirmed if store => {
                        self.give_back(index, ReservationStatus::Cancelled);
                        Answer::Done(ReservationStatus::Cancelled)
                    }
                    other => Answer::NotHeld(other),
                }
            }
            Op::Advance { ms } => {
                self.now += ms;
                return None;
            }
            Op::Expire => {
                let due: Vec<usize> = (0..self.reservations.len())
                    .filter(|&i| {
                        let r = &self.reservations[i];
                        r.status == ReservationStatus::Held && r.expires <= self.now
                    })
                    .collect();
                for &i in &due {
                    self.give_back(i, ReservationStatus::Expired);
                }
                Answer::Expired(due.len() as u32)
            }
            Op::Stock { delta } => {
                if delta < 0 && self.available < delta.unsigned_abs() {
                    return Some(Answer::Insufficient(self.available));
                }
                self.available = self
                    .available
                    .checked_add_signed(delta)
                    .expect("checked above");
                self.stock = self
                    .stock
                    .checked_add_signed(delta)
                    .expect("stock >= available");
                Answer::Adjusted(self.stock, self.available)
            }
        })
    }
}

/// Plays the same operations on an engine, translating its answers into [`Answer`]s.
async fn play(engine: &Engine, c: &Campaign, ops: &[Op], start: i64) -> Result<(), TestCaseError> {
    let mut model = Model::new(start);
    let mut ids: Vec<ReservationId> = Vec::new();
    let mut now = start;
    for (step, op) in ops.iter().enumerate() {
        let at = Millis(now);
        let answer = match *op {
            Op::Reserve {
                user,
                quantity,
                key,
            } => {
                let request = attempt(
                    c,
                    &format!("user-{user}"),
                    quantity,
                    &format!("key-{key}"),
                    at,
                );
                match engine.reserve(&request).await.expect("engine answers") {
                    ReserveOutcome::Reserved { reservation, .. } => {
                        ids.push(reservation.id);
                        Some(Answer::Reserved(ids.len() - 1))
                    }
                    ReserveOutcome::Replayed(r) => Some(Answer::Replayed(
                        ids.iter().position(|id| *id == r.id).expect("known id"),
                    )),
                    // The same replay, of a reservation the engine forgot after its retention.
                    ReserveOutcome::ReplayOf(first) => Some(Answer::Replayed(
                        ids.iter().position(|id| *id == first).expect("known id"),
                    )),
                    ReserveOutcome::KeyReused => Some(Answer::KeyReused),
                    ReserveOutcome::Refused(refusal) => Some(Answer::Refused(refusal)),
                    ReserveOutcome::RateLimited => panic!("the suite's engines have no rate"),
                }
            }
            Op::Confirm { pick } if !ids.is_empty() => Some(transition(
                engine
                    .confirm(&ids[pick % ids.len()], at)
                    .await
                    .expect("answers"),
            )),
            Op::Cancel { pick, store } if !ids.is_empty() => {
                let scope = if store {
                    CancelScope::HeldOrConfirmed
                } else {
                    CancelScope::HeldOnly
                };
                Some(transition(
                    engine
                        .cancel(&ids[pick % ids.len()], scope, at)
                        .await
                        .expect("answers"),
                ))
            }
            Op::Confirm { .. } | Op::Cancel { .. } => None,
            Op::Advance { ms } => {
                now += ms;
                None
            }
            Op::Expire => Some(Answer::Expired(
                engine.expire_due(&c.id, at, 1_000).await.expect("answers"),
            )),
            Op::Stock { delta } => Some(
                match engine
                    .adjust_stock(&stock(&c.id, delta))
                    .await
                    .expect("answers")
                {
                    StockOutcome::Adjusted { stock, available } => {
                        Answer::Adjusted(stock, available)
                    }
                    StockOutcome::Insufficient { available } => Answer::Insufficient(available),
                    StockOutcome::NotFound => Answer::NotFound,
                    // Every change has a fresh key: neither can happen here.
                    other @ (StockOutcome::Replayed { .. } | StockOutcome::KeyReused) => {
                        panic!("a fresh key answered {other:?}")
                    }
                },
            ),
        };
        let expected = model.apply(op);
        prop_assert_eq!(&answer, &expected, "step {} {:?}", step, op);
        let state = engine
            .campaign(&c.id)
            .await
            .expect("answers")
            .expect("exists");
        prop_assert_eq!(
            (
                state.campaign.stock,
                state.available,
                state.held,
                state.confirmed
            ),
            (model.stock, model.available, model.held, model.confirmed),
            "counts after step {} {:?}",
            step,
            op
        );
    }
    Ok(())
}

fn transition(outcome: Transition) -> Answer {
    match outcome {
        Transition::Done(r) => Answer::Done(r.status),
        Transition::Unchanged(r) => Answer::Unchanged(r.status),
        Transition::NotHeld(r) => Answer::NotHeld(r.status),
        Transition::NotFound => Answer::NotFound,
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
            let c = campaign(STOCK, LIMIT, |d| d.hold_seconds = Some((HOLD_MS / 1000) as u64));
            assert_ne!(engine.load(CampaignSnapshot::fresh(&c)).await.expect("answers"), 0);
            play(&engine, &c, &ops, Millis::now().0).await
        })?;
    });
}

#[test]
fn the_memory_engine_follows_the_model() {
    check(Kind::Memory, 256);
}

#[test]
fn the_redis_engine_follows_the_model() {
    check(Kind::Redis, 96);
}

#[test]
fn the_gated_memory_engine_follows_the_model() {
    check(Kind::GatedMemory, 128);
}

#[test]
fn the_gated_redis_engine_follows_the_model() {
    check(Kind::GatedRedis, 64);
}
