"""Convert between megastack (torch_dist) checkpoints and Hugging Face Llama directories
(Qwen2's and Qwen3's too: Llama with a QKV-only bias, Llama with q/k norms).

- ``export_hf``: a trained (or grown) checkpoint -> ``config.json`` + safetensors shards that
  ``LlamaForCausalLM.from_pretrained`` (or Qwen2's, Qwen3's) loads (to evaluate with HF
  tooling, or to publish). Reads the checkpoint without building a model, one layer at a time:
  its memory is a layer's weights (and the embedding's) plus one shard.
- ``import_hf``: a Llama, Mistral (no sliding window), Qwen2 or Qwen3 directory -> a megastack
  checkpoint (iteration 0, weights only) that training loads with ``--finetune`` and
  tools/grow_checkpoint.py grows, e.g. to stack the layers of an existing small model. Takes
  the checkpoint's keys from the model built on the meta device and writes it with megastack's
  streaming torch_dist writer, reading one layer's HF tensors at a time.

Both write into a temporary directory beside the output and rename it into place at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch

from megastack.checkpoint import hf_llama, output_dir
from megastack.config import ModelConfig, ParallelConfig

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# What a tokenizer directory may hold for HF's AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
# Buffers some older HF checkpoints saved: recomputed by HF, nothing to import.
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class ConversionReport:
    source: str
    destination: str
    model: ModelConfig
    tensors: int
    files: tuple[str, ...]

    def summary(self) -> str:
        m = self.model
        return (f"{self.source} -> {self.destination}: {m.num_layers} layers, hidden "
                f"{m.hidden_size}, {m.num_attention_heads} heads ({m.num_query_groups} query "
                f"groups), vocabulary {m.vocab_size}; {self.tensors} tensors in "
                f"{', '.join(self.files)}")


def _check_new_output(path: str, flag: str) -> None:
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise ValueError(f"{flag} {path} exists and is not an empty directory: choose a new one "
                         f"(nothing there is overwritten)")


# ---- export ------------------------------------------------------------------------------------
class _ShardWriter:
    """Safetensors shards of at most `max_bytes` each (a single tensor may exceed it)."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = os.path.join(self.directory, f"shard-{len(self.shards)}")
        save_file(self.pending, path, metadata={"format": "pt"})
        # safetensors creates its files private (0600); give them the mode of any new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> tuple[str, ...]:
        """Rename the shards as HF names them; write the index when there are several."""
        self.flush()
        if len(self.shards) == 1:
            os.rename(os.path.join(self.directory, "shard-0"),
                      os.path.join(self.directory, SINGLE_FILE))
            return (SINGLE_FILE,)
        names, weight_map = [], {}
        for i, tensors in enumerate(self.shards):
            name = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            os.rename(os.path.join(self.directory, f"shard-{i}"),
                      os.path.join(self.directory, name))
            names.append(name)
            weight_map.update(dict.fromkeys(tensors, name))
        with open(os.path.join(self.directory, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f,
                      indent=2)
        return (*names, INDEX_FILE)


def export_hf(load: str, output: str, *, dtype: str = "bf16", ckpt_step: Optional[int] = None,
              max_shard_bytes: int = 5 * 2**30, tokenizer_dir: Optional[str] = None,
              bos_token_id: Optional[int] = None,
              eos_token_id: Optional[int] = None) -> ConversionReport:
    """Write the Llama directory `output` from the checkpoint `load` (a save root, whose latest
    or `ckpt_step` iteration is read, or an iter_XXXXXXX directory)."""
    from megastack.checkpoint.dist_reader import DistCheckpointReader
    from megastack.checkpoint.training_checkpoint import checkpoint_dir, resolve_checkpoint
    from megastack.growth.grow_checkpoint import source_model_config

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not os.path.exists(load):
        raise ValueError(f"--load {load}: no such checkpoint directory")
    ckpt = checkpoint_dir(load, ckpt_step) if ckpt_step is not None else resolve_checkpoint(load)
    if not os.path.isdir(ckpt):
        raise ValueError(f"--load {load} --ckpt-step {ckpt_step}: no checkpoint {ckpt}")
    _check_new_output(output, "--output")
    tokenizer_files = _tokenizer_files(tokenizer_dir) if tokenizer_dir else []
    reader = DistCheckpointReader(ckpt)
    model = source_model_config(reader.load_common(), ckpt)
    config = hf_llama.hf_config(model, DTYPES[dtype], bos_token_id, eos_token_id)
    keys = [k for k in reader.tensor_keys() if not k.startswith("optimizer")]
    layer_keys = [k for k in keys if hf_llama.is_layer_key(k)]
    tmp = output_dir.new_temp_root(output)
    try:
        shards = _ShardWriter(tmp, max_shard_bytes)
        count = 0

        def add(pairs):
            nonlocal count
            for name, tensor in pairs:
                # A copy, so that a shard does not keep the tensor it was cut from alive.
                shards.add(name, tensor.to(DTYPES[dtype], copy=True).contiguous())
                count += 1

        for key in (k for k in keys if k not in layer_keys):
            add(hf_llama.hf_tensors(key, reader.load_tensor(key), model))
        for layer in range(model.num_layers):
            for key in layer_keys:
                add(hf_llama.hf_tensors(key, reader.load_layer(key, layer), model, layer))
        files = shards.finish()
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        for path in tokenizer_files:
            shutil.copy2(path, tmp)
        output_dir.publish(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s to %s", ckpt, output)
    return ConversionReport(ckpt, output, model, count,
                            ("config.json", *files,
                             *(os.path.basename(p) for p in tokenizer_files)))


def _tokenizer_files(directory: str) -> list[str]:
    found = [os.path.join(directory, n) for n in TOKENIZER_FILES
             if os.path.isfile(os.path.join(directory, n))]
    if not found:
        raise ValueError(f"--tokenizer-dir {directory}: holds none of {', '.join(TOKENIZER_FILES)}")
    return found


# ---- import ------------------------------------------------------------------------------------
class _HFTensors:
    """The tensors of a HF directory's safetensors file(s), read one at a time.

    Each read opens its file anew: a kept-open file stays memory-mapped, and every page a read
    touched would count in the process's memory until the end (the whole model, by then)."""

    def __init__(self, directory: str) -> None:
        from safetensors import safe_open

        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no \"weight_map\" object")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            files = [SINGLE_FILE]
        else:
            raise ValueError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} (megastack "
                             f"imports safetensors weights; save the model with "
                             f"save_pretrained(..., safe_serialization=True))")
        self.where: dict[str, str] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise ValueError(f"{index}: names {name}, which is not in {directory}")
            with safe_open(path, framework="pt") as handle:
                for tensor in handle.keys():
                    self.where[tensor] = path
        self.used: set[str] = set()

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.where:
            raise KeyError(name)
        self.used.add(name)
        with safe_open(self.where[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def unused(self) -> list[str]:
        return sorted(n for n in self.where if n not in self.used
                      and not n.endswith(_IGNORED_HF_SUFFIXES))


def import_hf(hf_dir: str, save: str, *, dtype: str = "fp32",
              make_vocab_size_divisible_by: int = 128) -> ConversionReport:
    """Write the megastack checkpoint `save` (a save root holding iter_0000000) from the Llama
    directory `hf_dir`. The vocabulary is padded with zero rows to a multiple of
    `make_vocab_size_divisible_by`, as megastack pads a tokenizer's.

    Streams: the checkpoint's keys come from the model built on the meta device, and each
    layer's tensor is read from the safetensors files when the writer asks for it, so memory
    stays near one layer's weights (and the embedding's)."""
    from megastack import runtime
    from megastack.checkpoint.dist_writer import DistCheckpointWriter
    from megastack.checkpoint.training_checkpoint import (
        CHECKPOINT_VERSION, checkpoint_dir, write_latest,
    )
    from megastack.model import build_model_chunks, checkpoint_contents

    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype {dtype}: the imported weights are fp32 or bf16")
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"--hf-dir {hf_dir}: no config.json there")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: line {err.lineno}: {err.msg}") from None
    try:
        hf_model = hf_llama.model_config_from_hf(config, config_path)
    except KeyError as err:
        raise ValueError(f"{config_path}: no {err.args[0]!r} entry") from None
    _check_new_output(save, "--save")
    tensors = _HFTensors(hf_dir)
    divisible = make_vocab_size_divisible_by
    model = hf_model.replace(vocab_size=-(-hf_model.vocab_size // divisible) * divisible)
    parallel = ParallelConfig()
    # A one-process job of its own, unless the caller already runs one (it is left as it was).
    own_job = not torch.distributed.is_initialized()
    runtime.initialize(parallel, model.num_layers, seed=0)
    try:
        layout, objects = checkpoint_contents(build_model_chunks(
            model, parallel, bf16=dtype == "bf16", transformer_impl="local", meta=True))
        _claim_hf_tensors(tensors, layout, hf_model, hf_dir)

        def produce(key: str, layer: Optional[int]) -> torch.Tensor:
            tensor = hf_llama.megatron_tensor(key, tensors.get, hf_model, layer)
            if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
                tensor = torch.cat([tensor, tensor.new_zeros(model.vocab_size - len(tensor),
                                                             tensor.shape[1])])
            return tensor.to(layout[key].dtype)

        tmp = output_dir.new_temp_root(save)
        try:
            writer = DistCheckpointWriter(checkpoint_dir(tmp, 0))
            for key, entry in layout.items():
                if entry.layer_stacked:
                    writer.add_tensor(key, entry.shape, entry.dtype, None, layer_stacked=True,
                                      produce_layer=functools.partial(produce, key))
                else:
                    writer.add_tensor(key, entry.shape, entry.dtype,
                                      functools.partial(produce, key, None))
            for unique_key, value in objects.items():
                writer.add_object(unique_key, functools.partial(_object_bytes, value))
            writer.write({
                "iteration": 0, "checkpoint_version": CHECKPOINT_VERSION,
                "consumed_train_samples": 0, "num_floating_point_operations_so_far": 0.0,
                "megastack": {"model": model.to_dict(), "parallel": dataclasses.asdict(parallel),
                              "imported_from": os.path.abspath(hf_dir)},
            })
            write_latest(tmp, 0)
            output_dir.publish(tmp, save)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if own_job:
            runtime.shutdown()
    logger.info("imported %s into %s", hf_dir, save)
    return ConversionReport(hf_dir, save, model, len(tensors.used), ("iter_0000000",))


def _claim_hf_tensors(tensors: _HFTensors, layout: dict, model: ModelConfig,
                      hf_dir: str) -> None:
    """Check, before anything is written, that the HF files hold every tensor the checkpoint
    needs and nothing megastack's model would drop."""
    for key, entry in layout.items():
        for layer in range(entry.shape[0]) if entry.layer_stacked else [None]:
            for name in hf_llama.hf_sources(key, model, layer):
                if name not in tensors.where:
                    raise ValueError(
                        f"{hf_dir}: the weights lack {name} (config.json says "
                        f"{model.num_layers} layers, tie_word_embeddings "
                        f"{not model.untie_embeddings_and_output_weights})")
                tensors.used.add(name)
    unused = tensors.unused()
    if unused:
        raise ValueError(f"{hf_dir}: {len(unused)} tensor(s) have no place in megastack's GPT "
                         f"(e.g. {', '.join(unused[:3])}): not a plain Llama model")


def _object_bytes(value) -> bytes:
    """A ShardedObject as megatron-core's torch_dist strategy stores it: torch.save of the
    list of its values (one, in a one-process save)."""
    buffer = io.BytesIO()
    torch.save([value], buffer)
    return buffer.getvalue()
