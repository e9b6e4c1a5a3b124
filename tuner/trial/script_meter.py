"""Measuring a user's own script from inside its ranks: the engine `deepspeed.initialize` returns, instrumented.

The same place DeepSpeed's autotuner instruments (the engine), reached the way any script or library reaches
it (`deepspeed.initialize`, `from deepspeed import initialize`, Hugging Face Trainer and Accelerate): the
shim (tuner.trial.script_shim) replaces `deepspeed.initialize` before the script runs. Optimizer steps are
timed from one gradient-accumulation boundary to the next (`engine.step()` at a boundary, the device
synchronised): what the script's own step costs, its data loading included. The first `warmup_steps` (at
least one: the first step has no start) are not timed; then the worker's rules: `measure_steps`, more while
the median's 95% interval is wider than `max_cv`, early stopping, the slowest rank. After the measured steps
every rank writes its share of the result and exits, whatever the script's own step count. Always whole steps:
the script owns its loop and DeepSpeed's boundary, so a step cannot be composed from a few micro-steps here.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.trial.measure import clearly_slower, reduce_on_device, steady_state_done
from tuner.trial.spec import TrialSpec
from tuner.trial.worker import Ending, _cap_device_memory, _peak_rss_bytes, end_trial


def model_facts(module: Any) -> dict[str, int]:
    """What the FLOPs formula needs, from any torch module (a transformers model's config when it has one)."""
    import torch

    def numel(param: Any) -> int:
        return int(getattr(param, "ds_numel", param.numel()))  # full sizes, also under ZeRO-3

    total = sum(numel(p) for p in module.parameters())
    embedding = sum(numel(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    config = getattr(module, "config", None)
    tied = 0
    if hasattr(module, "get_output_embeddings") and hasattr(module, "get_input_embeddings"):
        output, inputs = module.get_output_embeddings(), module.get_input_embeddings()
        if output is not None and inputs is not None and output.weight is inputs.weight:
            tied = numel(output.weight)  # the logits are computed all the same
    return {
        "num_parameters": total,
        "embedding_parameters": embedding,
        "matmul_parameters": total - embedding + tied,
        "num_layers": int(getattr(config, "num_hidden_layers", 0) or 0),  # 0: the attention term is left out
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
    }


class ScriptMeter:
    """Wraps `deepspeed.initialize` and the engine it returns; ends the trial once the steps are measured."""

    def __init__(self, spec: TrialSpec, out_dir: Path, phase: list[str], clock: dict[str, float]) -> None:
        self.spec, self.out_dir, self.phase, self.clock = spec, out_dir, phase, clock
        self.marks: dict[str, float] = {"runtime": 0.0}
        self.engine: Any = None
        self.boundaries = 0
        self.last: float | None = None
        self.times: list[float] = []
        self.loss: Any = None
        self.device: Any = None
        self.on_gpu = False
        self.card = {"total": 0.0, "outside": 0.0}
        self.synchronize: Callable[[], None] = lambda: None

    def install(self, deepspeed: Any, runtime_bytes: float) -> None:
        """Replace `deepspeed.initialize` (before the script imports it) with the measuring one."""
        self.marks["runtime"] = runtime_bytes
        original = deepspeed.initialize

        @functools.wraps(original)
        def initialize(*args: Any, **kwargs: Any) -> Any:
            return self.initialize(original, *args, **kwargs)

        deepspeed.initialize = initialize

    def _peak(self) -> float:
        import torch

        return float(torch.cuda.max_memory_allocated(self.device) if self.on_gpu else _peak_rss_bytes())

    def initialize(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The script's `deepspeed.initialize`: the process group, the memory cap, checkpointing, the engine."""
        import deepspeed
        import torch
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self.phase[0] = "initialize"
        accel = get_accelerator()
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on_gpu = accel.device_name() == "cuda"
        if self.on_gpu:
            accel.set_device(local_rank)
        self.device = torch.device(accel.device_name(local_rank))
        self.synchronize = accel.synchronize
        reduce_on_device([0.0], "sum", self.device)  # NCCL's communicator exists from here: count it
        if self.on_gpu:
            self.card = _cap_device_memory(self.spec.device_memory_gb, self.device)
        model: Any = kwargs.get("model", args[1] if len(args) > 1 else None)
        wants = self.spec.activation_checkpointing and not getattr(model, "is_gradient_checkpointing", False)
        if wants and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.clock["distributed"] = self.clock["built"] = time.time()  # the script built its model itself
        self.marks["build"] = self._peak()
        result = original(*args, **kwargs)
        self.engine = result[0] if isinstance(result, tuple) else result
        self.marks["initialize"] = self._peak()
        self.clock["initialized"] = time.time()
        self._wrap(self.engine)
        self.phase[0] = "train"
        return result

    def _wrap(self, engine: Any) -> None:
        """Time `engine.step()` at accumulation boundaries; keep the last loss `engine.backward` saw."""
        step, backward = engine.step, engine.backward

        def measured_step(*args: Any, **kwargs: Any) -> Any:
            boundary = engine.is_gradient_accumulation_boundary()  # read before the step advances it
            out = step(*args, **kwargs)
            if boundary:
                self.boundary()
            return out

        def noted_backward(loss: Any, *args: Any, **kwargs: Any) -> Any:
            self.loss = loss.detach() if hasattr(loss, "detach") else loss  # read once, at the end
            return backward(loss, *args, **kwargs)

        engine.step, engine.backward = measured_step, noted_backward

    def boundary(self) -> None:
        """An optimizer step ended: time it from the previous one, and end the trial once measured."""
        self.synchronize()
        now = time.perf_counter()
        self.boundaries += 1
        warmup = max(1, self.spec.warmup_steps)
        previous, self.last = self.last, now
        if self.boundaries <= warmup:
            if self.boundaries == warmup:
                self.clock["warmed_up"] = time.time()
            return
        assert previous is not None
        self.times.append(reduce_on_device([now - previous], "max", self.device)[0])
        spec = self.spec
        stopped = clearly_slower(self.times, spec.stop_over_step_s)
        cap = max(spec.measure_steps, spec.max_measure_steps or spec.measure_steps)
        if stopped or steady_state_done(self.times, spec.measure_steps, cap, spec.max_cv):
            self.finish(stopped)

    def finish(self, stopped_early: bool) -> None:
        """Write the result and end every rank now, before the script's own remaining steps."""
        loss = float(self.loss) if self.loss is not None else float("nan")
        facts = model_facts(self.engine.module)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        timing = {"step_timing": "whole", "warmup_steps": max(1, self.spec.warmup_steps)}  # the script owns its loop
        end = Ending(
            self.out_dir, self.device, self.on_gpu, local_rank, self.card, self.marks, self.clock, facts, timing
        )
        end_trial(end, self.times, stopped_early, loss)
        # Nothing of the script runs after this (no finally: a checkpoint save would be the script's, not ours).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def steps_needed(self) -> int:
        return max(1, self.spec.warmup_steps) + self.spec.measure_steps
