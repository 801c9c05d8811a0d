//! The verification fails loudly when it should: a sale against the real service verifies,
//! then the same sale against a tampered database does not.

use flashsale::config::Config;
use flashsale::startup::Application;
use loadtest::{
    create_campaign, play, settle, verify, wait_for_feed, Burst, Drive, Service, Target,
};
use sqlx::Connection;
use std::time::Duration;

const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_passes_on_a_real_sale_and_fails_on_a_tampered_database() {
    a_real_sale_verifies_and_a_tampered_database_does_not(false).await;
}

/// The same sale with the service on a Redis Cluster (`scripts/ensure-services` starts one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_passes_on_a_real_sale_and_fails_on_a_tampered_database_on_a_redis_cluster() {
    a_real_sale_verifies_and_a_tampered_database_does_not(true).await;
}

async fn a_real_sale_verifies_and_a_tampered_database_does_not(cluster: bool) {
    let schema = format!("lt_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = sqlx::PgConnection::connect(DATABASE)
        .await
        .expect("the test needs Postgres");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("schema");
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("address");
    if cluster {
        config.redis_cluster_nodes = std::env::var("FLASHSALE_TEST_REDIS_CLUSTER")
            .unwrap_or_else(|_| {
                "redis://127.0.0.1:17001,redis://127.0.0.1:17002,redis://127.0.0.1:17003".into()
            })
            .split(',')
            .map(str::to_owned)
            .collect();
    } else {
        config.redis_url = Some(
            std::env::var("FLASHSALE_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        );
    }
    config.redis_namespace = schema.clone();
    config.database_url = Some(format!("{DATABASE}?options=-csearch_path%3D{schema}"));
    config.admin_tokens = vec!["adm".into()];
    config.store_tokens = vec!["sto".into()];
    config.user_rate_per_second = 0;
    config.reaper_interval_ms = 100;
    let application = Application::build(config)
        .await
        .expect("the service builds (Redis running?)");
    let url = format!("http://{}", application.address());
    tokio::spawn(application.run_until(std::future::pending()));
    let service = Service::new(&url, "adm", "sto");

    create_campaign(&service, "tamper", 20, 1, 1)
        .await
        .expect("created");
    let burst = Burst {
        campaign: "tamper".into(),
        attempts: 200,
        users: 50,
        drive: Drive::Closed { concurrency: 16 },
        target: Target::Reserve,
        run_id: "verify".into(),
        tickets: Default::default(),
    };
    let report = play(&service, &burst).await.expect("played");
    assert_eq!(report.winners.len(), 20);
    let settled = settle(&service, &report.winners, 0.5, 0.25)
        .await
        .expect("settled");
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_feed(&service, 40, "tamper", Duration::from_secs(20))
        .await
        .expect("caught up");

    let honest = verify(&service, "tamper", 20, 1, &report.winners, &settled)
        .await
        .expect("verifies");
    assert!(honest.passed(), "{:?}", honest.failures());

    // Lose one acknowledged reservation from the database.
    let lost = &report.winners[0].1;
    let deleted = sqlx::query(&format!(
        "DELETE FROM {schema}.events WHERE type = 'reservation.held' AND payload LIKE '%' || $1 || '%'"
    ))
    .bind(lost)
    .execute(&mut admin)
    .await
    .expect("tampered")
    .rows_affected();
    assert_eq!(deleted, 1);

    let tampered = verify(&service, "tamper", 20, 1, &report.winners, &settled)
        .await
        .expect("verifies");
    assert!(!tampered.passed());
    let failures = tampered.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("every 201 in the database, once"),
        "{failures:?}"
    );
    assert!(failures[0].contains("1 missing"), "{failures:?}");
}
