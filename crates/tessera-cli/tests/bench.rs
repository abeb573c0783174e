//! `tessera bench` end to end: `bench serve` against a real `tessera serve --dummy tiny`, and
//! `bench latency` in process, both checked through their JSON.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// The server, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from 127.0.0.1:`port` over plain HTTP/1.0: (status line, body), or None when
/// nothing answers.
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// A `tessera serve --dummy tiny` of its own, ready, and the URL and model name it serves. The
/// tests of this file run at once, each with a server: a port picked free may be taken by
/// another test's server before ours binds it. So the model name is unique, readiness is asked
/// of /ready, /v1/models must list our name (not a neighbour's), and a server that exited (its
/// port taken) is started again on another port.
fn start_server() -> (Server, String, String) {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let model = format!("bench-tiny-{}", STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    for _attempt in 0..5 {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--dummy", "tiny", "--served-model-name", &model, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tessera serve");
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.0.try_wait().expect("polling tessera serve").is_none() {
            assert!(Instant::now() < deadline, "tessera serve did not get ready on {port} within 60 s");
            let ready = http_get(port, "/ready").is_some_and(|(status, _)| status.contains(" 200"));
            if ready && http_get(port, "/v1/models").is_some_and(|(_, body)| body.contains(&model)) {
                return (server, format!("http://127.0.0.1:{port}"), model);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("tessera serve exited before it got ready, five times");
}

/// Runs `tessera ARGS`, which must fail; its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_json(args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let out = Command::new(BIN).args(args).arg("--json").arg(json).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn bench_serve_against_tessera_serve() {
    let (_server, base, model) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/v1");
    let args = [
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        &model,
        "--num-prompts",
        "8",
        "--input-len",
        "32",
        "--output-len",
        "8",
        "--request-rate",
        "50",
        "--max-concurrency",
        "4",
        "--goodput",
        "e2el:600000",
    ];
    let v = run_json(&args, &dir.path().join("serve.json"));
    let num = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {v}"));
    assert_eq!(v["completed"], 8, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["model"], model.as_str());
    assert_eq!(v["total_input_tokens"], 8 * 32);
    assert_eq!(v["total_output_tokens"], 8 * 8, "ignore_eos makes every output exactly 8 tokens");
    let duration = num("duration");
    assert!(duration > 0.0);
    assert!((num("request_throughput") - 8.0 / duration).abs() < 1e-9);
    assert!((num("output_throughput") - 64.0 / duration).abs() < 1e-9);
    assert!((num("total_token_throughput") - (64.0 + 256.0) / duration).abs() < 1e-9);
    assert_eq!(num("request_goodput"), num("request_throughput"), "a 10-minute E2EL SLO is met by all");
    for metric in ["ttft", "tpot", "itl", "e2el"] {
        let (mean, median, p99) = (
            num(&format!("mean_{metric}_ms")),
            num(&format!("median_{metric}_ms")),
            num(&format!("p99_{metric}_ms")),
        );
        assert!(mean > 0.0 && median > 0.0 && p99 >= median, "{metric}: {mean} {median} {p99}");
    }
    assert!(num("p99_ttft_ms") <= num("p99_e2el_ms"));
    assert!(num("mean_ttft_ms") < num("mean_e2el_ms"), "8 tokens take longer than 1");
    assert!(num("p99_e2el_ms") <= duration * 1e3, "no request outlasts the run");
    // (E2EL - TTFT) / 7 per request, so its mean is the mean of E2EL - TTFT over 7.
    let tpot_from_means = (num("mean_e2el_ms") - num("mean_ttft_ms")) / 7.0;
    assert!((num("mean_tpot_ms") - tpot_from_means).abs() < 1e-6 * tpot_from_means.max(1.0), "{v}");
}

#[test]
fn bench_serve_reports_a_wrong_model_before_the_run() {
    let (_server, url, _) = start_server();
    let stderr = refused(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        "nope",
        "--num-prompts",
        "2",
        "--input-len",
        "4",
        "--output-len",
        "2",
    ]);
    assert!(stderr.contains("initial test request failed"), "{stderr}");
}

#[test]
fn bench_latency_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "latency",
        "--dummy",
        "tiny",
        "--batch-size",
        "4",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--num-iters",
        "2",
        "--bandwidth-gbps",
        "10",
        "--tflops",
        "0.1",
    ];
    let v = run_json(&args, &dir.path().join("latency.json"));
    let num = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
    assert_eq!(v["batch_size"], 4);
    assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    assert!(num("median_prefill_ms") > 0.0 && num("median_decode_step_ms") > 0.0);
    assert!(num("median_total_ms") >= num("median_prefill_ms"));
    assert!(
        (num("decode_tokens_per_s") - 4.0 / (num("median_decode_step_ms") / 1e3)).abs()
            < 1e-6 * num("decode_tokens_per_s")
    );
    // Tiny: 2 layers, 4 KV heads of 8, f32 on the CPU: 512 bytes per token; mean context 16 + 4.
    assert_eq!(v["cost"]["kv_bytes_per_decode_step"], 4.0 * 20.0 * 512.0);
    // A decode step reads every weight but the untied input embedding (vocab 512 x hidden 64, f32).
    let decode_weights = v["cost"]["decode_weight_bytes"].as_f64().unwrap();
    assert_eq!(v["cost"]["weight_bytes"].as_f64().unwrap() - decode_weights, 512.0 * 64.0 * 4.0);
    let roof = (decode_weights + 4.0 * 20.0 * 512.0) / 10e9 * 1e3;
    assert!((num("roofline_decode_step_ms") - roof).abs() < 1e-9);
    assert!((num("decode_fraction") - roof / num("median_decode_step_ms")).abs() < 1e-9);
}

