//! `Engine`: the in-process API. It starts the actors of one replica and turns requests into
//! event streams.

use crate::actors::coordinator::{CoordinatorActor, CoordinatorArgs, CoordinatorMsg};
use crate::actors::kv_manager::{KvManagerActor, KvManagerMsg, KvSnapshot};
use crate::actors::scheduler::{EngineStats, SchedulerActor, SchedulerArgs, SchedulerMsg};
use crate::devices::{device_group, DeviceGroup, GroupProvider};
use crate::error::EngineError;
use crate::health::{Health, HealthState};
use crate::stream::RequestStream;
use crate::worker::{ArmedFault, FaultInjection};
use ractor::{Actor, ActorRef};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_core::{EngineConfig, Request, RequestId, RequestStatus, SamplingParams};
use tessera_model::loader::max_model_len;
use tessera_model::{open_model, ModelSpec, Tokenizer};

/// A prompt as text (tokenized by the engine, special tokens added) or as token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Lower is more urgent.
    pub priority: i32,
    /// Isolates this tenant's prefix-cache entries from others'.
    pub cache_salt: Option<String>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> Self {
        GenerateRequest { prompt, params, priority: 0, cache_salt: None }
    }
}

/// Options that are not configuration: test hooks, and the worker group of a multi-node
/// deployment.
#[derive(Clone, Default)]
pub struct EngineOptions {
    pub fault: Option<FaultInjection>,
    /// Builds the worker group instead of device selection (`fault` then does not apply).
    pub group: Option<Arc<dyn GroupProvider>>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("fault", &self.fault)
            .field("group", &self.group.as_ref().map(|_| "external"))
            .finish()
    }
}

struct Inner {
    config: EngineConfig,
    spec: ModelSpec,
    model_name: String,
    max_model_len: usize,
    num_blocks: usize,
    tokenizer: Arc<Tokenizer>,
    scheduler: ActorRef<SchedulerMsg>,
    coordinator: ActorRef<CoordinatorMsg>,
    kv_manager: ActorRef<KvManagerMsg>,
    health: Arc<Health>,
    next_id: AtomicU64,
    seed_base: u64,
}

/// A running engine replica. Cheap to clone; all clones drive the same actors.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn startup(err: impl std::fmt::Display) -> EngineError {
    EngineError::Startup(err.to_string())
}

fn check_tensor_parallel(spec: &ModelSpec, world: usize) -> Result<(), EngineError> {
    for (what, count) in [("num_attention_heads", spec.num_heads), ("num_key_value_heads", spec.num_kv_heads)]
    {
        if count % world != 0 {
            return Err(startup(format!(
                "parallel.tensor_parallel_size = {world} must divide the model's {what} ({count})"
            )));
        }
    }
    Ok(())
}

