use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// What the head does when a node is lost (dead, silent past `heartbeat_timeout_ms`, or its
/// session closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeFailure {
    /// Fail in-flight requests, report not ready, and rebuild the group when the node rejoins
    /// (within `join_timeout_ms`).
    #[default]
    Wait,
    /// Fail in-flight requests and exit non-zero.
    Exit,
}

/// A deployment over several processes (usually one per machine). Absent or `nodes = 1` is a
/// single process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Processes in the deployment, the head included.
    pub nodes: usize,
    /// The head's cluster address (`HOST:PORT`); workers `--join` it.
    pub listen: String,
    /// Shared secret every node must present. Never logged or shown.
    pub cookie: String,
    /// Tensor-parallel ranks of each node, head first; by default `tensor_parallel_size / nodes`
    /// each. Rank numbers follow this order (the head holds rank 0).
    pub ranks_per_node: Option<Vec<usize>>,
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is lost.
    pub heartbeat_timeout_ms: u64,
    /// How long the head waits for every node at startup (and, with `on_node_failure = "wait"`,
    /// for a lost node to rejoin).
    pub join_timeout_ms: u64,
    pub on_node_failure: OnNodeFailure,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 1,
            listen: "0.0.0.0:7450".to_string(),
            cookie: String::new(),
            ranks_per_node: None,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            join_timeout_ms: 300_000,
            on_node_failure: OnNodeFailure::Wait,
        }
    }
}

impl ClusterConfig {
    pub const REDACTED: &'static str = "<redacted>";

    pub fn is_multi_node(&self) -> bool {
        self.nodes > 1
    }

    pub fn redacted(&self) -> Self {
        let cookie = if self.cookie.is_empty() { String::new() } else { Self::REDACTED.to_string() };
        ClusterConfig { cookie, ..self.clone() }
    }

    /// Each node's ranks, head first. Call after `validate`.
    pub fn node_ranks(&self, tensor_parallel_size: usize) -> Vec<usize> {
        match &self.ranks_per_node {
            Some(list) => list.clone(),
            None => vec![tensor_parallel_size / self.nodes; self.nodes],
        }
    }

    /// The first global rank of `node`.
    pub fn first_rank(&self, tensor_parallel_size: usize, node: usize) -> usize {
        self.node_ranks(tensor_parallel_size)[..node].iter().sum()
    }

    /// `tensor_parallel_size` comes from the `parallel` section: the ranks must add up to it.
    pub fn validate(&self, path: &str, tensor_parallel_size: usize) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{path}.{name}");
        check(self.nodes >= 1, || key("nodes"), || "must be at least 1".into())?;
        check(
            self.heartbeat_interval_ms >= 1,
            || key("heartbeat_interval_ms"),
            || "must be at least 1".into(),
        )?;
        check(
            self.heartbeat_timeout_ms > self.heartbeat_interval_ms,
            || key("heartbeat_timeout_ms"),
            || format!("must exceed heartbeat_interval_ms ({})", self.heartbeat_interval_ms),
        )?;
        check(self.join_timeout_ms >= 1, || key("join_timeout_ms"), || "must be at least 1".into())?;
        check(
            self.listen.parse::<std::net::SocketAddr>().is_ok(),
            || key("listen"),
            || format!("must be an IP address and port such as 0.0.0.0:7450, got `{}`", self.listen),
        )?;
        if !self.is_multi_node() {
            return Ok(());
        }
        check(
            !self.cookie.is_empty(),
            || key("cookie"),
            || "a multi-node deployment needs a shared secret (or TESSERA_CLUSTER__COOKIE)".into(),
        )?;
        match &self.ranks_per_node {
            Some(list) => {
                check(
                    list.len() == self.nodes,
                    || key("ranks_per_node"),
                    || format!("has {} entries for {} nodes", list.len(), self.nodes),
                )?;
                check(
                    list.iter().all(|&n| n >= 1),
                    || key("ranks_per_node"),
                    || "every node needs at least one rank".into(),
                )?;
                check(
                    list.iter().sum::<usize>() == tensor_parallel_size,
                    || key("ranks_per_node"),
                    || {
                        format!(
                            "adds up to {}, but parallel.tensor_parallel_size is {tensor_parallel_size}",
                            list.iter().sum::<usize>()
                        )
                    },
                )
            }
            None => check(
                tensor_parallel_size.is_multiple_of(self.nodes),
                || key("nodes"),
                || {
                    format!(
                        "{} nodes cannot share parallel.tensor_parallel_size = {tensor_parallel_size} evenly; \
                         set cluster.ranks_per_node",
                        self.nodes
                    )
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: usize) -> ClusterConfig {
        ClusterConfig { nodes, cookie: "secret".into(), ..Default::default() }
    }

    #[test]
    fn single_node_needs_nothing() {
        ClusterConfig::default().validate("cluster", 3).unwrap();
    }

    #[test]
    fn ranks_default_to_an_even_split_and_must_add_up() {
        let config = cluster(2);
        config.validate("cluster", 4).unwrap();
        assert_eq!(config.node_ranks(4), vec![2, 2]);
        assert_eq!(config.validate("cluster", 3).unwrap_err().key, "cluster.nodes");

        let config = ClusterConfig { ranks_per_node: Some(vec![2, 1, 1]), ..cluster(3) };
        config.validate("cluster", 4).unwrap();
        assert_eq!(config.first_rank(4, 2), 3);
        let err = config.validate("cluster", 5).unwrap_err();
        assert_eq!(err.key, "cluster.ranks_per_node");
        assert!(err.message.contains("adds up to 4"), "{err}");
        let bad = ClusterConfig { ranks_per_node: Some(vec![2, 0, 2]), ..cluster(3) };
        assert_eq!(bad.validate("cluster", 4).unwrap_err().key, "cluster.ranks_per_node");
    }

    #[test]
    fn multi_node_needs_a_cookie_and_sane_timeouts() {
        let no_cookie = ClusterConfig { cookie: String::new(), ..cluster(2) };
        assert_eq!(no_cookie.validate("cluster", 2).unwrap_err().key, "cluster.cookie");
        let bad = ClusterConfig { heartbeat_timeout_ms: 500, ..cluster(2) };
        assert_eq!(bad.validate("cluster", 2).unwrap_err().key, "cluster.heartbeat_timeout_ms");
        let bad = ClusterConfig { listen: "head:7450".into(), ..cluster(2) };
        assert_eq!(bad.validate("cluster", 2).unwrap_err().key, "cluster.listen");
    }

    #[test]
    fn the_cookie_is_redacted() {
        assert_eq!(cluster(2).redacted().cookie, ClusterConfig::REDACTED);
    }
}
