//! The shared Lua (`src/engine/redis/scripts/lib.lua`) is folded onto a script's first line, so an error Redis
//! reports names the line of the script's own file.

use crate::engines::redis_url;
use flashsale::engine::redis::scripts::with_lib;

#[tokio::test]
async fn a_script_error_names_the_line_of_its_own_file() {
    let client = redis::Client::open(redis_url()).expect("valid URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the conformance suite needs a real Redis (FLASHSALE_TEST_REDIS_URL)");
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
