"""``python -m openanomaly.pretrain``: pretrain a Chronos-Bolt model on synthetic series."""

from __future__ import annotations

import argparse

from openanomaly.pretrain.model import BOLT_SIZES
from openanomaly.pretrain.train import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    """Parse the options, train (or resume) and print the checkpoint directory."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m openanomaly.pretrain", description=__doc__)
    parser.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    parser.add_argument("--size", default=defaults.size, choices=sorted(BOLT_SIZES))
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help="total steps; a run resumed with more trains longer (the decay is stretched)",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--context-length", type=int, default=defaults.context_length)
    parser.add_argument("--prediction-length", type=int, default=defaults.prediction_length)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    args = parser.parse_args(argv)
    config = TrainConfig(
        size=args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        context_length=args.context_length,
        prediction_length=args.prediction_length,
        seed=args.seed,
    )
    print(train(config, args.out, device=args.device, max_minutes=args.max_minutes, threads=args.threads))


if __name__ == "__main__":
    main()
