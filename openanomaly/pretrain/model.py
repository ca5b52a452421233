"""The Chronos-Bolt architecture at a chosen size, built from chronos-forecasting's own classes.

The checkpoint a training run writes is a plain Chronos-Bolt directory (``config.json``
with ``chronos_config`` + ``model.safetensors``), so ``BaseChronosPipeline.from_pretrained``
loads it exactly like ``amazon/chronos-bolt-small``: no OpenAnomaly code at inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openanomaly.models.chronos import BOLT_QUANTILES

if TYPE_CHECKING:
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

__all__ = ["BOLT_SIZES", "bolt_config", "build_bolt"]

# T5 layer sizes. tiny: tests (a few hundred KB); mini: the shipped model (about 8 MB),
# small enough to learn something in half an hour on two CPU cores; base: the released
# chronos-bolt-small, for measuring realistic speed and memory without the hub.
BOLT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2},
    "mini": {
        "d_model": 128,
        "d_kv": 32,
        "d_ff": 512,
        "num_layers": 4,
        "num_decoder_layers": 2,
        "num_heads": 4,
    },
    "base": {
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 6,
        "num_decoder_layers": 6,
        "num_heads": 8,
    },
}


def bolt_config(size: str, *, context_length: int, prediction_length: int, patch: int = 16) -> T5Config:
    """The ``T5Config`` (with ``chronos_config``) of a Chronos-Bolt model of ``size``.

    Raises:
        ValueError: ``size`` is not one of :data:`BOLT_SIZES`.
    """
    from transformers import T5Config

    if size not in BOLT_SIZES:
        raise ValueError(f"size must be one of {', '.join(BOLT_SIZES)}, got {size!r}")
    chronos: dict[str, Any] = {
        "context_length": context_length,
        "prediction_length": prediction_length,
        "input_patch_size": patch,
        "input_patch_stride": patch,
        "quantiles": list(BOLT_QUANTILES),
        "use_reg_token": True,
    }
    return T5Config(
        **BOLT_SIZES[size],
        dropout_rate=0.0,
        feed_forward_proj="relu",
        vocab_size=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        architectures=["ChronosBoltModelForForecasting"],
        chronos_pipeline_class="ChronosBoltPipeline",
        chronos_config=chronos,
    )


def build_bolt(size: str, *, context_length: int, prediction_length: int) -> ChronosBoltModelForForecasting:
    """A freshly initialised Chronos-Bolt model (torch's global seed decides the weights)."""
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    config = bolt_config(size, context_length=context_length, prediction_length=prediction_length)
    model = ChronosBoltModelForForecasting(config)
    # Under transformers 5 the class's own scaled init of the patch MLPs is not applied
    # (they keep std-1 weights, so the first forecasts are ~1000 scales off and the first
    # hundreds of steps only shrink them); apply it explicitly.
    for block in (model.input_patch_embedding, model.output_patch_embedding):
        model._init_weights(block)
    return model
