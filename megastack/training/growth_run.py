"""Growth in one run: train the small model, save, grow, rebuild at the target size, continue.

    SAVE/small/   the small model's checkpoints (--save-interval), the last at the growth point
    SAVE/grown/   the grown checkpoint (tools/grow_checkpoint.py's library, run on rank 0)
    SAVE/         the large model's checkpoints (iteration count continues across growth); each
                  records the growth point (``grown_at_iteration``)

`--load SAVE` resumes where the run stopped, as Megatron-LM's --load does: from SAVE's latest
checkpoint when it is a large-phase one (optimizer, LR schedule, data position), else from
SAVE/small (then grows), else as any run does with an empty --load. --save-interval and
--exit-interval apply to both phases; an exit at the growth point stops before growing.

As in the paper's reference code, the large model starts with a fresh Adam and a new LR
schedule (re-warmup, then decay over the remaining iterations); the data position continues.
The validation loss just before and just after growth is logged ("growth": "before"/"after").
With --target-hidden-size etc. the widths grow too (--growth-width-operator). With G_random
(depth or width), --growth-mask-iters fades the new parts in (the trainer's growth mask).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional

import torch.distributed as dist

from megastack.checkpoint import training_checkpoint as ckpt
from megastack.config import PIPELINE_SPLIT_FIELDS, ModelConfig
from megastack.training.arguments import PretrainConfig
from megastack.training.trainer import Trainer, TrainState, build_phase_datasets

logger = logging.getLogger(__name__)

GROWN_AT = "grown_at_iteration"  # in the large phase's checkpoints (common["megastack"])


def growth_point_iterations(cfg: PretrainConfig) -> int:
    """Iterations of the small model: --grow-at-tokens, or the timing guideline for 'auto'."""
    from megastack.growth.timing import growth_timing

    g = cfg.growth
    seq = cfg.model.seq_length
    batches = cfg.train.batch_schedule()
    total_tokens = batches.samples_after(cfg.train.train_iters) * seq
    grow_at = g.grow_at_tokens
    if grow_at is None:
        target = g.target_model(cfg.model)
        timing = growth_timing(target.num_parameters(), total_tokens)
        for warning in timing.warnings:
            logger.warning("growth timing guideline: %s", warning)
        if not math.isfinite(timing.growth_tokens) or timing.growth_tokens >= total_tokens:
            raise ValueError(
                f"--grow-at-tokens auto: the guideline gives d = {timing.growth_tokens:.3g} tokens, "
                f"not less than the {total_tokens} tokens of the whole run (it is fitted on "
                f"410M-7B models); give --grow-at-tokens N explicitly"
            )
        grow_at = int(timing.growth_tokens)
        logger.info("growth timing guideline: grow after %d tokens (g = %d)", grow_at,
                    timing.growth_factor)
    iters = batches.iterations_to_reach(math.ceil(grow_at / seq))
    if not 1 <= iters < cfg.train.train_iters:
        raise ValueError(
            f"--grow-at-tokens {grow_at} is reached after {iters} iterations; it must fall "
            f"inside the {cfg.train.train_iters} training iterations ({total_tokens} tokens)"
        )
    return iters


def _phase_configs(cfg: PretrainConfig, small_iters: int) -> tuple[PretrainConfig, PretrainConfig]:
    g = cfg.growth
    t, c = cfg.train, cfg.checkpoint
    small = dataclasses.replace(
        cfg, growth=None,
        train=dataclasses.replace(t, train_iters=small_iters, lr_decay_iters=None,
                                  lr_warmup_iters=min(t.lr_warmup_iters, small_iters),
                                  growth_mask_iters=None),  # masks the grown model only
        checkpoint=dataclasses.replace(c, save=os.path.join(c.save, "small"), load=None),
    )
    remaining = t.train_iters - small_iters
    warmup = g.lr_warmup_iters_after_growth
    large = dataclasses.replace(
        cfg, growth=None,
        model=g.target_model(cfg.model),
        parallel=g.target_parallel,
        train=dataclasses.replace(
            t, lr=g.lr_after_growth or t.lr, lr_decay_iters=remaining,
            lr_warmup_iters=min(t.lr_warmup_iters if warmup is None else warmup, remaining)),
        checkpoint=dataclasses.replace(c, load=None),
    )
    return small, large


def _grow_on_rank0(cfg: PretrainConfig, src: str, dst: str) -> None:
    """Rank 0 grows the checkpoint; every rank learns whether it worked."""
    from megastack.growth.grow_checkpoint import grow_checkpoint

    g = cfg.growth
    error = ""
    if dist.get_rank() == 0:
        try:
            report = grow_checkpoint(
                src, dst, stacking_list=g.stacking_list, operator=g.operator,
                target_num_layers=g.target_num_layers,
                target_tensor_parallel_size=g.target_parallel.tensor_model_parallel_size,
                target_pipeline_parallel_size=g.target_parallel.pipeline_model_parallel_size,
                target_num_layers_per_virtual_pipeline_stage=
                g.target_parallel.num_layers_per_virtual_pipeline_stage,
                **{f"target_{name}": getattr(g.target_parallel, name)
                   for name in PIPELINE_SPLIT_FIELDS},
                **{f"target_{name}": value for name, value in g.target_widths.items()},
                width_operator=g.width_operator, seed=cfg.train.seed, force=True,
            )
            logger.info("grew %s -> %s:\n%s", src, dst, report.format_map())
        except Exception as e:  # every rank must leave the barrier, then fail together
            error = f"{type(e).__name__}: {e}"
    status = [error]
    dist.broadcast_object_list(status, src=0)
    if status[0]:
        raise RuntimeError(f"growing the checkpoint failed on rank 0: {status[0]}")


def _learn_growth(cfg: PretrainConfig, small: Trainer, large_cfg: PretrainConfig) -> dict:
    """G_learn: fit LiGO-style growth maps on the next training batches, then materialise.

    The batches the maps train on are consumed from the training data (and counted)."""
    from megastack.growth.learn import LearnedGrowth, train_learned_growth
    from megastack.growth.plans import parse_stacking_list
    from megastack.growth.state import model_global_state

    g = cfg.growth
    small.gather_params()
    source_state = model_global_state(small.chunks)
    growth = LearnedGrowth(small.cfg.model, large_cfg.model, keys=source_state.keys(),
                           plan=parse_stacking_list(g.stacking_list), seed=cfg.train.seed)
    iterator = small.train_iterators
    losses = train_learned_growth(growth, source_state, iterator, steps=g.learn_steps,
                                  lr=g.learn_lr, seed=cfg.train.seed,
                                  log_interval=max(1, g.learn_steps // 10))
    small.state.consumed_train_samples += g.learn_steps * cfg.train.micro_batch_size
    logger.info("G_learn: %d map-training steps, lm loss %.4f -> %.4f", g.learn_steps,
                losses[0], losses[-1])
    return growth.materialise(source_state)


class _GrownTrainer(Trainer):
    """The large phase. Every checkpoint it writes (interval, exit or final) records the growth
    point: that is how --load tells a large-phase checkpoint from any other."""

    def __init__(self, *args, grown_at_iteration: int, datasets_cfg: PretrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.grown_at_iteration = grown_at_iteration
        self.datasets_cfg = datasets_cfg

    def save(self, root: Optional[str] = None, extra: Optional[dict] = None) -> str:
        return super().save(root, extra={GROWN_AT: self.grown_at_iteration, **(extra or {})})

    def schedule_start_iteration(self) -> int:
        return self.grown_at_iteration  # the new LR schedule starts at the growth point

    def _build_datasets(self, tokenizer):
        # Only a resumed large phase builds datasets. The uninterrupted run uses the small
        # phase's, whose validation split is sized for the small phase's evaluations; build
        # those so that a resumed run evaluates on the same samples.
        return build_phase_datasets(self.datasets_cfg, self.total_train_samples, tokenizer)


def _find_checkpoint(path: str) -> Optional[tuple[str, dict]]:
    """The checkpoint `path` names (a save root or a checkpoint directory) and its common
    state, or None when it names none. A latest file naming a missing checkpoint raises."""
    from megatron.core import dist_checkpointing

    if not ckpt.has_checkpoint(path):
        return None
    found = ckpt.resolve_checkpoint(path)
    return found, dist_checkpointing.load_common_state_dict(found)


def _check_model(load: str, found: str, common: dict, expected: ModelConfig, flags: str) -> None:
    saved = common.get("megastack", {}).get("model")
    if saved is None:
        raise ValueError(
            f"--load {load}: {found} holds no megastack model record, so it is not a checkpoint "
            f"of a growth run: point --load at the --save directory of the growth run to resume")
    diffs = ModelConfig.from_dict(saved).weight_differences(expected)
    if diffs:
        raise ValueError(
            f"--load {load}: {found} holds another model than this run's (checkpoint vs this "
            f"run: {'; '.join(diffs)}): relaunch with the {flags} of the run being resumed")


def _resume_point(cfg: PretrainConfig, small_cfg: PretrainConfig, large_cfg: PretrainConfig,
                  small_iters: int) -> tuple[str, Optional[str]]:
    """Where --load resumes a growth run: ("large", path), ("small", path), or ("start", load)
    for a --load that holds nothing to resume (the small trainer treats it as any run does)."""
    load = cfg.checkpoint.load
    if not load:
        return "start", None
    if cfg.checkpoint.finetune:
        raise ValueError(
            "--finetune does not apply to a growth run (--grow-at-tokens): its --load resumes "
            "the run where it stopped. To start the small model from other weights, train it "
            "with --finetune in a run of its own and grow with tools/grow_checkpoint.py")
    found = _find_checkpoint(load)
    if found is not None:
        path, common = found
        grown_at = common.get("megastack", {}).get(GROWN_AT)
        iteration = int(common.get("iteration", 0))
        if grown_at is None:
            # Earlier versions recorded the growth point only in the final save, so an
            # interrupted run's interval saves lack it: the grown model past the growth point
            # can only be one of those.
            saved = common.get("megastack", {}).get("model")
            if not (saved and not ModelConfig.from_dict(saved).weight_differences(large_cfg.model)
                    and iteration > small_iters):
                raise ValueError(
                    f"--load {load}: {path} is not a checkpoint of a growth run's large phase "
                    f"(it records no {GROWN_AT}). Point --load at the --save directory of the "
                    f"growth run to resume; to train on from these weights, run without "
                    f"--grow-at-tokens")
            logger.info("%s records no growth point: it holds the grown model at iteration %d, "
                        "past the growth point (%d), so it is resumed as the large phase",
                        path, iteration, small_iters)
        elif int(grown_at) != small_iters:
            raise ValueError(
                f"--load {load}: {path} grew after {grown_at} iterations, this run's "
                f"--grow-at-tokens grows after {small_iters}: relaunch with the --grow-at-tokens "
                f"of the run being resumed")
        _check_model(load, path, common, large_cfg.model,
                     "--model, --target-num-layers and --target-* widths (and model flags)")
        return "large", load
    small_root = os.path.join(load, "small")
    found = _find_checkpoint(small_root)
    if found is not None:
        path, common = found
        iteration = int(common.get("iteration", 0))
        if iteration > small_iters:
            raise ValueError(
                f"--load {load}: {path} is at iteration {iteration}, past this run's growth point "
                f"({small_iters} iterations from --grow-at-tokens): relaunch with the "
                f"--grow-at-tokens of the run being resumed")
        _check_model(load, path, common, small_cfg.model, "--model (and model flags)")
        return "small", small_root
    return "start", load


def _mark_saved_if_loaded_from_save(trainer: Trainer, loaded: str) -> None:
    """A checkpoint just loaded from this phase's own --save needs no second copy."""
    own = ckpt.checkpoint_dir(trainer.cfg.checkpoint.save, trainer.state.iteration)
    if os.path.realpath(ckpt.resolve_checkpoint(loaded)) == os.path.realpath(own):
        trainer.last_saved_iteration = trainer.state.iteration


