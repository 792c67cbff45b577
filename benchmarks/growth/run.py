"""The paper's growth-operator comparison in miniature, on ../shared/corpus (CPU-sized).

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/growth/run.py > benchmarks/growth/run.log 2>&1 &

Every run is a sequence of `python -m megastack.pretrain` processes (one at a time) on the same
tokenized stream: same seed, same GPTDataset (every phase is built with the same --train-iters,
so the sample order is identical), same held-out validation documents and batches. A grown run
trains the small model for d tokens, grows it offline with tools/grow_checkpoint.py, and resumes
the data stream where the small model stopped (--load GROWN --no-load-optim --no-load-rng: fresh
optimizer, fresh LR warm-up and cosine, consumed samples carried over), stopping when its FLOPs,
the small model's included, equal the scratch run's (--exit-interval).

Runs: scratch (target from scratch), G_stack at several d, G_zero and G_random depth growth
(G_random also with MSG-style masks, --growth-mask-iters), interleaved stacking (0,0,1,1,...),
and width growth (hidden 64 -> 128 at the target depth) with G_direct and G_random (also
masked). Writes benchmarks/growth/results.json (every number, the command, the settings),
results.md (table) and loss-vs-FLOPs / loss-vs-tokens PNGs. Data and checkpoints go to
--work-dir (default runs/bench_growth, git-ignored). A finished phase is skipped on a rerun
only if its command is unchanged (its --work-dir/phases/NAME/done records the command and its
wall time); --fresh redoes every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from megastack.config import ModelConfig  # noqa: E402
from megastack.experiments.flops_budget import large_phase_iters  # noqa: E402
from megastack.experiments.report import RunSpec, write_report  # noqa: E402
from megastack.experiments.curves import Phase  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable


@dataclass
class PhasePlan:
    name: str  # unique: phases shared by several runs (the small model) run once
    model: ModelConfig
    iters: int
    warmup_iters: int
    load: Optional[str] = None  # grown checkpoint to resume the stream from
    grow: Optional[dict] = None  # tools/grow_checkpoint.py arguments producing `load`
    train_args: tuple[str, ...] = ()  # further megastack.pretrain flags of this phase


@dataclass
class RunPlan:
    name: str
    label: str
    phases: list[PhasePlan] = field(default_factory=list)
    operator: str = "scratch"
    growth_tokens: int = 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=os.path.join(os.path.dirname(REPO), "shared", "corpus", "*.jsonl.gz"))
    p.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench_growth"))
    p.add_argument("--output-dir", default=HERE, help="results.json, results.md, plots")
    p.add_argument("--budget-iters", type=int, default=128,
                   help="scratch run length; every run spends this many target-model iterations of FLOPs")
    p.add_argument("--growth-iters", default="32,16,64",
                   help="small-model iterations before growth (G_stack at each; the first also "
                        "for G_zero, G_random, interleaved and width growth)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--global-batch-size", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--small-layers", type=int, default=2)
    p.add_argument("--target-layers", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=16, help="scratch warm-up")
    p.add_argument("--phase-warmup-iters", type=int, default=8, help="warm-up of each growth phase")
    p.add_argument("--eval-interval", type=int, default=8)
    p.add_argument("--eval-iters", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--mask-iters", type=int, default=16,
                   help="G_random with masks: iterations the fresh layers are faded in over")
    p.add_argument("--only", help="comma-separated run names to run (default: all)")
    p.add_argument("--fresh", action="store_true", help="redo every run (keeps tokenized data)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.json/md and plots from finished runs, keeping the "
                        "recorded command and wall times (after a change to the report code)")
    return p.parse_args(argv)


def model_config(args, layers: int, hidden: int) -> ModelConfig:
    head_dim = 32  # fixed so that width growth (which keeps head_dim) can go 64 -> 128
    heads = hidden // head_dim
    return ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       num_query_groups=heads, ffn_hidden_size=int(hidden * 11 / 4),
                       vocab_size=args.vocab_size, seq_length=args.seq_length)


def plan_runs(args) -> list[RunPlan]:
    target = model_config(args, args.target_layers, args.hidden_size)
    small = model_config(args, args.small_layers, args.hidden_size)
    narrow = model_config(args, args.target_layers, args.hidden_size // 2)
    d_list = [int(x) for x in args.growth_iters.split(",")]
    tokens_per_iter = args.global_batch_size * args.seq_length
    ei = args.eval_interval
    for d in d_list:
        if d % ei:
            raise ValueError(f"--growth-iters {d} is not a multiple of --eval-interval {ei}: the "
                             "small model would not be evaluated where it is grown")
    g = args.target_layers // args.small_layers
    stack_list = f"0-{args.small_layers - 1}*{g}"
    interleave_list = ",".join(str(i) for i in range(args.small_layers) for _ in range(g))
    width_list = f"0-{args.target_layers - 1}"

    def grown(name, label, operator, src: ModelConfig, d, grow_args, train_args=()):
        small_phase = PhasePlan(f"small_{src.num_layers}l{src.hidden_size}h_d{d}", src, d,
                                args.phase_warmup_iters)
        n = large_phase_iters(args.budget_iters, d, src, target, multiple_of=ei)
        ckpt = os.path.join(args.work_dir, "ckpt", f"grown_{name}")
        large = PhasePlan(f"large_{name}", target, n, args.phase_warmup_iters, load=ckpt,
                          grow={"src": small_phase.name, **grow_args}, train_args=train_args)
        return RunPlan(name, label, [small_phase, large], operator, d * tokens_per_iter)

    d0 = d_list[0]
    runs = [RunPlan("scratch", f"scratch {args.target_layers}L",
                    [PhasePlan("scratch", target, args.budget_iters, args.warmup_iters)])]
    runs.append(grown(f"gstack_d{d0}", f"G_stack d={d0 * tokens_per_iter // 1000}k", "stack",
                      small, d0, {"--operator": "stack", "--stacking-list": stack_list}))
    runs.append(grown(f"zero_d{d0}", f"G_zero depth d={d0 * tokens_per_iter // 1000}k", "zero",
                      small, d0, {"--operator": "zero", "--stacking-list": stack_list}))
    runs.append(grown(f"random_d{d0}", f"G_random depth d={d0 * tokens_per_iter // 1000}k", "random",
                      small, d0, {"--operator": "random", "--stacking-list": stack_list}))
    runs.append(grown(f"random_msg_d{d0}",
                      f"G_random + MSG mask ({args.mask_iters} it) d={d0 * tokens_per_iter // 1000}k",
                      "random-masked", small, d0,
                      {"--operator": "random", "--stacking-list": stack_list},
                      ("--growth-mask-iters", str(args.mask_iters))))
    runs.append(grown(f"interleave_d{d0}", f"interleaved stack d={d0 * tokens_per_iter // 1000}k",
                      "stack-interleaved", small, d0,
                      {"--operator": "stack", "--stacking-list": interleave_list}))
    for d in d_list[1:]:
        runs.append(grown(f"gstack_d{d}", f"G_stack d={d * tokens_per_iter // 1000}k", "stack",
                          small, d, {"--operator": "stack", "--stacking-list": stack_list}))
    widen = {"--stacking-list": width_list, "--target-hidden-size": str(target.hidden_size),
             "--target-ffn-hidden-size": str(target.ffn_hidden_size),
             "--target-num-attention-heads": str(target.num_attention_heads),
             "--target-num-query-groups": str(target.num_query_groups)}
    width_label = f"width {narrow.hidden_size}->{target.hidden_size}h d={d0 * tokens_per_iter // 1000}k"
    runs.append(grown(f"width_direct_d{d0}", f"G_direct {width_label}", "width-direct", narrow, d0,
                      {**widen, "--width-operator": "direct"}))
    runs.append(grown(f"width_random_d{d0}", f"G_random {width_label}", "width-random", narrow, d0,
                      {**widen, "--width-operator": "random"}))
    runs.append(grown(f"width_random_msg_d{d0}",
                      f"G_random + MSG mask ({args.mask_iters} it) {width_label}",
                      "width-random-masked", narrow, d0, {**widen, "--width-operator": "random"},
                      ("--growth-mask-iters", str(args.mask_iters))))
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {r.name for r in runs}
        if unknown:
            raise ValueError(f"--only names unknown runs {sorted(unknown)}; known: {[r.name for r in runs]}")
        runs = [r for r in runs if r.name in keep]
    return runs


def run_logged(cmd: list[str], log_path: str, env: dict) -> float:
    """Runs cmd with its output in log_path; returns its wall time in seconds."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed (exit {proc.returncode}), log {log_path}:\n{tail}")
    seconds = time.time() - start
    print(f"  ok in {seconds:.0f}s", flush=True)
    return seconds


