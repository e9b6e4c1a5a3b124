"""Train with Hugging Face Trainer on a `tuner export --format hf` export, with the arguments it printed.

    deepspeed --num_gpus 8 examples/train_hf.py --training-args ds_config.training_args.json \
        --model-config ds_config.provenance.json --sequence-length 128 --steps 5

The TrainingArguments come from the export's .training_args.json (the same values `tuner export` prints),
so Trainer's consistency check against the DeepSpeed config passes. The model is built from the
transformers config with random weights and trained on random tokens: no download. When the trials trained
LoRA adapters, the provenance's `lora_config` holds peft's LoraConfig arguments and the model is wrapped with
them before Trainer sees it (as `tuner export` prints); its `attn_implementation`, when set, builds the model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from tuner.workload import hf_causal_lm


class RandomTokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Random token sequences, labels equal to the inputs (causal LM)."""

    def __init__(self, vocab: int, length: int, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-args", type=Path, required=True, help="the export's .training_args.json")
    parser.add_argument("--model-config", type=Path, required=True, help="the export's provenance file")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = parser.parse_args()

    exported = json.loads(args.training_args.read_text())
    model_json = json.loads(args.model_config.read_text())
    attention = model_json.get("attn_implementation")
    model = hf_causal_lm.build_model(
        model_json.get("model_config", model_json), seed=0, options={"attn_implementation": attention}
    )
    if model_json.get("lora_config"):  # the trials trained LoRA adapters on a frozen base: wrap it the same way
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**model_json["lora_config"]))
        trainable, total = model.get_nb_trainable_parameters()
        print(f"LoRA: {trainable} of {total} parameters train", flush=True)
    with tempfile.TemporaryDirectory() as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir, max_steps=args.steps, logging_steps=1, report_to=[], save_strategy="no",
            dataloader_num_workers=0, **exported,
        )  # fmt: skip
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        dataset = RandomTokens(hf_causal_lm.vocab_size(model), args.sequence_length, per_step * args.steps * 8)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset)
        result = trainer.train()
    if training_args.process_index == 0:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"trained {result.global_step} steps with Trainer; losses {losses}", flush=True)


if __name__ == "__main__":
    main()
