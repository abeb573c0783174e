#!/usr/bin/env python3
"""Where a serving run's time goes, step by step, from a server log with one line a step
(`RUST_LOG=info,tessera::step=debug`; scripts/gpu/ab_serve.sh keeps such logs with SERVE_LOGS=DIR).

    scripts/gpu/step_trace.py SERVE_LOG [SMI_CSV] [--steps]

The steps are split into bursts at idle gaps (no step for more than 50 ms) and where a step has no
decode row after one that had some (every running sequence had finished), so a benchmark's
warm-up request and its run come out separately. For each burst: its wall time, the time inside
steps and between them, and the steps that computed prompt tokens against the decode-only ones
(count, time, tokens, decode rows). With SMI_CSV (nvidia-smi's timestamp, SM clock, memory
clock, power, temperature every 100 ms) it adds the SM clock and power over the largest burst.
--steps prints every step of the largest burst.
"""
import re
import sys
from datetime import datetime

STEP = re.compile(
    r"^(\S+Z)\s.*tessera::step: step=(\d+) tokens=(\d+) seqs=(\d+) decode_rows=(\d+) execute_us=(\d+)"
)
IDLE_GAP_S = 0.05


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_steps(path):
    steps = []
    for line in open(path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = STEP.match(line)
        if m:
            end = parse_time(m[1])
            execute = int(m[6]) / 1e6
            steps.append(
                dict(step=int(m[2]), tokens=int(m[3]), seqs=int(m[4]), decode=int(m[5]),
                     start=end - execute, end=end, execute=execute)
            )
    return steps


def bursts(steps):
    out, current = [], []
    for s in steps:
        idle = current and s["start"] - current[-1]["end"] > IDLE_GAP_S
        # No decode row right after a step that had some: every running sequence had finished.
        drained = current and s["decode"] == 0 and current[-1]["decode"] > 0
        if idle or drained:
            out.append(current)
            current = []
        current.append(s)
    return out + [current] if current else out


def summary(burst):
    wall = burst[-1]["end"] - burst[0]["start"]
    inside = sum(s["execute"] for s in burst)
    prefill = [s for s in burst if s["tokens"] > s["decode"]]
    decode = [s for s in burst if s["tokens"] == s["decode"]]
    lines = [
        f"burst of {len(burst)} steps from step {burst[0]['step']}: wall {wall:.3f} s, "
        f"inside steps {inside:.3f} s, between steps {wall - inside:.3f} s "
        f"({1e3 * (wall - inside) / max(len(burst) - 1, 1):.3f} ms a gap)"
    ]
    for name, group in (("with prompt tokens", prefill), ("decode only", decode)):
        if not group:
            continue
        t = sum(s["execute"] for s in group)
        tokens = sum(s["tokens"] for s in group)
        rows = sum(s["decode"] for s in group)
        lines.append(
            f"  {name}: {len(group)} steps, {t:.3f} s ({1e3 * t / len(group):.2f} ms a step), "
            f"{tokens} tokens of which {rows} decode rows ({rows / len(group):.1f} a step), "
            f"{1e6 * t / tokens:.2f} us a token"
        )
    return lines


def smi_lines(path, start, end):
    clocks, powers = [], []
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        return [f"  nvidia-smi: {e}"]
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            # nvidia-smi writes local time; the server's log is UTC ("...Z").
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            sm, power = float(parts[1]), float(parts[3])
        except ValueError:
            continue
        if start <= t <= end:
            clocks.append(sm)
            powers.append(power)
    if not clocks:
        return [f"  nvidia-smi: no sample inside the burst ({path})"]
    clocks.sort()
    powers.sort()
    mid = len(clocks) // 2
    return [
        f"  nvidia-smi over the burst ({len(clocks)} samples): SM clock min {clocks[0]:.0f} / median "
        f"{clocks[mid]:.0f} / max {clocks[-1]:.0f} MHz, power min {powers[0]:.0f} / median {powers[mid]:.0f} "
        f"/ max {powers[-1]:.0f} W"
    ]


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if not args:
        sys.exit(__doc__)
    steps = read_steps(args[0])
    if not steps:
        sys.exit(f"{args[0]}: no tessera::step lines (was RUST_LOG=info,tessera::step=debug set?)")
    groups = bursts(steps)
    for burst in groups:
        print("\n".join(summary(burst)))
    largest = max(groups, key=len)
    if len(args) > 1:
        print("\n".join(smi_lines(args[1], largest[0]["start"], largest[-1]["end"])))
    if "--steps" in argv:
        t0 = largest[0]["start"]
        for s in largest:
            print(f"  step {s['step']}: t={1e3 * (s['start'] - t0):.1f} ms tokens={s['tokens']} "
                  f"seqs={s['seqs']} decode={s['decode']} execute={1e3 * s['execute']:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
