"""Pretrain a Chronos-Bolt model on synthetic series (:mod:`openanomaly.pretrain.synth`).

One process, CPU or CUDA. Everything a run needs to continue lives in its output
directory, so an interrupted run resumes where its last checkpoint left off and ends
with the same weights (batches are keyed by ``(seed, step)``, not by a stream):

* ``train_state.pt``: model, optimiser and schedule state plus the step, written
  atomically every ``checkpoint_every`` steps;
* ``loss.csv``: step, mean training loss since the previous line, loss on fixed
  held-out synthetic batches, learning rate, seconds elapsed;
* ``model/``: the finished checkpoint (``config.json`` + ``model.safetensors``), loadable
  with ``BaseChronosPipeline.from_pretrained`` or as the spec ``chronos:<out>/model``.

Example:
    uv run python -m openanomaly.pretrain --out /tmp/bolt-mini --size mini
"""

from __future__ import annotations

import csv
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from openanomaly.pretrain.model import BOLT_SIZES, build_bolt
from openanomaly.pretrain.synth import make_batch

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "evaluate", "train"]

_HELD_OUT = 1 << 40  # batch indices from here on are never trained on
_TARGET_BOUND = 30.0  # target clipped to context mean ± this many context std


class TrainConfig(BaseModel):
    """What decides the weights; a resumed run must be given the same values, except
    that ``steps`` may grow: training longer stretches the cosine decay over the new
    total (the learning rate rises again from where the shorter run left it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str = Field("mini", description=f"layer sizes: {', '.join(BOLT_SIZES)}")
    context_length: int = Field(512, gt=0)
    prediction_length: int = Field(64, gt=0)
    steps: int = Field(2600, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(150, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, ge=0)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    device: str = "cpu",
    checkpoint_every: int = 100,
    log_every: int = 50,
    held_out_batches: int = 4,
    max_minutes: float | None = None,
    threads: int = 1,
    progress: bool = True,
) -> Path:
    """Train (or resume) into ``out``; return the finished checkpoint directory ``out/model``.

    Args:
        config: the run's settings; must match the saved ones when resuming.
        out: the run's directory (created).
        device: ``cpu`` or ``cuda[:i]``; bf16 autocast on CUDA.
        checkpoint_every: steps between resumable checkpoints.
        log_every: steps between ``loss.csv`` lines (each also evaluates held-out loss).
        held_out_batches: fixed synthetic batches for the held-out loss.
        max_minutes: stop early (checkpoint and final model written) after this much
            wall time in this process; None: run all ``config.steps``.
        threads: torch CPU threads. One by default: on a shared, busy machine several
            OpenMP threads spin-wait on each other and a step takes many times longer.
        progress: show a tqdm progress bar.

    Raises:
        ValueError: ``out`` holds a run with different settings.
    """
    import torch

    torch.set_num_threads(threads)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / "train_state.pt"
    torch.manual_seed(config.seed)
    model = build_bolt(
        config.size, context_length=config.context_length, prediction_length=config.prediction_length
    ).to(device)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _lr_factor(config, step))
    step, elapsed = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        _check_resumable(state["config"], state["step"], config, state_path)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed = state["step"], state["elapsed"]

    length = config.context_length + config.prediction_length
    held_out = [
        make_batch(config.seed, _HELD_OUT + i, config.batch_size, length) for i in range(held_out_batches)
    ]
    log_path = directory / "loss.csv"
    started = time.monotonic()
    running: list[float] = []
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="pretrain", unit="step")
    with ThreadPoolExecutor(max_workers=1) as pool, log_path.open("a", newline="") as log_file:
        log = csv.writer(log_file)
        if step == 0:
            log.writerow(["step", "train_loss", "held_out_loss", "learning_rate", "seconds"])
        upcoming = pool.submit(make_batch, config.seed, step, config.batch_size, length)
        while step < config.steps:
            batch = upcoming.result()
            if step + 1 < config.steps:  # generate the next batch while this one trains
                upcoming = pool.submit(make_batch, config.seed, step + 1, config.batch_size, length)
            model.train()
            loss = _loss(model, batch, config, device)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            step += 1
            running.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{running[-1]:.3f}")
            out_of_time = max_minutes is not None and time.monotonic() - started > max_minutes * 60
            done = step == config.steps or out_of_time
            now = elapsed + time.monotonic() - started
            if step % log_every == 0 or done:
                held = evaluate(model, held_out, config, device)
                log.writerow(
                    [
                        step,
                        f"{np.mean(running):.5f}",
                        f"{held:.5f}",
                        f"{schedule.get_last_lr()[0]:.3g}",
                        f"{now:.1f}",
                    ]
                )
                log_file.flush()
                running.clear()
            if step % checkpoint_every == 0 or done:
                _save_state(state_path, model, optimiser, schedule, config, step, now)
            if out_of_time:
                break
    bar.close()
    final = directory / "model"
    model.eval().to("cpu").save_pretrained(final)
    return final


def evaluate(model: torch.nn.Module, batches: list[np.ndarray], config: TrainConfig, device: str) -> float:
    """Mean loss on ``batches`` (no gradient): the held-out curve in ``loss.csv``."""
    import torch

    model.eval()
    with torch.no_grad():
        return float(np.mean([float(_loss(model, batch, config, device)) for batch in batches]))


def _loss(model: torch.nn.Module, batch: np.ndarray, config: TrainConfig, device: str) -> torch.Tensor:
    """Chronos-Bolt's own quantile loss on one batch, with the target bounded.

    A flat context (an idle counter, a constant kernel) has a scale near zero, so a
    target that then moves is thousands of scales away and one such series would
    dominate the batch's gradient; clipping to ``±30`` context standard deviations
    keeps the loss about the shape, as in production scoring.
    """
    import torch

    tensor = torch.from_numpy(batch).to(device)
    context, target = tensor[:, : config.context_length], tensor[:, config.context_length :]
    loc = torch.nan_to_num(torch.nanmean(context, dim=-1, keepdim=True), nan=0.0)
    scale = torch.nan_to_num((context - loc).square().nanmean(dim=-1, keepdim=True).sqrt(), nan=1.0)
    bound = _TARGET_BOUND * torch.clamp(scale, min=1e-5)
    target = torch.clamp(target, loc - bound, loc + bound)  # NaN stays NaN: masked by the model
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        return model(context=context, target=target).loss


def _check_resumable(saved: dict, done: int, config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that would not continue the same run."""
    if {**saved, "steps": config.steps} != config.model_dump():
        raise ValueError(f"{path} was written with other settings {saved}; use another --out")
    if config.steps < done:
        raise ValueError(f"{path} has already trained {done} steps; --steps must be at least that")


def _lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _save_state(
    path: Path, model, optimiser, schedule, config: TrainConfig, step: int, elapsed: float
) -> None:  # type: ignore[no-untyped-def]
    import torch

    partial = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "schedule": schedule.state_dict(),
            "config": config.model_dump(),
            "step": step,
            "elapsed": elapsed,
        },
        partial,
    )
    partial.replace(path)
