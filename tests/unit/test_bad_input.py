"""Bad input, all of it in one table, through the real CLI in process.

Every case: exit code 2, exactly one line on stderr, `error: KEY: ...` naming the key (or flag, or file) and
saying what is allowed, and nothing written: no store, no run folder, no export. A space's mistakes are
tried with `tuner plan` and `tuner search` alike. No case needs Ray, PostgreSQL or a trial: `tuner search`
finds a stand-in Ray cluster of one node (ray.init does nothing), so what only Ray's placement finds is
tried too, and reaching the trials fails the test. tests/e2e/test_cli.py runs a handful through the
installed console script, one of them on a real Ray.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import TINY_GPT2, tokenizer_json
from tuner.cli import app

GOOD: dict[str, Any] = {
    "study": "bad-input",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 8, "precision": "fp32"},
    "hardware": {"gpus_per_trial": 2},
    "space": {"micro_batch_size": [1, 2], "zero_stage": [0, 3]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "timeout_s": 60},
}
DROP = object()  # as a value: remove the key
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/n"  # nothing listens on port 1: refused at once
STORE = ("--storage", "sqlite:///store.db")
EXPORT = ("export", "--study", "empty", *STORE, "--output", "o.json")
NODE = {"CPU": 1024.0, "memory": 2.0**40, "node:10.0.0.1": 1.0}  # the stand-in Ray cluster's one node


def edit(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the dotted `path` set to `value` (or removed, for DROP)."""
    raw = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is DROP:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, the space file (and files beside it), and the line it must print."""

    argv: tuple[str, ...]
    key: str  # the line starts `error: KEY: `
    says: str  # ... and holds this: what is wrong and what is allowed
    space: dict[str, Any] | bytes = field(default_factory=lambda: GOOD)  # a mapping is written as YAML
    files: dict[str, bytes] = field(default_factory=dict)
    name: str = ""
    store: bool = False  # a store.db beside it, holding an empty study `empty`

    @property
    def id(self) -> str:
        return f"{self.argv[0]}-{self.name or self.key}"


def both(path: str, value: Any, key: str, says: str, **kwargs: Any) -> list[Case]:
    """The space with one change, through `tuner plan` and `tuner search`."""
    name = f"{path}={'(none)' if value is DROP else repr(value)}"[:60]
    return [Case((cmd, "space.yaml"), key, says, edit(path, value), name=name, **kwargs) for cmd in ("plan", "search")]


SCRIPT: dict[str, Any] = {  # a space of the user's own script (train.py beside it), no model described
    **{k: v for k, v in GOOD.items() if k not in ("model", "data")},
    "workload": {"script": "train.py", "args": ["--config", "{ds_config}", "--micro", "{micro_batch_size}"]},
    "search": {"sampler": "grid", "objective": "samples_per_s"},
}


def script(path: str, value: Any, key: str, says: str) -> list[Case]:
    """A script space with one change, through `tuner plan` and `tuner search`."""
    raw = copy.deepcopy(SCRIPT)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    if value is DROP:
        node.pop(last, None)
    else:
        node[last] = value
    files = {"train.py": b"import deepspeed\n"} if raw["workload"].get("script") == "train.py" else {}
    name = f"script:{path}={'(none)' if value is DROP else repr(value)}"[:60]
    return [Case((cmd, "space.yaml"), key, says, raw, files=files, name=name) for cmd in ("plan", "search")]


def text(content: bytes, key: str, says: str, name: str) -> list[Case]:
    """A space file with these bytes, through `tuner plan` and `tuner search`."""
    return [Case((cmd, "space.yaml"), key, says, content, name=name) for cmd in ("plan", "search")]


def search(path: str, value: Any, key: str, says: str) -> Case:
    """A change only `tuner search` finds (plan shows invalid points with their reasons and opens no store)."""
    return Case(("search", "space.yaml"), key, says, edit(path, value), name=f"{path}={value!r}"[:60])


def flag(*argv: str, key: str, says: str, files: dict[str, bytes] | None = None, store: bool = False) -> Case:
    """A bad command-line value, with the good space (and `files`, and a store with an empty study) beside it."""
    return Case(tuple(argv), key, says, files=files or {}, name=" ".join(argv[1:])[:60], store=store)


def llama(**changes: Any) -> dict[str, Any]:
    """A tiny Llama config with `changes`."""
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}
    return {**base, "intermediate_size": 128, "vocab_size": 128, **changes}


def data(**fields: Any) -> dict[str, Any]:
    """The data section with `fields` (the base space's sequence_length: 64, so a global batch is 512 tokens)."""
    return {"sequence_length": 64, **fields}


def npy(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def parquet(table: Any) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


TOKENS = (np.arange(600) % 512).astype(np.uint16).tobytes()  # 1200 bytes: more than one global batch
TEXT = b'{"text": "the cat sat on the mat"}\n' * 100  # 700 tokens with an EOS after each document
TOKENIZER = tokenizer_json().encode()
NO_ROWS = parquet(pa.table({"input_ids": pa.array([], pa.list_(pa.int64()))}))
INT = "Input should be a valid integer"
POSITIVE = "Input should be greater than 0"
CASES: list[Case] = [
    # the file itself
    *text(b"model:\n  config: [unclosed\n", "space.yaml", "YAML syntax error at line 3, column 1", "yaml-syntax"),
    *text(b"", "(top level)", "must be a mapping of sections (model, data, training, space", "empty-file"),
    *text(b"- just\n- a list\n", "(top level)", "must be a mapping of sections", "a-list"),
    *text(b"just a string\n", "(top level)", "must be a mapping of sections", "a-scalar"),
    *text(b"study: a\x00b\n", "space.yaml", "YAML syntax error: unacceptable character #x0000", "nul-byte"),
    *text(
        b"study: caf\xe9\n", "space.yaml", "not UTF-8 text (byte 0xe9 at offset 10); save the file as UTF-8", "latin-1"
    ),
    # the user's own script (workload:)
    *script("workload.script", "missing.py", "workload.script", "no such file"),
    *script("workload.script", DROP, "workload.script", "required key is missing"),
    *script("workload.args", ["--micro", "{micro}"], "workload.args", "unknown placeholder {micro}"),
    *script("workload.args", ["--x", "{"], "workload.args", "write {{ and }} for literal braces"),
    *script("search.objective", "tokens_per_s", "search.objective", "tokens_per_s needs data.sequence_length"),
    *script("workload.env", {"A": [1]}, "workload.env.A", "valid string"),
    *script("data", {"source": "tokens.bin"}, "data.source", "applies to the built-in workload"),
    # unknown and missing keys
    *both("colour", "blue", "colour", "unknown key; allowed here: study, storage, workload, model, data, training"),
    *both("a:x:b", 1, "a:x:b", "unknown key"),  # printed as written: no emoji for `:x:`
    *both("space.foo", [1], "space.foo", "unknown key; allowed here: micro_batch_size, zero_stage, offload_optimizer"),
    *both("training.learning_rate", 0.1, "training.learning_rate", "unknown key; allowed here: global_batch_size"),
    *both("model", DROP, "model", "required key is missing (or run your own script: workload.script)"),
    *both("data", DROP, "data.sequence_length", "required key is missing"),
    *both("space", DROP, "space", "required key is missing"),
    *both("space.micro_batch_size", DROP, "space.micro_batch_size", "required key is missing"),
    *both("data", 5, "data", "Input should be a valid dictionary"),
    # sizes and counts
    *both("hardware.gpus_per_trial", "two", "hardware.gpus_per_trial", f"{INT}, unable to parse string"),
    *both("hardware.gpus_per_trial", 0, "hardware.gpus_per_trial", f"{POSITIVE} (got 0)"),
    *both("training.global_batch_size", -8, "training.global_batch_size", f"{POSITIVE} (got -8)"),
    *both("data.sequence_length", 0, "data.sequence_length", f"{POSITIVE} (got 0)"),
    *both("data.sequence_length", "long", "data.sequence_length", f"{INT}, unable to parse string"),
    *both("data.sequence_length", 1.5, "data.sequence_length", f"{INT}, got a number with a fractional part"),
    # the data (each file is written beside the space; paths are relative to it)
    *both("data.source", "hf", "data.source", "no such file or folder: "),
    *both("data.source", "", "data.source", "String should have at least 1 character"),
    *both(
        "data.source",
        "d.csv",
        "data.source",
        "unknown format 'd.csv'; allowed: a token file (.bin, .npy), a JSONL",
        files={"d.csv": b"1,2\n"},
    ),
    *both("data.source", "e.bin", "data.source", "e.bin is empty", files={"e.bin": b""}),
    *both("data.source", "e.jsonl", "data.source", "e.jsonl is empty", files={"e.jsonl": b""}),
    *both(
        "data.source",
        "t.bin",
        "data.source",
        "holds 1201 bytes, not a whole number of uint16 token ids (2 bytes",
        files={"t.bin": TOKENS + b"\0"},
    ),
    *both(
        "data",
        data(source="t.bin", dtype="uint32"),
        "data.source",
        "not a whole number of uint32 token ids",
        files={"t.bin": TOKENS + b"\0\0"},
    ),
    *both(
        "data.source",
        "t.bin",
        "data.source",
        "holds 100 tokens; one global batch needs 512 (global_batch_size 8 x sequence_length 64)",
        files={"t.bin": TOKENS[:200]},
    ),
    *both(
        "data.source",
        "t.bin",
        "data.source",
        "t.bin: holds token id 600, outside the model's vocabulary (model.config vocab_size 512: ids 0 to 511)",
        files={"t.bin": np.full(600, 600, np.uint16).tobytes()},
    ),
    *both(
        "data.source",
        "t.npy",
        "data.source",
        "holds float64, not integer token ids",
        files={"t.npy": npy(np.zeros(600))},
    ),
    *both("data.source", "t.npy", "data.source", "is not a .npy file (no NumPy header)", files={"t.npy": b"not numpy"}),
    *both(
        "data.source",
        "t.npy",
        "data.source",
        "cannot be read as a .npy file: Array can't be memory-mapped: Python objects",
        files={"t.npy": npy(np.array([1, "a"], dtype=object))},
    ),
    *both(
        "data.source",
        "d.jsonl",
        "data.source",
        "has neither input_ids nor text (it has: x, y); name one with",
        files={"d.jsonl": b'{"x": 1, "y": 2}\n'},
    ),
    *both("data.source", "d.jsonl", "data.source", "line 1 is not a JSON object", files={"d.jsonl": b"[1, 2]\n"}),
    *both(
        "data.source",
        "d.jsonl",
        "data.source",
        "d.jsonl line 2 is not JSON",
        files={"d.jsonl": b'{"input_ids": [1]}\n{oops\n'},
    ),
    *both("data.source", "d.jsonl", "data.source", "holds no records, only blank lines", files={"d.jsonl": b"\n\n"}),
    *both(
        "data.source",
        "d.jsonl",
        "data.source",
        "holds 6 tokens (its documents, each followed by an EOS); one global batch needs 512",
        files={"d.jsonl": b'{"input_ids": [1, 2]}\n' * 2},
    ),
    *both(
        "data",
        data(source="d.jsonl", packing=False),
        "data.source",
        "holds 1 document(s) of 2 tokens or more; one global batch needs 8 with data.packing false",
        files={"d.jsonl": b'{"input_ids": [1, 2, 3]}\n{"input_ids": [4]}\n'},
    ),
    *both("data.source", "d.parquet", "data.source", "cannot be read as Parquet", files={"d.parquet": b"no"}),
    *both("data.source", "d.parquet", "data.source", "d.parquet has no rows", files={"d.parquet": NO_ROWS}),
    *both(
        "data.source",
        "ds",
        "data.source",
        "is a folder but not one datasets' save_to_disk wrote",
        files={"ds/notes.txt": b"hi"},
    ),
    *both(
        "data",
        data(source="d.jsonl", field="body"),
        "data.field",
        "has no 'body' (it has: text)",
        files={"d.jsonl": TEXT},
    ),
    *both(
        "data",
        data(source="d.jsonl", field="n"),
        "data.field",
        "'n' holds neither text nor a list of token ids",
        files={"d.jsonl": b'{"n": 5}\n'},
    ),
    *both("data.source", "d.jsonl", "data.tokenizer", "required: 'text' in", files={"d.jsonl": TEXT}),
    *both(
        "data",
        data(source="d.jsonl", tokenizer="nope"),
        "data.tokenizer",
        "no such file or folder: ",
        files={"d.jsonl": TEXT},
    ),
    *both(
        "data",
        data(source="d.jsonl", tokenizer="tokenizer.json"),
        "data.tokenizer",
        "transformers cannot load a tokenizer from",
        files={"d.jsonl": TEXT, "tokenizer.json": b"{not json"},
    ),
    *both(
        "data",
        data(source="d.jsonl", tokenizer="tok"),
        "data.tokenizer",
        "holds neither tokenizer_config.json nor tokenizer.json",
        files={"d.jsonl": TEXT, "tok/vocab.txt": b"a"},
    ),
    *both(
        "data",
        data(source="d.jsonl", tokenizer="tokenizer.json"),
        "data.tokenizer",
        "d.jsonl: the tokenizer encodes token id 600, outside the model's vocabulary",
        files={"d.jsonl": TEXT, "tokenizer.json": tokenizer_json(["cat"], 600).encode()},
    ),
    *both(
        "data",
        data(source="t.bin", packing=False),
        "data.packing",
        "false (one sample per document) needs documents: data.source holds one stream of token ids",
        files={"t.bin": TOKENS},
    ),
    *both(
        "data",
        data(tokenizer="tokenizer.json"),
        "data.tokenizer",
        "applies to JSONL, Parquet or datasets sources only: data.source holds random token ids",
    ),
    *both("data", data(source="t.bin", field="ids"), "data.field", "data.source holds token ids already"),
    *both("data", data(source="d.jsonl", dtype="uint32"), "data.dtype", "applies to .bin token files only"),
    *both("data.dtype", "int8", "data.dtype", "Input should be 'uint16' or 'uint32'"),
    *both("training.precision", "fp8", "training.precision", "Input should be 'bf16', 'fp16' or 'fp32' (got 'fp8')"),
    # the space's lists
    *both("space.micro_batch_size", [], "space.micro_batch_size", "must list at least one value"),
    *both("space.micro_batch_size", [2, 2], "space.micro_batch_size", "value 2 is listed twice"),
    *both("space.micro_batch_size", [2, 2.0], "space.micro_batch_size", "value 2 is listed twice"),
    *both("space.micro_batch_size", [0], "space.micro_batch_size.0", f"{POSITIVE} (got 0)"),
    *both("space.micro_batch_size", -1, "space.micro_batch_size.0", f"{POSITIVE} (got -1)"),
    *both("space.micro_batch_size", True, "space.micro_batch_size", "must be integers, not true/false"),
    *both("space.zero_stage", [4], "space.zero_stage.0", "Input should be 0, 1, 2 or 3 (got 4)"),
    *both("space.zero_stage", ["1"], "space.zero_stage.0", "Input should be 0, 1, 2 or 3 (got '1')"),
    *both("space.zero_stage", [1, 1], "space.zero_stage", "value 1 is listed twice"),
    *both("space.zero_stage", [1, True], "space.zero_stage", "must be integers, not true/false"),
    *both("space.offload_optimizer", ["nvme"], "space.offload_optimizer.0", "Input should be 'none' or 'cpu'"),
    *both("space.offload_param", [False], "space.offload_param.0", "Input should be 'none' or 'cpu' (got False)"),
    *both("space.activation_checkpointing", ["yes"], "space.activation_checkpointing", "must be true or false"),
    *both("space.activation_checkpointing", [1], "space.activation_checkpointing", "must be true or false"),
    *both("space.activation_checkpointing", None, "space.activation_checkpointing", "must be true or false"),
    *both("space.activation_checkpointing", [], "space.activation_checkpointing", "must list at least one value"),
    search(
        "training.global_batch_size",
        7,
        "space",
        "no valid point: micro_batch_size 1 x 2 ranks does not divide global_batch_size 7",
    ),
    search(
        "space",
        {"micro_batch_size": [2], "zero_stage": [1, 2], "offload_param": ["cpu"]},
        "space",
        "no valid point: offload_param needs zero_stage 3",
    ),
    # the model
    *both("model.config", "no/such/folder", "model.config", "no such file: no/such/folder"),
    *both("model.config", 5, "model.config", "must be a path or a mapping (got 5)"),
    *both("model.config", {"n_layer": 1}, "model.config.model_type", "required: a transformers architecture"),
    *both("model.config", {"model_type": "nope"}, "model.config.model_type", "unknown architecture 'nope'; e.g. gpt2"),
    *both("model.config", "list.json", "model.config", "list.json must hold a mapping", files={"list.json": b"[1]"}),
    *both("model.config", "m.json", "model.config", "m.json: not UTF-8 text", files={"m.json": b'{"a": "\xe9"}'}),
    *both("model.config", llama(num_attention_heads=5), "model.config", "The hidden size (64) is not a multiple of"),
    *both("model.config", llama(hidden_size="big"), "model.config.hidden_size", "expected int, got str"),
    *both("model.config", llama(tie_word_embeddings="maybe"), "model.config.tie_word_embeddings", "expected bool"),
    *both("model.config", llama(num_key_value_heads=3), "model.config.num_key_value_heads", "must divide num_att"),
    *both("model.config", llama(num_hidden_layers=0), "model.config.num_hidden_layers", "must be a positive integer"),
    *both("model.config", llama(vocab_size=-1), "model.config.vocab_size", "must be a positive integer (got -1)"),
    *both("model.config", llama(hidden_act="nope"), "model.config.hidden_act", "transformers rejects it: no such name"),
    *both("model.config", llama(rope_scaling={"rope_type": "x"}), "model.config.rope_scaling.rope_type", "no such"),
    *both("model.config", {**TINY_GPT2, "n_head": 5}, "model.config", "`embed_dim` must be divisible by num_heads"),
    *both("model.config", {**TINY_GPT2, "n_head": 0}, "model.config.n_head", "must be a positive integer (got 0)"),
    *both("model.config", {"model_type": "t5"}, "model.config.model_type", "'t5' is not a causal language model"),
    *both("data.sequence_length", 256, "data.sequence_length", "must be at most model.config.n_positions (128)"),
    # the model's options: LoRA adapters (peft), the attention implementation
    *both("model.peft", {"method": "ia3"}, "model.peft.method", "Input should be 'lora' (got 'ia3')"),
    *both("model.peft", {"r": 0}, "model.peft.r", f"{POSITIVE} (got 0)"),
    *both("model.peft", {"r": -4}, "model.peft.r", f"{POSITIVE} (got -4)"),
    *both("model.peft", {"alpha": 0}, "model.peft.alpha", f"{POSITIVE} (got 0)"),
    *both("model.peft", {"dropout": 1.0}, "model.peft.dropout", "Input should be less than 1 (got 1.0)"),
    *both("model.peft", {"rank": 8}, "model.peft.rank", "unknown key; allowed here: method, r, alpha, dropout, target"),
    *both("model.peft", "lora", "model.peft", "Input should be a valid dictionary or instance of PeftSection"),
    *both("model.peft", {"target_modules": []}, "model.peft.target_modules", "must list at least one module name"),
    *both(
        "model.peft",
        {"target_modules": ["q_proj", "v_proj"]},
        "model.peft.target_modules",
        "['q_proj', 'v_proj'] matches no module; its linear layers: c_attn, c_fc, c_proj, lm_head",
    ),
    *both(
        "model.peft",
        {"target_modules": ["c_attn", "q_proj"]},
        "model.peft.target_modules",
        "'q_proj' matches no module; its linear layers: c_attn, c_fc, c_proj, lm_head",
    ),
    *both(
        "model.peft",
        {"target_modules": ["ln_1"]},
        "model.peft.target_modules",
        "['ln_1'] names a LayerNorm, which peft cannot adapt (it adapts linear, embedding and convolution layers)",
    ),
    *both("model.attn_implementation", "flash", "model.attn_implementation", "Input should be 'sdpa', 'eager' or 'fl"),
    *(
        []
        if importlib.util.find_spec("flash_attn")
        else both(
            "model.attn_implementation",
            "flash_attention_2",
            "model.attn_implementation",
            "flash_attention_2 needs the flash_attn package, which is not installed; use sdpa or eager",
        )
    ),
    # the search
    *both("search.sampler", "bayes", "search.sampler", "Input should be 'grid', 'random', 'tpe' or 'guided'"),
    *both("search.objective", "speed", "search.objective", "Input should be 'tokens_per_s', 'samples_per_s'"),
    *both("search.objective", [], "search.objective", "must name at least one objective"),
    *both("search.objective", ["tokens_per_s"] * 2, "search.objective", "objective 'tokens_per_s' is listed twice"),
    *both(
        "search",
        {"sampler": "guided", "objective": ["tokens_per_s", "peak_mem_gb"]},
        "search.objective",
        "the guided sampler needs one speed objective",
    ),
    *both(
        "search",
        {"objective": ["tokens_per_s", "peak_mem_gb"], "early_stop": True},
        "search.early_stop",
        "needs one speed objective",
    ),
    *both("search.early_stop_margin", 0, "search.early_stop_margin", f"{POSITIVE} (got 0)"),
    *both("search.max_trials", 0, "search.max_trials", f"{POSITIVE} (got 0)"),
    *both("search.prune_margin", 2, "search.prune_margin", "Input should be less than or equal to 1 (got 2)"),
    *both("search.prune_margin", -0.1, "search.prune_margin", "Input should be greater than or equal to 0"),
    *both("search.prune", "sometimes", "search.prune", "Input should be a valid boolean"),
    # the trial
    *both("trial.timeout_s", 0, "trial.timeout_s", f"{POSITIVE} (got 0)"),
    *both("trial.measure_steps", -1, "trial.measure_steps", f"{POSITIVE} (got -1)"),
    *both("trial.warmup_steps", -1, "trial.warmup_steps", "Input should be greater than or equal to 0 (got -1)"),
    *both("trial.max_measure_steps", 1, "trial.max_measure_steps", "must be at least measure_steps (2)"),
    *both("trial.max_cv", 0, "trial.max_cv", f"{POSITIVE} (got 0)"),
    *both("trial.step_timing", "micro", "trial.step_timing", "Input should be 'auto', 'whole' or 'composed'"),
    # the hardware
    *both("hardware.device_memory_gb", -1, "hardware.device_memory_gb", f"{POSITIVE} (got -1)"),
    *both("hardware.host_memory_gb", -1, "hardware.host_memory_gb", f"{POSITIVE} (got -1)"),
    *both("hardware.peak_tflops", -1, "hardware.peak_tflops", f"{POSITIVE} (got -1)"),
    *both("hardware.cpus_per_rank", 0, "hardware.cpus_per_rank", f"{POSITIVE} (got 0)"),
    *both("hardware.accelerator", "tpu", "hardware.accelerator", "Input should be 'auto', 'cuda' or 'cpu'"),
    *both("hardware.nodes_per_trial", 3, "hardware.nodes_per_trial", "must divide gpus_per_trial (2)"),
    *both("hardware.ray_resources", {"GPU": 1}, "hardware.ray_resources", "'GPU' is Ray's own (gpus_per_trial and"),
    *both("hardware.price_per_device_hour", -1, "hardware.price_per_device_hour", f"{POSITIVE} (got -1)"),
    *both("hardware.price_per_node_hour", 0, "hardware.price_per_node_hour", f"{POSITIVE} (got 0)"),
    *both(
        "search.objective",
        "usd_per_million_tokens",
        "hardware.price_per_device_hour",
        "required for search.objective usd_per_million_tokens: the USD price of one device-hour",
    ),
    *script("search.objective", "usd_per_million_tokens", "search.objective", "usd_per_million_tokens needs data.seq"),
    *[
        flag(*EXPORT, "--tokens", tokens, key="--tokens", says="must be a positive number of tokens", store=True)
        for tokens in ("0", "-2e12", "inf")
    ],
    flag("results", "--compare", "empty", "nosuch", *STORE, key="--compare", says="no study named 'nos", store=True),
    flag("results", "--compare", "empty", *STORE, key="--compare", says="name at least two studies", store=True),
    flag("results", "--compare", "empty", "empty", *STORE, key="--compare", says="'empty' is named twice", store=True),
    flag("results", *STORE, key="--study", says="required: the study to list", store=True),
    *both("hardware.ray_resources", {"object_store_memory": 1}, "hardware.ray_resources", "only custom resource"),
    search("hardware.ray_resources", {"h100": 1}, "hardware.ray_resources", "no node has h100=1 (ray start --res"),
    search("hardware.nodes_per_trial", 2, "hardware.nodes_per_trial", "a trial needs 2 nodes with CPU=1 each;"),
    # the DeepSpeed base config
    *both("training.base_config", "nope.json", "training.base_config", "no such file: nope.json"),
    *both("training.base_config", 5, "training.base_config", "must be a path or a mapping (got 5)"),
    *both("training.base_config", "ds.json", "training.base_config", "ds.json: not UTF-8", files={"ds.json": b"\xff"}),
    *both(
        "training.base_config",
        {"zero_optimization": {"reduce_bucket_size": -1}},
        "training.base_config.zero_optimization.reduce_bucket_size",
        "DeepSpeed rejects it: Input should be greater than 0 (got -1)",
    ),
    *both(
        "training.base_config",
        {"zero_optimization": {"overlap_com": True}},
        "training.base_config.zero_optimization.overlap_com",
        "DeepSpeed rejects it: Extra inputs are not permitted",
    ),
    *both(
        "training.base_config",
        {"communication_data_type": "fp7"},
        "training.base_config.communication_data_type",
        "Supported data types: ['fp16', 'bf16', 'fp32']. Got: fp7",
    ),
    *both("training.base_config", {"optimizer": "adam"}, "training.base_config.optimizer", 'a mapping with a "type"'),
    *both(
        "training.base_config",
        {"optimizer": {"type": "Adamm"}},
        "training.base_config.optimizer.type",
        "unknown optimizer 'Adamm': adagrad, adam, adamw, lamb, lion",
    ),
    *both(
        "training.base_config",
        {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}},
        "training.base_config.optimizer.type",
        "DeepSpeed refuses torch.optim.SGD with ZeRO (space.zero_stage 3) unless",
    ),
    *both(
        "training.base_config",
        {"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1.0}}},
        "training.base_config.optimizer.params.max_grad_norm",
        "not allowed by DeepSpeed: use gradient_clipping",
    ),
    *both(
        "training.base_config",
        {"scheduler": {"type": "Cosine"}},
        "training.base_config.scheduler.type",
        "unknown scheduler 'Cosine': LRRangeTest, OneCycle, WarmupLR",
    ),
    # the store and the study
    *both("storage", "mongodb://127.0.0.1/x", "storage", "an SQLAlchemy URL such as sqlite:///tuner.sqlite3"),
    *both("storage", "tuner.sqlite3", "storage", "an SQLAlchemy URL such as sqlite:///tuner.sqlite3 is allowed"),
    search("storage", UNREACHABLE, "storage", "cannot open storage postgresql://nobody@127.0.0.1:1/n"),
    *both("study", "../escape", "study", "must be at most 128 characters, without '/'"),
    *both("study", "   ", "study", "must not be empty"),
    # the command line
    flag("search", "missing.yaml", key="missing.yaml", says="no such space file"),
    flag("plan", "missing.yaml", key="missing.yaml", says="no such space file"),
    flag("search", "space.yaml", "--study", "a/b", key="--study", says="must be at most 128 characters"),
    flag("search", "space.yaml", "--study", "  ", key="--study", says="must not be empty"),
    flag("search", "space.yaml", "--storage", "sqlite3:/x", key="--storage", says="an SQLAlchemy URL such as"),
    flag("search", "space.yaml", "--storage", "tuner.sqlite3", key="--storage", says="an SQLAlchemy URL such as"),
    flag("search", "space.yaml", "--address", "127.0.0.1:1", key="--address", says="no Ray cluster answers at"),
    flag("search", "space.yaml", "--address", "localhost:abc", key="--address", says="auto, HOST:PORT or ray://"),
    flag(
        "search",
        "space.yaml",
        "--run-dir",
        "log",
        key="--run-dir",
        says="log is a file; the trials' logs need",
        files={"log": b""},
    ),
    flag("plan", "space.yaml", "--accelerator", "tpu", key="--accelerator", says="cuda or cpu is allowed"),
    flag("plan", "space.yaml", "--device", "b200", key="--device", says="allowed: a100-40gb, a100-80gb, h100-80gb"),
    flag("plan", "space.yaml", "--ranks", "0", key="--ranks", says="must be a positive whole number of ranks"),
    flag("plan", "space.yaml", "--ranks", "two", key="--ranks", says="must be a positive whole number of ranks"),
    flag("plan", "space.yaml", "--ranks", "17", key="--ranks", says="17 ranks do not split evenly over 3 nodes"),
    flag("plan", "space.yaml", "--device", "h200", "--accelerator", "cpu", key="--accelerator", says="is a GPU"),
    flag("results", "--study", "x", "--storage", "nosuch://x", key="--storage", says="cannot open storage nosuch"),
    flag("export", "--study", "x", "--output", "o.json", "--storage", UNREACHABLE, key="--storage", says="cannot open"),
    flag("export", "--study", "x", *STORE, "--output", "o.json", key="--study", says="no study named 'x'", store=True),
    flag("export", "--study", "empty", *STORE, "--output", "o.json", key="--study", says="no COMPLETE", store=True),
    flag(
        "export",
        "--study",
        "empty",
        *STORE,
        "--output",
        "o.json",
        "--format",
        "xml",
        key="--format",
        says="deepspeed, hf",
        store=True,
    ),
    flag(
        "results",
        "--study",
        "empty",
        *STORE,
        "--format",
        "xml",
        key="--format",
        says="table, csv, json, parquet",
        store=True,
    ),
    flag("results", "--study", "empty", *STORE, "--format", "parquet", key="--output", says="name a file", store=True),
    flag(
        "report",
        "--study",
        "empty",
        *STORE,
        "--output",
        "r.html",
        key="--study",
        says="no trials to report",
        store=True,
    ),
    flag("dashboard", "--port", "99999", key="--port", says="must be between 1 and 65535"),
    flag("results", "--study", "x", key="--storage", says="no SQLite store at tuner.sqlite3: tuner search writes it"),
    flag("report", "--study", "x", "--output", "r.html", key="--storage", says="no SQLite store at tuner.sqlite3"),
    flag("export", "--study", "x", "--output", "o.json", key="--storage", says="no SQLite store at tuner.sqlite3"),
    flag("plan", "space.yaml", "--study", "x", key="--storage", says="no SQLite store at tuner.sqlite3"),
    flag("results", "--study", "x", "--storage", "sqlite://", key="--storage", says="an in-memory SQLite store"),
    flag("search", "space.yaml", "--storage", "sqlite:///:memory:", key="--storage", says="is gone when tuner exits"),
]


def _check_files(config: dict[str, Any] | None = None, **prov: Any) -> dict[str, bytes]:
    """An export of GOOD's point mb2 z0 for `tuner check`: c.json and its provenance (with `prov` changed)."""
    from tuner.dsconfig import build_ds_config
    from tuner.points import Point
    from tuner.space import parse_space

    point = Point(2, 0)
    built = build_ds_config({}, point, global_batch=8, ranks=2, precision="fp32", accelerator="cpu")
    record = {
        "study": "bad-input", "storage": "sqlite:///store.db", "trial": 0, "point": point.params(),
        "figures": {"tokens_per_s": 100.0, "peak_mem_gb": 1.0}, "measured_ranks": 2, "world_size": 2,
        "space": parse_space(copy.deepcopy(GOOD), "bad-input").model_dump(mode="json"), **prov,
    }  # fmt: skip
    return {"c.json": json.dumps(config or built).encode(), "c.provenance.json": json.dumps(record).encode()}


CHECK = _check_files()
CASES += [
    flag("check", "c.json", key="DS_CONFIG", says="no such file: c.json"),
    flag("check", "c.json", key="--provenance", says="no provenance file", files={"c.json": CHECK["c.json"]}),
    flag("check", "c.json", key="--provenance", says="'figures' is missing", files=_check_files(figures=None)),
    flag("check", "c.json", key="--provenance", says="no peak_mem_gb", files=_check_files(figures={"tokens_per_s": 1})),
    flag("check", "c.json", "--max-slowdown", "2", key="--max-slowdown", says="from 0 to below 1", files=CHECK),
    flag("check", "c.json", "--max-memory-growth", "-1", key="--max-memory-growth", says="at least 0", files=CHECK),
    flag("check", "c.json", "--device-memory-gb", "0", key="--device-memory-gb", says="more than 0", files=CHECK),
    flag("check", "c.json", "--format", "yaml", key="--format", says="text, json", files=CHECK),
    flag(
        "check",
        "c.json",
        key="train_micro_batch_size_per_gpu",
        says="the committed config has 1",
        files=_check_files({**json.loads(CHECK["c.json"]), "train_micro_batch_size_per_gpu": 1}),
    ),
    flag("check", "c.json", "--record", key="--provenance", says="no study named 'bad-input'", files=CHECK, store=True),
    flag(
        "check",
        "c.json",
        "--record",
        key="--storage",
        says="password masked",
        files=_check_files(storage="postgresql://u:***@db/t"),
    ),
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)

    def not_for_bad_input(*_: Any, **__: Any) -> None:
        raise AssertionError("bad input reached the trials")

    monkeypatch.setattr("ray.init", lambda **_: None)
    monkeypatch.setattr("ray.nodes", lambda: [{"Alive": True, "Resources": NODE}])
    monkeypatch.setattr("ray.cluster_resources", lambda: NODE)
    monkeypatch.setattr("tuner.search.prebuild_everywhere", not_for_bad_input)  # a case that slips through
    monkeypatch.setattr("tuner.check_cmd.run_check", not_for_bad_input)
    return CliRunner()


def assert_rejected(result: Any, key: str, says: str, tmp_path: Path, written: list[str]) -> None:
    """Exit 2, one line `error: KEY: ...` holding `says`, and nothing in the folder but what the test wrote."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {key}: "), lines[0]
    assert says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written), "bad input must write nothing"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_exit_2_with_one_line_naming_the_key_and_nothing_written(
    case: Case, runner: CliRunner, tmp_path: Path
) -> None:
    space = case.space if isinstance(case.space, bytes) else yaml.safe_dump(case.space).encode()
    (tmp_path / "space.yaml").write_bytes(space)
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    if case.store:
        optuna.create_study(study_name="empty", storage="sqlite:///store.db")
    result = runner.invoke(app, list(case.argv))
    written = {name.split("/")[0] for name in case.files}
    assert_rejected(result, case.key, case.says, tmp_path, ["space.yaml", *written, *(["store.db"] * case.store)])


def test_the_good_space_is_accepted_by_plan(runner: CliRunner, tmp_path: Path) -> None:
    """The table's base space is valid, so each case above fails for its own key alone."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(GOOD))
    result = runner.invoke(app, ["plan", "space.yaml", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["to_run"] == 4
