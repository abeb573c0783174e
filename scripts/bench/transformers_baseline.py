#!/usr/bin/env python3
"""Hugging Face transformers baseline for `tessera bench`, run on the GPU machine.

Builds a Llama model of a named shape with random bf16 weights on cuda (no download), then times
the same workloads `tessera bench latency` and `tessera bench serve` run:

- decode latency at batch 1 and batch 64 (prefill time, then the mean decode step);
- `bench serve` at max concurrency C (default 1, 16, 64): a library without a server has at most C
  requests in flight when it runs static batches of C through `generate`, so each C runs its
  prompts in batches of C: all 256 at 16 and 64, 16 at 1 (see `serve`);
- the throughput workload: N prompts of 1024 random token ids, 128 new tokens each with EOS
  ignored, through continuous batching (`generate_batch`) when this transformers has it, else
  one batched `generate`.

Prints one JSON object on stdout; progress goes to stderr. Greedy decoding throughout, so the
sampling cost matches Tessera's `temperature = 0` runs.

    python3 scripts/bench/transformers_baseline.py --shape llama-3-8b --num-prompts 256
    python3 scripts/bench/transformers_baseline.py --shape tiny --device cpu ...   # checks the script
"""

import argparse
import contextlib
import json
import sys
import time

SHAPES = {
    # Meta-Llama-3-8B's config.json, less the weights.
    "llama-3-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        tie_word_embeddings=False,
    ),
    # Tessera's `--dummy tiny`, for a quick check of the script itself.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build_model(shape, seed, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # No EOS: random weights would otherwise stop some sequences early, and every engine must
    # produce exactly the requested number of tokens (Tessera's `ignore_eos`).
    config = LlamaConfig(**SHAPES[shape], eos_token_id=None, bos_token_id=None, pad_token_id=0)
    config.torch_dtype = torch.bfloat16
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def random_prompts(num, length, vocab, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num, length), generator=gen)


def sync():
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def generate_timed(model, input_ids, new_tokens):
    """(seconds, tokens generated) for one batched greedy `generate` asking `new_tokens` per row.

    Tokens are counted from the output, not assumed: with no EOS no row can finish before the
    others, so every row has out.shape[1] - input length new tokens, and a run that stopped short
    (a max_length in the generation config, say) shows up in the count."""
    import torch

    attention_mask = torch.ones_like(input_ids)
    sync()
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    sync()
    elapsed = time.perf_counter() - start
    return elapsed, input_ids.shape[0] * (out.shape[1] - input_ids.shape[1])


def time_generate(model, input_ids, new_tokens):
    """Seconds for one batched greedy `generate` that must make exactly `new_tokens` per row."""
    elapsed, generated = generate_timed(model, input_ids, new_tokens)
    assert generated == input_ids.shape[0] * new_tokens, (generated, input_ids.shape, new_tokens)
    return elapsed


