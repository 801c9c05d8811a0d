//! The Redis engine: every decision is one Lua script from `lua/`, run atomically by SHA.
//!
//! The key schema is documented in `lua/README.md`; [`Keys`] is its Rust side. All keys of a
//! campaign share the hash tag `{c:<campaign id>}`, so every script touches one slot and runs
//! unchanged on Redis Cluster.

use super::{
    CancelScope, Change, Engine, EngineError, Event, GroupOutcome, GroupRequest,
    IdempotencySnapshot, Probe, ReserveOutcome, ReserveRequest, RestoredReservation, StockOutcome,
    StreamPosition, Transition,
};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, Group, GroupCounts, GroupId, GroupMember,
    GroupRule, GroupStatus, Millis, Refusal, Reservation, ReservationId, ReservationStatus, UserId,
};
use crate::metrics as m;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The consumer group every stream has; its consumers are persister instances.
const GROUP: &str = "persister";

/// Parses stream entries `[[id, ["e", event]], ...]` into events; entries deleted meanwhile
/// come back as nil and are skipped.
fn entries(campaign: &CampaignId, list: redis::Value) -> Result<Vec<Event>, EngineError> {
    let redis::Value::Array(list) = list else {
        return Ok(Vec::new());
    };
    let mut events = Vec::with_capacity(list.len());
    for entry in list {
        let redis::Value::Array(entry) = entry else {
            continue;
        };
        let [id, fields] = entry.as_slice() else {
            continue;
        };
        let redis::Value::Array(fields) = fields else {
            continue;
        };
        let (redis::Value::BulkString(id), [_, redis::Value::BulkString(event)]) =
            (id, fields.as_slice())
        else {
            return Err(EngineError::Corrupt(format!(
                "stream entry of {campaign}: {entry:?}"
            )));
        };
        let text = |bytes| {
            std::str::from_utf8(bytes)
                .map_err(|_| EngineError::Corrupt(format!("stream entry of {campaign}: not UTF-8")))
        };
        events.push(event_from(campaign, text(id)?, text(event)?)?);
    }
    Ok(events)
}

/// Decodes one event as the scripts in `lua/` write it: values joined by byte 31 (layouts in
/// `lua/lib.lua`).
fn event_from(campaign: &CampaignId, id: &str, event: &str) -> Result<Event, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("event {id} of {campaign}: {event:?}"));
    let values: Vec<&str> = event.split('\x1f').collect();
    let number = |raw: &str| raw.parse::<i64>().map_err(|_| corrupt());
    let position = StreamPosition::parse(id).ok_or_else(corrupt)?;
    let (kind, at, rest) = match values.as_slice() {
        [kind, at, rest @ ..] => (*kind, Millis(number(at)?), rest),
        _ => return Err(corrupt()),
    };
    let change = if kind.starts_with("group.") {
        let [gid, leader, size, status, created, expires] = rest else {
            return Err(corrupt());
        };
        let gid = GroupId::parse(gid).map_err(|_| corrupt())?;
        Change::Group {
            group: Group {
                campaign_id: gid.campaign_id(),
                id: gid,
                leader_user_id: UserId::parse(leader).map_err(|_| corrupt())?,
                size: size.parse().map_err(|_| corrupt())?,
                status: GroupStatus::parse(status).ok_or_else(corrupt)?,
                created_at: Millis(number(created)?),
                expires_at: Millis(number(expires)?),
                members: Vec::new(),
            },
        }
    } else if kind == "campaign.stock" {
        let [stock] = rest else {
            return Err(corrupt());
        };
        Change::Stock {
            stock: stock.parse().map_err(|_| corrupt())?,
        }
    } else {
        let (id, fields, idempotency) = match rest {
            [id, fields @ ..] if fields.len() == 6 => (id, fields, None),
            [id, fields @ .., key, fp] if fields.len() == 6 => {
                (id, fields, Some(((*key).to_owned(), (*fp).to_owned())))
            }
            _ => return Err(corrupt()),
        };
        let reservation_id = ReservationId::parse(id).map_err(|_| corrupt())?;
        Change::Reservation {
            reservation: reservation_from(&reservation_id, campaign, fields)?,
            idempotency,
        }
    };
    Ok(Event {
        campaign_id: campaign.clone(),
        position,
        at,
        change,
    })
}

