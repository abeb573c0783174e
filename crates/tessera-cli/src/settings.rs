//! Configuration layering through the `config` crate: built-in defaults < a TOML or YAML file <
//! environment (`TESSERA_` prefix, `__` between levels) < command-line flags. The result is
//! deserialized into the one tree (`EngineConfig`, `deny_unknown_fields` everywhere) and
//! validated; every error names the key path.

use anyhow::{anyhow, Context};
use config::{Config, Environment, File, FileFormat, Map};
use std::path::Path;
use tessera_core::EngineConfig;

/// A config key set from a command-line flag.
pub type Override = (String, config::Value);

/// The `TESSERA_*` variables that address config keys: `TESSERA_<SECTION>__<KEY>...` or a
/// top-level key (`TESSERA_DEVICE`). Others (`TESSERA_GPU_TESTS`, ...) are not config.
fn config_env(vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Map<String, String>> {
    let mut map = Map::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("TESSERA_") else { continue };
        let first = rest.split("__").next().unwrap_or_default().to_ascii_lowercase();
        if EngineConfig::SECTIONS.contains(&first.as_str()) {
            map.insert(name, value);
        } else if rest.contains("__") {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            return Err(anyhow!(
                "environment variable {name}: unknown config key `{key}` (sections: {})",
                EngineConfig::SECTIONS.join(", ")
            ));
        }
    }
    Ok(map)
}

pub fn load(file: Option<&Path>, overrides: &[Override]) -> anyhow::Result<EngineConfig> {
    load_with_env(file, overrides, std::env::vars())
}

pub fn load_with_env(
    file: Option<&Path>,
    overrides: &[Override],
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<EngineConfig> {
    let defaults = Config::try_from(&EngineConfig::default()).context("encoding the defaults")?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = file {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => FileFormat::Toml,
            Some("yaml" | "yml") => FileFormat::Yaml,
            _ => return Err(anyhow!("{}: config files must end in .toml, .yaml or .yml", path.display())),
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        builder = builder.add_source(File::from_str(&text, format));
    }
    let env = Environment::with_prefix("TESSERA")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("server.api_keys")
        .with_list_parse_key("cluster.ranks_per_node")
        .with_list_parse_key("engine.cuda_graph_batch_sizes")
        .source(Some(config_env(env)?));
    builder = builder.add_source(env);
    for (key, value) in overrides {
        builder = builder.set_override(key.as_str(), value.clone())?;
    }
    let source = file.map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
    let config: EngineConfig = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| anyhow!("invalid configuration ({source} + environment + flags): {e}"))?;
    config.validate()?;
    Ok(config)
}

/// The effective config as TOML, secrets redacted.
pub fn show(config: &EngineConfig) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(&config.redacted())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    fn file(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let toml = file(
            ".toml",
            "[scheduler]\nmax_num_seqs = 8\nmax_waiting_requests = 10\n[server]\nport = 1000\n",
        );
        let config = load_with_env(
            Some(toml.path()),
            &[("server.port".into(), "3000".into())],
            env(&[
                ("TESSERA_SCHEDULER__MAX_NUM_SEQS", "16"),
                ("TESSERA_SERVER__PORT", "2000"),
                ("TESSERA_GPU_TESTS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.scheduler.max_num_seqs, 16, "env beats file");
        assert_eq!(config.scheduler.max_waiting_requests, 10, "file beats defaults");
        assert_eq!(config.server.port, 3000, "flags beat env");
        assert_eq!(config.cache.block_size, 16, "defaults remain");
    }

    #[test]
    fn yaml_and_env_lists() {
        let yaml = file(".yaml", "device: cpu\nmodel:\n  dummy_shape: tiny\nserver:\n  host: 0.0.0.0\n");
        let config =
            load_with_env(Some(yaml.path()), &[], env(&[("TESSERA_SERVER__API_KEYS", "a,b")])).unwrap();
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.server.api_keys, vec!["a", "b"]);
        let config =
            load_with_env(None, &[], env(&[("TESSERA_ENGINE__CUDA_GRAPH_BATCH_SIZES", "1,2,8")])).unwrap();
        assert_eq!(config.engine.cuda_graph_batch_sizes, vec![1, 2, 8]);
    }

    #[test]
    fn unknown_and_invalid_keys_name_their_path() {
        let toml = file(".toml", "[scheduler]\nmax_num_seqz = 8\n");
        let err = load_with_env(Some(toml.path()), &[], env(&[])).unwrap_err().to_string();
        assert!(err.contains("max_num_seqz") && err.contains("scheduler"), "{err}");

        let toml = file(".toml", "[scheduler]\nmax_num_seqs = \"many\"\n");
        let err = load_with_env(Some(toml.path()), &[], env(&[])).unwrap_err().to_string();
        assert!(err.contains("scheduler.max_num_seqs"), "{err}");

        let err = load_with_env(None, &[], env(&[("TESSERA_SCHEDULR__MAX_NUM_SEQS", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("schedulr.max_num_seqs"), "{err}");

        let err = load_with_env(None, &[("parallel.tensor_parallel_size".into(), "0".into())], env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parallel.tensor_parallel_size"), "{err}");
    }

    #[test]
    fn every_example_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("toml" | "yaml")) {
                load_with_env(Some(&path), &[], env(&[]))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                count += 1;
            }
        }
        assert!(count >= 4, "expected the example configs, found {count}");
    }

    #[test]
    fn cluster_keys_layer_from_env() {
        let toml =
            file(".toml", "[parallel]\ntensor_parallel_size = 4\n[cluster]\nnodes = 3\ncookie = \"c\"\n");
        let config = load_with_env(
            Some(toml.path()),
            &[],
            env(&[("TESSERA_CLUSTER__RANKS_PER_NODE", "2,1,1"), ("TESSERA_CLUSTER__COOKIE", "from-env")]),
        )
        .unwrap();
        assert_eq!(config.cluster.ranks_per_node, Some(vec![2, 1, 1]));
        assert_eq!(config.cluster.cookie, "from-env");
        let shown = show(&config).unwrap();
        assert!(!shown.contains("from-env"), "{shown}");
    }

    #[test]
    fn show_redacts_api_keys() {
        let config = load_with_env(None, &[], env(&[("TESSERA_SERVER__API_KEYS", "sk-secret")])).unwrap();
        let shown = show(&config).unwrap();
        assert!(!shown.contains("sk-secret") && shown.contains("<redacted>"), "{shown}");
    }
}
