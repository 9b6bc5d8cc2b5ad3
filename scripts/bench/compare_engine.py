#!/usr/bin/env python3
"""Tandem's CPU engine against PyTorch + PEFT, interleaved on one machine, with a check that the machine is quiet.

Each measurement is its own process (so peak memory is that mode's alone), warm-up excluded inside it. The rounds
alternate the two sides (A B, then B A, ...) so drift in the machine's state falls on both. Around every run the
script records the load average and the CPU time other processes used while it ran ("foreign CPU", as a share of
all cores); a run with more than --max-foreign of it is marked noisy, and a comparison with any noisy run is not
reported as a result. It writes JSON and can regenerate the README's table from it.

Setup (once; everything lives in the ignored .cache/): the PyTorch side is installed from the pinned
scripts/parity/requirements.txt into .cache/bench/venv, and the Tandem side is built with
`cargo build --release -p tandem-worker --example bench_engine`.

  python3 scripts/bench/compare_engine.py --setup            # venv + release build
  python3 scripts/bench/compare_engine.py [--threads 2] [--rounds 3] [--steps 5] [--out .cache/bench/engine.json]
  python3 scripts/bench/compare_engine.py --readme .cache/bench/engine.json   # rewrite README's table
  python3 scripts/bench/compare_engine.py --dtype bf16 --out .cache/bench/engine-bf16.json   # both in bf16

With --dtype bf16, Tandem packs its frozen weights for its bf16 GEMM (compute_dtype = "bf16") and PyTorch runs under
bf16 autocast; the README keeps one table per dtype.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
VENV = os.path.join(ROOT, ".cache", "bench", "venv")
PYTHON = os.path.join(VENV, "bin", "python")
TANDEM = os.path.join(ROOT, "target", "release", "examples", "bench_engine")
TORCH_SCRIPT = os.path.join(ROOT, "scripts", "bench", "pytorch_peft.py")
REQUIREMENTS = os.path.join(ROOT, "scripts", "parity", "requirements.txt")
README = os.path.join(ROOT, "README.md")
MARKERS = {"f32": ("<!-- compare_engine:begin -->", "<!-- compare_engine:end -->"),
           "bf16": ("<!-- compare_engine_bf16:begin -->", "<!-- compare_engine_bf16:end -->")}

# What each side prints (bench_engine and pytorch_peft.py share the line formats).
TRAIN = re.compile(r"train\s+(?:load \S+\s+)?step ([0-9.]+)s .*?([0-9]+) tokens/s\s+peak RSS ([0-9]+) MiB")
GENERATE = re.compile(r"greedy generate .* ([0-9.]+) new tokens/s")
BEAM = re.compile(r"beam \(10 beams\) generate .* ([0-9.]+) new tokens/s")

# (measurement, side, mode flag for that side's program, regex, what the number is).
MEASUREMENTS = [
    ("lora_step", "tandem", "train", TRAIN),
    ("lora_step", "pytorch", "train", TRAIN),
    ("sft_step", "tandem", "sft", TRAIN),
    ("sft_step", "pytorch", "sft", TRAIN),
    ("generate", "tandem", "generate", GENERATE),
    ("generate", "pytorch", "generate", GENERATE),
    ("beam", "tandem", "beam", BEAM),
    ("beam", "pytorch", "beam", BEAM),
    ("qlora_step", "tandem", "qlora", TRAIN),
]
GENERATION = ("generate", "beam")


def busy_jiffies():
    """Busy and total CPU jiffies of the whole machine (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def command(side, mode, args):
    common = ["--mode", mode, "--threads", str(args.threads), "--steps", str(args.steps),
              "--target-tokens", str(args.target_tokens), "--dtype", args.dtype]
    if side == "tandem":
        return [TANDEM, *common]
    return [PYTHON, TORCH_SCRIPT, *common]


def run_one(side, mode, pattern, args):
    """Runs one measurement process; returns its figures and how quiet the machine was around it."""
    load_before = load1()
    busy0, total0 = busy_jiffies()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(command(side, mode, args), capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = busy_jiffies()
    if proc.returncode != 0:
        sys.exit(f"{side} --mode {mode} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    match = pattern.search(proc.stdout)
    if not match:
        sys.exit(f"{side} --mode {mode}: no figure in its output:\n{proc.stdout}")
    hz = os.sysconf("SC_CLK_TCK")
    ours = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    busy_s = (busy1 - busy0) / hz
    cores = os.cpu_count() or 1
    foreign = max(0.0, busy_s - ours) / (wall * cores)
    run = {
        "load_before": load_before,
        "load_after": load1(),
        "foreign_cpu": round(foreign, 4),
        "wall_s": round(wall, 2),
        "noisy": foreign > args.max_foreign,
        "line": match.group(0),
    }
    if pattern is TRAIN:
        run.update(step_s=float(match.group(1)), tokens_per_s=float(match.group(2)), peak_rss_mib=int(match.group(3)))
    else:
        run.update(new_tokens_per_s=float(match.group(1)))
    return run


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(args):
    for path, what in [(TANDEM, "the release bench_engine (--setup builds it)"), (PYTHON, "the venv (--setup)")]:
        if not os.path.exists(path):
            sys.exit(f"{path} not found: {what}")
    runs = {(m, s): [] for m, s, _, _ in MEASUREMENTS}
    for round_ in range(args.rounds):
        order = MEASUREMENTS if round_ % 2 == 0 else _swapped(MEASUREMENTS)
        for measurement, side, mode, pattern in order:
            run = run_one(side, mode, pattern, args)
            runs[(measurement, side)].append(run)
            flag = "  NOISY" if run["noisy"] else ""
            print(f"round {round_ + 1}/{args.rounds}  {side:8} {measurement:11} {run['line']}  "
                  f"(load {run['load_before']:.2f}->{run['load_after']:.2f}, foreign CPU {run['foreign_cpu']:.1%}){flag}",
                  flush=True)
    results = {}
    for (measurement, side), rs in runs.items():
        key = "new_tokens_per_s" if measurement in GENERATION else "step_s"
        entry = {"runs": rs, key: summary([r[key] for r in rs]), "noisy_runs": sum(r["noisy"] for r in rs)}
        if key == "step_s":
            entry["tokens_per_s"] = summary([r["tokens_per_s"] for r in rs])
            entry["peak_rss_mib"] = summary([r["peak_rss_mib"] for r in rs])
        results.setdefault(measurement, {})[side] = entry
    quiet = all(e["noisy_runs"] == 0 for m in results.values() for e in m.values())
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "threads": args.threads,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "steps": args.steps,
        "target_tokens": args.target_tokens,
        "max_foreign_cpu": args.max_foreign,
        "quiet": quiet,
        "results": results,
    }


def _swapped(measurements):
    """The same list with each tandem/pytorch pair in the other order."""
    out = list(measurements)
    for i in range(0, len(out) - 1):
        if out[i][0] == out[i + 1][0] and out[i][1] == "tandem":
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def fmt_range(s, digits):
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def speed_rows(entry, what, digits):
    """A step-time row (Tandem, PyTorch, speed ratio) or a new-tokens/s row, from one measurement's entry."""
    t, p = entry["tandem"], entry["pytorch"]
    if "step_s" in t:
        ratio = p["step_s"]["median"] / t["step_s"]["median"]
        return [f"| {what}, s | {fmt_range(t['step_s'], digits)} | {fmt_range(p['step_s'], digits)} | "
                f"{ratio:.2f}x the speed |",
                f"| {what}, tokens/s | {t['tokens_per_s']['median']:.0f} | {p['tokens_per_s']['median']:.0f} | |",
                f"| {what}, peak RSS, MiB | {t['peak_rss_mib']['median']:.0f} | {p['peak_rss_mib']['median']:.0f} | "
                f"{t['peak_rss_mib']['median'] / p['peak_rss_mib']['median']:.2f}x the memory |"]
    ratio = t["new_tokens_per_s"]["median"] / p["new_tokens_per_s"]["median"]
    return [f"| {what}, new tokens/s | {fmt_range(t['new_tokens_per_s'], digits)} | "
            f"{fmt_range(p['new_tokens_per_s'], digits)} | {ratio:.2f}x |"]


def table(data):
    r = data["results"]
    t = r["lora_step"]["tandem"]
    q = r["qlora_step"]["tandem"]
    target = data.get("target_tokens", 64)
    bf16 = data.get("dtype", "f32") == "bf16"
    torch = "PyTorch + PEFT, bf16 autocast" if bf16 else "PyTorch + PEFT"
    lines = [
        f"Measured {data['date']} on {data['machine']}, {data['threads']} threads, {data['rounds']} interleaved rounds, "
        f"median (min–max); the machine was {'quiet' if data['quiet'] else '**not quiet: these are not results**'} "
        f"(every run under {data['max_foreign_cpu']:.0%} foreign CPU). "
        + ("Both sides compute the frozen products in bf16 (Tandem: `compute_dtype = \"bf16\"`, its packed bf16 "
           "GEMM; PyTorch: `torch.autocast(\"cpu\", dtype=torch.bfloat16)`). "
           "`python3 scripts/bench/compare_engine.py --threads 2 --dtype bf16 --out .cache/bench/engine-bf16.json` "
           "writes the JSON; " if bf16 else
           "`python3 scripts/bench/compare_engine.py --threads 2` writes `.cache/bench/engine.json`; ")
        + "`--readme` rewrites this table from it.",
        "",
        f"| | Tandem{' (bf16)' if bf16 else ''} | {torch} | Tandem / PyTorch |",
        "|---|---|---|---|",
        *speed_rows(r["lora_step"], "LoRA step, loss on every token", 2),
        *(speed_rows(r["sft_step"], f"LoRA step, loss on the last {target} of 256 tokens (prompt masked)", 2)
          if "sft_step" in r else []),
        f"| QLoRA step (loss on every token), s | {fmt_range(q['step_s'], 2)} (peak RSS "
        f"{q['peak_rss_mib']['median']:.0f} MiB) | (bitsandbytes NF4 needs a GPU) | "
        f"{q['step_s']['median'] / t['step_s']['median']:.2f}x Tandem's LoRA step time |",
        *speed_rows(r["generate"], "greedy generation", 1),
        *(speed_rows(r["beam"], "beam search, 10 beams", 1) if "beam" in r else []),
    ]
    return "\n".join(lines)


def write_readme(path):
    with open(path) as f:
        data = json.load(f)
    with open(README) as f:
        text = f.read()
    begin, end = MARKERS[data.get("dtype", "f32")]
    if begin not in text or end not in text:
        sys.exit(f"{README}: no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(README, "w") as f:
        f.write(head + begin + "\n" + table(data) + "\n" + end + tail)
    print(f"README table rewritten from {path}")


def setup():
    if not os.path.exists(PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS], check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "tandem-worker", "--example", "bench_engine"], check=True, cwd=ROOT)
    subprocess.run([os.path.join(ROOT, "scripts", "fetch-models.sh")], check=True, cwd=ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help="create the venv and build the release benchmark")
    ap.add_argument("--readme", metavar="JSON", help="rewrite the README's table from JSON and exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="training steps measured per run (after one warm-up)")
    ap.add_argument("--target-tokens", type=int, default=40,
                    help="the sft step's target tokens per 256-token row (the rest is prompt, masked)")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="largest share of all cores other processes may use during a run before it is noisy")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                    help="the compute type of both sides (bf16: Tandem's bf16 GEMM against PyTorch's bf16 autocast)")
    ap.add_argument("--out", default=os.path.join(ROOT, ".cache", "bench", "engine.json"))
    args = ap.parse_args()
    if args.setup:
        setup()
        return
    if args.readme:
        write_readme(args.readme)
        return
    data = measure(args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
    print()
    print(table(data))
    print(f"\nwritten {args.out}")
    if not data["quiet"]:
        sys.exit("the machine was not quiet during some runs (marked NOISY): these figures are not a result")


if __name__ == "__main__":
    main()
