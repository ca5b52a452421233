"""Reading and writing outside the process: the TSDB, the artifact store, CSV files.

- :mod:`~openanomaly.io.tsdb`: the Prometheus/VictoriaMetrics client (query, series, remote write).
- :mod:`~openanomaly.io.remote_write`: the remote-write protobuf encoding it sends.
- :mod:`~openanomaly.io.artifacts`: the artifact store (fitted models, scheduler progress): S3, files, memory.
- :mod:`~openanomaly.io.csvseries`: a ``timestamp,value`` CSV as a ``SeriesMatrix``.
"""
