"""Multi-process helper for the checkpoint/growth tests; run with torchrun (gloo) or plain python.

    save      --out ROOT --preset P [--tp T --pp P] [--train-step]
              build the model at a layout (optionally DDP + Adam and one training step, so the
              optimizer has moments) and save it with megastack's save_checkpoint.
    layouts   --out WORK --preset P --tp T --pp P --stacking-list S
              the growth-in-one-run flow: train one step at TP/PP, save WORK/src, rank 0 grows it
              (WORK/grown without optimizer state, WORK/grown_opt with Adam moments), barrier, then
              for each target layout load WORK/grown and evaluate the loss of a fixed batch; finally
              load WORK/grown_opt with an optimizer at TP1 PP1. Results go to WORK/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch
import torch.distributed as dist

LAYOUTS = [  # (TP, PP, layers per virtual stage, uneven split) the grown 8-layer model is loaded at
    (1, 4, None, {}),
    (2, 1, None, {}),
    (1, 2, 2, {}),
    (1, 4, None, {"decoder_first_pipeline_num_layers": 2, "decoder_last_pipeline_num_layers": 4}),
    (2, 2, None, {"decoder_last_pipeline_num_layers": 5}),
    (1, 1, None, {}),  # every rank holds the whole model: the single-process reference
]
MICRO_BATCH, NUM_MICRO_BATCHES = 2, 2
T0 = time.monotonic()


def log(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[dist_worker {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def fixed_batches(model_cfg, n: int = NUM_MICRO_BATCHES):
    gen = torch.Generator().manual_seed(0)
    s = model_cfg.seq_length
    out = []
    for _ in range(n):
        tokens = torch.randint(0, model_cfg.vocab_size, (MICRO_BATCH, s + 1), generator=gen)
        out.append({"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                    "position_ids": torch.arange(s).expand(MICRO_BATCH, s).contiguous()})
    return out


def _loss_func(output):
    loss = output.float().mean()
    # clone: the schedule divides the returned loss in place by the number of micro-batches
    return loss, {"loss": loss.detach().clone()}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, _loss_func


def run_batches(chunks, model_cfg, forward_only: bool):
    """Mean loss over the fixed micro-batches, known on every rank (None if nobody has it)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batches = fixed_batches(model_cfg)
    iters = [iter(batches) for _ in chunks]
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks, num_microbatches=len(batches), seq_length=model_cfg.seq_length,
        micro_batch_size=MICRO_BATCH, decoder_seq_length=model_cfg.seq_length,
        forward_only=forward_only,
    )
    holder = parallel_state.is_pipeline_last_stage(ignore_virtual=True) and \
        parallel_state.get_tensor_model_parallel_rank() == 0
    value = torch.tensor([float("-inf")], dtype=torch.float64)
    if holder and losses:
        value[0] = float(sum(d["loss"] for d in losses) / len(losses))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value[0])


def build(model_cfg, parallel, seed, with_optimizer: bool):
    from megastack.model import build_model_chunks
    from megastack.runtime import initialize

    initialize(parallel, model_cfg.num_layers, seed)
    chunks = build_model_chunks(model_cfg, parallel, seed=seed, transformer_impl="local")
    if not with_optimizer:
        return chunks, chunks, None
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    ddp = [DistributedDataParallel(config=c.config, ddp_config=ddp_config, module=c,
                                   disable_bucketing=i > 0) for i, c in enumerate(chunks)]
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.0,
                                                 use_distributed_optimizer=False), ddp)
    return chunks, ddp, opt


def train_one_step(ddp, opt, model_cfg) -> float:
    for m in ddp:
        m.zero_grad_buffer()
    opt.zero_grad()
    loss = run_batches(ddp, model_cfg, forward_only=False)
    opt.step()
    return loss


def save_source(root, model_cfg, parallel, seed, train_step: bool) -> str:
    from megastack.checkpoint.training_checkpoint import save_checkpoint

    chunks, ddp, opt = build(model_cfg, parallel, seed, with_optimizer=train_step)
    if train_step:
        train_one_step(ddp, opt, model_cfg)
    common = {"consumed_train_samples": 8,
              "megastack": {"model": model_cfg.to_dict(), "parallel": dataclasses.asdict(parallel)}}
    args = argparse.Namespace(num_layers=model_cfg.num_layers, hidden_size=model_cfg.hidden_size,
                              tensor_model_parallel_size=parallel.tensor_model_parallel_size,
                              pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
                              iteration=3, lr=1e-2)
    return save_checkpoint(root, 3, chunks, optimizer=opt, common=common, args=args)


def cmd_save(a) -> None:
    from megastack.config import ModelConfig, ParallelConfig

    model_cfg = ModelConfig.from_name(a.preset)
    parallel = ParallelConfig(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp)
    save_source(a.out, model_cfg, parallel, a.seed, a.train_step)


def _layer_numbers(chunks):
    """Global 0-based layer numbers per chunk on this rank (megatron's own placement)."""
    return [[layer.layer_number - 1 for layer in c.decoder.layers] for c in chunks]


def _check_loaded_weights(chunks, grown_dir) -> list[str]:
    """At TP1 PP1: every loaded parameter equals the grown checkpoint's global tensor."""
    from megastack.checkpoint.dist_reader import DistCheckpointReader

    reader = DistCheckpointReader(grown_dir)
    bad = []
    sd = chunks[0].state_dict()
    for key in reader.tensor_keys():
        if key.startswith("optimizer."):
            continue
        full = reader.load_tensor(key)
        if key.startswith("decoder.layers."):
            rest = key[len("decoder.layers."):].replace("self_attention.linear_qkv.layer_norm_weight",
                                                      "input_layernorm.weight") \
                .replace("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight")
            for i in range(full.shape[0]):
                if not torch.equal(sd[f"decoder.layers.{i}.{rest}"], full[i]):
                    bad.append(f"{key}[{i}]")
        elif not torch.equal(sd[key], full):
            bad.append(key)
    return bad