/// vLLM's random-dataset flags: lengths drawn around their nominal values and one shared prefix,
/// which the test request caches before the run, so every measured prompt finds it; and asked
/// percentiles.
#[test]
fn bench_serve_varied_lengths_and_a_shared_prefix() {
    let (_server, url, _) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "serve",
        "--url",
        &url,
        "--num-prompts",
        "8",
        "--random-input-len",
        "16",
        "--random-output-len",
        "8",
        "--random-range-ratio",
        "0.5",
        "--random-prefix-len",
        "32",
        "--max-concurrency",
        "4",
        "--metric-percentiles",
        "50,90",
    ];
    let v = run_json(&args, &dir.path().join("serve.json"));
    assert_eq!((v["completed"].as_u64(), v["failed"].as_u64()), (Some(8), Some(0)), "{v}");
    assert_eq!((v["range_ratio"].as_f64(), v["prefix_len"].as_u64()), (Some(0.5), Some(32)));
    // Each prompt: the 32-token prefix, then 8 - 24 tokens; each output 4 - 12 tokens.
    let input = v["total_input_tokens"].as_u64().unwrap();
    let output = v["total_output_tokens"].as_u64().unwrap();
    assert!((8 * 40..=8 * 56).contains(&input), "{v}");
    assert!((8 * 4..=8 * 12).contains(&output), "{v}");
    assert!(input != 8 * 48 || output != 8 * 8, "lengths varied: {v}");
    // The prefix is two full blocks of 16 on the tiny model, cached by the test request.
    let cached = v["cached_input_tokens"].as_u64().unwrap();
    assert!(cached >= 8 * 32, "every prompt finds the prefix: {cached} cached of {input}");
    // Asked percentiles sit in order between the median and p99 (p50 is the median).
    for metric in ["ttft", "tpot", "itl", "e2el"] {
        let at = |key: String| v[&key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
        let (median, p50) = (at(format!("median_{metric}_ms")), at(format!("p50_{metric}_ms")));
        let (p90, p99) = (at(format!("p90_{metric}_ms")), at(format!("p99_{metric}_ms")));
        assert_eq!(p50, median, "{metric}");
        assert!(median <= p90 && p90 <= p99, "{metric}: {median} {p90} {p99}");
    }

    let stderr = refused(&["bench", "serve", "--url", &url, "--random-range-ratio", "1"]);
    assert!(stderr.contains("--range-ratio must be in [0, 1)"), "{stderr}");
    let stderr = refused(&["bench", "serve", "--base-url", &url, "--dataset-name", "sharegpt"]);
    assert!(stderr.contains("only `random` is built in"), "{stderr}");
}
