//! The service's one-shot commands beside `serve`: `persist`, `reconcile`, `dead-events`.

use crate::config::Config;
use crate::engine::Engine;
use crate::pipeline::{persister, recovery};
use crate::shutdown;
use crate::startup::{
    connect_engine, connect_store, persister_consumer, persister_settings, stop_signal,
};
use anyhow::Context;
use std::sync::Arc;

/// `flashsale persist`: only the persister, until Ctrl-C or SIGTERM.
pub async fn run_persister_only(config: Config) -> anyhow::Result<()> {
    let backing = connect_engine(&config).await?;
    let store = connect_store(&config).await?;
    let (trigger, shutdown) = shutdown::channel();
    let worker = tokio::spawn(persister::run(
        backing.events(),
        store,
        persister_consumer(),
        persister_settings(&config),
        // Alone, it has nobody to tell whether its writes fail but its log and metrics.
        Arc::default(),
        shutdown,
    ));
    stop_signal().await;
    trigger.trigger();
    worker.await.context("persister task")?;
    Ok(())
}

/// `flashsale reconcile`: prints the drift per campaign; `Ok(false)` if any.
pub async fn reconcile_once(config: Config) -> anyhow::Result<bool> {
    let engine = Engine::new(connect_engine(&config).await?);
    let store = connect_store(&config).await?;
    let drifts = recovery::reconcile(&engine, &store).await?;
    let campaigns = store.campaigns().await?.len();
    println!(
        "{campaigns} campaigns compared, {} with drift",
        drifts.len()
    );
    for d in &drifts {
        println!(
            "{}: engine stock/held/confirmed {}/{}/{}, database {}/{}/{} ({} units)",
            d.campaign,
            d.engine.stock,
            d.engine.held,
            d.engine.confirmed,
            d.database.stock,
            d.database.held,
            d.database.confirmed,
            d.units()
        );
    }
    Ok(drifts.is_empty())
}

/// `flashsale dead-events [--retry]`: lists what the persister set aside, or retries the
/// refused events; `Ok(false)` if any are (still) set aside.
pub async fn dead_events(config: Config, retry: bool) -> anyhow::Result<bool> {
    let store = connect_store(&config).await?;
    if retry {
        let (retried, refused) = store.retry_dead_events().await?;
        println!("{retried} refused events applied, {refused} refused again");
    }
    let dead = store.dead_events().await?;
    println!("{} events set aside", dead.len());
    for d in &dead {
        println!(
            "{} {} {} {} ({}): {}",
            d.id, d.reason, d.campaign_id, d.stream_id, d.kind, d.error
        );
    }
    Ok(dead.is_empty())
}