impl Engine {
    pub async fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        Self::start_with(config, EngineOptions::default()).await
    }

    pub async fn start_with(config: EngineConfig, options: EngineOptions) -> Result<Engine, EngineError> {
        config.validate().map_err(startup)?;
        let files = open_model(&config.model).map_err(startup)?;
        check_tensor_parallel(&files.spec, config.parallel.tensor_parallel_size)?;
        let max_model_len = max_model_len(&config.model, &files.spec).map_err(startup)?;
        let fault = options.fault.map(|fault| ArmedFault { fault, fired: Default::default() });
        let DeviceGroup { factory, num_blocks } = match &options.group {
            Some(provider) => provider.provide(&config, &files.spec, max_model_len)?,
            None => device_group(&config, &files.spec, max_model_len, fault)?,
        };
        let health = Arc::new(Health::default());

        let (kv_manager, _) = Actor::spawn(None, KvManagerActor, ()).await.map_err(startup)?;
        let scheduler_args = SchedulerArgs {
            config: config.scheduler.clone(),
            cache: config.cache.clone(),
            num_blocks,
            max_model_len,
            kv_manager: kv_manager.clone(),
        };
        let (scheduler, _) = Actor::spawn(None, SchedulerActor, scheduler_args).await.map_err(startup)?;
        let coordinator_args = CoordinatorArgs {
            scheduler: scheduler.clone(),
            group: factory,
            config: config.engine.clone(),
            health: health.clone(),
        };
        let (coordinator, _) = Actor::spawn(None, CoordinatorActor, coordinator_args).await.map_err(|e| {
            kv_manager.stop(None);
            scheduler.stop(None);
            startup(e)
        })?;
        Ok(Engine {
            inner: Arc::new(Inner {
                model_name: files.name,
                spec: files.spec,
                tokenizer: Arc::new(files.tokenizer),
                config,
                max_model_len,
                num_blocks,
                scheduler,
                coordinator,
                kv_manager,
                health,
                next_id: AtomicU64::new(0),
                seed_base: rand::random(),
            }),
        })
    }

    /// Queues a request. Refusals (invalid, never fits, overloaded, unavailable) come back here;
    /// once a stream is returned, it ends with exactly one terminal event.
    pub async fn generate(&self, request: GenerateRequest) -> Result<RequestStream, EngineError> {
        let inner = &self.inner;
        if inner.health.state() != HealthState::Ready {
            let why = inner.health.reason().unwrap_or_else(|| format!("{:?}", inner.health.state()));
            return Err(EngineError::Unavailable(why));
        }
        let mut params = request.params;
        params.validate().map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let prompt_token_ids = match request.prompt {
            Prompt::Text(text) => {
                inner.tokenizer.encode(&text, true).map_err(|e| EngineError::InvalidRequest(e.to_string()))?
            }
            Prompt::Tokens(ids) => ids,
        };
        let vocab = inner.spec.vocab_size as u32;
        if let Some(bad) = prompt_token_ids.iter().find(|&&t| t >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if let Some(bad) = params.stop_token_ids.iter().find(|&&t| t >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "stop token id {bad} is outside the vocabulary"
            )));
        }
        let id = RequestId(inner.next_id.fetch_add(1, Ordering::Relaxed));
        // A seed for every request makes its sampling independent of batching and preemption.
        params.seed.get_or_insert(inner.seed_base ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let stop = params.stop.clone();
        let req = Request {
            request_id: id,
            eos_token_ids: inner.spec.eos_token_ids.clone(),
            priority: request.priority,
            cache_salt: request.cache_salt,
            ..Request::new(id, prompt_token_ids.clone(), params)
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let admitted = ractor::call!(inner.scheduler, SchedulerMsg::Add, req, tx)
            .map_err(|e| EngineError::Unavailable(format!("scheduler: {e}")))?;
        admitted?;
        let _ = inner.coordinator.cast(CoordinatorMsg::Wake);
        Ok(RequestStream::new(
            id,
            rx,
            inner.scheduler.clone(),
            inner.tokenizer.clone(),
            &prompt_token_ids,
            &stop,
        ))
    }

    /// Cancels a request; its stream ends with `Finished { reason: Abort }`.
    pub fn abort(&self, id: RequestId) {
        let _ = self.inner.scheduler.cast(SchedulerMsg::Abort(id));
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.inner.spec
    }

    pub fn model_name(&self) -> &str {
        &self.inner.model_name
    }

    pub fn max_model_len(&self) -> usize {
        self.inner.max_model_len
    }

    pub fn num_blocks(&self) -> usize {
        self.inner.num_blocks
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        ractor::call!(self.inner.scheduler, SchedulerMsg::Stats)
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    pub async fn kv_snapshot(&self) -> Result<KvSnapshot, EngineError> {
        ractor::call!(self.inner.kv_manager, KvManagerMsg::Snapshot)
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    pub async fn request_status(&self, id: RequestId) -> Result<Option<RequestStatus>, EngineError> {
        ractor::call!(self.inner.scheduler, SchedulerMsg::Status, id)
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// Runs the scheduler's and KV manager's invariant checks (tests, debugging).
    pub async fn check_invariants(&self) -> Result<(), String> {
        ractor::call!(self.inner.scheduler, SchedulerMsg::CheckInvariants).map_err(|e| e.to_string())?
    }

    /// Fails the worker group now (in-flight requests get errors, `/ready` turns 503, then the
    /// group is rebuilt or the engine stops, per `engine.on_worker_failure`), unless
    /// `still_broken` says otherwise when the coordinator gets to it. For a group whose ranks can
    /// break while idle (a lost node of a multi-node group).
    pub fn fail_workers_if(&self, reason: String, still_broken: impl FnOnce() -> bool + Send + 'static) {
        let message = CoordinatorMsg::FailGroup { reason, still_broken: Box::new(still_broken) };
        let _ = self.inner.coordinator.cast(message);
    }

    /// Stops the workers and fails anything in flight. The engine refuses requests afterwards.
    pub async fn shutdown(&self) {
        let _ = ractor::call!(self.inner.coordinator, CoordinatorMsg::Shutdown);
        self.inner.coordinator.stop(None);
        self.inner.scheduler.stop(None);
        self.inner.kv_manager.stop(None);
    }
}
