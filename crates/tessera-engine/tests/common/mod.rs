//! Helpers shared by the engine's integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
use tessera_core::{EngineConfig, FinishReason, SamplingParams};
use tessera_engine::{Engine, EngineError, GenerateRequest, Prompt, RequestStream, TokenEvent};

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models").join(name)
}

/// A CPU config for the `tiny` dummy model with a small KV cache budget.
pub fn tiny_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.cache.num_blocks = Some(512);
    config
}

pub fn fixture_config(name: &str) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.model.path = Some(fixture_dir(name));
    config.cache.num_blocks = Some(256);
    config
}

/// Everything one request produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub terminal: TokenEvent,
}

impl Outcome {
    pub fn reason(&self) -> Option<FinishReason> {
        match &self.terminal {
            TokenEvent::Finished(c) => Some(c.reason),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&EngineError> {
        match &self.terminal {
            TokenEvent::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads a stream to its end, checking that exactly one terminal event comes last.
pub async fn drain(mut stream: RequestStream) -> Outcome {
    let (mut token_ids, mut text, mut terminal) = (Vec::new(), String::new(), None);
    while let Some(event) = stream.next().await {
        assert!(terminal.is_none(), "event after the terminal one: {event:?}");
        match event {
            TokenEvent::Token(t) => {
                token_ids.push(t.token_id);
                text.push_str(&t.text);
            }
            other => terminal = Some(other),
        }
    }
    Outcome { token_ids, text, terminal: terminal.expect("the stream ended without a terminal event") }
}

pub async fn run(engine: &Engine, prompt: Prompt, params: SamplingParams) -> Outcome {
    drain(engine.generate(GenerateRequest::new(prompt, params)).await.expect("admitted")).await
}

pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) }
}

/// A deterministic pseudo-random prompt of `len` byte tokens.
pub fn byte_prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u32 % 256
        })
        .collect()
}

/// All blocks are free or cached, and the scheduler's invariants hold.
pub async fn assert_quiescent(engine: &Engine) {
    engine.check_invariants().await.expect("invariants");
    let stats = engine.stats().await.unwrap();
    assert_eq!(stats.num_used_blocks, 0, "blocks still in use: {stats:?}");
    assert_eq!(stats.num_free_blocks + stats.num_cached_blocks, stats.num_blocks, "{stats:?}");
    assert_eq!(stats.scheduler.num_running + stats.scheduler.num_waiting, 0, "{stats:?}");
}