/// The campaign index as read, and when.
type CachedIds = (std::time::Instant, Vec<CampaignId>);

/// How long the campaign index is cached: campaigns created on other instances reach this
/// one's background workers within this long.
const CAMPAIGN_IDS_TTL: Duration = Duration::from_secs(1);

/// The namespace (key prefix) when none is configured.
pub const DEFAULT_NAMESPACE: &str = "fs";

/// The Redis stock engine. Cheap to clone: clones share its two multiplexed connections (one
/// for requests, one for background work).
#[derive(Clone)]
pub struct RedisEngine {
    /// Multiplexed, reconnecting connection shared by every request of this instance.
    connection: ConnectionManager,
    /// A second one for the background work (the persister's stream reads and acks, the
    /// backlog sample, the reaper): a reserve's reply never waits on one socket behind a
    /// thousand-event `XREADGROUP` reply or a reaper batch.
    background: ConnectionManager,
    scripts: Arc<Scripts>,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    namespace: Arc<str>,
    /// The campaign index, cached for [`CAMPAIGN_IDS_TTL`]: the persister, reaper and sampler
    /// all walk it, and a campaign created on this instance is added at once.
    campaign_ids: Arc<std::sync::Mutex<Option<CachedIds>>>,
    /// When this instance last looked for events a dead consumer left unacknowledged.
    last_reclaim: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// The scripts, hashed once; `invoke_async` runs EVALSHA and loads the script on NOSCRIPT.
struct Scripts {
    create_campaign: Script,
    adjust_stock: Script,
    reserve: Script,
    confirm: Script,
    cancel: Script,
    expire: Script,
    sold_out_snapshot: Script,
    restore_campaign: Script,
    open_group: Script,
    join_group: Script,
    read_group: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_lib =
            |body: &str| Script::new(&format!("{}\n{body}", include_str!("../../lua/lib.lua")));
        Scripts {
            create_campaign: Script::new(include_str!("../../lua/create_campaign.lua")),
            adjust_stock: Script::new(include_str!("../../lua/adjust_stock.lua")),
            reserve: Script::new(include_str!("../../lua/reserve.lua")),
            confirm: with_lib(include_str!("../../lua/confirm.lua")),
            cancel: with_lib(include_str!("../../lua/cancel.lua")),
            expire: with_lib(include_str!("../../lua/expire.lua")),
            sold_out_snapshot: Script::new(include_str!("../../lua/sold_out_snapshot.lua")),
            restore_campaign: Script::new(include_str!("../../lua/restore_campaign.lua")),
            open_group: with_lib(include_str!("../../lua/open_group.lua")),
            join_group: with_lib(include_str!("../../lua/join_group.lua")),
            read_group: Script::new(include_str!("../../lua/read_group.lua")),
        }
    }

    fn all(&self) -> [&Script; 11] {
        [
            &self.open_group,
            &self.join_group,
            &self.read_group,
            &self.restore_campaign,
            &self.create_campaign,
            &self.adjust_stock,
            &self.reserve,
            &self.confirm,
            &self.cancel,
            &self.expire,
            &self.sold_out_snapshot,
        ]
    }
}

/// A connection that records each command's latency and failures under a script's name.
struct Timed {
    connection: ConnectionManager,
    script: &'static str,
}

