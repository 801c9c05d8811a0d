//! The engine watch's reads: every node's memory, eviction policy and evictions.

use super::*;

/// Every node's memory, eviction policy and evictions so far (a single server is node
/// `redis`; a cluster answers per node): what the engine watch exports, and what tells
/// whether Redis can evict a campaign's keys — a held unit forgotten, a user's count gone —
/// under memory pressure. Strict durability refuses such a Redis; the default mode warns.
#[async_trait::async_trait]
pub trait MemoryWatch: Send + Sync {
    async fn memory(&self) -> Result<Vec<NodeMemory>, EngineError>;
}

#[async_trait::async_trait]
impl<C: Connection> MemoryWatch for RedisEngine<C> {
    async fn memory(&self) -> Result<Vec<NodeMemory>, EngineError> {
        let mut connection = self.connection();
        let memory: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut connection)
            .await?;
        let stats: redis::Value = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut connection)
            .await?;
        let per_node = |reply: redis::Value| -> Vec<(String, String)> {
            match reply {
                // A cluster answers per node.
                redis::Value::Map(nodes) => nodes
                    .into_iter()
                    .map(|(node, answer)| {
                        (
                            redis::from_redis_value_ref(&node).unwrap_or_default(),
                            redis::from_redis_value_ref(&answer).unwrap_or_default(),
                        )
                    })
                    .collect(),
                single => vec![(
                    "redis".to_owned(),
                    redis::from_redis_value_ref(&single).unwrap_or_default(),
                )],
            }
        };
        let stats: std::collections::HashMap<String, String> =
            per_node(stats).into_iter().collect();
        Ok(per_node(memory)
            .into_iter()
            .map(|(node, memory)| {
                let evicted = stats
                    .get(&node)
                    .map_or(0, |stats| info_field(stats, "evicted_keys").unwrap_or(0));
                NodeMemory {
                    policy: info_text(&memory, "maxmemory_policy").unwrap_or_default(),
                    used_bytes: info_field(&memory, "used_memory").unwrap_or(0),
                    max_bytes: info_field(&memory, "maxmemory").unwrap_or(0),
                    evicted_keys: evicted,
                    node,
                }
            })
            .collect())
    }
}

/// One Redis node's memory as `INFO` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMemory {
    pub node: String,
    /// `maxmemory-policy`: anything but `noeviction` can drop a campaign's keys.
    pub policy: String,
    pub used_bytes: u64,
    /// 0: no limit.
    pub max_bytes: u64,
    /// Keys evicted since the node started.
    pub evicted_keys: u64,
}

impl NodeMemory {
    /// Whether this node may evict keys under memory pressure.
    pub fn evicts(&self) -> bool {
        self.policy != "noeviction"
    }
}

/// A field of an `INFO` answer (`name:value` lines), as text.
fn info_text(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// A numeric field of an `INFO` answer.
pub(super) fn info_field(info: &str, name: &str) -> Option<u64> {
    info_text(info, name)?.parse().ok()
}
