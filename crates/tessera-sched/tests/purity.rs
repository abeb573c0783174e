//! The pure crates stay pure: no async runtime, actor system or device crate among their
//! dependencies (the direct ones; core and kv are checked too, so nothing comes in transitively
//! through our own crates).

const FORBIDDEN: &[&str] = &["tokio", "ractor", "ractor_cluster", "cudarc", "async-std", "futures"];

fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            deps.push(line.split(['=', '.', ' ']).next().unwrap_or_default().to_string());
        }
    }
    deps
}

#[test]
fn pure_crates_depend_on_no_async_actor_or_device_crate() {
    let crates = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for krate in ["tessera-core", "tessera-kv", "tessera-sched"] {
        let manifest = std::fs::read_to_string(format!("{crates}/{krate}/Cargo.toml")).unwrap();
        let deps = dependencies(&manifest);
        assert!(deps.iter().any(|d| d == "serde" || d == "tessera-core"), "{krate}: parsed no deps");
        for dep in &deps {
            assert!(!FORBIDDEN.contains(&dep.as_str()), "{krate} depends on {dep}");
        }
    }
}
