"""Running pipelines: one window, the scheduler, and the Ray jobs it starts.

- :mod:`~openanomaly.runtime.window`: the one composition of a window, fetch → score → write.
- :mod:`~openanomaly.runtime.scheduler`: which windows and fits are due, per pipeline, every tick.
- :mod:`~openanomaly.runtime.runner`: where they run (``JobRunner``: warm model actors, Ray Data).
- :mod:`~openanomaly.runtime.raystart`: connecting to or starting Ray.
"""
