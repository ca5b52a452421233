"""The pure core: data, the pipeline model, forecast → calibrate → score. No I/O, no Ray.

- :mod:`~openanomaly.core.series`: ``SeriesMatrix``, many series on one time grid.
- :mod:`~openanomaly.core.times`: time and duration parsing and formatting.
- :mod:`~openanomaly.core.config`: the pipeline and settings model (what a YAML file holds).
- :mod:`~openanomaly.core.scoring`: a forecast band → ``anomaly_score``.
- :mod:`~openanomaly.core.calibration`: the alert policy every model goes through.
- :mod:`~openanomaly.core.detect`: the rolling score of a range, ``score_range``.
- :mod:`~openanomaly.core.episodes`: scored points → ranked anomaly episodes.

Imports go down only: ``core`` uses :mod:`openanomaly.models` and :mod:`openanomaly.errors`,
and everything else uses ``core``.
"""
