//! The shared Lua (`src/engine/redis/scripts/lib.lua`) is folded onto a script's first line, so an error Redis
//! reports names the line of the script's own file.

use crate::engines::redis_url;
use flashsale::engine::redis::scripts::with_lib;

/// A connection of the tests' own to the conformance suite's Redis.
async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the conformance suite needs a real Redis (FLASHSALE_TEST_REDIS_URL)")
}

#[tokio::test]
async fn a_script_error_names_the_line_of_its_own_file() {
    let mut connection = redis_connection().await;
    let body = "-- line 1\nlocal x = 1\nlocal y = x + 1\nerror('failed on line 4')\n";
    let script = with_lib(body).expect("the lib folds");
    let answer: Result<i64, redis::RedisError> = redis::cmd("EVAL")
        .arg(&script)
        .arg(0)
        .query_async(&mut connection)
        .await;
    let error = answer.expect_err("the script raises").to_string();
    assert!(
        error.contains(":4: failed on line 4"),
        "Redis named another line: {error}"
    );
}

/// A reservation kept in the layout before the reservations hash (a hash of its own,
/// `<campaign>:r:<id>`) is still read, replayed and changed after an upgrade, and its change
/// moves it into the campaign's reservations hash.
#[tokio::test]
async fn a_reservation_kept_in_the_earlier_layout_is_read_changed_and_moved() {
    use crate::engines::{attempt, campaign, created, make, Kind};
    use flashsale::domain::{Millis, ReservationStatus};
    use flashsale::engine::{ReserveOutcome, Transition};

    let engine = make(Kind::Redis).await;
    let c = campaign(10, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let request = attempt(&c, "u1", 2, "k1", now);
    let ReserveOutcome::Reserved { reservation, .. } =
        engine.reserve(&request).await.expect("answers")
    else {
        panic!("reserved");
    };
    let id = reservation.id.to_string();

    // Rewrite it as the earlier layout kept it.
    let mut redis = redis_connection().await;
    let campaign_key = format!("t-conformance:v3:{{c:{}}}", c.id);
    let (all, old) = (
        format!("{campaign_key}:rs"),
        format!("{campaign_key}:r:{id}"),
    );
    let packed: String = redis::cmd("HGET")
        .arg(&all)
        .arg(&id)
        .query_async(&mut redis)
        .await
        .expect("the record is a field of the reservations hash");
    let fields: Vec<&str> = packed.split('\u{1f}').collect();
    let [status, user, qty, created_at, expires, group] = fields.as_slice() else {
        panic!("six values: {packed:?}");
    };
    let _: () = redis::pipe()
        .hdel(&all, &id)
        .hset_multiple(
            &old,
            &[
                ("user", *user),
                ("qty", *qty),
                ("status", *status),
                ("created", *created_at),
                ("expires", *expires),
                ("group", *group),
            ],
        )
        .query_async(&mut redis)
        .await
        .expect("rewritten");

    let read = engine
        .reservation(&reservation.id)
        .await
        .expect("answers")
        .expect("still found");
    assert_eq!(read, reservation, "read as it was");
    let ReserveOutcome::Replayed(replayed) = engine.reserve(&request).await.expect("answers")
    else {
        panic!("a retry of its key replays it");
    };
    assert_eq!(replayed, reservation);
    let Transition::Done(confirmed) = engine.confirm(&reservation.id, now).await.expect("answers")
    else {
        panic!("confirmed");
    };
    assert_eq!(confirmed.status, ReservationStatus::Confirmed);

    let (moved, old_left): (Option<String>, bool) = redis::pipe()
        .hget(&all, &id)
        .exists(&old)
        .query_async(&mut redis)
        .await
        .expect("answers");
    assert!(
        moved.is_some_and(|m| m.starts_with("confirmed\u{1f}")),
        "moved"
    );
    assert!(!old_left, "the old hash is gone");
}
