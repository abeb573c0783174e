//! Multi-node on one machine: the real `tessera` binary as a head (`serve`) and worker processes
//! (`worker --join`) on loopback, one TP=4 group over 2 + 1 + 1 ranks on the CPU (TCP data
//! plane). It must give exactly a single-process TP=1 run's tokens; a wrong cookie is refused;
//! a killed worker fails every in-flight request within the heartbeat deadline + 5 s, `/ready`
//! turns 503, and the group comes back when the node rejoins.
//!
//! The binary is `$TESSERA_BIN`, else `tessera` in this test's target directory: run
//! `cargo build -p tessera-cli` (or `cargo test --workspace`) first.

mod common;

use common::*;
use std::time::{Duration, Instant};

const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

/// A deployment: its config file, ports and processes (killed on drop).
struct Cluster {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    http: u16,
    cluster: u16,
    head: Proc,
    workers: Vec<Proc>,
}

fn config_text(
    http: u16,
    cluster: u16,
    tp: usize,
    nodes: usize,
    ranks: &str,
    on_node_failure: &str,
) -> String {
    format!(
        r#"device = "cpu"
[model]
load_format = "dummy"
dummy_shape = "tiny"
max_model_len = 2048
[parallel]
tensor_parallel_size = {tp}
collective_timeout_ms = 20000
[cache]
num_blocks = 512
[engine]
step_timeout_ms = 20000
[server]
host = "127.0.0.1"
port = {http}
[cluster]
nodes = {nodes}
listen = "127.0.0.1:{cluster}"
cookie = "e2e-cookie"
ranks_per_node = {ranks}
heartbeat_interval_ms = 200
heartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}
join_timeout_ms = 30000
on_node_failure = "{on_node_failure}"
"#
    )
}

impl Cluster {
    /// Head plus nodes `1..nodes`; node 1 brings its own config, the others adopt the head's.
    fn start(tp: usize, nodes: usize, ranks: &str) -> Cluster {
        Cluster::start_with(tp, nodes, ranks, "wait")
    }

    fn start_with(tp: usize, nodes: usize, ranks: &str, on_node_failure: &str) -> Cluster {
        let mut this = Cluster::head_with(tp, nodes, ranks, on_node_failure);
        for node in 1..nodes {
            let worker = this.worker(node, node == 1, "e2e-cookie");
            this.workers.push(worker);
        }
        this
    }

    /// The head alone, waiting for its nodes.
    fn head(tp: usize, nodes: usize, ranks: &str) -> Cluster {
        Cluster::head_with(tp, nodes, ranks, "wait")
    }

    fn head_with(tp: usize, nodes: usize, ranks: &str, on_node_failure: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (http, cluster) = (free_port(), free_port());
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, config_text(http, cluster, tp, nodes, ranks, on_node_failure)).unwrap();
        let head = Proc::spawn("head", &["serve", "--config", config.to_str().unwrap()], &[]);
        Cluster { _dir: dir, config, http, cluster, head, workers: Vec::new() }
    }

    fn worker(&self, node: usize, own_config: bool, cookie: &str) -> Proc {
        self.worker_with(node, own_config.then_some(self.config.as_path()), cookie)
    }

    fn worker_with(&self, node: usize, config: Option<&std::path::Path>, cookie: &str) -> Proc {
        let join = format!("127.0.0.1:{}", self.cluster);
        let rank = node.to_string();
        let mut args = vec!["worker", "--join", &join, "--node-rank", &rank];
        let config = config.map(|c| c.to_str().unwrap().to_string());
        if let Some(config) = &config {
            args.extend(["--config", config]);
        }
        Proc::spawn(&format!("node{node}"), &args, &[("TESSERA_CLUSTER__COOKIE", cookie)])
    }

    fn wait_ready(&mut self) {
        wait_for(Duration::from_secs(60), "the deployment to become ready", || {
            if let Some(status) = self.head.exited() {
                panic!("the head exited ({status}):\n{}", self.head.output());
            }
            http(self.http, "GET", "/ready", "").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        });
    }
}