impl redis::aio::ConnectionLike for Timed {
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
            if result
                .as_ref()
                .is_err_and(|e| e.kind() != redis::ErrorKind::NoScriptError)
            {
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

/// The keys of one campaign (see `lua/README.md`).
struct Keys {
    campaign: String,
}

impl Keys {
    /// `v2`: the layout with per-user counts and idempotency records inside the campaign
    /// hash and a list of holds. Campaigns kept under the first layout are invisible to
    /// this one and are rebuilt from the database on first use (see `lua/README.md`).
    fn of(namespace: &str, id: &CampaignId) -> Self {
        Keys {
            campaign: format!("{namespace}:v2:{{c:{id}}}"),
        }
    }
    fn expiries(&self) -> String {
        format!("{}:exp", self.campaign)
    }
    fn group_idempotency(&self) -> String {
        format!("{}:gidem", self.campaign)
    }
    fn group_expiries(&self) -> String {
        format!("{}:gexp", self.campaign)
    }
    fn events(&self) -> String {
        format!("{}:events", self.campaign)
    }
    fn reservation(&self, id: &ReservationId) -> String {
        format!("{}:r:{id}", self.campaign)
    }
}

impl RedisEngine {
    /// Connects and loads every script, so a broken script fails start-up, not a request.
    pub async fn connect(url: &str) -> Result<Self, EngineError> {
        Self::connect_in(url, DEFAULT_NAMESPACE).await
    }

    /// Like [`RedisEngine::connect`], with every key under `namespace`.
    pub async fn connect_in(url: &str, namespace: &str) -> Result<Self, EngineError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let connection = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let background = client.get_connection_manager_with_config(config).await?;
        let engine = RedisEngine {
            connection,
            background,
            scripts: Arc::new(Scripts::new()),
            last_reclaim: Arc::default(),
            campaign_ids: Arc::default(),
            namespace: Arc::from(namespace),
        };
        let mut connection = engine.connection.clone();
        for script in engine.scripts.all() {
            script.prepare_invoke().load_async(&mut connection).await?;
        }
        Ok(engine)
    }

    /// The set of every campaign id. It spans campaigns, so no script touches it.
    fn campaigns_key(&self) -> String {
        format!("{}:campaigns", self.namespace)
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    fn background(&self) -> ConnectionManager {
        self.background.clone()
    }

    /// Adds a campaign to the index and drops this instance's cached copy, so its own
    /// workers see the campaign at once.
    async fn index(&self, id: &CampaignId) -> Result<(), EngineError> {
        let _: i64 = self
            .connection()
            .sadd(self.campaigns_key(), id.as_str())
            .await?;
        *self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// The connection, timing every command as the named script (EVALSHA, and the reload
    /// on NOSCRIPT).
    fn timed(&self, script: &'static str) -> Timed {
        Timed {
            connection: self.connection.clone(),
            script,
        }
    }

    /// Runs `open_group.lua` or `join_group.lua` (same keys and arguments).
    async fn group_decision(
        &self,
        script: &Script,
        name: &'static str,
        request: &GroupRequest,
    ) -> Result<GroupOutcome, EngineError> {
        let keys = Keys::of(&self.namespace, &request.campaign_id);
        let reply: Vec<String> = script
            .key(&keys.campaign)
            .key(keys.group_idempotency())
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.reservation(&request.reservation_id))
            .key(keys.group_expiries())
            .arg(request.now.0)
            .arg(request.user_id.as_str())
            .arg(&request.idempotency_key)
            .arg(&request.fingerprint)
            .arg(request.group_id.as_str())
            .arg(request.reservation_id.as_str())
            .invoke_async(&mut self.timed(name))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("group decision answered {reply:?}"));
        let named = reply.get(1).and_then(|raw| GroupId::parse(raw).ok());
        let group = || async {
            match &named {
                Some(id) => self
                    .group(id)
                    .await?
                    .ok_or_else(|| EngineError::Corrupt(format!("{id} vanished"))),
                None => Err(EngineError::Corrupt("group decision named no group".into())),
            }
        };
        match reply.first().map(String::as_str) {
            Some("done") => Ok(GroupOutcome::Done(group().await?)),
            Some("replay") => Ok(GroupOutcome::Replayed(group().await?)),
            Some("key_reused") => Ok(GroupOutcome::KeyReused),
            Some(code) => Refusal::from_code(code)
                .map(GroupOutcome::Refused)
                .ok_or_else(corrupt),
            None => Err(corrupt()),
        }
    }

    async fn transition(
        &self,
        script: &Script,
        name: &'static str,
        id: &ReservationId,
        now: Millis,
        scope: Option<CancelScope>,
    ) -> Result<Transition, EngineError> {
        let campaign = id.campaign_id();
        let keys = Keys::of(&self.namespace, &campaign);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.campaign)
            .key(keys.reservation(id))
            .key(keys.events())
            .key(keys.group_expiries())
            .arg(now.0)
            .arg(id.as_str());
        if let Some(scope) = scope {
            invocation.arg(match scope {
                CancelScope::HeldOnly => "held",
                CancelScope::HeldOrConfirmed => "any",
            });
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.timed(name)).await?;
        let outcome = reply.first().map(String::as_str).unwrap_or_default();
        if outcome == "not_found" {
            return Ok(Transition::NotFound);
        }
        let reservation = reservation_from(id, &campaign, reply.get(1..).unwrap_or_default())?;
        match outcome {
            "done" => Ok(Transition::Done(reservation)),
            "unchanged" => Ok(Transition::Unchanged(reservation)),
            "not_held" => Ok(Transition::NotHeld(reservation)),
            other => Err(EngineError::Corrupt(format!(
                "transition answered {other:?}"
            ))),
        }
    }
}

