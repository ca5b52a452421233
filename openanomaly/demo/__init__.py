"""The demo: metrics with planted incidents, and ``openanomaly demo`` that runs the stack on them.

- :mod:`~openanomaly.demo.writer`: writes the demo series to a TSDB (``python -m openanomaly.demo``).
- :mod:`~openanomaly.demo.stack`: ``openanomaly demo``: TSDB, scheduler, API and UI in one process.
"""
