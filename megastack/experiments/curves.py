"""Validation-loss curves of a training run, with tokens and training FLOPs on the x axis.

A run is one or more phases (small model, then grown model), each with its own metrics file
(MEGASTACK_METRICS_FILE JSON lines) and architecture. "consumed tokens" in the metrics counts
tokens of the data stream, so a grown phase that resumes the stream continues the small
phase's count. FLOPs are charged per phase: every token a phase trains on costs that phase's
`ModelConfig.flops_per_token()`, so a grown run's FLOPs include the small model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from megastack.config import ModelConfig

VALID_KEY = "lm loss validation"
TOKENS_KEY = "consumed tokens"


@dataclass(frozen=True)
class Phase:
    """One training process of a run: its architecture and its metrics file."""

    model: ModelConfig
    metrics_file: str
    label: str = ""


@dataclass(frozen=True)
class EvalPoint:
    tokens: int  # consumed tokens of the data stream when evaluated
    flops: float  # training FLOPs spent by the run up to this point, every phase charged
    loss: float  # validation LM loss
    phase: int  # index of the phase that produced it


@dataclass
class Curve:
    name: str
    points: list[EvalPoint] = field(default_factory=list)
    total_tokens: int = 0  # tokens trained on by all phases together
    total_flops: float = 0.0

    @property
    def final(self) -> EvalPoint:
        if not self.points:
            raise ValueError(f"run {self.name!r} has no validation evaluations: lower "
                             "--eval-interval so that at least one evaluation happens")
        return self.points[-1]

    def xs(self, axis: str) -> list[float]:
        if axis not in ("tokens", "flops"):
            raise ValueError(f"axis must be 'tokens' or 'flops', got {axis!r}")
        return [float(getattr(p, axis)) for p in self.points]

    def losses(self) -> list[float]:
        return [p.loss for p in self.points]


def read_metrics(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON metrics line ({e})") from None
    return records


def _latest_records(records: Iterable[dict]) -> list[dict]:
    """The records that count, when a resumed run appended to the same metrics file.

    A run resumed from a checkpoint redoes the iterations after it and logs them again, so a
    training (or validation) record whose token count is not past the previous one of its kind
    marks a restart: the later records win, and every earlier record from that token count on
    is dropped (a resumed run overwrites what it redid)."""
    def kind(r: dict) -> Optional[str]:
        return "valid" if VALID_KEY in r else "train" if "lm loss" in r else None

    def last_tokens(of_kind: str) -> Optional[int]:
        return next((int(k[TOKENS_KEY]) for k in reversed(kept) if kind(k) == of_kind), None)

    kept: list[dict] = []
    for r in records:
        if not isinstance(r, dict) or TOKENS_KEY not in r:
            continue
        tokens, previous = int(r[TOKENS_KEY]), None if kind(r) is None else last_tokens(kind(r))
        if previous is not None and tokens <= previous:
            kept = [k for k in kept if int(k[TOKENS_KEY]) < tokens]
        kept.append(r)
    return kept


def _phase_records(records: Iterable[dict]) -> tuple[list[tuple[int, float]], Optional[int]]:
    """(validation points, tokens consumed at the phase's end) of one phase, or None for the
    end when it logged no training step. The end is the largest token count of any record: a
    phase stopped by --exit-interval may log its last evaluation but no training line there.
    Records a resumed run logged again replace the earlier ones (see `_latest_records`)."""
    evals, trained, end = [], False, None
    for r in _latest_records(records):
        tokens = int(r[TOKENS_KEY])
        end = tokens if end is None else max(end, tokens)
        if VALID_KEY in r:
            loss = float(r[VALID_KEY])
            if math.isfinite(loss):
                evals.append((tokens, loss))
        elif "lm loss" in r:
            trained = True
    return evals, (end if trained else None)


def build_curve(name: str, phases: Sequence[Phase], phase_start_tokens: Optional[Sequence[int]] = None) -> Curve:
    """Join the phases of one run into a curve.

    A phase starts where the previous one stopped (its last logged token count), or at 0 for
    the first; `phase_start_tokens` overrides that (e.g. a grown phase that restarts the data
    stream with --finetune starts again at 0 tokens, yet its tokens come on top).
    """
    if not phases:
        raise ValueError(f"run {name!r} has no phases")
    curve = Curve(name)
    flops_before = 0.0
    tokens_before = 0  # tokens trained by earlier phases
    stream_end = 0  # where the previous phase left the data stream
    for i, phase in enumerate(phases):
        evals, last = _phase_records(read_metrics(phase.metrics_file))
        if last is None:
            raise ValueError(f"{phase.metrics_file}: no training metrics; did the phase run "
                             "with MEGASTACK_METRICS_FILE set and log at least once?")
        start = phase_start_tokens[i] if phase_start_tokens is not None else (stream_end if i else 0)
        fpt = phase.model.flops_per_token()
        for tokens, loss in evals:
            trained = tokens - start
            curve.points.append(EvalPoint(tokens=tokens_before + trained,
                                          flops=flops_before + trained * fpt, loss=loss, phase=i))
        trained = last - start
        if trained <= 0:
            raise ValueError(f"{phase.metrics_file}: phase {i} of run {name!r} ends at {last} "
                             f"tokens, not after its start at {start}")
        tokens_before += trained
        flops_before += trained * fpt
        stream_end = last
    curve.total_tokens = tokens_before
    curve.total_flops = flops_before
    return curve