/// Builds a reservation from `[user, qty, status, created, expires, group]`.
fn reservation_from<S: AsRef<str> + std::fmt::Debug>(
    id: &ReservationId,
    campaign: &CampaignId,
    fields: &[S],
) -> Result<Reservation, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("reservation {id} has fields {fields:?}"));
    let [user, quantity, status, created, expires, group] = fields else {
        return Err(corrupt());
    };
    let group = group.as_ref();
    Ok(Reservation {
        id: id.clone(),
        campaign_id: campaign.clone(),
        user_id: UserId::parse(user.as_ref()).map_err(|_| corrupt())?,
        quantity: quantity.as_ref().parse().map_err(|_| corrupt())?,
        status: ReservationStatus::parse(status.as_ref()).ok_or_else(corrupt)?,
        created_at: Millis(created.as_ref().parse().map_err(|_| corrupt())?),
        expires_at: Millis(expires.as_ref().parse().map_err(|_| corrupt())?),
        group_id: (!group.is_empty()).then(|| group.to_owned()),
    })
}

/// Encodes a campaign's config as the hash fields of `lua/README.md`.
fn campaign_fields(campaign: &Campaign) -> Vec<(&'static str, String)> {
    let optional = |at: Option<Millis>| at.map(|m| m.0.to_string()).unwrap_or_default();
    let group = campaign.group;
    vec![
        ("kind", campaign.kind.as_str().to_owned()),
        ("sku", campaign.sku.clone()),
        ("stock", campaign.stock.to_string()),
        ("limit", campaign.per_user_limit.to_string()),
        ("starts", optional(campaign.starts_at)),
        ("ends", optional(campaign.ends_at)),
        ("hold", campaign.hold_seconds.to_string()),
        (
            "gsize",
            group.map(|g| g.size.to_string()).unwrap_or_default(),
        ),
        (
            "gwindow",
            group
                .map(|g| g.window_seconds.to_string())
                .unwrap_or_default(),
        ),
        ("created", campaign.created_at.0.to_string()),
    ]
}

/// The campaign hash's config and counter fields (what [`campaign_state`] reads).
const CAMPAIGN_FIELDS: [&str; 16] = [
    "kind",
    "sku",
    "stock",
    "limit",
    "starts",
    "ends",
    "hold",
    "gsize",
    "gwindow",
    "created",
    "available",
    "held",
    "confirmed",
    "gopen",
    "gformed",
    "gfailed",
];

