//! Per-request sampling parameters, with the validation the server and engine share.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// How to pick each next token, and when to stop. Field names follow the OpenAI/vLLM API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// In (0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// In [0, 1]; 0 disables min-p.
    pub min_p: f32,
    /// Greater than 0; 1 disables it. Divides positive logits (multiplies negative ones) of every
    /// token seen in the prompt or the output so far.
    pub repetition_penalty: f32,
    /// In [-2, 2]; subtracted once per occurrence in the output.
    pub frequency_penalty: f32,
    /// In [-2, 2]; subtracted once if the token occurs in the output.
    pub presence_penalty: f32,
    /// Same seed, same output. `None` draws from the engine's generator.
    pub seed: Option<u64>,
    /// Number of tokens to generate at most (at least 1).
    pub max_tokens: u32,
    /// Keep going after an end-of-sequence token.
    pub ignore_eos: bool,
    /// Extra token ids that end generation (the token is emitted).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the stop string itself is not emitted.
    pub stop: Vec<String>,
    /// Number of top alternatives to report with each token's logprob; `None` reports none.
    pub logprobs: Option<u32>,
}

/// The most alternatives a request may ask logprobs for (as OpenAI's API allows).
pub const MAX_LOGPROBS: u32 = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad =
            |param: &'static str, message: String| Err(CoreError::InvalidSamplingParam { param, message });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", format!("must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty", format!("must be > 0, got {}", self.repetition_penalty));
        }
        for (param, value) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return bad(param, format!("must be in [-2, 2], got {value}"));
            }
        }
        if self.max_tokens < 1 {
            return bad("max_tokens", "must be at least 1".to_string());
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return bad("logprobs", format!("must be at most {MAX_LOGPROBS}, got {n}"));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "stop strings must not be empty".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        assert!(SamplingParams::greedy(8).is_greedy());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, SamplingParams)> = vec![
            ("temperature", SamplingParams { temperature: -0.5, ..Default::default() }),
            ("temperature", SamplingParams { temperature: f32::NAN, ..Default::default() }),
            ("top_p", SamplingParams { top_p: 0.0, ..Default::default() }),
            ("top_p", SamplingParams { top_p: 1.5, ..Default::default() }),
            ("min_p", SamplingParams { min_p: -0.1, ..Default::default() }),
            ("repetition_penalty", SamplingParams { repetition_penalty: 0.0, ..Default::default() }),
            ("frequency_penalty", SamplingParams { frequency_penalty: 3.0, ..Default::default() }),
            ("presence_penalty", SamplingParams { presence_penalty: f32::NAN, ..Default::default() }),
            ("max_tokens", SamplingParams { max_tokens: 0, ..Default::default() }),
            ("logprobs", SamplingParams { logprobs: Some(21), ..Default::default() }),
            ("stop", SamplingParams { stop: vec![String::new()], ..Default::default() }),
        ];
        for (want, params) in cases {
            match params.validate() {
                Err(CoreError::InvalidSamplingParam { param, .. }) => assert_eq!(param, want),
                other => panic!("{want}: expected an error, got {other:?}"),
            }
        }
    }
}