def finished_phase(done: str, cmd: list[str], source: Optional[float]) -> Optional[dict]:
    """`done`'s record when it finished this exact command after the same run of the phase it
    starts from (`source`: that phase's finish time), else None: the phase must run. A marker
    of another command (changed settings, or code that plans the runs differently), one whose
    source phase has rerun since, or one from before markers held records all mean a rerun."""
    try:
        with open(done) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("command") != cmd
            or record.get("source_finished_at") != source):
        return None
    return record


def prepare_data(args, env) -> dict:
    data_dir = os.path.join(args.work_dir, "data")
    split_file = os.path.join(data_dir, "split.json")
    prefix = os.path.join(data_dir, "corpus")
    if not os.path.exists(prefix + "_text_document.idx"):
        os.makedirs(data_dir, exist_ok=True)
        run_logged([PYTHON, "-m", "megastack.experiments.holdout", "--input", args.corpus,
                    "--output-dir", data_dir, "--valid-fraction", "0.05", "--seed", str(args.seed)],
                   os.path.join(data_dir, "holdout.log"), env)
        # The tokenizer sees the training documents only.
        run_logged([PYTHON, "tools/train_tokenizer.py", "--input", os.path.join(data_dir, "train.jsonl"),
                    "--model-prefix", os.path.join(data_dir, "tok4k"), "--vocab-size", str(args.vocab_size),
                    "--model-type", "bpe", "--input-sentence-size", "300000", "--seed", str(args.seed),
                    "--workers", "1"], os.path.join(data_dir, "tokenizer.log"), env)
        run_logged([PYTHON, "tools/preprocess_data.py", "--input", os.path.join(data_dir, "all.jsonl"),
                    "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
                    "--tokenizer-model", os.path.join(data_dir, "tok4k.model"), "--append-eod",
                    "--workers", "1", "--log-interval", "0"], os.path.join(data_dir, "preprocess.log"), env)
    with open(split_file) as f:
        split = json.load(f)
    return {"data_path": prefix + "_text_document", "split": split["split"],
            "tokenizer_model": os.path.join(data_dir, "tok4k.model"), "holdout": split}