/// Decodes a campaign hash back into its state.
fn campaign_state(
    id: &CampaignId,
    hash: &HashMap<String, String>,
) -> Result<CampaignState, EngineError> {
    let corrupt =
        |field: &str| EngineError::Corrupt(format!("campaign {id}: bad or missing {field}"));
    let text = |field: &str| hash.get(field).ok_or_else(|| corrupt(field));
    let number = |field: &str| -> Result<u64, EngineError> {
        text(field)?.parse().map_err(|_| corrupt(field))
    };
    let optional = |field: &str| -> Result<Option<i64>, EngineError> {
        match text(field)?.as_str() {
            "" => Ok(None),
            raw => raw.parse().map(Some).map_err(|_| corrupt(field)),
        }
    };
    let counter = |field: &str| -> Result<u64, EngineError> {
        hash.get(field)
            .map_or(Ok(0), |v| v.parse().map_err(|_| corrupt(field)))
    };
    let small = |field: &str| -> Result<u32, EngineError> {
        u32::try_from(number(field)?).map_err(|_| corrupt(field))
    };
    let group = match (optional("gsize")?, optional("gwindow")?) {
        (Some(size), Some(window)) => Some(GroupRule {
            size: u32::try_from(size).map_err(|_| corrupt("gsize"))?,
            window_seconds: u32::try_from(window).map_err(|_| corrupt("gwindow"))?,
        }),
        _ => None,
    };
    Ok(CampaignState {
        campaign: Campaign {
            id: id.clone(),
            kind: CampaignKind::parse(text("kind")?).map_err(|_| corrupt("kind"))?,
            sku: text("sku")?.clone(),
            stock: number("stock")?,
            per_user_limit: small("limit")?,
            starts_at: optional("starts")?.map(Millis),
            ends_at: optional("ends")?.map(Millis),
            hold_seconds: small("hold")?,
            group,
            created_at: Millis(optional("created")?.unwrap_or_default()),
        },
        available: number("available")?,
        held: number("held")?,
        confirmed: number("confirmed")?,
        groups: GroupCounts {
            open: counter("gopen")?,
            formed: counter("gformed")?,
            failed: counter("gfailed")?,
        },
    })
}

