"""How close transformers itself gets to the stored f32 fixture outputs when it runs the same
checkpoints in bf16 on the GPU: the allowance our bf16 backend is held to cannot be tighter than
what the reference implementation achieves at the same precision.

Usage: python3 scripts/gpu/transformers_bf16.py tests/fixtures/models
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main(root):
    for name in ["llama", "qwen2", "qwen3", "mistral"]:
        path = f"{root}/{name}"
        expected = json.load(open(f"{path}/expected.json"))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
        errors, agree, total = [], 0, 0
        for case in expected["cases"]:
            prompt, greedy = case["prompt_ids"], case["greedy_ids"]
            ids = torch.tensor([prompt + greedy[:-1]], device="cuda")
            with torch.no_grad():
                logits = model(ids).logits[0].float()
            ref = torch.tensor(case["last_logits"], device="cuda")
            last = logits[len(prompt) - 1]
            errors.append(((last - ref).abs().max() / ref.abs().max()).item())
            # Teacher-forced greedy, as crates/tessera-cuda/tests/model.rs measures it.
            pred = logits[len(prompt) - 1 :].argmax(-1).tolist()
            agree += sum(p == g for p, g in zip(pred, greedy))
            total += len(greedy)
        print(
            f"transformers bf16 {name}: first-step logits relative error "
            f"{' '.join(f'{e:.2e}' for e in errors)} (max {max(errors):.2e}); "
            f"teacher-forced greedy agreement {agree}/{total} = {100 * agree / total:.1f}%"
        )


if __name__ == "__main__":
    main(sys.argv[1])
