//! After the decision: events flow from the engine's streams to the database (the
//! persister), and the database rebuilds what the engine lost (recovery) and is compared with
//! it (reconciliation).

pub mod persister;
pub mod recovery;
