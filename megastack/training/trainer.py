"""The training loop, assembled from megatron-core parts.

Model: `megastack.model.build_model_chunks` (GPTModel); wrapping: megatron-core's
`DistributedDataParallel`; optimizer: `get_megatron_optimizer` (+ distributed optimizer);
LR/WD schedule: `OptimizerParamScheduler`; schedule: `get_forward_backward_func` (no pipelining,
1F1B, or interleaved 1F1B); data: `GPTDataset` via `BlendedMegatronDatasetBuilder`;
checkpoints: `dist_checkpointing` (torch_dist).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from megastack import runtime
from megastack.checkpoint import training_checkpoint as ckpt
from megastack.config import ModelConfig
from megastack.model import build_model_chunks
from megastack.training import exit_signal
from megastack.training.arguments import PretrainConfig
from megastack.training.data_iterators import build_iterator
from megastack.training.metrics import (ScalarWriters, StepTimer, TensorBoardWriter,
                                        cuda_memory_scalars, params_l2_norm, peak_tflops)

logger = logging.getLogger(__name__)

# --exit-duration-in-mins counts from the start of the process, as Megatron-LM's from the start
# of pretrain(): a growth run's two phases share one budget.
_PROCESS_START = time.time()


# The ramp of G_random's growth mask, in the checkpoints of a masked run (common["megastack"]):
# a relaunch with the same flags continues it, or finds it over.
GROWTH_MASK = "growth_mask"

# Written to TensorBoard every --tensorboard-log-interval from the iteration's own values.
_PER_ITERATION_TAGS = ("lm loss", "learning-rate", "grad-norm", "num-zeros")


def _init_sgd_state(opt: torch.optim.Optimizer, config=None) -> None:
    for group in opt.param_groups:
        if group.get("momentum", 0) == 0:
            continue  # plain SGD keeps no state
        for p in group["params"]:
            if not opt.state[p]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p.data)


class TrainingDiverged(RuntimeError):
    """A NaN or infinite loss or gradient norm (--check-for-nan-in-loss-and-grad, the default)."""


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0
    # Model FLOPs and training seconds of the whole run (kept in checkpoints) and of this job.
    floating_point_operations: float = 0.0
    train_seconds: float = 0.0
    job_floating_point_operations: float = 0.0
    job_train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # logged metrics, per log


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    device = next(model.parameters()).device
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    attention_mask = batch.get("attention_mask")  # only with --reset-attention-mask
    if attention_mask is not None:
        attention_mask = attention_mask.to(device, non_blocking=True)
    output = model(tokens, position_ids, attention_mask, labels=labels)
    return output, partial(_loss_func, loss_mask)


def build_phase_datasets(cfg: PretrainConfig, total_train_samples: int, tokenizer):
    """(train, valid, test) for a phase: `total_train_samples` training samples, and validation
    samples for every evaluation cfg's --eval-interval and --train-iters schedule."""
    from megastack.data.datasets import build_gpt_datasets

    t, lg = cfg.train, cfg.logging
    eval_runs = (t.train_iters // lg.eval_interval if lg.eval_interval else 0) + 1
    num_samples = (total_train_samples, eval_runs * lg.eval_iters * t.global_batch_size,
                   lg.eval_iters * t.global_batch_size)
    return build_gpt_datasets(
        data_path=list(cfg.data.data_path), split=cfg.data.split, seq_length=cfg.model.seq_length,
        seed=t.seed, train_valid_test_num_samples=num_samples, tokenizer=tokenizer,
        mock=cfg.data.mock_data, path_to_cache=cfg.data.data_cache_path,
        model_vocab_size=cfg.model.vocab_size,
        reset_position_ids=cfg.data.reset_position_ids,
        reset_attention_mask=cfg.data.reset_attention_mask, eod_mask_loss=cfg.data.eod_mask_loss,
        per_split_data_path=cfg.data.per_split_data_path, mmap_bin_files=cfg.data.mmap_bin_files,
        num_dataset_builder_threads=cfg.data.num_dataset_builder_threads,
        multiple_validation_sets=lg.multiple_validation_sets, full_validation=lg.full_validation,
    )


class Trainer:
    """Builds model, optimizer and data for one phase and trains it.

    `Trainer(cfg).setup()` then `.train()`. Growth in one run (megastack.training.growth_run)
    uses two Trainers, one per phase.
    """

    def __init__(self, cfg: PretrainConfig, args: Optional[argparse.Namespace] = None,
                 metrics_file: Optional[str] = None, total_train_samples: Optional[int] = None,
                 phase_name: str = ""):
        self.cfg = cfg
        self.args = args
        self.metrics_file = metrics_file
        self.phase_name = phase_name
        # The dataset is sized for the whole run (both phases of a growth run share it).
        self.total_train_samples = (total_train_samples
                                    or cfg.train.batch_schedule().samples_after(cfg.train.train_iters))
        self.state = TrainState()
        self.rank: Optional[runtime.RankInfo] = None
        self.tb: Optional[ScalarWriters] = None  # TensorBoard (and W&B) on the logging rank
        self.memory_history = None  # --record-memory-history
        self.last_saved_iteration: Optional[int] = None
        # (iteration, validation loss, loss per validation set)
        self.last_eval: Optional[tuple[int, Optional[float], Optional[dict[str, float]]]] = None
        # As Megatron-LM, the test split is evaluated once, where the run ends (not where the
        # small phase of a growth run does).
        self.test_at_end = True
        # --overlap-param-gather: after an optimizer step each rank holds only its own updated
        # shard until the next forward pass gathers the rest (see gather_params).
        self._params_stale = False
        # --log-progress: where progress.txt goes (default --save; a growth run's root).
        self.progress_dir: Optional[str] = None
        self.async_saves = None  # --async-save: megatron-core's AsyncCallsQueue
        self._loaded_common: Optional[dict[str, Any]] = None  # the --load checkpoint's
        # --growth-mask-iters: the mask and its ramp (layers, start_iteration, iterations).
        self.growth_mask = None
        self._growth_mask_ramp: Optional[dict[str, Any]] = None

    # ---------------------------------------------------------------- setup
    def setup(self, tokenizer=None, datasets=None, load: Optional[str] = None,
              finetune: Optional[bool] = None,
              start_state: Optional[TrainState] = None) -> "Trainer":
        """Build everything for this phase. `start_state` continues iteration and data position
        from an earlier phase (growth in one run) instead of a checkpoint's."""
        cfg = self.cfg
        if cfg.train.deterministic_mode:
            # cuBLAS reads its workspace setting when CUDA starts (in runtime.initialize).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.rank = runtime.initialize(cfg.parallel, cfg.model.num_layers, cfg.train.seed,
                                       timeout_minutes=cfg.train.distributed_timeout_minutes)
        self.batches = cfg.train.batch_schedule(self.rank.dp_size)
        self.chunks = build_model_chunks(
            cfg.model, cfg.parallel, seed=cfg.train.seed, bf16=cfg.train.bf16, fp16=cfg.train.fp16,
            transformer_impl=cfg.train.transformer_impl,
            recompute_granularity=cfg.train.recompute_granularity,
            recompute_method=cfg.train.recompute_method,
            recompute_num_layers=cfg.train.recompute_num_layers,
            calculate_per_token_loss=cfg.train.calculate_per_token_loss,
            overlap_p2p_comm=cfg.train.overlap_p2p_comm,
            transformer_options=dict(
                cross_entropy_loss_fusion=cfg.train.cross_entropy_loss_fusion,
                cross_entropy_fusion_impl=cfg.train.cross_entropy_fusion_impl,
                apply_query_key_layer_scaling=cfg.train.apply_query_key_layer_scaling,
                deterministic_mode=cfg.train.deterministic_mode,
                **({"recompute_modules": list(cfg.train.recompute_modules)}
                   if cfg.train.recompute_modules is not None else {})),
        )
        self.ddp_chunks = self._wrap_ddp(self.chunks)
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self._configure_schedule_hooks()
        load = load if load is not None else cfg.checkpoint.load
        finetune = cfg.checkpoint.finetune if finetune is None else finetune
        pretrained = cfg.checkpoint.pretrained_checkpoint
        if pretrained and not self._resumable(load):
            # Megatron-LM: a first launch fine-tunes the pretrained weights, later ones resume.
            if not ckpt.has_checkpoint(pretrained):
                raise ValueError(f"--pretrained-checkpoint {pretrained}: no checkpoint there "
                                 f"(no metadata.json, no {ckpt.LATEST_FILE})")
            logger.info("no checkpoint in --load %s: fine-tuning from --pretrained-checkpoint %s",
                        load, pretrained)
            load, finetune = pretrained, True
        if load:
            self._load(load, finetune)
        if start_state is not None:
            self.state = dataclasses.replace(start_state, history=[])
        self._setup_growth_mask(self._loaded_common)
        self.datasets = datasets if datasets is not None else self._build_datasets(tokenizer)
        self._check_evaluation_sets()
        self.train_iterators = self._iterators(self.datasets[0], self.state.consumed_train_samples)
        if cfg.checkpoint.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.async_saves = AsyncCallsQueue()
        self.progress = None
        if cfg.logging.log_progress:
            from megastack.training.progress import ProgressLog

            self.progress = ProgressLog(self.progress_dir or cfg.checkpoint.save,
                                        self.rank.world_size, writer=self.rank.rank == 0)
            if start_state is None:  # not the second phase of a growth run: a new job
                self.progress.job_started(self.state.iteration)
        if cfg.logging.memory_snapshot_path:
            from megastack.training.memory_history import MemoryHistory

            self.memory_history = MemoryHistory(cfg.logging.memory_snapshot_path, self.rank.rank)
        if self.rank.is_logging_rank:
            writers = [TensorBoardWriter(cfg.logging.tensorboard_dir,
                                         cfg.logging.tensorboard_queue_size)]
            if cfg.logging.wandb_project:
                from megastack.training.wandb_writer import WandbWriter

                lg = cfg.logging
                writers.append(WandbWriter(lg.wandb_project, lg.wandb_exp_name,
                                           lg.wandb_save_dir, lg.wandb_entity,
                                           config=vars(self.args) if self.args else {}))
            self.tb = ScalarWriters(writers)
            self._tb_steps: dict[str, int] = {}  # tag -> the last step written
        n_params = sum(p.numel() for m in self.chunks for p in m.parameters())
        logger.info("rank %d: %d parameters on this rank (%s), model total %.3fM",
                    self.rank.rank, n_params, self.phase_name or "train",
                    cfg.model.num_parameters() / 1e6)
        return self

    def _wrap_ddp(self, chunks):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=not self.cfg.train.grad_reduce_in_bf16,
            overlap_grad_reduce=self.cfg.train.overlap_grad_reduce,
            overlap_param_gather=self.cfg.train.overlap_param_gather,
            # As Megatron-LM: only the interleaved schedule starts the gathers itself.
            align_param_gather=self._aligns_param_gather(chunks),
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer,
            check_for_nan_in_grad=False,  # train_step checks the global grad norm instead
            bucket_size=self._ddp_bucket_size(chunks),
            pad_buckets_for_high_nccl_busbw=self.cfg.train.ddp_pad_buckets_for_high_nccl_busbw,
        )
        return [
            DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                    disable_bucketing=(i > 0))
            for i, chunk in enumerate(chunks)
        ]

    def _ddp_bucket_size(self, chunks) -> Optional[int]:
        """None: megatron-core's default, max(40M, 1M x DP) with overlap, one bucket without."""
        t = self.cfg.train
        if t.ddp_num_buckets is None:
            return t.ddp_bucket_size
        # As Megatron-LM: this rank's parameters (all its chunks) over the bucket count.
        return max(1, sum(p.numel() for chunk in chunks for p in chunk.parameters())
                   // t.ddp_num_buckets)

    def _aligns_param_gather(self, chunks) -> bool:
        t = self.cfg.train
        return t.overlap_param_gather and t.align_param_gather and len(chunks) > 1

    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        t = self.cfg.train
        opt_config = OptimizerConfig(
            optimizer=t.optimizer, sgd_momentum=t.sgd_momentum,
            lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
            clip_grad=t.clip_grad, bf16=t.bf16, fp16=t.fp16,
            params_dtype=(torch.bfloat16 if t.bf16 else torch.float16 if t.fp16
                          else torch.float32),
            loss_scale=t.loss_scale, initial_loss_scale=t.initial_loss_scale,
            min_loss_scale=t.min_loss_scale, loss_scale_window=t.loss_scale_window,
            hysteresis=t.hysteresis,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer,
            overlap_param_gather=t.overlap_param_gather,  # kept equal to the DDP config's
            log_num_zeros_in_grad=self.cfg.logging.log_num_zeros_in_grad,
        )
        optimizer = get_megatron_optimizer(opt_config, self.ddp_chunks)
        if t.optimizer == "sgd":
            # megatron-core 0.16 gives SGD no state initialiser, which loading a checkpoint
            # needs (the momentum buffers are created lazily at the first step).
            for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
                inner.init_state_fn = _init_sgd_state
        return optimizer

    def _build_scheduler(self):
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        t = self.cfg.train
        origin = self.schedule_start_iteration()

        def samples(iterations: int, after: int = 0) -> int:
            """The scheduler counts samples (Megatron-LM's steps), the flags iterations."""
            return self.batches.samples_between(origin + after, iterations)

        decay_iters = t.lr_decay_iters or t.train_iters
        warmup_steps = samples(t.lr_warmup_iters)
        constant_wd = t.weight_decay_incr_style == "constant"
        wsd = t.lr_wsd_decay_iters
        return OptimizerParamScheduler(
            self.optimizer, init_lr=t.lr_warmup_init, max_lr=t.lr, min_lr=t.min_lr,
            lr_warmup_steps=warmup_steps,
            lr_decay_steps=max(samples(decay_iters), warmup_steps + 1),
            lr_decay_style=t.lr_decay_style,
            start_wd=t.weight_decay if constant_wd else t.start_weight_decay,
            end_wd=t.weight_decay if constant_wd else t.end_weight_decay,
            wd_incr_steps=samples(t.train_iters), wd_incr_style=t.weight_decay_incr_style,
            use_checkpoint_opt_param_scheduler=t.use_checkpoint_opt_param_scheduler,
            override_opt_param_scheduler=t.override_opt_param_scheduler,
            # The annealing is the decay's last `wsd` iterations.
            wsd_decay_steps=samples(wsd, after=decay_iters - wsd) if wsd else None,
            lr_wsd_decay_style=t.lr_wsd_decay_style,
        )

    def schedule_start_iteration(self) -> int:
        """The iteration the LR schedule starts from (a growth run's large phase: the growth
        point); with --rampup-batch-size, the batch sizes from there on set its length in
        samples."""
        return 0

    def _configure_schedule_hooks(self) -> None:
        from megatron.core.distributed import finalize_model_grads

        for chunk in self.chunks:
            config = chunk.config
            config.finalize_model_grads_func = finalize_model_grads
            config.grad_scale_func = self.optimizer.scale_loss
            no_sync = [m.no_sync for m in self.ddp_chunks]
            config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
            if self.cfg.train.overlap_grad_reduce and self.cfg.train.align_grad_reduce:
                # As Megatron-LM: the pipeline schedules start each chunk's reduction as soon as
                # its last micro-batch's backward is done (without it, each bucket's reduction
                # starts from DDP's hooks once its gradients are ready).
                grad_sync = [m.start_grad_sync for m in self.ddp_chunks]
                config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
            if self._aligns_param_gather(self.chunks):
                # The interleaved schedule starts every stage's chunk gathers at the same
                # points; the forward hooks then only wait for them.
                config.param_sync_func = [m.start_param_sync for m in self.ddp_chunks]

    def _build_datasets(self, tokenizer):
        return build_phase_datasets(self.cfg, self.total_train_samples, tokenizer)

    def _iterators(self, dataset, consumed: int):
        """One iterator per model chunk: the interleaved schedule feeds each chunk its own."""
        if dataset is None:
            return None
        t = self.cfg.train
        its = [build_iterator(dataset, consumed, t.micro_batch_size, self.rank.dp_rank,
                              self.rank.dp_size, self.cfg.data.num_workers,
                              attention_mask=self.cfg.data.reset_attention_mask)
               for _ in self.chunks]
        return its[0] if len(its) == 1 else its

    # ---------------------------------------------------------------- checkpoints
    def _setup_growth_mask(self, loaded: Optional[dict[str, Any]]) -> None:
        """MSG-style masks for what G_random added (megastack.growth.mask): continued from a
        checkpoint of a masked run (already over, if it saved after the ramp), or started here
        when --growth-mask-iters trains a checkpoint grown with G_random (depth or width)."""
        from megastack.growth.depth import repeated_positions
        from megastack.config import ModelConfig
        from megastack.growth.mask import GrowthMask, WidthMaskUnits
        from megastack.growth.plans import StackingPlan
        from megastack.growth.width import widths

        loaded = loaded or {}
        ramp = (loaded.get("megastack") or {}).get(GROWTH_MASK)
        iters = self.cfg.train.growth_mask_iters
        if ramp is None and iters:
            grown_from = loaded.get("grown_from") or {}
            depth = grown_from.get("operator") == "random"
            width = grown_from.get("width_operator") == "random"
            if not (depth or width):
                operators = "not grown"
                if grown_from:
                    operators = f"grown with --operator {grown_from['operator']}"
                    if grown_from.get("width_operator"):
                        operators += f" --width-operator {grown_from['width_operator']}"
                raise ValueError(
                    f"--growth-mask-iters fades in what G_random added to a model just grown: "
                    f"--load the checkpoint tools/grow_checkpoint.py --operator random (or "
                    f"--width-operator random) wrote (this run's --load: {operators}), or drop "
                    f"the flag")
            plan = StackingPlan(tuple(grown_from["stacking_list"]))
            ramp = {"layers": repeated_positions(plan) if depth else [],
                    "start_iteration": self.state.iteration, "iterations": iters}
            if width:  # kept in the ramp: later checkpoints no longer say what was grown
                ramp["source_widths"] = widths(ModelConfig.from_dict(grown_from["source_model"]))
        if ramp is None:
            return
        width_units = (WidthMaskUnits.from_widths(self.cfg.model, ramp["source_widths"])
                       if ramp.get("source_widths") else None)
        self.growth_mask = GrowthMask(self.chunks, ramp["layers"], ramp["iterations"], width_units)
        self.growth_mask.update(self.state.iteration - ramp["start_iteration"])
        self._growth_mask_ramp = ramp

    def _load(self, path: str, finetune: bool) -> None:
        c = self.cfg.checkpoint
        if c.ckpt_step is not None and path == c.load:
            step_dir = ckpt.checkpoint_dir(path, c.ckpt_step)
            if not ckpt.has_checkpoint(step_dir):
                raise ValueError(
                    f"--load {path} --ckpt-step {c.ckpt_step}: no checkpoint {step_dir} (latest "
                    f"saved: {ckpt.read_latest_iteration(path)}); give the iteration of an "
                    f"iter_* directory there")
            path = step_dir
        elif (c.non_persistent_dir and path == c.load and c.save
              and os.path.realpath(c.load) == os.path.realpath(c.save)):
            # Resuming this run (--load is its --save): its non-persistent checkpoints count.
            path = self._newest_of(path, c.non_persistent_dir)
        if not ckpt.has_checkpoint(path):
            if c.exit_on_missing_checkpoint:
                raise ValueError(f"--load {path}: no checkpoint there (no metadata.json, no "
                                 f"{ckpt.LATEST_FILE}) and --exit-on-missing-checkpoint is given")
            if finetune:
                # Fine-tuning exists to start from given weights: random ones would be a silent
                # failure (e.g. a growth step that never wrote its checkpoint).
                raise ValueError(
                    f"--load {path} --finetune: no checkpoint there (no metadata.json, no "
                    f"{ckpt.LATEST_FILE}); point --load at a checkpoint directory or save root")
            # Megatron-LM: the first launch of `--save D --load D` starts from random init.
            logger.warning("--load %s: no checkpoint found (no %s): training from scratch",
                           path, ckpt.LATEST_FILE)
            return
        load_optim = not (finetune or c.no_load_optim)
        common = self._loaded_common = ckpt.load_checkpoint(
            path, self.chunks,
            optimizer=self.optimizer if load_optim else None,
            scheduler=self.scheduler if load_optim else None,
            load_rng=not (finetune or c.no_load_rng),
            check_scheduler=partial(self._check_scheduler_matches, path),
            check_common=partial(self._check_checkpoint_matches, path, load_optim),
            fully_parallel=c.fully_parallel_load,
        )
        if not finetune:
            self.state.iteration = int(common.get("iteration", 0))
            consumed = common.get("consumed_train_samples")
            if consumed is None:
                # Megatron-LM keeps the count in its saved args: without it a resumed Megatron
                # checkpoint would start the data stream over at sample 0.
                consumed = getattr(common.get("args"), "consumed_train_samples", 0)
            self.state.consumed_train_samples = int(consumed)
            self.state.floating_point_operations = float(
                common.get("num_floating_point_operations_so_far", 0.0))
            self.state.train_seconds = float(common.get("train_seconds_so_far", 0.0))
        if load_optim:
            # Megatron DDP keeps its own fp32 copy for the distributed optimizer: resync it.
            for m in self.ddp_chunks:
                m.zero_grad_buffer()
        if finetune:
            logger.info("loaded weights from %s: fresh optimizer and LR schedule", path)
        else:
            logger.info("resuming at iteration %d, %d samples consumed", self.state.iteration,
                        self.state.consumed_train_samples)

    def _resumable(self, load: Optional[str]) -> bool:
        """Whether --load (or, resuming this run, its non-persistent directory) holds a
        checkpoint."""
        c = self.cfg.checkpoint
        if not load:
            return False
        return ckpt.has_checkpoint(load) or bool(
            c.non_persistent_dir and c.save and os.path.realpath(load) == os.path.realpath(c.save)
            and ckpt.has_checkpoint(c.non_persistent_dir))

    @staticmethod
    def _newest_of(load: str, non_persistent: str) -> str:
        """--load, or the non-persistent checkpoints' directory when its latest is newer (as
        Megatron-LM resumes from a global non-persistent checkpoint)."""
        def latest(root):
            it = ckpt.read_latest_iteration(root) if os.path.isdir(root) else None
            return it if isinstance(it, int) else -1

        newest = latest(non_persistent)
        if newest > latest(load):
            logger.info("resuming from the non-persistent checkpoint of iteration %d in %s, newer "
                        "than %s's latest", newest, non_persistent, load)
            return non_persistent
        return load

    def _check_checkpoint_matches(self, path: str, load_optim: bool,
                                  common: dict[str, Any]) -> None:
        self._check_model_matches(path, common)
        if load_optim and "optimizer" in common:
            self._check_optimizer_kind(path, common)

    def _check_optimizer_kind(self, path: str, common: dict[str, Any]) -> None:
        """megatron-core's distributed and regular optimizers, and Adam and SGD, save different
        state: loading one into the other fails deep in its loader with a KeyError."""
        train = (common.get("megastack") or {}).get("train") or {}
        saved_kind = train.get("optimizer") or getattr(common.get("args"), "optimizer", None)
        if saved_kind is None and train:
            saved_kind = "adam"  # megastack checkpoints from before --optimizer
        if saved_kind is not None and saved_kind != self.cfg.train.optimizer:
            raise ValueError(
                f"--load {path}: its optimizer state is {saved_kind}'s, and this run uses "
                f"--optimizer {self.cfg.train.optimizer}. Relaunch with --optimizer {saved_kind}, "
                f"or add --no-load-optim to start a fresh optimizer from the checkpoint's weights")
        parallel = (common.get("megastack") or {}).get("parallel") or {}
        saved = parallel.get("use_distributed_optimizer")
        if saved is None:  # a Megatron-LM checkpoint
            saved = getattr(common.get("args"), "use_distributed_optimizer", None)
        now = self.cfg.parallel.use_distributed_optimizer
        if saved is None or bool(saved) == now:
            return
        with_or = {True: "with", False: "without"}
        raise ValueError(
            f"--load {path}: its optimizer state was saved {with_or[bool(saved)]} "
            f"--use-distributed-optimizer, and this run is {with_or[now]} it (megatron-core cannot "
            f"load one into the other). Relaunch {with_or[bool(saved)]} --use-distributed-optimizer, "
            f"or add --no-load-optim to start a fresh optimizer from the checkpoint's weights")

    def _check_megatron_vocab(self, path: str, megatron_args: Any) -> None:
        padded = getattr(megatron_args, "padded_vocab_size", None)
        if padded is None or padded == self.cfg.model.vocab_size:
            return
        tp = getattr(megatron_args, "tensor_model_parallel_size", 1) or 1
        divisible_by = getattr(megatron_args, "make_vocab_size_divisible_by", 128) or 128
        raise ValueError(
            f"--load {path}: the Megatron-LM checkpoint's embedding has {padded} rows, this run "
            f"{self.cfg.model.vocab_size}: Megatron-LM pads the vocabulary to a multiple of "
            f"--make-vocab-size-divisible-by x the TP size it was saved at ({divisible_by} x "
            f"{tp}), megastack to a multiple of --make-vocab-size-divisible-by alone, so that "
            f"the size does not change with TP. Relaunch with --make-vocab-size-divisible-by "
            f"{divisible_by * tp}")

    def _check_model_matches(self, path: str, common: dict[str, Any]) -> None:
        """A checkpoint of another architecture would fail deep in megatron-core's loader with a
        tensor-shape error; name the flags that differ instead (as Megatron-LM's
        check_checkpoint_args does)."""
        recorded = (common.get("megastack") or {}).get("model")
        if not recorded:
            # A Megatron-LM checkpoint: its args may predate some model flags, so only
            # megatron-core's shape checks judge it, except for the vocabulary padding, which
            # differs by design (see padded_vocab_size) and would fail as a bare shape error.
            self._check_megatron_vocab(path, common.get("args"))
            return
        diffs = ModelConfig.from_dict(recorded).weight_differences(self.cfg.model)
        if diffs:
            found = ckpt.resolve_checkpoint(path)
            raise ValueError(
                f"--load {path}: {found} holds another model (checkpoint vs this run: "
                f"{'; '.join(diffs)}). Relaunch with the model flags (--model ...) of the run "
                f"that saved it; to change the architecture, grow or shrink the checkpoint with "
                f"tools/grow_checkpoint.py first")

    def _check_scheduler_matches(self, path: str, saved: dict[str, Any]) -> None:
        """Megatron-LM refuses to resume with a schedule other than the checkpoint's unless told
        which one wins; megatron-core would assert on the first difference. Name them all."""
        s = self.scheduler
        if s.override_opt_param_scheduler or s.use_checkpoint_opt_param_scheduler:
            return
        t = self.cfg.train
        gbs = t.global_batch_size

        def steps(v):
            if t.rampup_batch_size is not None:  # iterations of varying batches
                return f"{v} samples"
            return f"{v} samples ({v / gbs:g} iterations of {gbs})"

        def first(*keys):
            return next((saved[k] for k in keys if k in saved), None)

        checks = [  # (flag, checkpoint value, this run's value, format)
            ("--lr", first("start_lr", "max_lr"), s.max_lr, str),
            ("--min-lr", saved.get("min_lr"), s.min_lr, str),
            ("--lr-warmup-iters", first("warmup_iter", "warmup_steps", "lr_warmup_steps"),
             s.lr_warmup_steps, steps),
            ("--lr-decay-iters" if t.lr_decay_iters else "--train-iters (sets the LR decay)",
             first("end_iter", "decay_steps", "lr_decay_steps"), s.lr_decay_steps, steps),
            ("--lr-decay-style", first("decay_style", "lr_decay_style"), s.lr_decay_style, str),
        ]
        if "start_wd" in saved:
            checks += [
                ("--weight-decay", saved["start_wd"], s.start_wd, str),
                ("--weight-decay", saved["end_wd"], s.end_wd, str),
                ("--train-iters (sets the weight-decay schedule)", saved["wd_incr_steps"],
                 s.wd_incr_steps, steps),
                ("weight-decay increment style", saved["wd_incr_style"], s.wd_incr_style, str),
            ]
        diffs, seen = [], set()
        for flag, old, new, fmt in checks:
            if old is not None and old != new and flag.split()[0] not in seen:
                seen.add(flag.split()[0])
                diffs.append(f"{flag}: checkpoint {fmt(old)}, now {fmt(new)}")
        if diffs:
            raise ValueError(
                f"--load {path}: the LR/weight-decay schedule differs from "
                f"the checkpoint's ({'; '.join(diffs)}). Relaunch with "
                f"--override-opt_param-scheduler to use the new values (e.g. to extend a run), or "
                f"--use-checkpoint-opt_param-scheduler to keep the checkpoint's, or with the "
                f"flags of the run being resumed")

    def save(self, root: Optional[str] = None, extra: Optional[dict] = None) -> str:
        c, st = self.cfg.checkpoint, self.state
        root = root or c.save
        # Run once the checkpoint is published (at once, or when --async-save finalises it).
        when_saved: list[Callable[[], None]] = []
        if self.progress is not None:
            when_saved.append(partial(
                self.progress.checkpoint_saved, st.iteration, st.job_floating_point_operations,
                st.job_train_seconds, st.floating_point_operations, st.train_seconds,
                st.consumed_train_samples * self.cfg.model.seq_length))
        if c.save_retain_interval and root == c.save and self.rank.rank == 0:
            when_saved.append(partial(ckpt.remove_checkpoints_before, root, st.iteration,
                                      c.save_retain_interval))

        def on_saved():
            for call in when_saved:
                call()

        path = self._write_checkpoint(root, extra, on_saved if when_saved else None)
        self.last_saved_iteration = self.state.iteration
        return path

    def save_non_persistent(self) -> str:
        """--non-persistent-save-interval: a checkpoint into its own directory that replaces
        the one before; it does not count as saved (the run still ends with a persistent one)."""
        root, iteration = self.cfg.checkpoint.non_persistent_dir, self.state.iteration

        def drop_older():
            if self.rank.rank == 0:
                ckpt.remove_checkpoints_before(root, iteration)

        return self._write_checkpoint(root, None, on_saved=drop_older)

    def _write_checkpoint(self, root: str, extra: Optional[dict],
                          on_saved: Optional[Callable[[], None]]) -> str:
        self.gather_params()
        common = {
            "consumed_train_samples": self.state.consumed_train_samples,
            # Megatron-LM's name; with the seconds, --log-progress's cumulative throughput.
            "num_floating_point_operations_so_far": self.state.floating_point_operations,
            "train_seconds_so_far": self.state.train_seconds,
            "megastack": {
                "model": self.cfg.model.to_dict(),
                "parallel": dataclasses.asdict(self.cfg.parallel),
                "train": dataclasses.asdict(self.cfg.train),
                **({GROWTH_MASK: self._growth_mask_ramp} if self._growth_mask_ramp else {}),
                **(extra or {}),
            },
        }
        c = self.cfg.checkpoint
        return ckpt.save_checkpoint(root, self.state.iteration, self.chunks,
                                    None if c.no_save_optim else self.optimizer,
                                    None if c.no_save_optim else self.scheduler,
                                    common=common, args=self.args,
                                    fully_parallel=c.fully_parallel_save,
                                    assume_constant_structure=c.assume_constant_structure,
                                    save_rng=not c.no_save_rng, async_queue=self.async_saves,
                                    on_saved=on_saved)

    def finalize_async_saves(self, blocking: bool) -> None:
        """--async-save: publish the checkpoints whose writing has ended on every rank (all of
        them with `blocking`). Collective: every rank calls it at the same points."""
        if self.async_saves is not None:
            self.async_saves.maybe_finalize_async_calls(blocking=blocking)

    # ---------------------------------------------------------------- steps
    def _forward_backward(self, data_iterator, forward_only: bool, num_microbatches: int):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=data_iterator, model=self.ddp_chunks,
            num_microbatches=num_microbatches, seq_length=self.cfg.model.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            decoder_seq_length=self.cfg.model.seq_length, forward_only=forward_only,
        )

    def _reduce_lm_loss(self, losses_reduced: list[dict]) -> Optional[float]:
        """Token-weighted mean over micro-batches and DP ranks; None off the last stage."""
        from megatron.core import parallel_state

        if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            return None
        total = torch.zeros(2, dtype=torch.float64, device=self.rank.device)
        for item in losses_reduced:
            total += item["lm loss"].to(torch.float64)
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        return (total[0] / total[1].clamp(min=1)).item()

    def train_step(self) -> dict[str, Any]:
        if self.growth_mask is not None and self.growth_mask.active:
            self.growth_mask.update(self.state.iteration + 1
                                    - self._growth_mask_ramp["start_iteration"])
        if self.state.iteration in self.cfg.train.iterations_to_skip:
            return self._pass_over_batch()
        for m in self.ddp_chunks:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        timer = StepTimer(self.cfg.logging.log_timers_to_tensorboard)
        consumed = self.state.consumed_train_samples
        batch_size = self.batches.batch_size(consumed)  # --rampup-batch-size: grows with consumed
        losses = self._forward_backward(self.train_iterators, forward_only=False,
                                        num_microbatches=self.batches.num_microbatches(consumed))
        timer.lap("forward-backward-time")
        self._empty_cuda_cache(level=1)
        update_ok, grad_norm, num_zeros = self.optimizer.step()
        timer.lap("optimizer-time")
        self._empty_cuda_cache(level=2)
        self._params_stale = self.cfg.train.overlap_param_gather
        t = self.cfg.train
        if update_ok:
            self.scheduler.step(increment=batch_size)
        self.state.iteration += 1
        self.state.consumed_train_samples += batch_size
        lm_loss = self._reduce_lm_loss(losses)
        if t.check_for_nan_in_loss_and_grad:
            # The loss lives on the last pipeline stage, the grad norm (global) on every rank.
            self._check_finite("lm loss", lm_loss)
            self._check_finite("grad norm", grad_norm)
        return {"lm loss": lm_loss, "grad-norm": grad_norm, "num-zeros": num_zeros,
                "skipped": not update_ok, "batch-size": batch_size, "trained": True,
                **timer.times}

    def _pass_over_batch(self) -> dict[str, Any]:
        """--iterations-to-skip: the iteration counts and its samples are consumed, with no
        forward, backward or update and no LR step (as in Megatron-LM)."""
        batch_size = self.batches.batch_size(self.state.consumed_train_samples)
        self.state.iteration += 1
        self.state.consumed_train_samples += batch_size
        # Reading the skipped samples only to drop them is wasted I/O: restart the iterators
        # after them (unless this was the last iteration, whose dataset may end there).
        if self.state.iteration < self.cfg.train.train_iters:
            self.train_iterators = self._iterators(self.datasets[0],
                                                   self.state.consumed_train_samples)
        logger.info("iteration %d: skipped (--iterations-to-skip), passing over its %d samples",
                    self.state.iteration, batch_size)
        return {"lm loss": None, "grad-norm": None, "num-zeros": None, "skipped": False,
                "batch-size": batch_size, "trained": False}

    def _empty_cuda_cache(self, level: int) -> None:
        """--empty-unused-memory-level: hand cached blocks back (less fragmentation for
        other processes, at the cost of new allocations)."""
        if self.cfg.train.empty_unused_memory_level >= level and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _check_finite(self, name: str, value: Optional[float]) -> None:
        if value is not None and not math.isfinite(value):
            raise TrainingDiverged(
                f"iteration {self.state.iteration}: the {name} is {value} (rank "
                f"{self.rank.rank}). Training diverged or the data holds bad samples: resume "
                f"from the last checkpoint with a lower --lr or a longer --lr-warmup-iters. "
                f"--no-check-for-nan-in-loss-and-grad trains on regardless")

    def check_replicas_agree(self) -> None:
        """--check-weight-hash-across-dp-replicas-interval: megatron-core hashes every parameter
        and compares with data-parallel replica 0; all ranks stop if any replica differs (a
        hardware fault or a non-deterministic reduction)."""
        from megatron.core.utils import check_param_hashes_across_dp_replicas

        self.gather_params()
        agree = check_param_hashes_across_dp_replicas(self.chunks, cross_check=True)
        flag = torch.tensor([int(agree)], dtype=torch.int32, device=self.rank.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if not flag.item():
            raise TrainingDiverged(
                f"iteration {self.state.iteration}: the data-parallel replicas hold different "
                f"weights (rank {self.rank.rank} {'agrees' if agree else 'differs'}; megatron-core "
                f"logs the parameters). Resume from the last checkpoint, and check the node's "
                f"hardware if it happens again")

    def gather_params(self) -> None:
        """Make every rank's weights whole after an optimizer step with --overlap-param-gather,
        which leaves the all-gathers to the next forward pass's hooks: checkpoints and growth
        read the weights without one. (Evaluation needs no call: its forward gathers.)"""
        if self._params_stale:
            for m in self.ddp_chunks:
                m.start_param_sync(force_sync=True)
            self._params_stale = False

    def evaluation_sets(self, split: int = 1) -> list[tuple[str, Any]]:
        """(name, dataset) for each dataset evaluated on the validation (1) or test (2) split:
        one, named "", unless --multiple-validation-sets names each after its file."""
        dataset = self.datasets[split]
        if dataset is None:
            return []
        if not isinstance(dataset, list):
            return [("", dataset)]
        from megastack.data.datasets import validation_set_names

        return list(zip(validation_set_names(self.cfg.data.per_split_data_path[1]), dataset))

    def _evaluation_iterations(self, dataset) -> int:
        """--eval-iters, or with --full-validation the whole global batches the dataset holds."""
        lg, gbs = self.cfg.logging, self.cfg.train.global_batch_size
        return len(dataset) // gbs if lg.full_validation else lg.eval_iters

    def _check_evaluation_sets(self) -> None:
        if not self.cfg.logging.full_validation:
            return
        for name, dataset in self.evaluation_sets():
            if self._evaluation_iterations(dataset) == 0:
                what = f"the validation dataset {name}" if name else "the validation split"
                raise ValueError(
                    f"--full-validation: {what} holds {len(dataset)} "
                    f"sequences, less than one --global-batch-size "
                    f"({self.cfg.train.global_batch_size}); give it more data or drop the flag")

    @torch.no_grad()
    def evaluate(self, split: int = 1) -> Optional[dict[str, float]]:
        """Mean loss over the first --eval-iters batches (all of them with --full-validation) of
        each validation (split 1) or test (split 2) dataset, by evaluation_sets' names; None
        without that split or off the last pipeline stage."""
        sets = self.evaluation_sets(split)
        losses = {name: self._evaluate_dataset(dataset, self._evaluation_iterations(dataset))
                  for name, dataset in sets}
        if not losses or None in losses.values():
            return None
        return losses

    def _evaluate_dataset(self, dataset, iterations: int) -> Optional[float]:
        t = self.cfg.train
        if t.manual_gc and t.manual_gc_eval:
            gc.collect()
        total, count = 0.0, 0
        its = [build_iterator(dataset, 0, t.micro_batch_size, self.rank.dp_rank, self.rank.dp_size,
                              attention_mask=self.cfg.data.reset_attention_mask)
               for _ in self.chunks]
        for m in self.ddp_chunks:
            m.eval()
        # As Megatron-LM, evaluation batches are --global-batch-size (ramp-up or not).
        num_microbatches = t.global_batch_size // (t.micro_batch_size * self.rank.dp_size)
        for _ in range(iterations):
            losses = self._forward_backward(its[0] if len(its) == 1 else its, forward_only=True,
                                            num_microbatches=num_microbatches)
            loss = self._reduce_lm_loss(losses)
            self._empty_cuda_cache(level=1)
            if loss is not None:
                total, count = total + loss, count + 1
        for m in self.ddp_chunks:
            m.train()
        if t.manual_gc and t.manual_gc_eval:
            gc.collect()
        return total / count if count else None

    # ---------------------------------------------------------------- loop
    def train(self) -> TrainState:
        """Train until --train-iters, evaluating, logging and saving on the way."""
        t = self.cfg.train
        if t.skip_train:
            # Megatron-LM's --skip-train: the loaded weights on the validation and test splits.
            self._evaluate_splits()
            return self.state
        if t.manual_gc:
            # As Megatron-LM: ranks collecting at different moments stall each other's
            # collectives; all collect at the same iterations instead (close() turns it back on).
            gc.disable()
            gc.collect()
        profiler = self._profiler()
        try:
            return self._train_loop(profiler)
        finally:
            if profiler is not None:
                profiler.close()

    def _count_step(self, flops: float, seconds: float) -> None:
        st = self.state
        st.floating_point_operations += flops
        st.job_floating_point_operations += flops
        st.train_seconds += seconds
        st.job_train_seconds += seconds

    def _profiler(self):
        lg = self.cfg.logging
        if not lg.profile or self.rank.rank not in lg.profile_ranks:
            return None
        from megastack.training.profiling import StepProfiler

        return StepProfiler(lg.profile_step_start, lg.profile_step_end, lg.use_pytorch_profiler,
                            lg.tensorboard_dir)

    def _train_loop(self, profiler) -> TrainState:
        cfg = self.cfg
        t, lg = cfg.train, cfg.logging
        seq = cfg.model.seq_length
        world = self.rank.world_size
        flops_per_token = cfg.model.flops_per_token()
        peak = peak_tflops()
        last_log_time, last_log_iter = time.perf_counter(), self.state.iteration
        last_log_samples = self.state.consumed_train_samples
        loss_sum, loss_count, skipped = 0.0, 0, 0
        passed_over, trained = 0, 0  # samples of --iterations-to-skip, and iterations trained,
        # since the last log
        while self.state.iteration < t.train_iters:
            if profiler is not None:
                profiler.begin(self.state.iteration + 1)
            step_start = time.perf_counter()
            out = self.train_step()
            it = self.state.iteration
            if out["trained"]:
                self._count_step(flops_per_token * out["batch-size"] * seq,
                                 time.perf_counter() - step_start)
                trained, last_trained = trained + 1, out
            else:
                passed_over += out["batch-size"]
            self.finalize_async_saves(blocking=False)
            if profiler is not None:
                profiler.end(it)
            if t.check_weight_hash_interval and it % t.check_weight_hash_interval == 0:
                self.check_replicas_agree()
            if t.manual_gc and t.manual_gc_interval and it % t.manual_gc_interval == 0:
                gc.collect()
            skipped += out["skipped"]
            # As Megatron-LM, the average leaves out iterations whose update --fp16's loss
            # scaling skipped (their gradients overflowed).
            if out["lm loss"] is not None and not out["skipped"]:
                loss_sum, loss_count = loss_sum + out["lm loss"], loss_count + 1
            if self.tb is not None and it % lg.tensorboard_log_interval == 0:
                self._tensorboard_iteration(out, it)
            log_now = it % lg.log_interval == 0 or it == t.train_iters
            if log_now and not trained:
                # Only --iterations-to-skip since the last log: no training to report.
                passed_over = 0
                last_log_time, last_log_iter = time.perf_counter(), it
                last_log_samples = self.state.consumed_train_samples
            elif log_now:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - last_log_time
                tokens = (self.state.consumed_train_samples - last_log_samples - passed_over) * seq
                metrics = {
                    "iteration": it,
                    "consumed tokens": self.state.consumed_train_samples * seq,
                    "global batch size": out["batch-size"],
                    "lm loss": loss_sum / loss_count if loss_count else float("nan"),
                    "learning-rate": self.optimizer.param_groups[0]["lr"],
                    "grad-norm": (float(last_trained["grad-norm"])
                                  if last_trained["grad-norm"] is not None else float("nan")),
                    "tokens-per-sec": tokens / elapsed,
                    "iteration-time": elapsed / max(it - last_log_iter, 1),
                }
                if torch.cuda.is_available():
                    tflops = flops_per_token * tokens / elapsed / world / 1e12
                    metrics["throughput"] = tflops
                    if peak:
                        metrics["mfu"] = tflops / peak
                    metrics["mem-max-allocated-GB"] = torch.cuda.max_memory_allocated() / 2**30
                if last_trained["num-zeros"] is not None:
                    metrics["num-zeros"] = float(last_trained["num-zeros"])
                if t.fp16:
                    metrics["loss scale"] = float(self.optimizer.get_loss_scale())
                metrics["skipped iterations"] = skipped
                if lg.log_params_norm:
                    self.gather_params()  # --overlap-param-gather: the step's shards only
                    metrics["params-norm"] = params_l2_norm(self.chunks)
                # TensorBoard has these per iteration (--tensorboard-log-interval), not averaged.
                self._log(metrics, tensorboard_skips=_PER_ITERATION_TAGS)
                if self.memory_history is not None and self.rank.is_logging_rank:
                    self.memory_history.dump()
                loss_sum, loss_count, skipped, passed_over, trained = 0.0, 0, 0, 0, 0
                last_log_time, last_log_iter = time.perf_counter(), it
                last_log_samples = self.state.consumed_train_samples
            # Like Megatron-LM, throughput and iteration time count training only: the time
            # spent evaluating and saving is taken out of the current log interval.
            paused_at = time.perf_counter()
            if lg.eval_interval and it % lg.eval_interval == 0:
                self._log_eval(it)
            c = cfg.checkpoint
            if c.save and c.save_interval and it % c.save_interval == 0:
                self.save()
            elif c.non_persistent_save_interval and it % c.non_persistent_save_interval == 0:
                self.save_non_persistent()
            last_log_time += time.perf_counter() - paused_at
            reason = self.stop_reason()
            if reason:
                if cfg.checkpoint.save and self.last_saved_iteration != it:
                    self.save()
                # No final evaluation: the time is up (e.g. a cluster job's limit is near).
                logger.info("exiting at iteration %d: %s", it, reason)
                return self.state
            if cfg.checkpoint.exit_interval and it % cfg.checkpoint.exit_interval == 0:
                if cfg.checkpoint.save and self.last_saved_iteration != it:
                    self.save()
                self._final_eval()
                logger.info("exiting at iteration %d (--exit-interval)", it)
                return self.state
        self._final_eval()
        return self.state

    def stop_reason(self) -> Optional[str]:
        """Why training must stop now, the same answer on every rank: --exit-duration-in-mins
        is used up or --exit-signal-handler caught its signal (on any rank: as in Megatron-LM,
        an all-reduce MAX each iteration); None to go on."""
        c = self.cfg.checkpoint
        if c.exit_duration_in_mins is None and c.exit_signal is None:
            return None
        minutes = (time.time() - _PROCESS_START) / 60
        over = c.exit_duration_in_mins is not None and minutes > c.exit_duration_in_mins
        signalled = c.exit_signal is not None and exit_signal.received() is not None
        flags = torch.tensor([int(over), int(signalled)], dtype=torch.int32,
                             device=self.rank.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1]:
            return f"{c.exit_signal} received (--exit-signal-handler)"
        if flags[0]:
            return f"{minutes:.1f} minutes (--exit-duration-in-mins {c.exit_duration_in_mins:g})"
        return None

    def _final_eval(self) -> None:
        """Like Megatron-LM, evaluate once more where training stops, unless just done or
        --eval-interval 0 turned evaluation off."""
        if self.cfg.logging.eval_interval > 0:
            self._evaluate_splits()

    def _evaluate_splits(self) -> None:
        if self.cfg.logging.eval_iters > 0:
            self._log_eval(self.state.iteration)
            if self.test_at_end and self.datasets[2] is not None:
                losses = self.evaluate(split=2)
                if losses is not None:
                    loss = sum(losses.values()) / len(losses)
                    self._log({"iteration": self.state.iteration,
                               "lm loss test": loss,
                               "lm loss test ppl": math.exp(min(loss, 20.0))})

    def _log_eval(self, iteration: int, extra: Optional[dict] = None) -> Optional[float]:
        if self.last_eval is None or self.last_eval[0] != iteration:
            losses = self.evaluate()
        elif not extra:
            return self.last_eval[1]
        else:
            losses = self.last_eval[2]  # same weights: no need to evaluate again
        # With --multiple-validation-sets, 'lm loss validation' is the sets' unweighted mean
        # (what growth timing and the curves compare) and each set has its own key.
        loss = None if losses is None else sum(losses.values()) / len(losses)
        # Recorded on every rank (loss is None off the last stage) so that all ranks agree on
        # whether the next call evaluates: evaluation is collective.
        self.last_eval = (iteration, loss, losses)
        if loss is None:
            return None
        self._log({**(extra or {}), "iteration": iteration,
                   "consumed tokens": self.state.consumed_train_samples * self.cfg.model.seq_length,
                   "lm loss validation": loss,
                   "lm loss validation ppl": math.exp(min(loss, 20.0)),
                   **{f"lm loss validation {name}": v for name, v in losses.items() if name}})
        return loss

    def _tensorboard_iteration(self, out: dict[str, Any], iteration: int) -> None:
        """Megatron-LM's per-iteration scalars (every --tensorboard-log-interval); the
        --log-interval record adds its averages and throughput at its own steps."""
        lg = self.cfg.logging
        scalars = {"batch-size": out["batch-size"]}
        if lg.log_learning_rate_to_tensorboard:
            scalars["learning-rate"] = self.optimizer.param_groups[0]["lr"]
        for key in _PER_ITERATION_TAGS + ("forward-backward-time", "optimizer-time"):
            if out.get(key) is not None:
                scalars[key] = float(out[key])
        if lg.log_loss_scale_to_tensorboard:
            scalars["loss-scale"] = float(self.optimizer.get_loss_scale())
        if lg.log_world_size_to_tensorboard:
            scalars["world-size"] = self.rank.world_size
        if lg.log_memory_to_tensorboard:
            scalars.update(cuda_memory_scalars())
        self._tensorboard(scalars, iteration)

    def _tensorboard(self, scalars: dict[str, Any], step: int) -> None:
        # A tag gets one point per step: an evaluation record repeats "consumed tokens" of the
        # training record, the growth-point record repeats the last validation loss, and the
        # --log-interval averages come after the iteration's own values.
        scalars = {k: v for k, v in scalars.items()
                   if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
                   and self._tb_steps.get(k) != step}
        self._tb_steps.update(dict.fromkeys(scalars, step))
        self.tb.scalars(scalars, step)

    def _log(self, metrics: dict[str, float], tensorboard_skips: tuple[str, ...] = ()) -> None:
        """Loss lives on the last stage; the logging rank (the last rank) prints and records."""
        if not self.rank.is_logging_rank:
            return
        metrics = {"phase": self.phase_name, **metrics} if self.phase_name else metrics
        self.state.history.append(metrics)
        logger.info(format_metrics(metrics))
        if self.tb is not None:
            skips = ("iteration", "phase", *tensorboard_skips)
            self._tensorboard({k: v for k, v in metrics.items() if k not in skips},
                              int(metrics["iteration"]))
            # Per --log-interval, not per iteration: the per-iteration points wait in the
            # writer's queue (--tensorboard-queue-size) like Megatron-LM's.
            self.tb.flush()
        if self.metrics_file:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(metrics) + "\n")

    def close(self) -> None:
        self.finalize_async_saves(blocking=True)
        if self.async_saves is not None:
            self.async_saves.close()
            self.async_saves = None
        if self.cfg.train.manual_gc:
            gc.enable()
        if self.memory_history is not None:
            self.memory_history.close()
            self.memory_history = None
        if self.tb is not None:
            self.tb.close()