def decode_latency(model, batch, input_len, output_len, iters, seed):
    """Prefill = a 1-token generate; decode step = (full generate - prefill) / (output_len - 1).
    The same split `tessera bench latency` reports."""
    import torch

    ids = random_prompts(batch, input_len, model.config.vocab_size, seed).to(model.device)
    with torch.inference_mode():
        time_generate(model, ids, 2)  # warm-up: kernels, allocator
        prefills, totals = [], []
        for _ in range(iters):
            prefills.append(time_generate(model, ids, 1))
            totals.append(time_generate(model, ids, output_len))
    prefill = sorted(prefills)[len(prefills) // 2]
    total = sorted(totals)[len(totals) // 2]
    step = (total - prefill) / (output_len - 1)
    return dict(
        batch_size=batch,
        input_len=input_len,
        output_len=output_len,
        median_prefill_ms=prefill * 1e3,
        median_decode_step_ms=step * 1e3,
        median_total_ms=total * 1e3,
        decode_tokens_per_s=batch / step,
    )


def throughput_continuous(model, prompts, output_len):
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=output_len,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    inputs = [row.tolist() for row in prompts]
    start = time.perf_counter()
    # transformers prints notes of its own (e.g. "Returning results of generate_batch despite
    # unexpected termination.") on stdout, which carries this script's JSON: send them to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        results = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(r.generated_tokens) for r in results.values())
    return elapsed, generated


def throughput_batched(model, prompts, output_len, batch):
    """All prompts have the same length, so plain batches need no padding."""
    generated = 0
    elapsed = 0.0
    for i in range(0, prompts.shape[0], batch):
        seconds, made = generate_timed(model, prompts[i : i + batch].to(model.device), output_len)
        elapsed += seconds
        generated += made
    return elapsed, generated


def serve(model, concurrency, num_prompts, input_len, output_len, seed):
    """`bench serve` at max concurrency C for a library: static batches of C prompts, one
    `generate` each, measured on `num_prompts` prompts like the workload's (a multiple of C, so
    every batch has C requests in flight). All prompts have the same length and EOS is off, so
    every batch of the full workload costs the same: where the whole workload would take too long
    (at ~55 ms a decode step, 256 prompts at C = 1 take ~11 min), a few batches give its
    throughput at a fraction of the device time.

    Per batch, a 1-token `generate` first: in a static batch every request gets its first token
    when the batch's prefill ends, so that time is each request's TTFT (its clock starts when its
    batch starts, as `--max-concurrency` starts it when it gets its slot). TPOT = (full generate -
    TTFT) / (output_len - 1), the same for every request of the batch. The 1-token runs are not
    part of the duration, which is the sum of the full generates."""
    import torch

    assert num_prompts % concurrency == 0 and num_prompts > 0, (num_prompts, concurrency)
    prompts = random_prompts(num_prompts, input_len, model.config.vocab_size, seed).to(model.device)
    duration, generated, ttfts, tpots = 0.0, 0, [], []
    with torch.inference_mode():
        # Counted only in the full generates: a shortfall is reported in the JSON, not raised.
        generate_timed(model, prompts[:concurrency], 2)  # warm-up at this batch size
        for i in range(0, num_prompts, concurrency):
            batch = prompts[i : i + concurrency]
            ttft, _ = generate_timed(model, batch, 1)
            seconds, made = generate_timed(model, batch, output_len)
            duration += seconds
            generated += made
            ttfts.append(ttft)
            tpots.append((seconds - ttft) / (output_len - 1))
    expected = num_prompts * output_len
    if generated != expected:
        log(f"serve at concurrency {concurrency}: made {generated} of {expected} tokens")
    return dict(
        mode=f"batched generate (static batches of {concurrency})",
        max_concurrency=concurrency,
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        duration_s=duration,
        total_output_tokens=generated,
        expected_output_tokens=expected,
        request_throughput=num_prompts / duration,
        output_throughput=generated / duration,
        mean_ttft_ms=1e3 * sum(ttfts) / len(ttfts),
        mean_tpot_ms=1e3 * sum(tpots) / len(tpots),
    )


def throughput(model, num_prompts, input_len, output_len, batch, seed, mode):
    import torch

    prompts = random_prompts(num_prompts, input_len, model.config.vocab_size, seed)
    used = mode
    failed = None
    with torch.inference_mode():
        if mode in ("auto", "continuous") and hasattr(model, "generate_batch"):
            try:
                throughput_continuous(model, prompts[:2], 4)  # warm-up
                elapsed, generated = throughput_continuous(model, prompts, output_len)
                used = "continuous (generate_batch)"
                expected = num_prompts * output_len
                if generated < expected and mode == "auto":
                    # transformers 5.17's generate_batch returned no tokens for this workload on an
                    # H100 (twice): a throughput of 0 says nothing, so measure batched generate.
                    failed = dict(duration_s=elapsed, total_output_tokens=generated, expected=expected)
                    log(f"generate_batch made {generated} of {expected} tokens; falling back to batched generate")
                    used = "auto"
            except Exception as err:  # an older or partial API: fall back, and say so
                if mode == "continuous":
                    raise
                log(f"generate_batch failed ({err!r}); falling back to batched generate")
                failed = dict(error=repr(err))
                used = "auto"
        if used in ("auto", "batched"):
            time_generate(model, prompts[:2].to(model.device), 4)  # warm-up
            elapsed, generated = throughput_batched(model, prompts, output_len, batch)
            used = f"batched generate (batch {batch})"
    return dict(
        mode=used,
        generate_batch_failed=failed,
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        duration_s=elapsed,
        total_output_tokens=generated,
        request_throughput=num_prompts / elapsed,
        output_throughput=generated / elapsed,
        total_token_throughput=(num_prompts * input_len + generated) / elapsed,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    parser.add_argument("--latency-batch-sizes", default="1,64")
    parser.add_argument("--latency-input-len", type=int, default=1024)
    parser.add_argument("--latency-output-len", type=int, default=128)
    parser.add_argument("--latency-iters", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--batched-generate-batch", type=int, default=64)
    # CONCURRENCY:PROMPTS pairs. Device time on an H100 (~55 ms a decode step at any batch up to
    # 64, prefill ~0.06 s at batch 1 and ~1.9 s at 64; each batch also runs a 1-token generate for
    # its TTFT): C=1, 16 prompts: 16 x (2 TTFTs + 128 steps) ~40 s; C=16, 256 prompts: 16 batches
    # of ~7.5 s ~120 s; C=64, 256 prompts: 4 batches of ~6.5 s ~26 s; about 3 min in all.
    parser.add_argument("--serve", default="1:16,16:256,64:256", help="CONCURRENCY:PROMPTS,...")
    parser.add_argument("--mode", default="auto", choices=["auto", "continuous", "batched"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only to check the script (--shape tiny)")
    args = parser.parse_args()

    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    log(f"building {args.shape} with random bf16 weights on {gpu}")
    model = build_model(args.shape, args.seed, args.device)
    result = dict(
        engine="transformers",
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        gpu=gpu,
        shape=args.shape,
        num_params=sum(p.numel() for p in model.parameters()),
        latency=[],
        serve=[],
    )
    if not args.skip_latency:
        for batch in (int(b) for b in args.latency_batch_sizes.split(",")):
            log(f"latency: batch {batch}")
            result["latency"].append(
                decode_latency(
                    model, batch, args.latency_input_len, args.latency_output_len, args.latency_iters, args.seed
                )
            )
    if not args.skip_serve:
        for pair in args.serve.split(","):
            concurrency, prompts = (int(x) for x in pair.split(":"))
            log(f"serve: concurrency {concurrency}, {prompts} prompts")
            result["serve"].append(
                serve(model, concurrency, prompts, args.input_len, args.output_len, args.seed)
            )
    if not args.skip_throughput:
        log(f"throughput: {args.num_prompts} x {args.input_len} in / {args.output_len} out")
        result["throughput"] = throughput(
            model,
            args.num_prompts,
            args.input_len,
            args.output_len,
            args.batched_generate_batch,
            args.seed,
            args.mode,
        )
    if args.device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
