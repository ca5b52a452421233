"""Tiny, randomly initialised Chronos models saved like real checkpoints.

No Hugging Face hub is reachable on many machines (CI, air-gapped clusters), yet the
Chronos loading path (``BaseChronosPipeline.from_pretrained`` on a directory) must be
exercised. ``build_tiny_chronos`` writes a seeded, few-hundred-KB Chronos-Bolt or
Chronos-2 checkpoint that loads in well under a second through exactly that path. Its
forecasts are meaningless (random weights) but have the right shapes, levels and
behaviour, so tests, benchmarks and the offline example can use
``chronos:<directory>`` exactly like ``chronos:amazon/chronos-bolt-small``.

Example:
    >>> path = build_tiny_chronos("bolt", "/tmp/tiny-bolt")  # doctest: +SKIP
    >>> load_forecaster(f"chronos:{path}", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from openanomaly.models.chronos import BOLT_QUANTILES, CHRONOS2_QUANTILES

__all__ = ["BOLT_QUANTILES", "CHRONOS2_QUANTILES", "build_tiny_chronos"]


def build_tiny_chronos(
    kind: Literal["bolt", "chronos2"],
    path: str | Path,
    *,
    prediction_length: int = 64,
    context_length: int = 512,
    seed: int = 0,
    size: Literal["tiny", "base"] = "tiny",
) -> Path:
    """Write a tiny random Chronos checkpoint to ``path`` and return the directory.

    Args:
        kind: ``"bolt"`` (Chronos-Bolt, T5 encoder-decoder, 9 levels 0.1…0.9) or
            ``"chronos2"`` (Chronos-2 encoder, levels 0.01…0.99).
        path: directory to create (parents too); existing files are overwritten.
        prediction_length: the model's native horizon (Chronos-2 rounds it up to whole
            16-step output patches).
        context_length: the longest context the model reads; longer ones are cut.
        seed: torch seed for the random weights, so the same call gives the same model.
        size: ``"tiny"`` (a few hundred KB) or ``"base"``: the layer sizes of the released
            chronos-bolt-small / chronos-2 checkpoints (hundreds of MB), for measuring
            realistic speed and memory without the hub.

    Raises:
        ValueError: unknown ``kind``.
    """
    import torch

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "bolt":
            model = _tiny_bolt(prediction_length=prediction_length, context_length=context_length, size=size)
        elif kind == "chronos2":
            model = _tiny_chronos2(
                prediction_length=prediction_length, context_length=context_length, size=size
            )
        else:
            raise ValueError(f"kind must be 'bolt' or 'chronos2', got {kind!r}")
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(directory)
    return directory


# Layer sizes: tiny for tests; base = the released chronos-2 (Bolt's: openanomaly.pretrain.model).
_CHRONOS2_SIZES = {
    "tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 2},
    "base": {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
}


def _tiny_bolt(*, prediction_length: int, context_length: int, size: str):  # type: ignore[no-untyped-def]
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    from openanomaly.pretrain.model import bolt_config

    if size not in ("tiny", "base"):
        raise ValueError(f"size must be 'tiny' or 'base', got {size!r}")
    config = bolt_config(size, context_length=context_length, prediction_length=prediction_length)
    return ChronosBoltModelForForecasting(config).eval()


def _tiny_chronos2(*, prediction_length: int, context_length: int, size: str):  # type: ignore[no-untyped-def]
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    if size not in _CHRONOS2_SIZES:
        raise ValueError(f"size must be 'tiny' or 'base', got {size!r}")
    patch = 16
    config = Chronos2CoreConfig(
        **_CHRONOS2_SIZES[size],
        dropout_rate=0.0,
        feed_forward_proj="relu",
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
        chronos_config={
            "context_length": context_length,
            "input_patch_size": patch,
            "input_patch_stride": patch,
            "output_patch_size": patch,
            "quantiles": list(CHRONOS2_QUANTILES),
            "use_reg_token": True,
            "use_arcsinh": True,
            "max_output_patches": -(-prediction_length // patch),
        },
    )
    return Chronos2Model(config).eval()
