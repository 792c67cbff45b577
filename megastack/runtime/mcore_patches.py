"""Fixes for megatron-core 0.16.1 bugs that megastack hits; each is applied only when needed.

Unlike `cpu_compat` (CUDA assumptions), these are plain bugs that show on GPUs too. Each patch
names the upstream function, the failure, and is covered by a test in tests/runtime/.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_applied: set[str] = set()


def _fix_distopt_step_on_reshardable_load() -> None:
    """Without Apex/TE, loading a 'fully_reshardable' distributed-optimizer checkpoint fails
    with KeyError: 'step': `load_state_dict` puts torch Adam's per-parameter 'step' into the
    state, then `_set_main_param_and_optimizer_states` copies every state key from the loaded
    tensors, which never hold 'step'. Keep the step `load_state_dict` already set."""
    from megatron.core.optimizer import distrib_optimizer as mod

    original = mod.DistributedOptimizer._set_main_param_and_optimizer_states

    def patched(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            state = self.optimizer.state[main_param]
            if "step" in state:
                tensors = {**tensors, "step": state["step"]}
        return original(self, model_param, tensors)

    mod.DistributedOptimizer._set_main_param_and_optimizer_states = patched


def _fix_distopt_shared_step_after_load() -> None:
    """Without Apex/TE, `DistributedOptimizer.load_state_dict` gives every parameter's torch
    Adam state the SAME 'step' tensor object; torch's Adam then increments that one tensor
    once per parameter per step, so bias correction is wrong after a resume. Give each
    parameter its own copy."""
    from megatron.core.optimizer import distrib_optimizer as mod

    original = mod.DistributedOptimizer.load_state_dict

    def patched(self, state_dict):
        result = original(self, state_dict)
        for state in self.optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.clone()
        return result

    mod.DistributedOptimizer.load_state_dict = patched


def apply() -> None:
    from megatron.core.optimizer import distrib_optimizer

    if not distrib_optimizer.HAVE_APEX_OR_TE and "distopt_step" not in _applied:
        _fix_distopt_step_on_reshardable_load()
        _fix_distopt_shared_step_after_load()
        _applied.add("distopt_step")
