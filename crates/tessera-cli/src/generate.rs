//! `tessera generate`: one prompt, one completion, printed as it is produced.

use crate::args::ModelArgs;
use crate::sample::sample;
use anyhow::{bail, Context};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::time::Instant;
use tessera_core::config::Device;
use tessera_core::{EngineConfig, SamplingParams};
use tessera_cpu::CpuBackend;
use tessera_model::loader::{max_model_len, weight_dtype};
use tessera_model::{open_model, DType, Model, SingleSequence, TpRank};

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
    /// Seed of the sampler; the same seed gives the same completion.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
}

const BLOCK_SIZE: usize = 16;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let mut config = EngineConfig::default();
    args.model.apply(&mut config);
    config.validate()?;
    if config.device != Device::Cpu {
        bail!("device `cuda` needs a build with `--features cuda`; this binary has the CPU backend only");
    }
    if config.parallel.tensor_parallel_size != 1 {
        bail!("`tessera generate` runs one rank for now; tensor parallelism comes with the engine");
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        seed: args.seed,
        ignore_eos: args.ignore_eos,
        ..Default::default()
    };
    params.validate()?;

    let files = open_model(&config.model).context("opening the model")?;
    let context_len = max_model_len(&config.model, &files.spec)?;
    let prompt_ids = files.tokenizer.encode(&args.prompt, true)?;
    if prompt_ids.len() >= context_len {
        bail!("the prompt has {} tokens; the context holds {context_len}", prompt_ids.len());
    }
    let total = (prompt_ids.len() + args.max_tokens as usize).min(context_len);
    let num_blocks = total.div_ceil(BLOCK_SIZE);

    let backend = CpuBackend::new();
    let load_start = Instant::now();
    // The CPU backend computes in f32 whatever the stored dtype; keep dummy weights in f32 too.
    let dtype = weight_dtype(&config.model, &files.spec, DType::F32);
    let model =
        Model::load(&backend, &files.spec, files.source.as_ref(), dtype, TpRank::SINGLE, context_len)?;
    eprintln!("loaded {} in {:.2?}", files.name, load_start.elapsed());

    let mut seq =
        SingleSequence::new(&backend, &model, BLOCK_SIZE, num_blocks, (0..num_blocks as u32).collect())?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed.unwrap_or_else(rand::random));
    let start = Instant::now();
    let mut logits = seq.step(&backend, &prompt_ids)?;
    let prefill_time = start.elapsed();
    let mut generated = Vec::new();
    let mut printer = StreamPrinter::default();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    loop {
        let token = sample(&logits, &params, &mut rng);
        generated.push(token);
        printer.print(&mut out, &files.tokenizer.decode(&generated, true)?)?;
        let is_eos = files.spec.eos_token_ids.contains(&token) && !params.ignore_eos;
        if is_eos || generated.len() >= args.max_tokens as usize || seq.num_computed_tokens() + 1 >= total {
            break;
        }
        logits = seq.step(&backend, &[token])?;
    }
    writeln!(out)?;
    let decode_time = start.elapsed() - prefill_time;
    eprintln!(
        "{} prompt tokens in {prefill_time:.2?}, {} tokens generated ({:.1} tokens/s)",
        prompt_ids.len(),
        generated.len(),
        generated.len() as f64 / decode_time.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Prints the growth of a decoded text, holding back an incomplete UTF-8 character (decoded as
/// U+FFFD) until the tokens that complete it arrive.
#[derive(Default)]
struct StreamPrinter {
    printed: usize,
}

impl StreamPrinter {
    fn print(&mut self, out: &mut impl Write, text: &str) -> std::io::Result<()> {
        if text.ends_with('\u{FFFD}') || !text.is_char_boundary(self.printed) || text.len() < self.printed {
            return Ok(());
        }
        out.write_all(&text.as_bytes()[self.printed..])?;
        out.flush()?;
        self.printed = text.len();
        Ok(())
    }
}