def model_flags(m: ModelConfig) -> list[str]:
    return ["--num-layers", str(m.num_layers), "--hidden-size", str(m.hidden_size),
            "--num-attention-heads", str(m.num_attention_heads), "--ffn-hidden-size",
            str(m.ffn_hidden_size), "--seq-length", str(m.seq_length),
            "--max-position-embeddings", str(m.seq_length), "--normalization", m.normalization,
            "--position-embedding-type", m.position_embedding_type]


def phase_command(args, data, phase: PhasePlan, dataset_iters: int) -> list[str]:
    phase_dir = os.path.join(args.work_dir, "phases", phase.name)
    cmd = [PYTHON, "-m", "megastack.pretrain", *model_flags(phase.model),
           "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
           "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data["tokenizer_model"],
           "--data-path", data["data_path"], "--split", data["split"],
           "--data-cache-path", os.path.join(args.work_dir, "index_cache"),
           "--micro-batch-size", str(args.micro_batch_size),
           "--global-batch-size", str(args.global_batch_size),
           # Same --train-iters in every phase: identical GPTDataset, identical sample order.
           "--train-iters", str(dataset_iters),
           "--lr", str(args.lr), "--min-lr", str(args.min_lr), "--lr-decay-style", "cosine",
           "--lr-warmup-iters", str(phase.warmup_iters), "--lr-decay-iters", str(phase.iters),
           "--weight-decay", "0.1", "--clip-grad", "1.0", "--adam-beta2", "0.95",
           "--attention-dropout", "0", "--hidden-dropout", "0", "--seed", str(args.seed),
           "--log-interval", str(args.eval_interval), "--eval-interval", str(args.eval_interval),
           "--eval-iters", str(args.eval_iters), "--save", os.path.join(phase_dir, "ckpt"),
           "--tensorboard-dir", os.path.join(phase_dir, "tensorboard")]
    if phase.iters < dataset_iters:
        cmd += ["--exit-interval", str(phase.iters)]
    if phase.load:
        cmd += ["--load", phase.load, "--no-load-optim", "--no-load-rng"]
    return cmd + list(phase.train_args)