def _check_loaded_moments(ddp, opt, grown_dir) -> tuple[int, list[str]]:
    """At TP1 PP1: Adam's exp_avg/exp_avg_sq equal the grown checkpoint's optimizer tensors."""
    from megastack.checkpoint.dist_reader import DistCheckpointReader

    reader = DistCheckpointReader(grown_dir)
    model = ddp[0].module
    names = {id(p): n for n, p in model.named_parameters()}
    checked, bad = 0, []
    inner = opt.optimizer if hasattr(opt, "optimizer") else opt
    for group in inner.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            state = inner.state[p]
            layer, key = _split_layer(name) if name.startswith("decoder.layers.") else (None, name)
            for moment in ("exp_avg", "exp_avg_sq"):
                full = reader.load_tensor(f"optimizer.state.{moment}.{key}")
                want = full[layer] if layer is not None else full
                checked += 1
                if not torch.equal(state[moment], want):
                    bad.append(f"{moment}.{name}")
    return checked, bad


def _split_layer(name: str):
    parts = name.split(".")  # decoder.layers.<i>.<rest>
    layer = int(parts[2])
    rest = ".".join(parts[3:]).replace("input_layernorm.weight",
                                       "self_attention.linear_qkv.layer_norm_weight") \
        .replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
    return layer, f"decoder.layers.{rest}"


def cmd_layouts(a) -> None:
    from megastack.checkpoint.training_checkpoint import load_checkpoint
    from megastack.config import ModelConfig, ParallelConfig
    from megastack.growth.grow_checkpoint import grow_checkpoint

    src_cfg = ModelConfig.from_name(a.preset)
    parallel = ParallelConfig(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp)
    results: dict = {}
    log("imports done")
    src_ckpt = save_source(os.path.join(a.out, "src"), src_cfg, parallel, a.seed, train_step=True)
    log("source saved")
    rank = dist.get_rank()
    if rank == 0:  # what the trainer does between phases
        grow_checkpoint(os.path.join(a.out, "src"), os.path.join(a.out, "grown"),
                        stacking_list=a.stacking_list, target_tensor_parallel_size=1,
                        target_pipeline_parallel_size=4)
        grow_checkpoint(src_ckpt, os.path.join(a.out, "grown_opt"), stacking_list=a.stacking_list,
                        target_tensor_parallel_size=1, target_pipeline_parallel_size=1,
                        keep_optimizer_state=True)
    dist.barrier()
    log("grown")

    grown_dir = os.path.join(a.out, "grown", "iter_0000000")
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, maybe_load_config
    results["config_matches_megatron"] = maybe_load_config(grown_dir) == CheckpointingConfig("torch_dist")
    from megastack.checkpoint.dist_reader import DistCheckpointReader
    dst_cfg = ModelConfig.from_dict(DistCheckpointReader(grown_dir).load_common()["megastack"]["model"])
    layouts = []
    for tp, pp, vp, split in LAYOUTS:
        target = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                num_layers_per_virtual_pipeline_stage=vp, **split)
        chunks, _, _ = build(dst_cfg, target, a.seed + 1, with_optimizer=False)
        fresh_loss = run_batches(chunks, dst_cfg, forward_only=True)
        common = load_checkpoint(os.path.join(a.out, "grown"), chunks)
        from megatron.core import parallel_state as ps
        placement = (ps.get_pipeline_model_parallel_rank(), _layer_numbers(chunks))
        placements = [None] * dist.get_world_size()
        dist.all_gather_object(placements, placement)
        entry = {"tp": tp, "pp": pp, "vp_layers": vp, "split": split, "fresh_loss": fresh_loss,
                 "loss": run_batches(chunks, dst_cfg, forward_only=True),
                 "iteration": common["iteration"],
                 "placements": sorted({(p, json.dumps(l)) for p, l in placements})}
        if (tp, pp) == (1, 1):
            entry["weight_mismatches"] = _check_loaded_weights(chunks, grown_dir)
        layouts.append(entry)
        log(f"evaluated TP{tp} PP{pp} VP{vp} {split}")
    results["layouts"] = layouts

    chunks, ddp, opt = build(dst_cfg, ParallelConfig(), a.seed + 2, with_optimizer=True)
    load_checkpoint(os.path.join(a.out, "grown_opt"), chunks, optimizer=opt)
    checked, bad = _check_loaded_moments(ddp, opt, os.path.join(a.out, "grown_opt", "iter_0000000"))
    results["optimizer"] = {"checked": checked, "mismatches": bad,
                            "grown_loss_after_load": run_batches(chunks, dst_cfg, forward_only=True)}
    log("optimizer state checked")
    if rank == 0:
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("save", "layouts"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--preset", default="tiny-4l")
        p.add_argument("--tp", type=int, default=1)
        p.add_argument("--pp", type=int, default=1)
        p.add_argument("--seed", type=int, default=1234)
        p.add_argument("--train-step", action="store_true")
        p.add_argument("--stacking-list", default="0-3*2")
    a = parser.parse_args(argv)
    from megastack.runtime import shutdown

    try:
        {"save": cmd_save, "layouts": cmd_layouts}[a.cmd](a)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