#[async_trait]
impl Engine for RedisEngine {
    async fn create_campaign(&self, campaign: &Campaign) -> Result<bool, EngineError> {
        let keys = Keys::of(&self.namespace, &campaign.id);
        let mut invocation = self.scripts.create_campaign.prepare_invoke();
        invocation.key(&keys.campaign).key(keys.events());
        for (field, value) in campaign_fields(campaign) {
            invocation.arg(field).arg(value);
        }
        let created: i64 = invocation
            .invoke_async(&mut self.timed("create_campaign"))
            .await?;
        // Outside the script on purpose: the index spans campaigns (another slot). A crash in
        // between leaves the campaign out of the index until the next recovery pass lists it
        // again (`recovery::restore_all`, every reconcile interval); meanwhile confirm and
        // cancel still expire its holds on the spot.
        self.index(&campaign.id).await?;
        Ok(created == 1)
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        // Named fields, not HGETALL: the hash also holds a field per user and per
        // idempotency record.
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(Keys::of(&self.namespace, id).campaign)
            .arg(&CAMPAIGN_FIELDS[..])
            .query_async(&mut self.connection())
            .await?;
        let hash: HashMap<String, String> = CAMPAIGN_FIELDS
            .iter()
            .zip(values)
            .filter_map(|(field, value)| Some(((*field).to_owned(), value?)))
            .collect();
        if hash.is_empty() {
            return Ok(None);
        }
        campaign_state(id, &hash).map(Some)
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        if let Some((at, ids)) = &*self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < CAMPAIGN_IDS_TTL {
                return Ok(ids.clone());
            }
        }
        let raw: Vec<String> = self.connection().smembers(self.campaigns_key()).await?;
        let ids: Vec<CampaignId> = raw
            .iter()
            .filter_map(|id| CampaignId::parse(id).ok())
            .collect();
        *self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), ids.clone()));
        Ok(ids)
    }

    async fn adjust_stock(&self, id: &CampaignId, delta: i64) -> Result<StockOutcome, EngineError> {
        let keys = Keys::of(&self.namespace, id);
        let reply: Vec<String> = self
            .scripts
            .adjust_stock
            .key(&keys.campaign)
            .key(keys.events())
            .arg(delta)
            .invoke_async(&mut self.timed("adjust_stock"))
            .await?;
        let number = |i: usize| -> Result<u64, EngineError> {
            reply
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| EngineError::Corrupt(format!("adjust_stock answered {reply:?}")))
        };
        match reply.first().map(String::as_str) {
            Some("adjusted") => Ok(StockOutcome::Adjusted {
                stock: number(1)?,
                available: number(2)?,
            }),
            Some("insufficient") => Ok(StockOutcome::Insufficient {
                available: number(1)?,
            }),
            Some("not_found") => Ok(StockOutcome::NotFound),
            _ => Err(EngineError::Corrupt(format!(
                "adjust_stock answered {reply:?}"
            ))),
        }
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let keys = Keys::of(&self.namespace, &request.campaign_id);
        let reply: Vec<String> = self
            .scripts
            .reserve
            .key(&keys.campaign)
            .key(keys.expiries())
            .key(keys.reservation(&request.reservation_id))
            .key(keys.events())
            .arg(request.now.0)
            .arg(request.user_id.as_str())
            .arg(request.quantity.get())
            .arg(&request.idempotency_key)
            .arg(&request.fingerprint)
            .arg(request.reservation_id.as_str())
            .invoke_async(&mut self.timed("reserve"))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("reserve answered {reply:?}"));
        let number = |i: usize| -> Result<i64, EngineError> {
            reply
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(corrupt)
        };
        match reply.first().map(String::as_str) {
            Some("reserved") => Ok(ReserveOutcome::Reserved {
                reservation: Reservation {
                    id: request.reservation_id.clone(),
                    campaign_id: request.campaign_id.clone(),
                    user_id: request.user_id.clone(),
                    quantity: request.quantity.get(),
                    status: ReservationStatus::Held,
                    created_at: Millis(number(1)?),
                    expires_at: Millis(number(2)?),
                    group_id: None,
                },
                available: u64::try_from(number(3)?).map_err(|_| corrupt())?,
            }),
            Some("replay") => {
                let id = reply
                    .get(1)
                    .and_then(|raw| ReservationId::parse(raw).ok())
                    .ok_or_else(corrupt)?;
                let mut fields: Vec<String> = reply.get(2..).unwrap_or_default().to_vec();
                // The first outcome is the reservation as created: held, outside any group.
                fields.insert(2, "held".into());
                fields.push(String::new());
                Ok(ReserveOutcome::Replayed(reservation_from(
                    &id,
                    &request.campaign_id,
                    &fields,
                )?))
            }
            Some("key_reused") => Ok(ReserveOutcome::KeyReused),
            Some(code) => Refusal::from_code(code)
                .map(ReserveOutcome::Refused)
                .ok_or_else(corrupt),
            None => Err(corrupt()),
        }
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        let campaign = id.campaign_id();
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(Keys::of(&self.namespace, &campaign).reservation(id))
            .arg(&["user", "qty", "status", "created", "expires", "group"])
            .query_async(&mut self.connection())
            .await?;
        if fields.first().is_none_or(Option::is_none) {
            return Ok(None);
        }
        let fields: Vec<String> = fields.into_iter().map(Option::unwrap_or_default).collect();
        reservation_from(id, &campaign, &fields).map(Some)
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        self.transition(&self.scripts.confirm, "confirm", id, now, None)
            .await
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.transition(&self.scripts.cancel, "cancel", id, now, Some(scope))
            .await
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let keys = Keys::of(&self.namespace, campaign);
        let mut expired = 0;
        // The script walks the expiry list's head; ids no longer held leave it without
        // ending anything, so keep walking while whole pages left.
        loop {
            let (ended, walked): (u32, u32) = self
                .scripts
                .expire
                .key(&keys.campaign)
                .key(keys.expiries())
                .key(keys.events())
                .key(keys.group_expiries())
                .arg(now.0)
                .arg(limit)
                .invoke_async(&mut Timed {
                    connection: self.background(),
                    script: "expire",
                })
                .await?;
            expired += ended;
            if walked < limit || expired >= limit {
                return Ok(expired);
            }
        }
    }

    async fn sold_out_snapshot(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<IdempotencySnapshot>, EngineError> {
        let keys = Keys::of(&self.namespace, campaign);
        let reply: Vec<String> = self
            .scripts
            .sold_out_snapshot
            .key(&keys.campaign)
            .invoke_async(&mut self.timed("sold_out_snapshot"))
            .await?;
        if reply.first().map(String::as_str) != Some("0") {
            return Ok(None);
        }
        let mut snapshot = IdempotencySnapshot::new();
        for pair in reply[1..].chunks(2) {
            let [key, value] = pair else {
                return Err(EngineError::Corrupt("odd idempotency snapshot".into()));
            };
            let (id, fingerprint) = value
                .split_once('|')
                .and_then(|(id, fp)| Some((ReservationId::parse(id).ok()?, fp.to_owned())))
                .ok_or_else(|| EngineError::Corrupt(format!("idempotency record {value:?}")))?;
            snapshot.insert(key.clone(), (id, fingerprint));
        }
        Ok(Some(snapshot))
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.group_decision(&self.scripts.open_group, "open_group", request)
            .await
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.group_decision(&self.scripts.join_group, "join_group", request)
            .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        let campaign = id.campaign_id();
        let reply: Vec<String> = self
            .scripts
            .read_group
            .key(Keys::of(&self.namespace, &campaign).campaign)
            .arg(id.as_str())
            .invoke_async(&mut self.timed("read_group"))
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let corrupt = || EngineError::Corrupt(format!("group {id}: {reply:?}"));
        let [leader, size, status, created, expires, rest @ ..] = reply.as_slice() else {
            return Err(corrupt());
        };
        let mut members = Vec::new();
        for member in rest.chunks(3) {
            let [user, rid, status] = member else {
                return Err(corrupt());
            };
            members.push(GroupMember {
                user_id: UserId::parse(user).map_err(|_| corrupt())?,
                reservation_id: ReservationId::parse(rid).map_err(|_| corrupt())?,
                status: ReservationStatus::parse(status).ok_or_else(corrupt)?,
            });
        }
        Ok(Some(Group {
            id: id.clone(),
            campaign_id: campaign,
            leader_user_id: UserId::parse(leader).map_err(|_| corrupt())?,
            size: size.parse().map_err(|_| corrupt())?,
            status: GroupStatus::parse(status).ok_or_else(corrupt)?,
            created_at: Millis(created.parse().map_err(|_| corrupt())?),
            expires_at: Millis(expires.parse().map_err(|_| corrupt())?),
            members,
        }))
    }

    async fn read_events(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<Event>, EngineError> {
        let campaigns = self.campaign_ids().await?;
        if campaigns.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let reclaim = {
            let mut last = self.last_reclaim.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= reclaim_after / 2);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        let per_stream = max.div_ceil(campaigns.len()).max(1);
        let mut events = Vec::new();
        if reclaim {
            let mut pipe = redis::pipe();
            for campaign in &campaigns {
                pipe.cmd("XAUTOCLAIM")
                    .arg(Keys::of(&self.namespace, campaign).events())
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(reclaim_after.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(per_stream);
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut self.background()).await?;
            for (campaign, reply) in campaigns.iter().zip(replies) {
                // [next id, [entries], [deleted ids]]
                if let redis::Value::Array(mut parts) = reply {
                    if parts.len() >= 2 {
                        events.extend(entries(campaign, parts.swap_remove(1))?);
                    }
                }
            }
        }
        let mut pipe = redis::pipe();
        for campaign in &campaigns {
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(per_stream)
                .arg("STREAMS")
                .arg(Keys::of(&self.namespace, campaign).events())
                .arg(">");
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.background()).await?;
        for (campaign, reply) in campaigns.iter().zip(replies) {
            // Nil, or [[stream key, [entries]]] (RESP2) / {stream key: [entries]} (RESP3)
            match reply {
                redis::Value::Array(streams) => {
                    for stream in streams {
                        if let redis::Value::Array(mut pair) = stream {
                            if pair.len() == 2 {
                                events.extend(entries(campaign, pair.swap_remove(1))?);
                            }
                        }
                    }
                }
                redis::Value::Map(streams) => {
                    for (_, list) in streams {
                        events.extend(entries(campaign, list)?);
                    }
                }
                _ => {}
            }
        }
        Ok(events)
    }

    async fn backlog(&self) -> Result<super::Backlog, EngineError> {
        let campaigns = self.campaign_ids().await?;
        let mut pipe = redis::pipe();
        for campaign in &campaigns {
            let stream = Keys::of(&self.namespace, campaign).events();
            pipe.cmd("XLEN").arg(&stream);
            pipe.cmd("XPENDING").arg(&stream).arg(GROUP);
            pipe.cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.background()).await?;
        let mut backlog = super::Backlog::default();
        for triple in replies.chunks(3) {
            if let [length, pending, first] = triple {
                backlog.events += redis::from_redis_value::<u64>(length).unwrap_or(0);
                // XPENDING summary: [count, smallest id, greatest id, consumers]
                if let redis::Value::Array(summary) = pending {
                    if let Some(count) = summary.first() {
                        backlog.pending += redis::from_redis_value::<u64>(count).unwrap_or(0);
                    }
                }
                // XRANGE: [[id, fields]]; the id's first part is its time in ms.
                let first_id = match first {
                    redis::Value::Array(entries) => match entries.first() {
                        Some(redis::Value::Array(entry)) => entry
                            .first()
                            .and_then(|id| redis::from_redis_value::<String>(id).ok()),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(position) = first_id.as_deref().and_then(StreamPosition::parse) {
                    let at = Millis(position.ms);
                    backlog.oldest = Some(backlog.oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok(backlog)
    }

    async fn ack_events(&self, events: &[Event]) -> Result<(), EngineError> {
        let mut by_campaign: HashMap<&CampaignId, Vec<String>> = HashMap::new();
        for event in events {
            by_campaign
                .entry(&event.campaign_id)
                .or_default()
                .push(event.position.to_string());
        }
        let mut pipe = redis::pipe();
        for (campaign, ids) in &by_campaign {
            let stream = Keys::of(&self.namespace, campaign).events();
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(ids).ignore();
            // Acknowledged entries are trimmed so streams stay bounded.
            pipe.cmd("XDEL").arg(&stream).arg(ids).ignore();
        }
        let () = pipe.query_async(&mut self.background()).await?;
        Ok(())
    }

    async fn restore_campaign(
        &self,
        campaign: &Campaign,
        reservations: &[RestoredReservation],
        groups: &[Group],
    ) -> Result<bool, EngineError> {
        let keys = Keys::of(&self.namespace, &campaign.id);
        let config = campaign_fields(campaign);
        let mut invocation = self.scripts.restore_campaign.prepare_invoke();
        invocation
            .key(&keys.campaign)
            .key(keys.expiries())
            .key(keys.events())
            .key(keys.group_idempotency())
            .key(keys.group_expiries())
            .arg(config.len() * 2)
            .arg(reservations.len());
        for (field, value) in config {
            invocation.arg(field).arg(value);
        }
        for restored in reservations {
            let r = &restored.reservation;
            invocation
                .arg(r.id.as_str())
                .arg(r.user_id.as_str())
                .arg(r.quantity)
                .arg(r.status.as_str())
                .arg(r.created_at.0)
                .arg(r.expires_at.0)
                .arg(r.group_id.clone().unwrap_or_default())
                .arg(restored.idempotency_key.clone().unwrap_or_default())
                .arg(restored.fingerprint.clone().unwrap_or_default());
        }
        for group in groups {
            invocation
                .arg(group.id.as_str())
                .arg(group.leader_user_id.as_str())
                .arg(group.size)
                .arg(group.status.as_str())
                .arg(group.created_at.0)
                .arg(group.expires_at.0);
        }
        let restored: i64 = invocation
            .invoke_async(&mut self.timed("restore_campaign"))
            .await?;
        self.index(&campaign.id).await?;
        Ok(restored == 1)
    }

    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError> {
        let keys = Keys::of(&self.namespace, campaign);
        let (available, records): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&keys.campaign)
            .arg(&["available", "records"])
            .query_async(&mut self.connection())
            .await?;
        Ok(available.map(|available| Probe {
            available,
            idempotency_records: records.unwrap_or_default(),
        }))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