def run_phase(args, phase: PhasePlan, cmd: list[str], source: Optional[float],
              env: dict) -> dict:
    """Grows the phase's starting checkpoint (if it has one) and trains it, unless `cmd`
    already finished after the same source; returns the phase's done record."""
    phase_dir = os.path.join(args.work_dir, "phases", phase.name)
    done = os.path.join(phase_dir, "done")
    record = finished_phase(done, cmd, source)
    if record is not None:
        print(f"== phase {phase.name}: finished earlier with this command "
              f"({record['wall_seconds']:.0f}s)", flush=True)
        return record
    shutil.rmtree(phase_dir, ignore_errors=True)
    os.makedirs(phase_dir)
    seconds = grow(args, phase, env) if phase.grow is not None else 0.0
    seconds += run_logged(cmd, os.path.join(phase_dir, "train.log"),
                          {**env, "MEGASTACK_METRICS_FILE": os.path.join(phase_dir,
                                                                         "metrics.jsonl")})
    record = {"command": cmd, "source_finished_at": source, "finished_at": time.time(),
              "wall_seconds": seconds}
    with open(done + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(done + ".tmp", done)
    return record


def grow(args, phase: PhasePlan, env: dict) -> float:
    src = os.path.join(args.work_dir, "phases", phase.grow["src"], "ckpt")
    flags = [x for k, v in phase.grow.items() if k != "src" for x in (k, v)]
    os.makedirs(os.path.dirname(phase.load), exist_ok=True)
    return run_logged([PYTHON, "tools/grow_checkpoint.py", "--load", src, "--save", phase.load, "--force",
                "--seed", str(args.seed), *flags], phase.load + ".log", env)


TITLE = "Growth operators in miniature"
RECORDED_KEYS = ("command", "settings", "data", "dataset_iters", "tokens_per_iteration",
                 "wall_seconds_per_run", "wall_seconds_total", "device", "planned_runs")


def report_specs(args, runs: list[RunPlan]) -> list[RunSpec]:
    return [RunSpec(r.name, r.label, [Phase(p.model, os.path.join(
        args.work_dir, "phases", p.name, "metrics.jsonl"), p.name) for p in r.phases],
        operator=r.operator, growth_tokens=r.growth_tokens) for r in runs]


def rewrite_report(args, runs: list[RunPlan]) -> int:
    with open(os.path.join(args.output_dir, "results.json")) as f:
        recorded = json.load(f)
    finished = [r for r in runs if r.name in recorded["runs"]]
    write_report(report_specs(args, finished), args.output_dir, baseline="scratch", title=TITLE,
                 extra={k: recorded[k] for k in RECORDED_KEYS if k in recorded})
    print(f"rewrote the report of {len(finished)} runs in {args.output_dir}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = plan_runs(args)
    if args.fresh:
        shutil.rmtree(os.path.join(args.work_dir, "phases"), ignore_errors=True)
        shutil.rmtree(os.path.join(args.work_dir, "ckpt"), ignore_errors=True)
    if args.report_only:
        return rewrite_report(args, runs)
    data = prepare_data(args, env)
    dataset_iters = max(sum(p.iters for p in r.phases) for r in runs)
    timings = {}
    phase_seconds = {}  # every phase once, however many runs share it
    finished = []
    for run in runs:
        print(f"== run {run.name}: {run.label}", flush=True)
        # A run's time is that of its phases (a small phase shared by several runs counts in
        # each, as it would alone), measured when each ran, this time or an earlier one.
        seconds, source = 0.0, None
        try:
            for phase in run.phases:
                record = run_phase(args, phase, phase_command(args, data, phase, dataset_iters),
                                   source, env)
                seconds += record["wall_seconds"]
                phase_seconds[phase.name] = record["wall_seconds"]
                source = record["finished_at"]
        except RuntimeError as e:
            print(f"run {run.name} failed: {e}", flush=True)
            continue
        timings[run.name] = seconds
        finished.append(run)
        # Rewrite the report after every run so an interrupted benchmark still leaves results.
        settings = {k: v for k, v in vars(args).items() if k != "report_only"}
        write_report(report_specs(args, finished), args.output_dir, baseline="scratch", title=TITLE,
                     extra={"command": "OMP_NUM_THREADS=1 python benchmarks/growth/run.py "
                                       + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                            "settings": settings, "data": data, "dataset_iters": dataset_iters,
                            "tokens_per_iteration": args.global_batch_size * args.seq_length,
                            "wall_seconds_per_run": timings,
                            "wall_seconds_total": sum(phase_seconds.values()),
                            "device": "cpu (2 shared cores, OMP_NUM_THREADS=%s)" % env["OMP_NUM_THREADS"],
                            "planned_runs": [r.name for r in runs]})
    print(f"done in {time.time() - started:.0f}s: {len(finished)}/{len(runs)} runs; "
          f"results in {args.output_dir}", flush=True)
    return 0 if len(finished) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
