//! The [`Engine`](super::Engine)'s operations, one file each. Every operation reads in the
//! same order: refuse while changes cannot be made safely (`decidable`) → the sold-out gate →
//! route to the campaign's shard(s) → the backend's primitive → refill, or rebuild the
//! campaign from the database and try again (`retrying`) → wait for the commit where answers
//! must (`committed`).

mod campaigns;
mod extend;
mod groups;
mod queue;
mod reap;
mod reserve;
mod stock;
mod transitions;
