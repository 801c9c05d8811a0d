//! Storage faults end when the fault ends: a database that refuses writes (a full disk) makes
//! changes that wait for their commit answer 503 `database_unavailable` at once, `/readyz`
//! says why, and once there is room again the persister resumes by itself with nothing lost.
//! The disk is a real one: a small tmpfs mounted for the test (the tests run as root, as CI
//! does; a test that cannot mount fails).

use crate::helpers::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A small tmpfs of its own, unmounted when dropped.
struct TinyDisk {
    root: PathBuf,
}

impl TinyDisk {
    fn mount(megabytes: u32) -> TinyDisk {
        let root = std::env::temp_dir().join(unique_id("tinydisk"));
        std::fs::create_dir_all(&root).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&root)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (as CI runs): {status}"
        );
        TinyDisk { root }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_string_lossy().into_owned()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.root.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            if filler.write_all(&block).is_err() {
                break;
            }
        }
        // The last partial block: byte by byte, until not one more fits.
        while filler.write_all(&[0]).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.root.join("filler")).expect("filler removed");
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l"]).arg(&self.root).status();
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// The embedded engine on an SQLite file whose disk fills up mid-sale: every change is
/// answered within a few seconds — 201 while it commits, then 503 `database_unavailable`
/// (never a 5 s `timeout`), `/readyz` 503 naming the cause; once there is room again the
/// store works without a restart (the "non-zero transaction depth" wedge), the refused
/// attempt retried with its key succeeds, and the database holds every acknowledged
/// reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_at_once_and_the_sale_resumes_when_there_is_room() {
    let disk = TinyDisk::mount(4);
    let sqlite = disk.path("flashsale.db");
    let app = spawn_app_with(Backend::Memory, |c| c.sqlite_path = sqlite).await;
    let id = app.campaign(100_000, 100_000, json!({})).await;
    let attempt = |i: usize| {
        let app = &app;
        let id = id.clone();
        async move {
            app.reserve_with(
                &id,
                &app.store_token,
                &format!("disk-{i}"),
                &json!({"user_id": format!("u{i}")}),
            )
            .await
        }
    };
    let mut acknowledged = HashSet::new();
    for i in 0..10 {
        let body = created_reservation(attempt(i).await).await;
        acknowledged.insert(body["id"].as_str().expect("id").to_owned());
    }

    disk.fill();
    let mut refused = None;
    for i in 10..20_000 {
        let started = Instant::now();
        let response = attempt(i).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "attempt {i} took {:?}",
            started.elapsed()
        );
        match response.status().as_u16() {
            201 => {
                let body: Value = response.json().await.expect("json");
                acknowledged.insert(body["id"].as_str().expect("id").to_owned());
            }
            _ => {
                refused = Some(i);
                assert_problem(response, 503, "database_unavailable").await;
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses changes");
    // While the disk is full: refused at once, and /readyz says why.
    let started = Instant::now();
    assert_problem(attempt(refused + 1).await, 503, "database_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "disk full: {refused} attempts answered 201 first; a refusal took {:?}",
        started.elapsed()
    );
    let (status, body) = app.readiness().await;
    assert_eq!(status, 503, "{body}");
    let why = body["database_status"].as_str().unwrap_or_default();
    assert!(why.contains("durable") && why.contains("full"), "{body}");

    disk.free();
    let started = Instant::now();
    let retried = loop {
        let response = attempt(refused).await;
        if response.status() == 201 {
            break created_reservation(response).await;
        }
        assert_problem(response, 503, "database_unavailable").await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the store never resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "room again: the refused attempt answered 201 after {:?}",
        started.elapsed()
    );
    acknowledged.insert(retried["id"].as_str().expect("id").to_owned());
    let fresh = created_reservation(attempt(refused + 2).await).await;
    acknowledged.insert(fresh["id"].as_str().expect("id").to_owned());
    let (status, body) = app.readiness().await;
    assert_eq!(status, 200, "{body}");

    let stored = app.stored_reservation_ids(&id).await;
    assert!(
        acknowledged.is_subset(&stored),
        "acknowledged but not stored: {:?}",
        acknowledged.difference(&stored).collect::<Vec<_>>()
    );
}

/// Postgres on a disk that fills up mid-sale (the campaign's tables in a tablespace on a
/// small tmpfs), under Redis: the sale goes on (Redis keeps every decision; events wait in
/// its streams), `/readyz` says 503 naming the cause while the persister's writes fail, and
/// once there is room again the persister catches up by itself with every acknowledged
/// reservation stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_a_full_disk_catches_up_by_itself_once_there_is_room() {
    use sqlx::Connection;
    let disk = TinyDisk::mount(4);
    let location = disk.path("pg");
    std::fs::create_dir(&location).expect("tablespace directory");
    let owned = Command::new("chown")
        .args(["postgres:postgres", &location])
        .status()
        .expect("chown runs");
    assert!(owned.success());
    let tablespace = unique_id("full").replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("the tests need a real Postgres on this machine");
    sqlx::query(&format!(
        "CREATE TABLESPACE {tablespace} LOCATION '{location}'"
    ))
    .execute(&mut admin)
    .await
    .expect("tablespace created");
    let url = format!(
        "{}%20-cdefault_tablespace%3D{tablespace}",
        fresh_postgres_schema().await
    );
    let schema = url
        .rsplit("search_path%3D")
        .next()
        .and_then(|rest| rest.split('%').next())
        .expect("schema")
        .to_owned();
    let app = spawn_app_with(Backend::Redis, |c| c.database_url = Some(url)).await;
    let id = app.campaign(100_000, 100_000, json!({})).await;
    let mut acknowledged = HashSet::new();
    let reserve = |i: usize| {
        let app = &app;
        let id = id.clone();
        async move {
            let body = created_reservation(
                app.reserve_with(
                    &id,
                    &app.store_token,
                    &format!("pg-disk-{i}"),
                    &json!({"user_id": format!("u{i}")}),
                )
                .await,
            )
            .await;
            body["id"].as_str().expect("id").to_owned()
        }
    };
    for i in 0..10 {
        acknowledged.insert(reserve(i).await);
    }

    disk.fill();
    let started = Instant::now();
    let mut i = 10;
    let refused_writes = loop {
        acknowledged.insert(reserve(i).await);
        i += 1;
        let (status, body) = app.readiness().await;
        if status == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the full disk was never noticed"
        );
    };
    let why = refused_writes["database_status"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("durable") && why.contains("No space left"),
        "{refused_writes}"
    );
    for _ in 0..20 {
        acknowledged.insert(reserve(i).await);
        i += 1;
    }

    disk.free();
    let started = Instant::now();
    loop {
        let stored = app.stored_reservation_ids(&id).await;
        if acknowledged.is_subset(&stored) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "acknowledged but not stored: {}",
            acknowledged.difference(&stored).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = app.readiness().await;
    assert_eq!(status, 200, "{body}");

    drop(app);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .expect("schema dropped");
    sqlx::query(&format!("DROP TABLESPACE {tablespace}"))
        .execute(&mut admin)
        .await
        .expect("tablespace dropped");
}
