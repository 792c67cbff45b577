"""Layout validation errors name the flag; plans warn when a phase does not fit."""

import pytest

from megastack.config import ModelConfig, ParallelConfig
from megastack.planning import PhaseLayout, plan_growth, plan_phase, validate_layout

TINY8 = ModelConfig.from_name("tiny-8l")


def layout(model=TINY8, world=8, gbs=8, mbs=1, **parallel):
    return PhaseLayout(model, ParallelConfig(**parallel), world_size=world, micro_batch_size=mbs,
                       global_batch_size=gbs)


@pytest.mark.parametrize("bad,flag", [
    (layout(world=6, tensor_model_parallel_size=2, pipeline_model_parallel_size=2), "world size 6"),
    (layout(pipeline_model_parallel_size=3, world=6, gbs=2), "--num-layers 8"),
    (layout(pipeline_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=3),
     "--num-layers-per-virtual-pipeline-stage 3"),
    (layout(gbs=12), "--global-batch-size 12"),
    (layout(gbs=4), "--global-batch-size 4"),
    (layout(pipeline_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=2, world=2, gbs=3),
     "multiple of\n?.*--pipeline-model-parallel-size 2"),
    (layout(model=TINY8.replace(vocab_size=513), tensor_model_parallel_size=2), "--vocab-size 513"),
    (layout(model=TINY8.replace(seq_length=63), tensor_model_parallel_size=2, sequence_parallel=True),
     "--seq-length 63"),
    (layout(tensor_model_parallel_size=8), "--num-attention-heads 4"),
    (layout(mbs=0), "--micro-batch-size"),
])
def test_invalid_layouts_name_the_flag(bad, flag):
    with pytest.raises(ValueError, match=flag):
        validate_layout(bad)


def test_valid_tiny_layout_derives_sizes():
    lay = layout(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                 num_layers_per_virtual_pipeline_stage=2, gbs=8)
    validate_layout(lay)
    assert (lay.data_parallel_size, lay.num_microbatches, lay.layers_per_stage, lay.layers_per_chunk,
            lay.virtual_pipeline_size) == (2, 4, 4, 2, 2)


def test_plan_errors_name_the_phase():
    with pytest.raises(ValueError, match="phase 'large'.*--global-batch-size"):
        plan_growth(layout(model=ModelConfig.from_name("tiny-2l")), layout(gbs=12))


def test_growth_must_deepen():
    with pytest.raises(ValueError, match="deeper"):
        plan_growth(layout(), layout(model=ModelConfig.from_name("tiny-2l")))


def test_oversized_phase_warns_with_remedies():
    model = ModelConfig.from_name("llama2-7b")
    plan = plan_phase("large", PhaseLayout(model, ParallelConfig(), world_size=8, global_batch_size=8, bf16=True))
    assert not plan.fits
    (warning,) = plan.warnings
    assert "phase 'large' will not fit" in warning
    assert "--use-distributed-optimizer" in warning and "--recompute-granularity full --recompute-method uniform" in warning


def test_fitting_phase_has_no_warning():
    plan = plan_phase("small", layout(tensor_model_parallel_size=2, pipeline_model_parallel_size=2))
    assert plan.fits and plan.warnings == []
