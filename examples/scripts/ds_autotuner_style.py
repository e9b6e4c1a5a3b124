"""A DeepSpeed-autotuner-style script (as in DeepSpeedExamples): `--deepspeed --deepspeed_config`, and the
micro-batch taken from the engine (DeepSpeed builds the data loader from the config's batch size).

    deepspeed --num_gpus 1 examples/scripts/ds_autotuner_style.py --deepspeed --deepspeed_config ds_config.json

`tuner search search_spaces/script-dsautotuner-cpu.yaml` runs it unchanged.
"""

from __future__ import annotations

import argparse

import deepspeed
import torch


class Classifier(torch.nn.Module):
    """An MLP classifier over 256 features into 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024), torch.nn.GELU(),
            torch.nn.Linear(1024, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--epochs", type=int, default=50)
    parser = deepspeed.add_config_arguments(parser)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(8192, 256, generator=generator), torch.randint(0, 10, (8192,), generator=generator)
    dataset = torch.utils.data.TensorDataset(features, labels)
    net = Classifier()
    engine, _, loader, _ = deepspeed.initialize(
        args=args, model=net, model_parameters=[p for p in net.parameters() if p.requires_grad], training_data=dataset
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        for x, y in loader:
            loss = loss_fn(engine(x.to(engine.device)), y.to(engine.device))
            engine.backward(loss)
            engine.step()
        if engine.global_rank == 0:
            print(f"epoch {epoch} loss {loss.item():.4f} (micro-batch {engine.train_micro_batch_size_per_gpu()})")


if __name__ == "__main__":
    main()
