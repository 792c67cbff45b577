"""Preprocessing throughput and memory on ../shared/corpus (see README.md for the command).

Measures, for one tokenizer:
- ceiling: the tokenizer's own single-process encode speed (tokens/s) on the same documents,
  text already in memory;
- megastack's preprocess at 1 and 2 workers (tokens/s, wall clock, reading + JSON + writing
  included) and the ratio to workers x ceiling (target >= 0.85).
  The ceiling and the preprocess runs alternate for --rounds rounds and each ratio is taken
  within a round: on a shared VM the same single-process encode varies by +-25% from minute to
  minute, so a ceiling measured once is no reference for runs minutes away.
- peak RSS (main process + workers, sampled) for the corpus and for 4 copies of it
  (target <= 1.3x growth).
Writes a markdown report to --report and prints it.
"""

import argparse
import gzip
import json
import os
import platform
from statistics import median
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+",
                        default=sorted(str(p) for p in (REPO.parent / "shared" / "corpus").glob(
                            "*.jsonl.gz")))
    parser.add_argument("--vocab-file", default=str(REPO.parent / "shared" / "tokenizers" /
                                                    "gpt2" / "encoder.json"))
    parser.add_argument("--merge-file", default=str(REPO.parent / "shared" / "tokenizers" /
                                                    "gpt2" / "vocab.bpe"))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--copies", type=int, default=4, help="corpus copies for the RSS run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ceiling / preprocess rounds; medians are reported")
    parser.add_argument("--report", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--run-one", nargs=3, metavar=("WORKERS", "COPIES", "OUT"),
                        help=argparse.SUPPRESS)  # internal: one measured preprocess run
    return parser.parse_args()


def tokenizer_spec(args):
    from megastack.data.tokenizers import TokenizerSpec

    return TokenizerSpec("GPT2BPETokenizer", vocab_file=args.vocab_file,
                         merge_file=args.merge_file)


def load_texts(args):
    texts = []
    for path in args.corpus:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def measure_ceiling(args, texts):
    tok = tokenizer_spec(args).build()
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens = sum(len(tok.tokenize(t)) for t in texts)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"documents": len(texts), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu}