def format_metrics(m: dict[str, Any]) -> str:
    parts = [f"iteration {int(m['iteration']):8d}"]
    if "phase" in m:
        parts.insert(0, f"[{m['phase']}]")
    for key, fmt in (("consumed tokens", "{:d}"), ("global batch size", "{:d}"),
                     ("lm loss", "{:.6E}"), ("learning-rate", "{:.3E}"),
                     ("grad-norm", "{:.4f}"), ("num-zeros", "{:.0f}"), ("loss scale", "{:.1f}"),
                     ("skipped iterations", "{:d}"), ("params-norm", "{:.3f}"),
                     ("tokens-per-sec", "{:.0f}"),
                     ("throughput", "{:.1f} TFLOP/s/GPU"), ("mfu", "{:.1%}"),
                     ("lm loss validation", "{:.6E}"), ("lm loss validation ppl", "{:.3f}"),
                     ("lm loss test", "{:.6E}"), ("lm loss test ppl", "{:.3f}")):
        if key in m:
            value = int(m[key]) if fmt == "{:d}" else m[key]
            parts.append(f"{key}: {fmt.format(value)}")
    parts += [f"{key}: {value:.6E}" for key, value in m.items()
              if key.startswith("lm loss validation ") and key != "lm loss validation ppl"]
    return " | ".join(parts)
