"""Growth in one run: train the small model, save, grow, rebuild at the target size, continue.

    SAVE/small/   the small model's checkpoint at the growth point
    SAVE/grown/   the grown checkpoint (tools/grow_checkpoint.py's library, run on rank 0)
    SAVE/         the large model's checkpoints (iteration count continues across growth)

As in the paper's reference code, the large model starts with a fresh Adam and a new LR
schedule (re-warmup, then decay over the remaining iterations); the data position continues.
The validation loss just before and just after growth is logged ("growth": "before"/"after").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional

import torch.distributed as dist

from megastack.training.arguments import PretrainConfig
from megastack.training.trainer import Trainer, TrainState

logger = logging.getLogger(__name__)


def growth_point_iterations(cfg: PretrainConfig) -> int:
    """Iterations of the small model: --grow-at-tokens, or the timing guideline for 'auto'."""
    from megastack.growth.timing import growth_timing

    g = cfg.growth
    tokens_per_iter = cfg.tokens_per_iteration
    total_tokens = cfg.train.train_iters * tokens_per_iter
    grow_at = g.grow_at_tokens
    if grow_at is None:
        target = cfg.model.replace(num_layers=g.target_num_layers)
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
    iters = math.ceil(grow_at / tokens_per_iter)
    if not 1 <= iters < cfg.train.train_iters:
        raise ValueError(
            f"--grow-at-tokens {grow_at} is {iters} iterations of {tokens_per_iter} tokens; it "
            f"must fall inside the {cfg.train.train_iters} training iterations"
        )
    return iters


def _phase_configs(cfg: PretrainConfig, small_iters: int) -> tuple[PretrainConfig, PretrainConfig]:
    g = cfg.growth
    t, c = cfg.train, cfg.checkpoint
    small = dataclasses.replace(
        cfg, growth=None,
        train=dataclasses.replace(t, train_iters=small_iters, lr_decay_iters=None,
                                  lr_warmup_iters=min(t.lr_warmup_iters, small_iters)),
        checkpoint=dataclasses.replace(c, save=os.path.join(c.save, "small"), load=None,
                                       save_interval=None, exit_interval=None),
    )
    remaining = t.train_iters - small_iters
    warmup = g.lr_warmup_iters_after_growth
    large = dataclasses.replace(
        cfg, growth=None,
        model=cfg.model.replace(num_layers=g.target_num_layers),
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
                seed=cfg.train.seed, force=True,
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


def run_growth(cfg: PretrainConfig, args, tokenizer, metrics_file: Optional[str] = None) -> TrainState:
    small_iters = growth_point_iterations(cfg)
    small_cfg, large_cfg = _phase_configs(cfg, small_iters)
    total_samples = cfg.train.train_iters * cfg.train.global_batch_size

    small = Trainer(small_cfg, args, metrics_file=metrics_file, total_train_samples=total_samples,
                    phase_name="small").setup(tokenizer)
    small.train()
    small._log_eval(small.state.iteration, {"growth": "before"})
    if small.last_saved_iteration != small.state.iteration:  # else --save-interval just did
        small.save()
    datasets, state = small.datasets, small.state
    small.close()

    if cfg.growth.operator == "learn":
        target_state = _learn_growth(cfg, small, large_cfg)
        # A fresh model, optimizer and LR schedule; the weights come from the learned maps.
        large = Trainer(large_cfg, args, metrics_file=metrics_file,
                        total_train_samples=total_samples, phase_name="large"
                        ).setup(tokenizer, datasets=datasets, start_state=state)
        from megastack.growth.state import load_global_state

        load_global_state(large.chunks, target_state)
        large.optimizer.reload_model_params()  # fp32 main copies of bf16 weights
    else:
        grown = os.path.join(cfg.checkpoint.save, "grown")
        _grow_on_rank0(cfg, small_cfg.checkpoint.save, grown)
        # A fresh model, optimizer and LR schedule at the target size and layout.
        large = Trainer(large_cfg, args, metrics_file=metrics_file,
                        total_train_samples=total_samples, phase_name="large"
                        ).setup(tokenizer, datasets=datasets, load=grown, finetune=True,
                                start_state=state)
    large._log_eval(large.state.iteration, {"growth": "after"})
    large.train()
    large.save(extra={"grown_at_iteration": small_iters})  # growth requires --save
    large.close()
    return large.state