/// Greedy completions of a few prompts, sent concurrently (one batch), as `text` fields.
fn completions(port: u16, max_tokens: usize) -> Vec<String> {
    let prompts = ["Hello", "The quick brown fox", "1 2 3 4", "multi-node"];
    let handles: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let body = format!(
                r#"{{"model": "tiny", "prompt": "{prompt}", "max_tokens": {max_tokens}, "temperature": 0, "ignore_eos": true}}"#
            );
            std::thread::spawn(move || http(port, "POST", "/v1/completions", &body).unwrap())
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            let response = h.join().unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            let json = body_json(&response);
            assert_eq!(json["usage"]["completion_tokens"], max_tokens as u64, "{json}");
            json["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn tp4_over_three_processes_matches_a_single_process_tp1_run() {
    let mut reference =
        Proc::spawn("tp1", &["serve", "--dummy", "tiny", "--port", &free_port().to_string()], &[]);
    let reference_port: u16 = reference.args[4].parse().unwrap();
    let mut cluster = Cluster::start(4, 3, "[2, 1, 1]");
    wait_for(Duration::from_secs(60), "the TP=1 server", || {
        http(reference_port, "GET", "/ready", "").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let want = completions(reference_port, 24);
    reference.kill();
    cluster.wait_ready();
    let got = completions(cluster.http, 24);
    assert_eq!(got, want, "TP=4 over three processes differs from TP=1");
    // A second round reuses the workers' mirrors (cached sequences, new blocks).
    assert_eq!(completions(cluster.http, 24), want);

    // SIGTERM drains the head, which shuts its workers down: everyone exits 0.
    cluster.head.terminate();
    for proc in std::iter::once(&mut cluster.head).chain(cluster.workers.iter_mut()) {
        let status = proc.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{} exited with {status}:\n{}", proc.name, proc.output());
    }
}

/// Starts a worker that the head must refuse; returns what it said on its way out (non-zero).
fn refused(mut worker: Proc) -> String {
    let status = worker.wait(Duration::from_secs(20));
    assert_ne!(status.code(), Some(0), "{}", worker.output());
    worker.output()
}

#[test]
fn workers_with_the_wrong_cookie_or_config_are_refused_naming_why() {
    let mut cluster = Cluster::head(2, 2, "[1, 1]");
    let said = refused(cluster.worker(1, false, "not-the-cookie"));
    assert!(said.contains("authentication failed"), "the worker says why:\n{said}");
    wait_for(Duration::from_secs(10), "the head to log the refusal", || {
        cluster.head.output().contains("authentication failed")
    });

    let other = cluster._dir.path().join("other.toml");
    let text = std::fs::read_to_string(&cluster.config).unwrap() + "[scheduler]\nmax_num_seqs = 7\n";
    std::fs::write(&other, text).unwrap();
    let said = refused(cluster.worker_with(1, Some(&other), "e2e-cookie"));
    assert!(
        said.contains("node 1: config check failed: scheduler.max_num_seqs (head: 256, node: 7)"),
        "{said}"
    );

    let said = refused(cluster.worker(5, false, "e2e-cookie"));
    assert!(said.contains("node rank 5 is out of range"), "{said}");

    // The rightful node still joins.
    let worker = cluster.worker(1, true, "e2e-cookie");
    cluster.workers.push(worker);
    cluster.wait_ready();
}

/// Long requests in flight; `fail` breaks a node; every request must end in an error within the
/// heartbeat deadline + 5 s.
fn in_flight_requests_fail_after(port: u16, fail: impl FnOnce()) {
    let body = r#"{"model": "tiny", "prompt": "long", "max_tokens": 1800, "ignore_eos": true}"#;
    let in_flight: Vec<_> =
        (0..4).map(|_| std::thread::spawn(move || http(port, "POST", "/v1/completions", body))).collect();
    // Well inside the requests' lives (1800 tokens each), even with an optimised binary.
    std::thread::sleep(Duration::from_millis(300));
    let failed_at = Instant::now();
    fail();
    for request in in_flight {
        let response = request.join().unwrap().unwrap();
        assert!(
            !response.starts_with("HTTP/1.1 200"),
            "an in-flight request finished despite the failure:\n{response}"
        );
        assert!(response.contains("error"), "{response}");
    }
    let limit = Duration::from_millis(HEARTBEAT_TIMEOUT_MS) + Duration::from_secs(5);
    assert!(failed_at.elapsed() < limit, "in-flight requests took {:?} to fail", failed_at.elapsed());
}

fn assert_not_ready(port: u16) {
    let ready = http(port, "GET", "/ready", "").unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
}

#[test]
fn killing_a_worker_fails_in_flight_requests_then_the_group_recovers_when_it_rejoins() {
    let mut cluster = Cluster::start(4, 3, "[2, 1, 1]");
    cluster.wait_ready();
    let port = cluster.http;
    in_flight_requests_fail_after(port, || cluster.workers[1].kill());
    assert_not_ready(port);

    // on_node_failure = "wait": the node comes back and the deployment serves again.
    let rejoined = cluster.worker(2, false, "e2e-cookie");
    cluster.workers[1] = rejoined;
    cluster.wait_ready();
    assert_eq!(completions(port, 8).len(), 4);

    // Lost while idle: not ready at once, not only at the next request.
    cluster.workers[0].kill();
    wait_for(
        Duration::from_millis(HEARTBEAT_TIMEOUT_MS) + Duration::from_secs(5),
        "/ready to turn 503",
        || http(port, "GET", "/ready", "").is_ok_and(|r| r.starts_with("HTTP/1.1 503")),
    );
}

#[test]
fn a_silent_worker_is_lost_by_its_heartbeat_and_exit_policy_stops_the_head() {
    let mut cluster = Cluster::start_with(2, 2, "[1, 1]", "exit");
    cluster.wait_ready();
    // SIGSTOP: the process and its sockets stay, it just never answers again.
    in_flight_requests_fail_after(cluster.http, || cluster.workers[0].signal("STOP"));
    let status = cluster.head.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", cluster.head.output());
    let said = cluster.head.output();
    assert!(said.contains("no heartbeat for"), "the head says why:\n{said}");
}
