//! A real catalogue: a hot sale beside a thousand idle campaigns keeps its promises on time —
//! every acknowledged reservation reaches the database, its holds end, and the status filter
//! of the campaign list finds the campaign that just sold out among the idle ones (from the
//! database's availability and the work index's active list, never by asking the engine
//! about every campaign). On memory, Redis and the Redis Cluster.

use crate::helpers::{created_reservation, spawn_app_with, Backend, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Idle campaigns beside the sale.
const IDLE: usize = 1_000;

async fn idle_catalogue(app: &TestApp) -> Vec<String> {
    futures::stream::iter(0..IDLE)
        .map(|_| app.campaign(10, 1, json!({})))
        .buffer_unordered(16)
        .collect()
        .await
}

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/v1/campaigns?{query}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

fn ids(page: &Value) -> Vec<String> {
    page["campaigns"]
        .as_array()
        .expect("campaigns")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

async fn a_hot_sale_beside_an_idle_catalogue_is_persisted_expired_and_listed(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let idle = idle_catalogue(&app).await;
    let stock = 200;
    let hot = app.campaign(stock, 1, json!({"hold_seconds": 2})).await;
    let reserved: Vec<Value> = futures::stream::iter(0..stock)
        .map(|n| {
            let (app, hot) = (&app, &hot);
            async move { created_reservation(app.reserve(hot, &format!("u{n}"), 1).await).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(reserved.len() as u64, stock);

    // Sold out a moment ago: the filter finds it among the idle campaigns, at once.
    let sold_out = list(&app, "status=sold_out").await;
    assert_eq!(ids(&sold_out), vec![hot.clone()]);
    let active = list(&app, "status=active&limit=5").await;
    assert_eq!(ids(&active).len(), 5);
    assert_eq!(active["has_more"], true);
    assert!(ids(&active).iter().all(|id| idle.contains(id)));

    // Every acknowledged reservation reaches the database, and every hold ends there.
    let campaign = app
        .store
        .campaign(&flashsale::domain::CampaignId::parse(&hot).expect("valid"))
        .await
        .expect("database")
        .expect("known");
    let started = Instant::now();
    loop {
        let counts = app.store.counts(&campaign).await.expect("database");
        let expired: Vec<Value> = {
            let page = app
                .client
                .get(app.url(&format!(
                    "/v1/campaigns/{hot}/reservations?status=expired&limit=500"
                )))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .expect("sent")
                .json::<Value>()
                .await
                .expect("json");
            page["reservations"].as_array().cloned().unwrap_or_default()
        };
        if counts.held == 0 && counts.confirmed == 0 && expired.len() as u64 == stock {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{counts:?}, {} expired in the database",
            expired.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back in stock once the holds ended: active again, and no longer sold out.
    assert!(ids(&list(&app, "status=sold_out").await).is_empty());
}

mod a_hot_sale_beside_an_idle_catalogue {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        a_hot_sale_beside_an_idle_catalogue_is_persisted_expired_and_listed(Backend::Memory).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        a_hot_sale_beside_an_idle_catalogue_is_persisted_expired_and_listed(Backend::Redis).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        a_hot_sale_beside_an_idle_catalogue_is_persisted_expired_and_listed(Backend::Cluster).await
    }
}
