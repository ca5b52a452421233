"""Pretraining a small Chronos-Bolt on synthetic series, so zero-shot forecasting works offline.

* :mod:`~openanomaly.pretrain.synth`: the training data (KernelSynth-style GPs + SRE shapes).
* :mod:`~openanomaly.pretrain.model`: the Chronos-Bolt architecture at a chosen size.
* :mod:`~openanomaly.pretrain.train`: the resumable training loop
  (``python -m openanomaly.pretrain``).

The shipped result is ``chronos:openanomaly-bolt-mini`` (see ``docs/models.md``).
"""
