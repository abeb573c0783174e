//! `tessera generate`: one prompt through the engine, printed as it is produced.

use crate::args::ModelArgs;
use anyhow::{bail, Context};
use clap::Args;
use std::io::Write;
use std::time::Instant;
use tessera_core::{EngineConfig, SamplingParams};
use tessera_engine::{Engine, GenerateRequest, Prompt, TokenEvent};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt to complete.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Seed of the sampler; the same seed gives the same completion.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop at this string (not printed); may be repeated.
    #[arg(long)]
    stop: Vec<String>,
}

impl GenerateArgs {
    pub fn overrides(&self) -> Vec<crate::settings::Override> {
        self.model.overrides()
    }
}

pub fn run(args: GenerateArgs, config: EngineConfig) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_tokens: args.max_tokens,
        seed: args.seed,
        ignore_eos: args.ignore_eos,
        stop: args.stop.clone(),
        ..Default::default()
    };
    params.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(generate(config, args.prompt, params))
}

async fn generate(config: EngineConfig, prompt: String, params: SamplingParams) -> anyhow::Result<()> {
    let load_start = Instant::now();
    let engine = Engine::start(config).await.context("starting the engine")?;
    eprintln!("loaded {} in {:.2?}", engine.model_name(), load_start.elapsed());
    let start = Instant::now();
    let mut stream = engine.generate(GenerateRequest::new(Prompt::Text(prompt.clone()), params)).await?;
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    let mut first_token_at = None;
    let mut num_tokens: usize = 0;
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(token) => {
                first_token_at.get_or_insert_with(Instant::now);
                num_tokens += 1;
                write!(out, "{}", token.text)?;
                out.flush()?;
            }
            TokenEvent::Finished(done) => {
                writeln!(out)?;
                let decode = first_token_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                eprintln!(
                    "{} prompt tokens, {} generated ({:?}); first token after {:.2?}, {:.1} tokens/s after it",
                    done.num_prompt_tokens,
                    done.num_output_tokens,
                    done.reason,
                    first_token_at.map(|t| t - start).unwrap_or_default(),
                    num_tokens.saturating_sub(1) as f64 / decode.max(1e-9),
                );
            }
            TokenEvent::Error(err) => bail!("generation failed: {err}"),
        }
    }
    crate::serve::shutdown_engine(&engine).await?;
    Ok(())
}