def run_one(args):
    """Child process: preprocess once, sampling the RSS of this process tree."""
    import threading

    import psutil

    from megastack.data.preprocessing import PreprocessConfig, preprocess

    workers, copies, out = int(args.run_one[0]), int(args.run_one[1]), args.run_one[2]
    me = psutil.Process()
    peak = {"total": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                procs = [me] + me.children(recursive=True)
                peak["total"] = max(peak["total"], sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass  # a worker exited between listing and reading it; the next sample counts
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = PreprocessConfig(inputs=list(args.corpus) * copies,
                                  output_prefix=os.path.join(tmp, "bench"),
                                  tokenizer=tokenizer_spec(args), workers=workers,
                                  append_eod=True, log_interval=0)
        start = time.perf_counter()
        result = preprocess(config, report=lambda line: None)
        seconds = time.perf_counter() - start
        out_bytes = sum(os.path.getsize(p + ext) for p in result.output_prefixes
                        for ext in (".bin", ".idx"))
    done.set()
    sampler.join()
    import resource

    # Load-independent cost: CPU seconds of this process and its (joined) workers.
    cpu = sum(getattr(resource.getrusage(who), field) for who in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for field in ("ru_utime",
                                                                            "ru_stime"))

    report = {"workers": workers, "copies": copies, "documents": result.progress.documents,
              "tokens": result.progress.tokens, "seconds": seconds,
              "tokens_per_s": result.progress.tokens / seconds,
              "tokens_per_cpu_s": result.progress.tokens / cpu,
              "text_mb": result.progress.text_bytes / 2**20, "output_bytes": out_bytes,
              "peak_rss_total_mb": peak["total"] / 2**20,
              "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(out).write_text(json.dumps(report))


def measured_run(args, workers, copies):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--run-one", str(workers), str(copies), out,
           "--vocab-file", args.vocab_file, "--merge-file", args.merge_file,
           "--corpus", *args.corpus]
    subprocess.run(cmd, check=True, cwd=REPO)
    report = json.loads(Path(out).read_text())
    os.remove(out)
    return report


def per_round(values, spec):
    return " / ".join(format(v, spec) for v in values)


def main():
    args = parse_args()
    if args.run_one:
        return run_one(args)
    load_before = os.getloadavg()
    texts = load_texts(args)
    rounds = []
    for round_index in range(args.rounds):
        ceiling = measure_ceiling(args, texts)
        runs = {w: measured_run(args, w, 1) for w in args.workers}
        rounds.append({"ceiling": ceiling, "runs": runs})
        print(f"round {round_index + 1}/{args.rounds}: ceiling {ceiling['tokens_per_s']:,.0f} "
              "tokens/s; " + ", ".join(f"--workers {w}: {r['tokens_per_s']:,.0f} tokens/s"
                                       for w, r in runs.items()), flush=True)
    rss_runs = [rounds[-1]["runs"][max(args.workers)],
                measured_run(args, max(args.workers), args.copies)]
    load_after = os.getloadavg()

    ceilings = [r["ceiling"] for r in rounds]
    first_run = rounds[0]["runs"][args.workers[0]]
    lines = [
        "# Preprocessing benchmark results", "",
        f"Command: `python benchmarks/preprocess/bench_preprocess.py --rounds {args.rounds}` "
        "(see README.md)", "",
        f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.1f}' for x in load_after)}",
        f"- corpus: {len(args.corpus)} files, {ceilings[0]['documents']:,} documents, "
        f"{first_run['text_mb']:.1f} MB of text, {ceilings[0]['tokens']:,} GPT-2 tokens",
        "- tokenizer: GPT2BPETokenizer (encoder.json + vocab.bpe), --append-eod",
        f"- {args.rounds} rounds, each: ceiling, then " +
        ", ".join(f"--workers {w}" for w in args.workers) +
        "; ratios are taken within a round, the table gives medians over rounds", "",
        "| measurement | median tokens/s | per round | median vs workers x ceiling | "
        "per round | median tokens per CPU-s (all processes) | median vs ceiling per CPU-s |",
        "|---|---:|---|---:|---|---:|---:|",
        f"| ceiling: tokenizer.tokenize, 1 process, text in memory | "
        f"{median([c['tokens_per_s'] for c in ceilings]):,.0f} | "
        f"{per_round([c['tokens_per_s'] for c in ceilings], ',.0f')} | | | "
        f"{median([c['tokens_per_cpu_s'] for c in ceilings]):,.0f} | |",
    ]
    for w in args.workers:
        runs = [r["runs"][w] for r in rounds]
        ratios = [r["runs"][w]["tokens_per_s"] / (w * r["ceiling"]["tokens_per_s"])
                  for r in rounds]
        cpu_ratios = [r["runs"][w]["tokens_per_cpu_s"] / r["ceiling"]["tokens_per_cpu_s"]
                      for r in rounds]
        lines.append(
            f"| preprocess, --workers {w} | {median([r['tokens_per_s'] for r in runs]):,.0f} | "
            f"{per_round([r['tokens_per_s'] for r in runs], ',.0f')} | "
            f"{median(ratios):.2f} | {per_round(ratios, '.2f')} | "
            f"{median([r['tokens_per_cpu_s'] for r in runs]):,.0f} | {median(cpu_ratios):.2f} |")
    base, big = rss_runs
    lines += [
        "", f"| peak RSS, --workers {base['workers']} | corpus x1 | corpus x{big['copies']} | "
        "growth |", "|---|---:|---:|---:|",
        f"| main + workers (sampled every 50 ms) | {base['peak_rss_total_mb']:.0f} MB | "
        f"{big['peak_rss_total_mb']:.0f} MB | "
        f"{big['peak_rss_total_mb'] / base['peak_rss_total_mb']:.2f}x |",
        f"| main process (ru_maxrss) | {base['peak_rss_main_mb']:.0f} MB | "
        f"{big['peak_rss_main_mb']:.0f} MB | "
        f"{big['peak_rss_main_mb'] / base['peak_rss_main_mb']:.2f}x |",
        "", f"x{big['copies']} run: {big['documents']:,} documents, {big['tokens']:,} tokens "
        f"in {big['seconds']:.1f} s ({big['tokens_per_s']:,.0f} tokens/s).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.report).write_text(report)


if __name__ == "__main__":
    main()
