//! `tessera bench serve`: the load generator. Each request is a task that waits for its arrival
//! time, then for a concurrency permit, then streams one completion and records when each chunk
//! arrived. Timing starts after the permit (as vLLM does), so TTFT measures the server, not our
//! own queue.

use super::dataset::BenchRequest;
use super::metrics::RequestRecord;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::{Client, ClientError, CompletionRequest, Prompt, StreamOptions};
use tokio::sync::Semaphore;

/// One benchmark run's requests.
pub struct Workload {
    pub model: String,
    pub requests: Vec<BenchRequest>,
    /// Send offsets from the start of the run (`arrivals::schedule`), one per request.
    pub send_at_s: Vec<f64>,
    pub max_concurrency: Option<usize>,
}

/// The request every benchmark sends: exact length in (token ids), exact length out
/// (`ignore_eos`, `max_tokens`), greedy so that sampling costs the same on every engine, and
/// usage in the stream so output tokens are counted by the server.
pub fn request(model: &str, prompt: Vec<u32>, output_len: u32) -> CompletionRequest {
    CompletionRequest::new(model, Prompt::Tokens(prompt))
        .max_tokens(output_len)
        .ignore_eos(true)
        .temperature(0.0)
        .stream_options(StreamOptions { include_usage: Some(true) })
}

/// Streams one completion; never fails, errors go into the record.
pub async fn send_one(client: &Client, request: CompletionRequest, prompt_len: usize) -> RequestRecord {
    let mut record = RequestRecord { prompt_len, ..Default::default() };
    let start = Instant::now();
    if let Err(err) = stream_into(client, request, start, &mut record).await {
        record.error = Some(err.to_string());
    }
    record
}

async fn stream_into(
    client: &Client,
    request: CompletionRequest,
    start: Instant,
    record: &mut RequestRecord,
) -> Result<(), ClientError> {
    use futures_util::StreamExt;
    let mut stream = client.completions_stream(request).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Taken before any other work on the chunk, so parsing does not inflate the latencies.
        let at = start.elapsed().as_secs_f64();
        if !chunk.choices.is_empty() {
            record.chunk_times_s.push(at);
        }
        if let Some(usage) = chunk.usage {
            record.usage_output_tokens = Some(usage.completion_tokens as usize);
            record.usage_cached_tokens = usage.cached_tokens().map(|n| n as usize);
        }
    }
    Ok(())
}

/// Runs the workload; returns the records in request order and the run's wall time (first send to
/// last completion).
pub async fn run(client: &Client, workload: Workload) -> (Vec<RequestRecord>, f64) {
    let Workload { model, requests, send_at_s, max_concurrency } = workload;
    assert_eq!(requests.len(), send_at_s.len(), "one send time per request");
    let total = requests.len();
    let permits = Arc::new(Semaphore::new(max_concurrency.unwrap_or(Semaphore::MAX_PERMITS)));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = tokio::spawn(show_progress(done.clone(), total));
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .zip(send_at_s)
        .map(|(BenchRequest { prompt, output_len }, at)| {
            let (client, model, permits, done) =
                (client.clone(), model.clone(), permits.clone(), done.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
                let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
                let len = prompt.len();
                let record = send_one(&client, request(&model, prompt, output_len), len).await;
                done.fetch_add(1, Ordering::Relaxed);
                record
            })
        })
        .collect();
    let mut records = Vec::with_capacity(total);
    for task in tasks {
        records.push(task.await.unwrap_or_else(|e| RequestRecord {
            error: Some(format!("request task failed: {e}")),
            ..Default::default()
        }));
    }
    let duration_s = start.elapsed().as_secs_f64();
    progress.abort();
    eprintln!("\r{total}/{total} requests done in {duration_s:.2} s");
    (records, duration_s)
}

/// A one-line counter on stderr; redrawn in place on a terminal, every tenth otherwise, so a CI
/// log gets a few lines rather than thousands.
async fn show_progress(done: Arc<AtomicUsize>, total: usize) {
    let terminal = std::io::stderr().is_terminal();
    let step = total.div_ceil(10).max(1);
    let mut shown = usize::MAX;
    loop {
        let n = done.load(Ordering::Relaxed);
        if n != shown && (terminal || n.is_multiple_of(step)) {
            let mut err = std::io::stderr().lock();
            let _ = if terminal {
                write!(err, "\r{n}/{total} requests")
            } else {
                writeln!(err, "{n}/{total} requests")
            };
            let _ = err.flush();
            shown = n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
