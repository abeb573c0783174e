//! From an OpenAI request's sampling fields to validated `SamplingParams`. Every refusal names the
//! parameter, as OpenAI's errors do.

use crate::error::ApiError;
use tessera_core::openai::{ChatCompletionRequest, CompletionRequest, StopSpec};
use tessera_core::{CoreError, SamplingParams};

/// The sampling fields completions and chat share, plus the request-level ones.
pub struct RequestParams {
    pub n: Option<u32>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub ignore_eos: Option<bool>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    /// Alternatives per token; `Some(0)` reports only the chosen token's logprob.
    pub logprobs: Option<u32>,
}

impl From<&CompletionRequest> for RequestParams {
    fn from(r: &CompletionRequest) -> Self {
        RequestParams {
            n: r.n,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            seed: r.seed,
            ignore_eos: r.ignore_eos,
            stop: r.stop.clone(),
            stop_token_ids: r.stop_token_ids.clone(),
            logprobs: r.logprobs,
        }
    }
}

impl From<&ChatCompletionRequest> for RequestParams {
    fn from(r: &ChatCompletionRequest) -> Self {
        RequestParams {
            n: r.n,
            max_tokens: r.max_completion_tokens.or(r.max_tokens),
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            seed: r.seed,
            ignore_eos: r.ignore_eos,
            stop: r.stop.clone(),
            stop_token_ids: r.stop_token_ids.clone(),
            logprobs: if r.logprobs == Some(true) { Some(r.top_logprobs.unwrap_or(0)) } else { None },
        }
    }
}

pub fn check_token_ids(param: &str, ids: &[u32], vocab_size: usize) -> Result<(), ApiError> {
    match ids.iter().find(|&&t| t as usize >= vocab_size) {
        Some(bad) => {
            Err(ApiError::invalid(param, format!("token id {bad} is out of vocabulary (size {vocab_size})")))
        }
        None => Ok(()),
    }
}

/// The number of choices, checked against `max_n`.
pub fn num_choices(params: &RequestParams, max_n: u32) -> Result<u32, ApiError> {
    let n = params.n.unwrap_or(1);
    if n < 1 || n > max_n {
        return Err(ApiError::invalid("n", format!("n must be between 1 and {max_n}, got {n}")));
    }
    Ok(n)
}

/// Checks the prompt against the context and builds the engine's parameters. `default_max_tokens`
/// applies when the request sets none (16 for completions, the rest of the context for chat).
pub fn sampling_params(
    params: &RequestParams,
    prompt_param: &str,
    num_prompt_tokens: usize,
    max_model_len: usize,
    vocab_size: usize,
    default_max_tokens: Option<u32>,
) -> Result<SamplingParams, ApiError> {
    if num_prompt_tokens >= max_model_len {
        return Err(ApiError::invalid(
            prompt_param,
            format!("the prompt has {num_prompt_tokens} tokens; this model's maximum context length is {max_model_len}"),
        ));
    }
    let room = (max_model_len - num_prompt_tokens) as u32;
    let max_tokens = params.max_tokens.or(default_max_tokens).unwrap_or(room);
    if max_tokens < 1 {
        return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1"));
    }
    if max_tokens > room {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "this model's maximum context length is {max_model_len} tokens; the prompt has \
                 {num_prompt_tokens} and max_tokens asks for {max_tokens} more"
            ),
        ));
    }
    let stop_token_ids = params.stop_token_ids.clone().unwrap_or_default();
    check_token_ids("stop_token_ids", &stop_token_ids, vocab_size)?;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: params.temperature.unwrap_or(defaults.temperature),
        top_k: params.top_k.unwrap_or(0),
        top_p: params.top_p.unwrap_or(1.0),
        min_p: params.min_p.unwrap_or(0.0),
        repetition_penalty: params.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
        presence_penalty: params.presence_penalty.unwrap_or(0.0),
        seed: params.seed,
        max_tokens,
        ignore_eos: params.ignore_eos.unwrap_or(false),
        stop_token_ids,
        stop: params.stop.clone().map(StopSpec::into_vec).unwrap_or_default(),
        logprobs: params.logprobs,
    };
    sampling.validate().map_err(|CoreError::InvalidSamplingParam { param, message }| {
        // Chat spells the logprobs count `top_logprobs`.
        let param = if param == "logprobs" && prompt_param == "messages" { "top_logprobs" } else { param };
        ApiError::invalid(param, format!("{param} {message}"))
    })?;
    Ok(sampling)
}
