"""The planner's activation terms equal what megatron-core's attention and MLP modules save for
backward, measured with autograd's saved-tensor hooks on a layer as megastack builds it (local
spec, bf16, no dropout).

The norms are left out: what torch's RMSNorm saves depends on the device's implementation (the
CPU's composite one keeps fp32 copies of its input; CUDA's fused one keeps the input and rstd).
The planner counts each norm's input.
"""

import pytest

from megastack.config import ModelConfig, ParallelConfig, to_transformer_config
from megastack.planning import layer_activation_terms

torch = pytest.importorskip("torch")

B = 2


def saved_bytes(module, *args, **kwargs) -> int:
    """Bytes of the distinct storages, other than the module's parameters, that autograd saves
    while the module runs forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args, **kwargs)
    return sum(storages.values())


@pytest.fixture(scope="module")
def bf16_layer(megatron_world):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    model = ModelConfig.from_name("tiny-8l", num_layers=1, seq_length=128)  # GQA, SwiGLU
    config = to_transformer_config(model, ParallelConfig(), bf16=True, use_cpu_initialization=True)
    torch.manual_seed(0)
    gpt = GPTModel(config, get_gpt_layer_local_spec(normalization=model.normalization),
                   vocab_size=model.vocab_size, max_sequence_length=model.max_position_embeddings,
                   share_embeddings_and_output_weights=False,
                   position_embedding_type=model.position_embedding_type).bfloat16()
    return model, gpt


def _hidden(model):
    return torch.randn(model.seq_length, B, model.hidden_size, dtype=torch.bfloat16,
                       requires_grad=True)


def test_mlp_saves_what_the_planner_counts(bf16_layer):
    model, gpt = bf16_layer
    measured = saved_bytes(gpt.decoder.layers[0].mlp, _hidden(model))
    a, s, h = 2, model.seq_length, model.hidden_size
    terms = layer_activation_terms(model, B, activation_bytes=a)
    # The planner's MLP share: the fc1 input (one of tp_replicated's four s*b*h tensors) and
    # tp_sharded less the attention output.
    fc1_input = attention_output = a * s * B * h
    planned = fc1_input + terms.tp_sharded - attention_output
    assert measured == planned


def test_attention_saves_what_the_planner_counts(bf16_layer):
    model, gpt = bf16_layer
    rope = gpt.rotary_pos_emb(model.seq_length)
    measured = saved_bytes(gpt.decoder.layers[0].self_attention, _hidden(model),
                           attention_mask=None, rotary_pos_emb=rope)
    a, s, h = 2, model.seq_length, model.hidden_size
    terms = layer_activation_terms(model, B, activation_bytes=a)
    # QKV input, Q/K/V, scores, attention output (the output projection's input).
    planned = a * s * B * h + terms.qkv + terms.core_attention + a * s * B * h
    # Not planned: the causal mask megatron-core builds (s*s bytes) and the RoPE cos/sin tables
    # (a few s x head_dim tensors), each well under 5% of the block.
    assert planned <= measured <= 1.05 * planned


def test_mlp_recompute_drops_what_the_planner_drops(bf16_layer, megatron_world):
    """--recompute-modules mlp: the layer (norms included, the same in both runs) saves
    exactly the planner's MLP intermediates less."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megastack.planning import layer_activation_bytes

    model, gpt = bf16_layer
    config = to_transformer_config(model, ParallelConfig(), bf16=True,
                                   use_cpu_initialization=True,
                                   recompute_granularity="selective", recompute_modules=["mlp"])
    recomputing = GPTModel(config, get_gpt_layer_local_spec(normalization=model.normalization),
                           vocab_size=model.vocab_size,
                           max_sequence_length=model.max_position_embeddings,
                           share_embeddings_and_output_weights=False,
                           position_embedding_type=model.position_embedding_type).bfloat16()
    rope = gpt.rotary_pos_emb(model.seq_length)
    hidden = _hidden(model)
    full, recomputed = (saved_bytes(g.decoder.layers[0], hidden, attention_mask=None,
                                    rotary_pos_emb=rope) for g in (gpt, recomputing))
    terms = layer_activation_terms(model, B, activation_bytes=2)
    planned_drop = (layer_activation_bytes(terms, 1, False, None)
                    - layer_activation_bytes(terms, 1, False, "selective", ("mlp",)))
    assert full - recomputed == planned_drop == terms.mlp_intermediates > 0
