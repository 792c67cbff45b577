"""A plain megatron-core training loop: the baseline megastack's trainer is measured against.

GPTModel (local or TE spec) + DistributedDataParallel + get_megatron_optimizer +
get_forward_backward_func over MockGPTDataset, nothing of megastack's except the CPU bridge
(megatron-core cannot run on CPU without it) and the preset table. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mini-8l128h")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--global-batch-size", type=int, default=8)
    p.add_argument("--train-iters", type=int, default=30)
    p.add_argument("--warmup-iters", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()

    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset
    from megatron.core.distributed import (DistributedDataParallel,
                                           DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron.core.transformer import TransformerConfig

    from megastack.config import PRESETS

    cuda = torch.cuda.is_available()
    if not cuda:
        from megastack.runtime import cpu_compat
        cpu_compat.enable()
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1)  # a world of one needs no port
    parallel_state.initialize_model_parallel()
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    m = PRESETS[args.model]
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    config = TransformerConfig(
        num_layers=m["num_layers"], hidden_size=m["hidden_size"],
        ffn_hidden_size=m["ffn_hidden_size"], num_attention_heads=m["num_attention_heads"],
        num_query_groups=m.get("num_query_groups"), normalization="RMSNorm",
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, bias_activation_fusion=False,
        bias_dropout_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=False,
        persist_layer_norm=False, gradient_accumulation_fusion=False, bf16=args.bf16,
        params_dtype=dtype, pipeline_dtype=dtype, use_cpu_initialization=not cuda,
    )
    if cuda:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        try:
            import transformer_engine  # noqa: F401
            spec = get_gpt_layer_with_transformer_engine_spec()
        except ImportError:
            spec = get_gpt_layer_local_spec()
    else:
        spec = get_gpt_layer_local_spec()
    seq = m["seq_length"]
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=m["vocab_size"],
                     max_sequence_length=seq, position_embedding_type="rope",
                     share_embeddings_and_output_weights=False)
    if cuda:
        model.cuda()
    if args.bf16:
        model.bfloat16()
    ddp = DistributedDataParallel(config=config, ddp_config=DistributedDataParallelConfig(
        grad_reduce_in_fp32=True), module=model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=3e-4, weight_decay=0.01,
                                                 clip_grad=1.0, bf16=args.bf16,
                                                 params_dtype=dtype), [ddp])
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = opt.scale_loss
    config.no_sync_func = ddp.no_sync

    class Tok:
        eod = pad = 0
        vocab_size = m["vocab_size"]
        unique_identifiers = {"class": "Tok"}

    n = args.train_iters * args.global_batch_size
    ds_config = GPTDatasetConfig(random_seed=1234, sequence_length=seq, blend=None,
                                 split="100,0,0", tokenizer=Tok(), reset_position_ids=False,
                                 reset_attention_mask=False, eod_mask_loss=False,
                                 create_attention_mask=False)
    train = BlendedMegatronDatasetBuilder(MockGPTDataset, [n, 0, 0], lambda: True, ds_config).build()[0]
    mbs = args.micro_batch_size
    loader = iter(torch.utils.data.DataLoader(train, batch_size=mbs))
    device = torch.device("cuda") if cuda else torch.device("cpu")

    def forward_step(it, mdl):
        b = next(it)
        out = mdl(b["tokens"].to(device), b["position_ids"].to(device), None,
                  labels=b["labels"].to(device))
        mask = b["loss_mask"].to(device).view(-1).float()

        def loss_func(output):
            s = (output.float().view(-1) * mask).sum()
            return s, mask.sum().to(torch.int), {"lm loss": torch.stack([s.detach(), mask.sum()])}
        return out, loss_func

    fb = get_forward_backward_func()
    times = []
    for _ in range(args.train_iters):
        start = time.perf_counter()
        ddp.zero_grad_buffer()
        opt.zero_grad()
        fb(forward_step_func=forward_step, data_iterator=loader, model=[ddp],
           num_microbatches=args.global_batch_size // mbs, seq_length=seq, micro_batch_size=mbs,
           decoder_seq_length=seq, forward_only=False)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    steady = times[args.warmup_iters:]
    print(json.dumps({"impl": "plain-megatron-core", "model": args.model,
                      "tokens_per_sec": args.global_batch_size * seq / statistics.median(steady),
                      "median_step_s": statistics.median(steady)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
