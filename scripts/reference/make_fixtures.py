#!/usr/bin/env python3
"""Create small random Hugging Face checkpoints and transformers reference outputs.

For every architecture Tessera supports this writes a tiny model directory
(config.json, float32 safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) and an expected.json holding what Hugging Face
transformers computes for a few prompts: prompt token ids, the logits at the
last prompt position and 32 greedily decoded tokens.

The Rust tests load the same directories with Tessera's own loader and compare
the CPU backend against expected.json.

Usage (from anywhere):
    python scripts/reference/make_fixtures.py [--out DIR]

DIR defaults to tests/fixtures/models relative to the repository root.
The output is deterministic: weights come from seeded torch generators (not
from transformers' own init), so re-running reproduces the same weights, and
the same expected outputs up to float32 rounding of the CPU kernels.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import safetensors
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "models"

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
# Byte-level BPE: 256 byte tokens + learned merges, then the two special tokens
# are appended at the end of the vocabulary (as in Llama 3).
TRAINED_VOCAB = 382
VOCAB_SIZE = TRAINED_VOCAB + 2

NEW_TOKENS = 32
MIN_MARGIN = 0.1  # smallest allowed top-1 / top-2 logit gap on any greedy step
MIN_DISTINCT = 16  # each greedy continuation must use at least this many distinct tokens
MAX_SEED_TRIES = 200
SHARD_SIZE = "200KB"  # the llama fixture is ~0.5 MB, so this gives several shards

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

# Training text for the tokenizer. Written for this script.
CORPUS = [
    """The river town woke slowly in the autumn fog. Fishermen carried their nets
down to the water while the baker opened the shutters of his small shop. The
smell of fresh bread drifted along the narrow street, and children ran past the
fountain on their way to school. Nobody was in a hurry; the morning belonged to
the quiet work of people who had done the same things for many years.""",
    """A computer program is a list of instructions that a machine can follow. The
instructions are written in a programming language, translated into simpler
steps, and then executed one after another. Good programs are clear, tested and
easy to change. When a program fails, the engineer reads the error, forms a
theory about the cause, and checks it with a small experiment.""",
    """Language models read text as a sequence of tokens. Each token is a number
that stands for a piece of a word, a whole word, or a single byte. The model
looks at the tokens it has seen so far and predicts which token should come
next. Repeating that step many times produces sentences, answers and stories.
Serving such a model to many users at once is mostly a problem of memory and
scheduling: the cache of keys and values grows with every token.""",
    """In the mountains the weather changes quickly. A clear blue sky in the morning
can turn into rain and wind by the afternoon. Experienced hikers pack a warm
jacket, water, a map and some food, even for a short walk of two or three hours.
They start early, they turn back when the clouds grow dark, and they always tell
a friend where they are going.""",
    """Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in many texts. So do
