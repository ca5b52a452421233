"""Where the configuration lives: loading, checking, storing and editing pipelines.

- :mod:`~openanomaly.configstore.files`: the pipelines YAML file: parse, expand ``${VAR}``,
  validate (``load_config``), and the ``ConfigStore`` port the scheduler reads.
- :mod:`~openanomaly.configstore.checks`: checks across fields (context, fit windows, models).
- :mod:`~openanomaly.configstore.yamlsafe`: YAML parsing with size and alias limits.
- :mod:`~openanomaly.configstore.pipelines`: the ``PipelineStore`` port (stored definitions,
  etags) and its YAML-file adapter.
- :mod:`~openanomaly.configstore.s3`: the S3 adapters of both ports.
- :mod:`~openanomaly.configstore.stores`: which stores a file's ``config_store.kind`` picks.
- :mod:`~openanomaly.configstore.admin`: the pipelines service behind the HTTP API and the UI.

The model itself (``Pipeline``, ``Settings``) is :mod:`openanomaly.core.config`.
"""
