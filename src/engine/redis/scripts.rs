//! The script registry: every `src/engine/redis/scripts/` file, loaded once, run by SHA (EVALSHA, loading the
//! script on NOSCRIPT), and a connection wrapper that times each call under its script's name.

use crate::metrics as m;
use redis::Script;

/// Shared Lua (`src/engine/redis/scripts/lib.lua`) in front of a script body, on the body's first line: the lib is
/// folded onto one line (its comment lines dropped), so a Redis error's `user_script:<n>`
/// names line `n` of the script's own file.
///
/// The lib must keep comments on lines of their own; a code line with `--` is refused (it
/// would swallow the rest of the folded line), which a unit test checks for the real lib.
pub fn with_lib(body: &str) -> Result<String, String> {
    let mut folded = String::new();
    for line in include_str!("scripts/lib.lua").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        if line.contains("--") {
            return Err(format!(
                "src/engine/redis/scripts/lib.lua: a comment after code: {line}"
            ));
        }
        folded.push_str(line);
        folded.push(' ');
    }
    Ok(format!("{folded}{body}"))
}

/// The scripts, hashed once.
pub struct Scripts {
    pub load_campaign: Script,
    pub adjust_stock: Script,
    pub end_campaign: Script,
    pub reserve: Script,
    pub confirm: Script,
    pub cancel: Script,
    pub extend: Script,
    pub expire: Script,
    pub sold_out_records: Script,
    pub open_group: Script,
    pub join_group: Script,
    pub read_group: Script,
    pub read_reservation: Script,
    pub stream_last: Script,
    pub queue: Script,
    pub read_events: Script,
    pub forget_page: Script,
    pub shard_state: Script,
    pub transfer_take: Script,
    pub transfer_give: Script,
    pub transfer_done: Script,
    pub claim_key: Script,
    pub leftover: Script,
    pub work_announce: Script,
    pub work_active: Script,
    pub work_retire: Script,
    pub work_claim: Script,
    pub work_settle: Script,
}

impl Scripts {
    pub fn new() -> Result<Self, String> {
        let lib = |body: &str| with_lib(body).map(|text| Script::new(&text));
        Ok(Scripts {
            load_campaign: lib(include_str!("scripts/load_campaign.lua"))?,
            adjust_stock: lib(include_str!("scripts/adjust_stock.lua"))?,
            end_campaign: Script::new(include_str!("scripts/end_campaign.lua")),
            reserve: lib(include_str!("scripts/reserve.lua"))?,
            confirm: lib(include_str!("scripts/confirm.lua"))?,
            cancel: lib(include_str!("scripts/cancel.lua"))?,
            extend: lib(include_str!("scripts/extend.lua"))?,
            expire: lib(include_str!("scripts/expire.lua"))?,
            sold_out_records: Script::new(include_str!("scripts/sold_out_records.lua")),
            open_group: lib(include_str!("scripts/open_group.lua"))?,
            join_group: lib(include_str!("scripts/join_group.lua"))?,
            read_group: lib(include_str!("scripts/read_group.lua"))?,
            read_reservation: lib(include_str!("scripts/read_reservation.lua"))?,
            stream_last: Script::new(include_str!("scripts/stream_last.lua")),
            queue: Script::new(include_str!("scripts/queue.lua")),
            read_events: Script::new(include_str!("scripts/read_events.lua")),
            forget_page: Script::new(include_str!("scripts/forget_page.lua")),
            shard_state: Script::new(include_str!("scripts/shard_state.lua")),
            transfer_take: Script::new(include_str!("scripts/transfer_take.lua")),
            transfer_give: Script::new(include_str!("scripts/transfer_give.lua")),
            transfer_done: Script::new(include_str!("scripts/transfer_done.lua")),
            claim_key: Script::new(include_str!("scripts/claim_key.lua")),
            leftover: lib(include_str!("scripts/leftover.lua"))?,
            work_announce: Script::new(include_str!("scripts/work_announce.lua")),
            work_active: Script::new(include_str!("scripts/work_active.lua")),
            work_retire: Script::new(include_str!("scripts/work_retire.lua")),
            work_claim: Script::new(include_str!("scripts/work_claim.lua")),
            work_settle: Script::new(include_str!("scripts/work_settle.lua")),
        })
    }

    pub fn all(&self) -> [&Script; 28] {
        [
            &self.load_campaign,
            &self.adjust_stock,
            &self.end_campaign,
            &self.reserve,
            &self.confirm,
            &self.cancel,
            &self.extend,
            &self.expire,
            &self.sold_out_records,
            &self.open_group,
            &self.join_group,
            &self.read_group,
            &self.read_reservation,
            &self.stream_last,
            &self.queue,
            &self.read_events,
            &self.forget_page,
            &self.shard_state,
            &self.transfer_take,
            &self.transfer_give,
            &self.transfer_done,
            &self.claim_key,
            &self.leftover,
            &self.work_announce,
            &self.work_active,
            &self.work_retire,
            &self.work_claim,
            &self.work_settle,
        ]
    }
}

/// A connection that records each command's latency and failures under a script's name.
pub struct Timed<C> {
    pub connection: C,
    pub script: &'static str,
}

impl<C: redis::aio::ConnectionLike + Send> redis::aio::ConnectionLike for Timed<C> {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.connection.req_packed_command(cmd).await;
            metrics::histogram!(m::SCRIPT_DURATION, "script" => self.script)
                .record(started.elapsed().as_secs_f64());
            // A NOSCRIPT reply is answered by loading the script; it is not a failure.
            if result.as_ref().is_err_and(|e| {
                e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            }) {
                metrics::counter!(m::SCRIPT_ERRORS, "script" => self.script).increment(1);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.connection.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lib_folds_onto_the_first_line_so_script_lines_keep_their_numbers() {
        let body = "-- line 1\nlocal x = 1\nerror('line 3')\n";
        let text = with_lib(body).expect("the lib folds");
        assert_eq!(text.lines().count(), body.lines().count());
        assert!(text.lines().nth(2) == Some("error('line 3')"));
        assert!(text
            .lines()
            .next()
            .is_some_and(|l| l.contains("local function emit")));
    }

    #[test]
    fn every_script_loads() {
        assert!(Scripts::new().is_ok());
    }
}