class GrowthRun:
    """`GrowthRun(cfg, ...).setup()` checks the run against --load and builds the first phase's
    trainer (the ValueErrors of bad input come from here, before any training); `.train()`
    then trains, grows and trains on."""

    def __init__(self, cfg: PretrainConfig, args, tokenizer, metrics_file: Optional[str] = None):
        self.cfg, self.args, self.tokenizer, self.metrics_file = cfg, args, tokenizer, metrics_file
        self.small_iters = 0
        self.small: Optional[Trainer] = None
        self.large: Optional[_GrownTrainer] = None

    def _large_trainer(self) -> _GrownTrainer:
        return _GrownTrainer(self.large_cfg, self.args, metrics_file=self.metrics_file,
                             total_train_samples=self.total_samples, phase_name="large",
                             grown_at_iteration=self.small_iters, datasets_cfg=self.small_cfg)

    def setup(self) -> "GrowthRun":
        cfg = self.cfg
        self.small_iters = growth_point_iterations(cfg)
        self.small_cfg, self.large_cfg = _phase_configs(cfg, self.small_iters)
        self.total_samples = cfg.train.batch_schedule().samples_after(cfg.train.train_iters)
        resume, load = _resume_point(cfg, self.small_cfg, self.large_cfg, self.small_iters)
        if resume == "large":
            self.large = self._large_trainer().setup(self.tokenizer, load=load, finetune=False)
            _mark_saved_if_loaded_from_save(self.large, load)
            return self
        self.small = Trainer(self.small_cfg, self.args, metrics_file=self.metrics_file,
                             total_train_samples=self.total_samples, phase_name="small")
        self.small.progress_dir = cfg.checkpoint.save  # one progress.txt for both phases
        self.small.setup(self.tokenizer, load=load, finetune=False)
        if resume == "small":
            _mark_saved_if_loaded_from_save(self.small, load)
        return self

    def train(self) -> TrainState:
        assert self.small is not None or self.large is not None, "call setup() first"
        if self.large is not None:  # resumed in the large phase
            return _train_large(self.large)
        cfg, small = self.cfg, self.small
        start = small.state.iteration
        small.test_at_end = False  # the run goes on at the target size
        small.train()
        if small.stop_reason():
            # --exit-duration-in-mins or --exit-signal-handler at (or before) the growth point;
            # --load resumes from the small phase's checkpoint and grows then.
            if small.last_saved_iteration != small.state.iteration:
                small.save()
            small.close()
            return small.state
        exit_interval = cfg.checkpoint.exit_interval
        if small.state.iteration < self.small_iters or (
                exit_interval and small.state.iteration > start
                and small.state.iteration % exit_interval == 0):
            small.close()  # --exit-interval stopped the small phase (it saved): --load resumes it
            return small.state
        evaluating = cfg.logging.eval_interval > 0 and cfg.logging.eval_iters > 0
        if evaluating:  # the growth point's before/after losses, unless evaluation is off
            small._log_eval(small.state.iteration, {"growth": "before"})
        if small.last_saved_iteration != small.state.iteration:  # else --save-interval just did
            small.save()
        datasets, state = small.datasets, small.state
        small.close()

        if cfg.growth.operator == "learn":
            target_state = _learn_growth(cfg, small, self.large_cfg)
            # A fresh model, optimizer and LR schedule; the weights come from the learned maps.
            large = self._large_trainer().setup(self.tokenizer, datasets=datasets,
                                                start_state=state)
            from megastack.growth.state import load_global_state

            load_global_state(large.chunks, target_state)
            large.optimizer.reload_model_params()  # fp32 main copies of bf16 weights
        else:
            grown = os.path.join(cfg.checkpoint.save, "grown")
            _grow_on_rank0(cfg, self.small_cfg.checkpoint.save, grown)
            # A fresh model, optimizer and LR schedule at the target size and layout.
            large = self._large_trainer().setup(self.tokenizer, datasets=datasets, load=grown,
                                                finetune=True, start_state=state)
        if evaluating:
            large._log_eval(large.state.iteration, {"growth": "after"})
        return _train_large(large)


def _train_large(large: _GrownTrainer) -> TrainState:
    large.train()
    if large.last_saved_iteration != large.state.iteration:  # else an interval or exit save did
        large.save()  # growth requires --save
    large.close()
    return large.state
