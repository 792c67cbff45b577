"""Plain-text rendering of plans (tools/plan.py prints these)."""

from __future__ import annotations

from typing import Optional, Sequence

from .memory import GIB, PhaseMemory
from .plan import GrowthPlan, PhasePlan
from .stage_map import ChunkPlacement

RECOMPUTE_LABELS = {None: "no recompute", "selective": "selective recompute", "full": "full recompute"}


def recompute_label(granularity: Optional[str], modules: Sequence[str]) -> str:
    label = RECOMPUTE_LABELS[granularity]
    return f"{label} ({', '.join(modules)})" if granularity == "selective" else label


def _layer_span(p: ChunkPlacement) -> str:
    last = p.first_layer + p.num_layers - 1
    return f"layer {p.first_layer}" if p.num_layers == 1 else f"layers {p.first_layer}-{last}"


def format_stage_map(plan: PhasePlan) -> str:
    """One line per pipeline stage: its chunks' 0-based layers, embedding and output layer."""
    lines = []
    chunked = plan.layout.interleaved
    for stage in range(plan.layout.pipeline_parallel_size):
        parts = []
        for p in (p for p in plan.placements if p.stage == stage):
            extras = (["embedding"] if p.has_embedding else []) + (
                ["final norm", "output layer"] if p.has_output_layer else [])
            text = (f"chunk {p.chunk}: " if chunked else "") + _layer_span(p)
            parts.append(text + (f" + {', '.join(extras)}" if extras else ""))
        lines.append(f"  stage {stage}: " + " | ".join(parts))
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.3f} M"


def _row(label: str, values: list[float], width: int) -> str:
    return f"  {label:<52}" + "".join(f"{v:>{width}.2f}" for v in values)


def format_memory(plan: PhasePlan) -> str:
    mem: PhaseMemory = plan.memory
    layout = plan.layout
    stages = mem.stages
    width = 11
    dp = layout.data_parallel_size
    lines = [f"  {'per-GPU memory, GiB':<52}" + "".join(f"{'stage ' + str(s.stage):>{width}}" for s in stages)]
    lines.append(f"  {'parameters on the GPU (millions)':<52}"
                 + "".join(f"{s.parameters / 1e6:>{width}.1f}" for s in stages))
    precision = layout.precision
    lines.append(_row(f"weights ({precision})", [s.weights / GIB for s in stages], width))
    lines.append(_row("gradients (fp32 main grads)", [s.gradients / GIB for s in stages], width))
    mark = {True: " *", False: ""}
    lines.append(_row("Adam states, replicated" + mark[not mem.use_distributed_optimizer],
                      [s.optimizer_replicated / GIB for s in stages], width))
    lines.append(_row(f"Adam states, distributed optimizer (/DP {dp})" + mark[mem.use_distributed_optimizer],
                      [s.optimizer_distributed / GIB for s in stages], width))
    lines.append(f"  {'chunk micro-batches in flight':<52}"
                 + "".join(f"{s.in_flight_microbatches:>{width}d}" for s in stages))
    for rc in RECOMPUTE_LABELS:
        label = recompute_label(rc, layout.recompute_modules)
        lines.append(_row(f"activations, {label}" + mark[rc == mem.recompute_granularity],
                          [s.activations[rc] / GIB for s in stages], width))
    lines.append(_row("reserve (CUDA context, NCCL, fragmentation)", [mem.reserve / GIB] * len(stages), width))
    lines.append(_row("total (* = configured)", [mem.stage_total(s) / GIB for s in stages], width))
    worst = mem.worst_stage
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"  peak: stage {worst.stage}, {mem.peak / GIB:.1f} GiB of {plan.device_memory / GIB:.0f} GiB: "
                 f"{verdict}")
    per_mb = worst.activations_per_microbatch[mem.recompute_granularity]
    lines.append(f"  one micro-batch through stage {worst.stage}'s layers keeps {per_mb / GIB:.2f} GiB of "
                 f"activations ({recompute_label(mem.recompute_granularity, layout.recompute_modules)})")
    return "\n".join(lines)


def format_layout(plan: PhasePlan) -> str:
    lay = plan.layout
    m = lay.model
    interleave = f", {_chunks(lay)}" if lay.interleaved else ""
    flags = [
        lay.precision,
        "distributed optimizer" if lay.parallel.use_distributed_optimizer else "replicated optimizer",
        "sequence parallel" if lay.sequence_parallel else "no sequence parallel",
        lay.transformer_impl,
        recompute_label(lay.recompute_granularity, lay.recompute_modules),
    ]
    return "\n".join([
        f"  model: {m.num_layers} layers, hidden {m.hidden_size}, ffn {m.ffn_hidden_size}, heads "
        f"{m.num_attention_heads} ({m.num_query_groups} query groups), vocab {m.vocab_size}, seq "
        f"{m.seq_length}: {_count(m.num_parameters())} parameters",
        f"  world {lay.world_size} = TP {lay.tensor_parallel_size} x PP {lay.pipeline_parallel_size} x DP "
        f"{lay.data_parallel_size}; {_stage_layers(lay)} layers per stage{interleave}",
        f"  batch: micro {lay.micro_batch_size} x DP {lay.data_parallel_size} x {lay.num_microbatches} "
        f"micro-batches = global {lay.global_batch_size} sequences "
        f"({lay.global_batch_size * m.seq_length:,} tokens per step)",
        "  " + ", ".join(flags),
    ])


def _chunks(layout) -> str:
    sizes = {n for stage in layout.parallel.chunk_num_layers(layout.model.num_layers) for n in stage}
    return (f"{layout.virtual_pipeline_size} virtual chunks"
            + (f" of {sizes.pop()} layers" if len(sizes) == 1 else " per stage"))


def _stage_layers(layout) -> str:
    counts = layout.stage_layers
    return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))


def format_phase(plan: PhasePlan, title: Optional[str] = None) -> str:
    parts = [f"== {title or 'phase ' + plan.name} ==", format_layout(plan),
             "  layer -> pipeline stage map (0-based layers):", format_stage_map(plan), format_memory(plan)]
    parts += [f"  WARNING: {w}" for w in plan.warnings]
    return "\n".join(parts)


def format_growth(plan: GrowthPlan, stacking_list: Optional[str] = None,
                  small_tokens: Optional[float] = None, total_tokens: Optional[float] = None) -> str:
    small, large = plan.small, plan.large
    grow = [
        "== phase 2: grow (offline, tools/grow_checkpoint.py) ==",
        f"  {small.layout.model.num_layers} -> {large.layout.model.num_layers} layers"
        + (f", --stacking-list {stacking_list!r}" if stacking_list else "")
        + f"; re-shard TP {small.layout.tensor_parallel_size} PP {small.layout.pipeline_parallel_size}"
        f" -> TP {large.layout.tensor_parallel_size} PP {large.layout.pipeline_parallel_size}"
        + (f" ({_chunks(large.layout)})" if large.layout.interleaved else ""),
        "  before growth:", format_stage_map(small),
        "  after growth:", format_stage_map(large),
        f"  grown checkpoint weights: {plan.grown_weights_bytes / GIB:.1f} GiB; then trained with a "
        f"fresh optimizer and LR schedule",
    ]
    head = []
    if small_tokens is not None and total_tokens is not None:
        head.append(f"token budget {total_tokens:,.0f}: small model {small_tokens:,.0f} tokens before growth, "
                    f"grown model {total_tokens - small_tokens:,.0f} after")
    return "\n\n".join(head + [
        format_phase(small, "phase 1: train the small model"),
        "\n".join(grow),
        format_phase(large, "phase 3: train the grown model"),
    ])
