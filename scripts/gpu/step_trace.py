#!/usr/bin/env python3
"""Where a serving run's time goes, step by step, from a server log with one line a step
(`RUST_LOG=info,tessera::step=debug`; scripts/gpu/ab_serve.sh keeps such logs with SERVE_LOGS=DIR).

    scripts/gpu/step_trace.py SERVE_LOG [SMI_CSV] [--steps]

The steps are split into bursts at idle gaps (no step for more than 50 ms) and where a step has no
decode row after one that had some (every running sequence had finished), so a benchmark's
warm-up request and its run come out separately. For each burst: its wall time, the time inside
steps and between them, and the steps that computed prompt tokens against the decode-only ones
(count, time, tokens, decode rows), and what a decode row adds to a full prompt step (a
least-squares line through the steps with the burst's largest token count: time = base + cost x
decode rows). With SMI_CSV (nvidia-smi's timestamp, SM clock, memory clock, power, temperature
every 100 ms) it adds the SM clock and power over the largest burst, and apart over its prompt
steps and its decode-only steps. --steps prints every step of the largest burst.
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
    fit = decode_row_fit(prefill)
    if fit:
        lines.append(fit)
    return lines


def decode_row_fit(prefill):
    """The line time = base + cost x decode rows through the full prompt steps (those with the
    largest token count), or None with fewer than three of them or no spread in their decode rows."""
    if not prefill:
        return None
    full = max(s["tokens"] for s in prefill)
    steps = [s for s in prefill if s["tokens"] == full]
    xs = [s["decode"] for s in steps]
    ys = [1e3 * s["execute"] for s in steps]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if len(steps) < 3 or var == 0:
        return None
    cost = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return (
        f"  full prompt steps ({len(steps)} of {full} tokens): {my - cost * mx:.2f} ms "
        f"+ {cost:.4f} ms a decode row (least squares)"
    )


def smi_samples(path):
    """(time, SM clock, power) of each nvidia-smi line, or an error message."""
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        return f"nvidia-smi: {e}"
    samples = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            # nvidia-smi writes local time; the server's log is UTC ("...Z").
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(parts[1]), float(parts[3])))
        except ValueError:
            continue
    return samples


def smi_line(samples, what, spans):
    """SM clock and power over the samples inside any of the (start, end) spans."""
    inside = [(sm, p) for t, sm, p in samples if any(a <= t <= b for a, b in spans)]
    if not inside:
        return f"  nvidia-smi: no sample {what}"
    clocks = sorted(sm for sm, _ in inside)
    powers = sorted(p for _, p in inside)
    mid = len(clocks) // 2
    return (
        f"  nvidia-smi {what} ({len(clocks)} samples): SM clock min {clocks[0]:.0f} / median "
        f"{clocks[mid]:.0f} / max {clocks[-1]:.0f} MHz, power min {powers[0]:.0f} / median {powers[mid]:.0f} "
        f"/ max {powers[-1]:.0f} W"
    )


def smi_lines(path, burst):
    samples = smi_samples(path)
    if isinstance(samples, str):
        return [f"  {samples}"]
    prompt = [(s["start"], s["end"]) for s in burst if s["tokens"] > s["decode"]]
    decode = [(s["start"], s["end"]) for s in burst if s["tokens"] == s["decode"]]
    return [
        smi_line(samples, "over the burst", [(burst[0]["start"], burst[-1]["end"])]),
        smi_line(samples, "during prompt steps", prompt),
        smi_line(samples, "during decode-only steps", decode),
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
        print("\n".join(smi_lines(args[1], largest)))
    if "--steps" in argv:
        t0 = largest[0]["start"]
        for s in largest:
            print(f"  step {s['step']}: t={1e3 * (s['start'] - t0):.1f} ms tokens={s['tokens']} "
                  f"seqs={s['seqs']} decode={s['decode']} execute={1e3 * s['execute']:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
