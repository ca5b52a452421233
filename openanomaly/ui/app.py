"""The Gradio playground page: pick a pipeline or type a query, press Run, see band and anomalies.

Here: the playground's state and Run handler, and the page's assembly; the tabs are
:mod:`~openanomaly.ui.explore_tab` and :mod:`~openanomaly.ui.pipelines_tab`, the work
is in :mod:`openanomaly.ui.compute`. Gradio is imported inside the functions, so importing
this module (or ``openanomaly.ui``) is cheap.

Three ways to serve it:

- standalone: :func:`launch` (``openanomaly playground -c pipelines.yaml``);
- on an existing FastAPI app: :func:`mount_playground` (the Serve ingress does this);
- anywhere else: :func:`build_playground` returns the ``gr.Blocks``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openanomaly.configstore.admin import PipelineAdmin
from openanomaly.configstore.files import ConfigStore
from openanomaly.configstore.stores import open_stores
from openanomaly.core.config import Config, Pipeline, TSDBSettings
from openanomaly.errors import ModelError, OpenAnomalyError
from openanomaly.models.trust import check_untrusted_spec, models_root
from openanomaly.serve.quiet import end_quietly_if_cancelled
from openanomaly.ui.compute import (
    AD_HOC_FORM,
    DEFAULT_MAX_SERIES,
    PlaygroundInputError,
    PlaygroundResult,
    build_pipeline,
    chart_json,
    infer_step,
    load_model,
    make_chart,
    resolve_range,
    run_csv,
    run_query,
)
from openanomaly.ui.explore_tab import AD_HOC, SOURCES, current_url, explore_tab
from openanomaly.ui.pipelines_tab import PipelinesPanel, Writer, pipelines_tab

if TYPE_CHECKING:
    import fastapi
    import gradio as gr
    import pandas as pd

    from openanomaly.models.base import Forecaster

__all__ = [
    "Playground",
    "build_playground",
    "launch",
    "mount_playground",
]

log = logging.getLogger(__name__)

DEFAULT_TSDB_URL = "http://localhost:8428"

ConfigSource = Config | ConfigStore | str | os.PathLike[str] | None
ForecasterFactory = Callable[[Pipeline], "Forecaster"]


@dataclass
class Playground:
    """The playground's state and its Run handler, apart from the Gradio layout (testable).

    Attributes:
        config: a loaded :class:`Config`, a :class:`ConfigStore` (re-read when it changes,
            so edits to ``pipelines.yaml`` show up without a restart) or ``None``
            (ad-hoc queries and CSV uploads only).
        tsdb: TSDB settings for ad-hoc queries when there is no config; the config's
            ``settings.tsdb`` otherwise.
        forecaster_factory: builds the model for a pipeline; default: load it in this
            process (cached). The Serve app can route through its model deployment.
        clock: current time in ms (tests pin it).
    """

    config: Config | ConfigStore | None = None
    tsdb: TSDBSettings | None = None
    forecaster_factory: ForecasterFactory = load_model
    clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    _loaded: Config | None = field(default=None, init=False, repr=False)

    def current_config(self) -> Config | None:
        """The configuration now (re-reading the store when its file changed)."""
        if isinstance(self.config, Config) or self.config is None:
            return self.config
        if self._loaded is None or self.config.changed():
            self._loaded = self.config.load()
        return self._loaded

    def pipeline_names(self) -> list[str]:
        config = self.current_config()
        return [AD_HOC] + ([p.name for p in config.pipelines] if config else [])

    def pipeline(self, name: str) -> Pipeline | None:
        """The configured pipeline called ``name``; ``None`` for the ad-hoc entry.

        Raises:
            PlaygroundInputError: no such pipeline (the file changed since the page loaded).
        """
        if not name or name == AD_HOC:
            return None
        config = self.current_config()
        try:
            if config is None:
                raise KeyError(name)
            return config.pipeline(name)
        except KeyError:
            known = ", ".join(self.pipeline_names()[1:]) or "none"
            raise PlaygroundInputError(
                f"no pipeline named {name!r} (defined: {known})", field="Pipeline"
            ) from None

    def tsdb_settings(self, url: str) -> TSDBSettings:
        """The configured TSDB's settings; ``url`` may only name that TSDB.

        A URL from the page never becomes a server-side request (it could read any
        internal service): the playground queries only what its operator configured.

        Raises:
            PlaygroundInputError: no TSDB is configured, or ``url`` names another one.
        """
        config = self.current_config()
        configured = config.settings.tsdb if config else self.tsdb
        if configured is None:
            raise PlaygroundInputError(
                "no TSDB is configured: start the playground with a pipelines file or --tsdb-url",
                field="TSDB URL",
            )
        url = (url or "").strip().rstrip("/")
        if url and url != configured.url:
            raise PlaygroundInputError(
                f"the playground queries only the configured TSDB, {configured.url}", field="TSDB URL"
            )
        return configured

    def check_model(self, spec: str) -> None:
        """Only the configured pipelines' models and the specs the API would accept may run here.

        A typed spec such as ``chronos:<path>`` would load a checkpoint from a path of
        the user's choosing inside the server (a pickle there runs code): the API's
        allow-list (:func:`~openanomaly.models.trust.check_untrusted_spec`) decides.

        Raises:
            PlaygroundInputError: any other spec.
        """
        config = self.current_config()
        configured = [p.model.spec for p in (config.pipelines if config else ())]
        try:
            check_untrusted_spec(spec, root=models_root(), trusted=configured)
        except ModelError as error:
            raise PlaygroundInputError(str(error), field="Model") from None

    def default_url(self) -> str:
        config = self.current_config()
        configured = config.settings.tsdb if config else self.tsdb
        return configured.url if configured is not None else DEFAULT_TSDB_URL

    def form_for(self, name: str) -> dict[str, Any]:
        """Form values for a pipeline choice (query, model, step, context, forecast every, band)."""
        pipeline = self.pipeline(name)
        if pipeline is None:
            return dict(AD_HOC_FORM)
        from openanomaly.core.config import format_duration

        low, high = pipeline.scoring.quantiles
        return {
            "query": pipeline.query,
            "model": pipeline.model.spec,
            "step": format_duration(pipeline.step),
            "context": format_duration(pipeline.schedule.context),
            "infer_every": format_duration(pipeline.schedule.infer_every),
            "q_low": low,
            "q_high": high,
        }

    def run(
        self,
        *,
        source: str,
        pipeline_name: str,
        query: str,
        tsdb_url: str,
        range_choice: str,
        start: str,
        end: str,
        csv_path: str | None,
        model: str,
        step: str,
        context: str,
        infer_every: str,
        q_low: float,
        q_high: float,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> PlaygroundResult:
        """Score what the form describes (nothing is written anywhere).

        Raises:
            OpenAnomalyError: any user-facing problem, with a readable message
                (:class:`PlaygroundInputError`, ``QueryError``, ``DataError``, ``ModelError``).
        """
        base = self.pipeline(pipeline_name) if source == SOURCES[0] else None
        self.check_model(model)
        if source == SOURCES[1] and csv_path and not (step or "").strip():
            step = infer_step(csv_path)
            infer_every = infer_every if (infer_every or "").strip() else step
        if q_low is None or q_high is None:
            raise PlaygroundInputError("set both band quantiles", field="Band quantiles")
        pipeline = build_pipeline(
            base=base,
            query=query if source == SOURCES[0] else "csv",
            model=model,
            step=step,
            context=context,
            infer_every=infer_every,
            quantiles=(float(q_low), float(q_high)),
        )
        if source == SOURCES[1]:
            if not csv_path:
                raise PlaygroundInputError("upload a timestamp,value CSV file", field="CSV file")
            return run_csv(csv_path, pipeline, forecaster=self.forecaster_factory(pipeline))
        if source != SOURCES[0]:
            raise PlaygroundInputError(f"unknown source {source!r}", field="Source")
        return self.score_pipeline(
            pipeline,
            range_choice=range_choice,
            start=start,
            end=end,
            tsdb_url=tsdb_url,
            max_series=max_series,
        )

    def score_pipeline(
        self,
        pipeline: Pipeline,
        *,
        range_choice: str,
        start: str = "",
        end: str = "",
        tsdb_url: str = "",
        max_series: int = DEFAULT_MAX_SERIES,
        forecaster: Forecaster | None = None,
    ) -> PlaygroundResult:
        """Score ``pipeline``'s query over the range from the configured TSDB (nothing is written).

        Raises:
            OpenAnomalyError: see :meth:`run`.
        """
        self.check_model(pipeline.model.spec)
        start_ms, end_ms = resolve_range(range_choice, start=start, end=end, now_ms=self.clock())
        from openanomaly.io.tsdb import PrometheusClient

        with PrometheusClient(self.tsdb_settings(tsdb_url)) as client:
            return run_query(
                client,
                pipeline,
                start_ms=start_ms,
                end_ms=end_ms,
                forecaster=forecaster or self.forecaster_factory(pipeline),
                max_series=int(max_series),
            )

    def handle(self, *values: Any) -> tuple[Any, str, pd.DataFrame]:
        """The Run button's Gradio handler: ``(plot, summary markdown, episodes table)``.

        User errors become ``gr.Error`` (a readable toast, no traceback), and so does a
        request Ray cancelled because the browser went away (not printed); anything else
        is a bug and propagates (Gradio logs it).
        """
        import gradio as gr
        from gradio.components.plot import PlotData

        names = (
            "source",
            "pipeline_name",
            "query",
            "tsdb_url",
            "range_choice",
            "start",
            "end",
            "csv_path",
            "model",
            "step",
            "context",
            "infer_every",
            "q_low",
            "q_high",
            "max_series",
        )
        kwargs = dict(zip(names, values, strict=True))
        try:
            result = self.run(**kwargs)
        except OpenAnomalyError as error:
            log.info("playground run failed: %s", error)
            raise gr.Error(str(error), title=type(error).__name__, print_exception=False) from None
        except Exception as error:
            end_quietly_if_cancelled(error)  # a closed tab: not a bug, no traceback
            raise
        plot = PlotData(type="altair", plot=chart_json(make_chart(result))) if result.shown else None
        return plot, result.summary(), result.episodes


def build_playground(
    *,
    config: ConfigSource = None,
    tsdb: TSDBSettings | None = None,
    forecaster_factory: ForecasterFactory | None = None,
    title: str = "OpenAnomaly playground",
    admin: Callable[[], PipelineAdmin] | None = None,
    writer: Writer | None = None,
    trigger: Callable[[str], Mapping[str, Any]] | None = None,
    sign_out: bool = False,
) -> gr.Blocks:
    """The playground as a ``gr.Blocks`` (not launched): an Explore tab, and a Pipelines
    tab when there is a pipelines file to manage.

    Args:
        config: a pipelines YAML path, a :class:`ConfigStore`, a loaded :class:`Config`,
            or ``None`` for ad-hoc queries and CSV uploads only.
        tsdb: TSDB for ad-hoc queries when there is no config.
        forecaster_factory: see :class:`Playground`.
        admin: the pipelines' admin for the Pipelines tab; default: one on ``config``
            when it is a path.
        writer, trigger: see :class:`~openanomaly.ui.pipelines_tab.PipelinesPanel`.
        sign_out: show a "Sign out" button (``POST /logout`` of the Serve app, beside
            the playground's path); the ingress sets it when auth is on.

    Raises:
        ConfigError: ``config`` is a path to a missing or invalid file.
    """
    import gradio as gr

    playground = Playground(config=_store(config), tsdb=tsdb)
    if forecaster_factory is not None:
        playground.forecaster_factory = forecaster_factory
    if admin is None and isinstance(config, str | os.PathLike):
        admin = functools.cache(functools.partial(PipelineAdmin, config))

    with gr.Blocks(title=title) as blocks:
        if sign_out:
            # A plain form: the session cookie is HttpOnly, so only the server can clear it.
            gr.HTML(_SIGN_OUT)
        _tabs(blocks, playground, admin=admin, writer=writer, trigger=trigger)
    return blocks


_SIGN_OUT = (
    '<form method="post" action="../logout" style="text-align:right;margin:0">'
    '<button type="submit" style="cursor:pointer">Sign out</button></form>'
)


def _tabs(
    blocks: gr.Blocks,
    playground: Playground,
    *,
    admin: Callable[[], PipelineAdmin] | None,
    writer: Writer | None,
    trigger: Callable[[str], Mapping[str, Any]] | None,
) -> None:
    """The Explore tab, and the Pipelines tab when there is an admin."""
    import gradio as gr

    with gr.Tabs():
        with gr.Tab("Explore"):
            pipeline, tsdb_url = explore_tab(playground)
        if admin is not None:
            with gr.Tab("Pipelines"):
                panel = PipelinesPanel(admin=admin, playground=playground, writer=writer, trigger=trigger)
                pipelines_tab(blocks, panel)
        # The file (or the Pipelines tab) may have changed since the page was built.
        blocks.load(
            lambda: (gr.update(choices=playground.pipeline_names()), current_url(playground)),
            None,
            [pipeline, tsdb_url],
        )


def _store(config: ConfigSource) -> Config | ConfigStore | None:
    if config is None or isinstance(config, Config | ConfigStore):
        return config
    return open_stores(config)[0]


def mount_playground(
    app: fastapi.FastAPI,
    *,
    path: str = "/playground",
    config: ConfigSource = None,
    tsdb: TSDBSettings | None = None,
    forecaster_factory: ForecasterFactory | None = None,
    auth_dependency: Callable[[Any], str | Awaitable[str | None] | None] | None = None,
    admin: Callable[[], PipelineAdmin] | None = None,
    writer: Writer | None = None,
    trigger: Callable[[str], Mapping[str, Any]] | None = None,
    sign_out: bool = False,
) -> fastapi.FastAPI:
    """Mount the playground on ``app`` at ``path`` (``gradio.mount_gradio_app``); returns ``app``.

    Args:
        auth_dependency: called with the ``fastapi.Request``; return a user name to allow
            the request, ``None`` to refuse it (Gradio's auth hook, e.g. a bearer check).
        config, tsdb, forecaster_factory, admin, writer, trigger, sign_out: see
            :func:`build_playground`.

    Example::

        app = fastapi.FastAPI()
        mount_playground(app, config="pipelines.yaml")  # GET /playground/
    """
    import gradio as gr

    blocks = build_playground(
        config=config,
        tsdb=tsdb,
        forecaster_factory=forecaster_factory,
        admin=admin,
        writer=writer,
        trigger=trigger,
        sign_out=sign_out,
    )
    return gr.mount_gradio_app(app, blocks, path=path, auth_dependency=auth_dependency, footer_links=[])


def launch(
    config: ConfigSource = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    tsdb_url: str | None = None,
    share: bool = False,
) -> None:
    """Serve the playground alone until interrupted (``openanomaly playground``).

    Args:
        config: pipelines YAML path (or store / config); ``None`` for ad-hoc use.
        host: interface to listen on; ``0.0.0.0`` exposes it to the network.
        tsdb_url: TSDB for ad-hoc queries when there is no config.
        share: create a public gradio.live link (needs internet; off by default).

    Raises:
        ConfigError: the config file is missing or invalid.
    """
    tsdb = TSDBSettings(url=tsdb_url) if tsdb_url else None
    blocks = build_playground(config=config, tsdb=tsdb)
    blocks.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, footer_links=[], show_error=True
    )
