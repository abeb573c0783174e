//! What a request is before it enters the scheduler, and how it ends.

use crate::ids::RequestId;
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};

/// Why a request stopped producing tokens. Every admitted request ends exactly once, with one of
/// these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// `max_tokens` generated, or the context limit (`max_model_len`) reached.
    Length,
    /// An end-of-sequence token, a stop token id, or (detected by the engine) a stop string.
    Stop,
    /// Cancelled: client disconnect, explicit abort, or engine failure.
    Abort,
}

/// Where a request is in its life. `Preempted` requests wait like `Waiting` ones but have lost their
/// KV blocks and recompute from the start (often with prefix-cache hits) when readmitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Waiting,
    Running,
    Preempted,
    Finished(FinishReason),
}

impl RequestStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, RequestStatus::Finished(_))
    }
}

/// A tokenized generation request as the engine hands it to the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    pub sampling_params: SamplingParams,
    /// End-of-sequence ids of the model (from generation_config.json); ignored when
    /// `sampling_params.ignore_eos` is set.
    pub eos_token_ids: Vec<u32>,
    /// Lower is more urgent (vLLM's convention); 0 is the default class.
    pub priority: i32,
    /// Mixed into the first prefix-cache block hash so tenants never share cached KV.
    pub cache_salt: Option<String>,
}

impl Request {
    /// A request with default priority, no salt and no eos ids.
    pub fn new(request_id: RequestId, prompt_token_ids: Vec<u32>, sampling_params: SamplingParams) -> Self {
        Request {
            request_id,
            prompt_token_ids,
            sampling_params,
            eos_token_ids: Vec::new(),
            priority: 0,
            cache_salt: None,
        }
    }
}
