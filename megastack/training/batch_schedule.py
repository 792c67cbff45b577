"""The global batch size of every iteration: constant, or ramped up (--rampup-batch-size).

Megatron-LM's ramp-up `--rampup-batch-size START INCR SAMPLES` starts at START sequences and
adds INCR every SAMPLES / ((--global-batch-size - START) / INCR) consumed samples until the
batch is --global-batch-size. megatron-core's `RampupBatchsizeNumMicroBatchesCalculator` says
which size applies after a number of consumed samples; `BatchSchedule` adds what a run must know
before it trains: how many iterations a length in samples or tokens takes and how many samples
a number of iterations consumes (the LR schedule and the datasets count samples).
"""

from __future__ import annotations

import bisect
import math
from typing import Optional

RampUp = tuple[int, int, int]  # (start batch size, increment, ramp-up samples)


def check_rampup(rampup: RampUp, global_batch_size: int, micro_batch_size: int,
                 data_parallel_size: int, layout: str = "") -> None:
    """ValueError naming the flag unless every batch size of the ramp fits the layout."""
    start, incr, samples = rampup
    flag = f"--rampup-batch-size {start} {incr} {samples}"
    if start < 1 or incr < 1 or samples < 0:
        raise ValueError(f"{flag}: the start batch size and the increment must be >= 1 and the "
                         f"ramp-up samples >= 0")
    if start >= global_batch_size:
        raise ValueError(f"{flag}: the start batch size must be smaller than the "
                         f"--global-batch-size {global_batch_size} it ramps up to (for a constant "
                         f"batch drop --rampup-batch-size)")
    if (global_batch_size - start) % incr:
        raise ValueError(f"{flag}: the increment must divide --global-batch-size "
                         f"{global_batch_size} - start {start} = {global_batch_size - start}")
    per_microbatch_round = micro_batch_size * data_parallel_size
    if start % per_microbatch_round or incr % per_microbatch_round:
        raise ValueError(
            f"{flag}: every batch size of the ramp must be a multiple of --micro-batch-size "
            f"{micro_batch_size} x {layout}data-parallel size {data_parallel_size} = "
            f"{per_microbatch_round}, so the start and the increment must be")


class BatchSchedule:
    """Batch size as a function of consumed samples, and the iteration <-> sample arithmetic.

    `micro_batch_size` and `data_parallel_size` matter to `num_microbatches` only."""

    def __init__(self, global_batch_size: int, rampup: Optional[RampUp] = None,
                 micro_batch_size: int = 1, data_parallel_size: int = 1):
        self.global_batch_size = global_batch_size
        self.rampup = tuple(rampup) if rampup is not None else None
        self._per_microbatch_round = micro_batch_size * data_parallel_size
        self._calculator = None
        # Samples consumed before each iteration of the ramp, and after its last one; beyond
        # that, every iteration takes global_batch_size.
        self._ramp = [0]
        if self.rampup is None:
            return
        check_rampup(self.rampup, global_batch_size, micro_batch_size, data_parallel_size)
        from megatron.core.num_microbatches_calculator import (
            RampupBatchsizeNumMicroBatchesCalculator,
        )

        start, incr, samples = self.rampup
        self._calculator = RampupBatchsizeNumMicroBatchesCalculator(
            global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
            data_parallel_size=data_parallel_size, decrease_batch_size_if_needed=False,
            rank=-1,  # no logging of its own: the trainer logs the batch size
            start_global_batch_size=start, batch_size_increment=incr, ramup_samples=samples)
        while self._ramp[-1] <= samples:  # the calculator ramps while consumed <= samples
            self._ramp.append(self._ramp[-1] + self.batch_size(self._ramp[-1]))

    def batch_size(self, consumed_samples: int) -> int:
        """The global batch of the iteration that starts after `consumed_samples`."""
        if self._calculator is None:
            return self.global_batch_size
        self._calculator.update(consumed_samples, consistency_check=False)
        return self._calculator.get_current_global_batch_size()

    def num_microbatches(self, consumed_samples: int) -> int:
        """Micro-batches per data-parallel rank in the iteration after `consumed_samples`."""
        if self._calculator is None:
            return self.global_batch_size // self._per_microbatch_round
        # The consistency check asserts the batch splits evenly (check_rampup made sure).
        self._calculator.update(consumed_samples, consistency_check=True)
        return self._calculator.get()

    def samples_after(self, iterations: int) -> int:
        """Samples consumed by the first `iterations` iterations of the run."""
        ramp_iterations = len(self._ramp) - 1
        if iterations <= ramp_iterations:
            return self._ramp[iterations]
        return self._ramp[-1] + (iterations - ramp_iterations) * self.global_batch_size

    def samples_between(self, first_iteration: int, iterations: int) -> int:
        """Samples consumed by `iterations` iterations from iteration `first_iteration` on."""
        return self.samples_after(first_iteration + iterations) - self.samples_after(first_iteration)

    def iterations_within(self, samples: int) -> int:
        """Whole iterations that fit in `samples` (a partial last batch is dropped, as
        Megatron-LM drops it)."""
        if samples >= self._ramp[-1]:
            return len(self._ramp) - 1 + (samples - self._ramp[-1]) // self.global_batch_size
        return bisect.bisect_right(self._ramp, samples) - 1

    def iterations_to_reach(self, samples: int) -> int:
        """The fewest iterations that consume at least `samples`."""
        if samples >= self._ramp[-1]:
            rest = samples - self._ramp[-1]
            return len(self._ramp) - 1 + math.ceil(rest / self.global_batch_size)
        return bisect.bisect_left(self._ramp, samples)

    def iterations_nearest(self, samples: float) -> int:
        """The iteration boundary nearest to `samples` (a schedule length given in samples)."""
        if self.rampup is None:
            return round(samples / self.global_batch_size)
        below = self.iterations_within(int(samples))
        above_gap = self.samples_after(below + 1) - samples
        return below + 1 if above_gap <= samples - self.samples_after(below) else below