questions like "What time is it?" and lists like: apples, pears, plums; red,
green, blue. Some words are short (a, an, the, of, to, in) and some are long
(understanding, responsibility, international).""",
]

PROMPTS = [
    "Hello, world",
    "The baker opened the shop early, and the smell of bread",
    (
        "A language model reads tokens and predicts the next one. "
        "The cache of keys and values grows with every token."
    ),
    "Tokyo 東京 and Zürich: the café served tea 🍵 and cake 🎂 at 3 o'clock.",
]
PROMPT_LEN_BOUNDS = [(3, 8), (20, 60), (20, 60), (20, 60)]  # in tokens, incl. bos


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if tok.get_vocab_size() != TRAINED_VOCAB:
        raise SystemExit(
            f"BPE training produced {tok.get_vocab_size()} tokens, wanted {TRAINED_VOCAB}; "
            "extend the corpus"
        )
    tok.add_special_tokens([BOS, EOS])
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert (bos_id, eos_id) == (TRAINED_VOCAB, TRAINED_VOCAB + 1), (bos_id, eos_id)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    assert tok.get_vocab_size() == VOCAB_SIZE
    # Any UTF-8 text must survive encode -> decode.
    for text in PROMPTS + ["日本語のテキスト 🦀🚀 naïve — ünïcödé", "   spaces\tand\nnewlines  "]:
        enc = tok.encode(text)
        assert enc.ids[0] == bos_id
        assert tok.decode(enc.ids, skip_special_tokens=True) == text, text
    return tok


def write_tokenizer_files(tok: Tokenizer, model_dir: Path) -> None:
    tok.save(str(model_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "model_max_length": 256,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #
COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=256,
    hidden_act="silu",
    bos_token_id=TRAINED_VOCAB,
    eos_token_id=TRAINED_VOCAB + 1,
)

# Llama 3 rope scaling. head_dim = 8 gives 4 rotary frequencies; with
# rope_theta 50000 their wavelengths are ~6.3, ~94, ~1405 and ~21000 positions.
# original_max_position_embeddings 128 with low/high freq factors 1/4 puts the
# boundaries at 128 and 32, so the first frequency is kept, the second is
# smoothly interpolated and the last two are divided by `factor` — every branch
# of the llama3 formula is exercised (checked in check_llama3_branches).
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=50000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=128,
)


def rope_kwargs(theta: float, scaling: dict | None = None) -> dict:
    """Rope settings for the config constructor, for transformers v5 and v4."""
    params = inspect.signature(LlamaConfig.__init__).parameters
    if "rope_parameters" in params:  # transformers >= 5
        rp = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rp.update(scaling)
        rp["rope_theta"] = theta
        return {"rope_parameters": rp}
    out = {"rope_theta": theta}  # transformers 4.x
    if scaling:
        out["rope_scaling"] = {k: v for k, v in scaling.items() if k != "rope_theta"}
    return out


SPECS = {
    "llama": dict(
        config_cls=LlamaConfig,
        model_cls=LlamaForCausalLM,
        base_seed=1000,
        config=dict(
            COMMON,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            **rope_kwargs(LLAMA3_ROPE["rope_theta"], LLAMA3_ROPE),
        ),
    ),
    "qwen2": dict(
        config_cls=Qwen2Config,
        model_cls=Qwen2ForCausalLM,
        base_seed=2000,
        config=dict(
            COMMON,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            **rope_kwargs(1000000.0),
        ),
    ),
    "qwen3": dict(
        config_cls=Qwen3Config,
        model_cls=Qwen3ForCausalLM,
        base_seed=3000,
        config=dict(
            COMMON,
            head_dim=16,  # != hidden_size / num_attention_heads (= 8)
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            **rope_kwargs(1000000.0),
        ),
    ),
    "mistral": dict(
        config_cls=MistralConfig,
        model_cls=MistralForCausalLM,
        base_seed=4000,
        config=dict(
            COMMON,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=None,
            **rope_kwargs(100000.0),
        ),
    ),
}

# Standard deviations of the seeded random weights. They are much larger than
# a trained model's so that logits are spread out and greedy choices are not
# near-ties.
EMBED_STD = 2.0
LINEAR_STD = 0.25
BIAS_STD = 0.5
NORM_SPREAD = 0.5  # norm weights are uniform in [1 - spread, 1 + spread]


def check_llama3_branches() -> None:
    """Make sure the llama3 rope settings hit all three branches of the formula."""
    head_dim = COMMON["hidden_size"] // COMMON["num_attention_heads"]
    theta = LLAMA3_ROPE["rope_theta"]
    old = LLAMA3_ROPE["original_max_position_embeddings"]
    low_wavelen = old / LLAMA3_ROPE["low_freq_factor"]
    high_wavelen = old / LLAMA3_ROPE["high_freq_factor"]
    kinds = set()
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < high_wavelen:
            kinds.add("kept")
        elif wavelen > low_wavelen:
            kinds.add("scaled")
        else:
            kinds.add("smoothed")
    assert kinds == {"kept", "scaled", "smoothed"}, kinds


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from a seeded generator, in sorted name order.

    Independent of transformers' own initialisation, so the weights do not
    change between transformers versions. Tied parameters appear once.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name]
        shape = tuple(p.shape)
        if name.endswith("norm.weight"):
            # input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm
            v = 1.0 + NORM_SPREAD * (2.0 * torch.rand(shape, generator=gen) - 1.0)
        elif name.endswith(".bias"):
            v = BIAS_STD * torch.randn(shape, generator=gen)
        elif "embed_tokens" in name or "lm_head" in name:
            v = EMBED_STD * torch.randn(shape, generator=gen)
        else:
            v = LINEAR_STD * torch.randn(shape, generator=gen)
        p.copy_(v.to(p.dtype))


@torch.no_grad()
def run_case(model, tok: Tokenizer, prompt: str) -> dict:
    """Greedy decoding with a full forward pass per step (no cache, no eos stop)."""
    prompt_ids = tok.encode(prompt).ids
    ids = list(prompt_ids)
    greedy, margins, last_logits = [], [], None
    for step in range(NEW_TOKENS):
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
        logits = out.logits[0, -1].to(torch.float32)
        if step == 0:
            last_logits = logits.clone()
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        greedy.append(nxt)
        ids.append(nxt)
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "greedy_ids": greedy,
        "last_logits": [float(x) for x in last_logits.tolist()],
        "min_margin": min(margins),
    }


def cross_check_generate(model, case: dict) -> None:
    """Our argmax loop must agree with transformers' own greedy generate (with KV cache).

    Only checked when eos does not appear: generate() would stop there.
    """
    eos = COMMON["eos_token_id"]
    if eos in case["greedy_ids"]:
        return
    with torch.no_grad():
        out = model.generate(
            torch.tensor([case["prompt_ids"]], dtype=torch.long),
            attention_mask=torch.ones(1, len(case["prompt_ids"]), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    got = out[0, len(case["prompt_ids"]) :].tolist()
    assert got == case["greedy_ids"], (got, case["greedy_ids"])


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }


def save_model_dir(model, tok: Tokenizer, model_dir: Path, **save_kwargs) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    model.save_pretrained(str(model_dir), **save_kwargs)  # safetensors by default
    write_tokenizer_files(tok, model_dir)


def load_eager(model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


def make_model(name: str, spec: dict, tok: Tokenizer, out: Path):
    model_dir = out / name
    for attempt in range(MAX_SEED_TRIES):
        seed = spec["base_seed"] + attempt
        config = spec["config_cls"](**spec["config"])
        torch.manual_seed(seed)  # only affects transformers' init, overwritten below
        model = spec["model_cls"](config).to(torch.float32)
        randomize_weights(model, seed)
        model.generation_config = GenerationConfig(
            bos_token_id=COMMON["bos_token_id"], eos_token_id=COMMON["eos_token_id"]
        )
        model.eval()
        # Expected outputs come from the checkpoint as written to disk and read back.
        save_model_dir(model, tok, model_dir)
        ref = load_eager(model_dir)
        cases = [run_case(ref, tok, p) for p in PROMPTS]
        worst = min(c["min_margin"] for c in cases)
        distinct = min(len(set(c["greedy_ids"])) for c in cases)
        # Random models easily fall into repeating one token, which would make
        # a weak test of decoding; ask for varied continuations too.
        if worst >= MIN_MARGIN and distinct >= MIN_DISTINCT:
            break
        print(
            f"  {name}: seed {seed} min_margin {worst:.4f} (need {MIN_MARGIN}), "
            f"distinct tokens {distinct} (need {MIN_DISTINCT}), re-seeding"
        )
    else:
        raise SystemExit(f"{name}: no seed with min_margin >= {MIN_MARGIN}")

    for c in cases:
        cross_check_generate(ref, c)
    expected = {
        "versions": versions(),
        "architecture": type(ref).__name__,
        "seed": seed,
        "cases": cases,
    }
    (model_dir / "expected.json").write_text(
        json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(
        f"  {name}: seed {seed}, min_margins "
        + ", ".join(f"{c['min_margin']:.4f}" for c in cases)
    )
    return model


def verify_hf_tokenizer(model_dir: Path, tok: Tokenizer) -> None:
    """The files must load through transformers and agree with the tokenizers library."""
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    assert hf.bos_token == BOS and hf.eos_token == EOS
    for p in PROMPTS:
        assert hf(p)["input_ids"] == tok.encode(p).ids, p
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == f"{BOS}user: Hello{EOS}\nassistant:", repr(rendered)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    check_llama3_branches()
    tok = build_tokenizer()
    for i, (p, (lo, hi)) in enumerate(zip(PROMPTS, PROMPT_LEN_BOUNDS)):
        n = len(tok.encode(p).ids)
        assert lo <= n <= hi, f"prompt {i} has {n} tokens, wanted {lo}..{hi}"
    print(f"versions: {versions()}")
    print(f"tokenizer: {tok.get_vocab_size()} tokens, prompt lengths "
          f"{[len(tok.encode(p).ids) for p in PROMPTS]}")

    models_made = {}
    for name, spec in SPECS.items():
        models_made[name] = make_model(name, spec, tok, out)
        verify_hf_tokenizer(out / name, tok)

    # Same weights as `llama`, in the sharded format with an index.
    sharded_dir = out / "llama-sharded"
    save_model_dir(models_made["llama"], tok, sharded_dir, max_shard_size=SHARD_SIZE)
    shards = sorted(sharded_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2, shards
    assert (sharded_dir / "model.safetensors.index.json").exists()
    a, b = load_eager(out / "llama"), load_eager(sharded_dir)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    print(f"  llama-sharded: {len(shards)} shards")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
