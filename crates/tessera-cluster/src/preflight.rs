//! Pre-flight checks, run before any weight is loaded: the same Tessera version and protocol,
//! the same configuration (less node-local keys), the same model, enough devices. (The data
//! plane's check, a tiny all-reduce over every rank, runs when each group is built: `group.rs`.)
//! Every failure names the node and the check.

use serde_json::Value;
use std::path::Path;
use tessera_core::config::{ClusterConfig, Device, LoggingConfig, ServerConfig};
use tessera_core::EngineConfig;

/// The version every node must run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The config with node-local keys reset, as JSON: what must be equal on every node. Node-local:
/// the HTTP server and logging (the head's only), the model's path (mount points differ; the
/// model's contents are checked by `model_fingerprint`), the head's listen address and the
/// cookie (checked by the session's authentication, and never sent).
pub fn shared_config(config: &EngineConfig) -> EngineConfig {
    let mut shared = config.clone();
    shared.server = ServerConfig::default();
    shared.logging = LoggingConfig::default();
    shared.model.path = None;
    shared.cluster = ClusterConfig {
        listen: ClusterConfig::default().listen,
        cookie: String::new(),
        ..config.cluster.clone()
    };
    shared
}

pub fn shared_config_json(config: &EngineConfig) -> String {
    serde_json::to_string(&shared_config(config)).expect("a config always serializes")
}

/// The dotted keys whose values differ between two configs' JSON, with both values.
pub fn config_differences(head: &str, node: &str) -> Result<Vec<String>, String> {
    let parse =
        |text: &str| serde_json::from_str::<Value>(text).map_err(|e| format!("unreadable config: {e}"));
    let mut out = Vec::new();
    diff("", &parse(head)?, &parse(node)?, &mut out);
    Ok(out)
}

fn diff(path: &str, head: &Value, node: &Value, out: &mut Vec<String>) {
    match (head, node) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                diff(&child, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path} (head: {a}, node: {b})")),
        _ => {}
    }
}

/// 64-bit FNV-1a, enough to tell two files apart (not a defence against forgery).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The safetensors header (length prefix + JSON), which names every tensor's dtype, shape and
/// offsets: a cheap stand-in for hashing gigabytes of weights.
fn safetensors_header(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(format!("{}: implausible safetensors header of {n} bytes", path.display()));
    }
    let mut header = len.to_vec();
    header.resize(8 + n as usize, 0);
    file.read_exact(&mut header[8..]).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(header)
}

/// Identifies the model a node would load: a checksum of config.json and the safetensors index
/// (or the single file's header), or the dummy shape and seed.
pub fn model_fingerprint(config: &EngineConfig) -> Result<String, String> {
    let model = &config.model;
    let weights = if model.uses_dummy_weights() {
        format!("dummy weights, seed {}", model.seed)
    } else {
        "safetensors".into()
    };
    let Some(dir) = &model.path else {
        return Ok(format!("shape {}, {weights}", model.dummy_shape));
    };
    let read =
        |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    let mut hash = fnv1a(FNV_OFFSET, &read("config.json")?);
    if !model.uses_dummy_weights() {
        let index = dir.join("model.safetensors.index.json");
        let bytes = if index.exists() {
            read("model.safetensors.index.json")?
        } else {
            safetensors_header(&dir.join("model.safetensors"))?
        };
        hash = fnv1a(hash, &bytes);
    }
    Ok(format!("checkpoint {hash:016x}, {weights}"))
}

/// Devices this node can give ranks (`None`: no limit, the CPU).
pub fn device_count(config: &EngineConfig) -> Result<Option<usize>, String> {
    match config.device {
        Device::Cpu => Ok(None),
        Device::Cuda => crate::cuda::device_count().map(Some),
    }
}

/// Checks a node's report against the head's own fingerprint; `Err` names the failed check.
pub fn check_report(
    node_rank: usize,
    head_model: &str,
    node_model: &str,
    num_ranks: usize,
    num_devices: Option<usize>,
) -> Result<(), String> {
    if head_model != node_model {
        return Err(format!(
            "node {node_rank}: model check failed: head has {head_model}, node has {node_model}"
        ));
    }
    match num_devices {
        Some(n) if n < num_ranks => Err(format!(
            "node {node_rank}: device check failed: {num_ranks} ranks need {num_ranks} devices, the node has {n}"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_keys_do_not_count_and_others_are_named() {
        let head = EngineConfig::default();
        let mut node = head.clone();
        node.server.port = 9999;
        node.model.path = Some("/elsewhere".into());
        node.cluster.cookie = "x".into();
        let diffs = config_differences(&shared_config_json(&head), &shared_config_json(&node)).unwrap();
        assert!(diffs.is_empty(), "{diffs:?}");
        node.scheduler.max_num_seqs = 3;
        node.parallel.collective_timeout_ms = 7;
        let diffs = config_differences(&shared_config_json(&head), &shared_config_json(&node)).unwrap();
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].starts_with("parallel.collective_timeout_ms (head: 30000, node: 7)"), "{diffs:?}");
        assert!(diffs[1].starts_with("scheduler.max_num_seqs"), "{diffs:?}");
    }

    #[test]
    fn the_cookie_never_leaves_the_node() {
        let mut config = EngineConfig::default();
        config.cluster.cookie = "very-secret".into();
        assert!(!shared_config_json(&config).contains("very-secret"));
    }

    #[test]
    fn fingerprints_follow_the_checkpoint_files() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
        let at = |name: &str| {
            let mut config = EngineConfig::default();
            config.model.path = Some(fixtures.join(name));
            model_fingerprint(&config).unwrap()
        };
        assert_eq!(at("llama"), at("llama"));
        assert_ne!(at("llama"), at("qwen2"));
        assert_ne!(at("llama-sharded"), at("llama"));
        let mut dummy = EngineConfig::default();
        let tiny = model_fingerprint(&dummy).unwrap();
        dummy.model.seed = 1;
        assert_ne!(model_fingerprint(&dummy).unwrap(), tiny);
    }

    #[test]
    fn reports_fail_with_the_node_and_check_named() {
        assert!(check_report(2, "a", "a", 2, Some(2)).is_ok());
        let err = check_report(2, "a", "b", 1, None).unwrap_err();
        assert!(err.starts_with("node 2: model check failed"), "{err}");
        let err = check_report(1, "a", "a", 2, Some(1)).unwrap_err();
        assert!(err.starts_with("node 1: device check failed"), "{err}");
    }
}
