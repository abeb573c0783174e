"""Builds a random checkpoint of Llama 3.2 1B's shape (16 layers, hidden 2048, 32 heads of 64, 8 KV
heads, MLP 8192, tied embeddings, Llama 3 RoPE scaling) in bf16, with the fixtures' small BPE
tokenizer (vocabulary = tokenizer size, 384), and stores transformers' greedy continuations and
first-step logits for crates/tessera-cuda/tests/llama1b.rs to compare against.

Runs on the GPU machine (no network; nothing to download): the weights are drawn here.

Init: "realistic" in the sense that matters for a greedy comparison: std 0.02 everywhere makes
logits nearly flat, so every step is a near tie and bf16 rounding decides. Here linear weights are
N(0, 1/fan_in) (unit gain, so each layer adds an O(1) update to the residual), embeddings N(0, 0.1),
norm weights 1: logits spread over tens of units and most steps have clear top-1 margins. The
margins are stored and printed, so a divergence can be told apart from a near tie.

The reference runs in f32 on the bf16-valued weights (the rounding of the checkpoint is the only
bf16 effect in it); transformers' own bf16 run is measured against it too, as the yardstick for
what bf16 arithmetic costs.

Usage: python3 scripts/gpu/llama1b_reference.py OUT_DIR [FIXTURES_DIR]
"""
import json
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

NUM_PROMPTS = 20
NEW_TOKENS = 64
SEED = 1234


def build(out_dir, fixtures):
    tok_src = os.path.join(fixtures, "llama")
    vocab = json.load(open(os.path.join(tok_src, "config.json")))["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif "embed_tokens" in name:
                # Tied embeddings: at std 1 the last token's own embedding dominates the final
                # hidden state and greedy just repeats it (seen: 19 distinct tokens in 1280, every
                # margin > 300). At 0.1 the layers' updates dominate and continuations vary.
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    model = model.to(torch.bfloat16)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_src, f), out_dir)
    return vocab


def prompts(vocab):
    g = torch.Generator().manual_seed(SEED + 1)
    out = []
    for i in range(NUM_PROMPTS):
        n = 4 + (i * 37) % 120  # lengths 4..123
        # Ordinary tokens only (the last two ids are bos/eos).
        out.append(torch.randint(0, vocab - 2, (n,), generator=g).tolist())
    return out


def greedy(model, prompt):
    """Greedy continuation with the full sequence recomputed each step (no cache subtleties)."""
    ids = list(prompt)
    margins, first = [], None
    with torch.no_grad():
        for t in range(NEW_TOKENS):
            logits = model(torch.tensor([ids], device="cuda")).logits[0, -1].float()
            if first is None:
                first = logits.tolist()
            top2 = logits.topk(2)
            margins.append(float(top2.values[0] - top2.values[1]))
            ids.append(int(top2.indices[0]))
    return ids[len(prompt):], margins, first


def teacher_forced(model, prompt, cont):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont[:-1]], device="cuda")).logits[0].float()
    return logits[len(prompt) - 1 :].argmax(-1).tolist(), logits[len(prompt) - 1]


def main(out_dir, fixtures):
    vocab = build(out_dir, fixtures)
    ps = prompts(vocab)
    ref = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32).cuda().eval()
    cases = []
    for p in ps:
        cont, margins, first = greedy(ref, p)
        cases.append({"prompt_ids": p, "greedy_ids": cont, "margins": margins, "last_logits": first})
    all_m = sorted(m for c in cases for m in c["margins"])
    print(
        f"reference f32: {len(cases)} prompts x {NEW_TOKENS} tokens; top-1 margin min {all_m[0]:.3f}, "
        f"5th percentile {all_m[len(all_m) // 20]:.3f}, median {all_m[len(all_m) // 2]:.3f}; "
        f"logit scale (max |first-step logit|) {max(max(abs(v) for v in c['last_logits']) for c in cases):.1f}; "
        f"distinct generated tokens {len({t for c in cases for t in c['greedy_ids']})}"
    )
    del ref
    # Yardstick: transformers in bf16 against its f32 self, measured the way the Rust test is.
    bf = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).cuda().eval()
    agree, total, errs = 0, 0, []
    for c in cases:
        pred, last = teacher_forced(bf, c["prompt_ids"], c["greedy_ids"])
        agree += sum(a == b for a, b in zip(pred, c["greedy_ids"]))
        total += len(pred)
        ref_l = torch.tensor(c["last_logits"], device="cuda")
        errs.append(((last - ref_l).abs().max() / ref_l.abs().max()).item())
    print(
        f"transformers bf16 vs f32: first-step logits relative error max {max(errs):.2e}; "
        f"teacher-forced greedy agreement {agree}/{total} = {100 * agree / total:.1f}%"
    )
    meta = {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "transformers_bf16": {"max_logits_error": max(errs), "agreement": agree / total},
        "cases": cases,
    }
    json.dump(meta, open(os.path.join(out_dir, "expected.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/models")
