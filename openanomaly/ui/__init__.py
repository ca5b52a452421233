"""Experimental. The Gradio playground: plot a query, its forecast band and its anomalies.

``build_playground`` / ``mount_playground`` / ``launch`` serve the page;
:mod:`openanomaly.ui.compute` holds the Gradio-free computation (testable alone).
Gradio and Altair are imported only when a page is built or a chart drawn.
"""

from openanomaly.ui.app import Playground, build_playground, launch, mount_playground
from openanomaly.ui.compute import PlaygroundInputError, PlaygroundResult, make_chart, run_csv, run_query

__all__ = [
    "Playground",
    "PlaygroundInputError",
    "PlaygroundResult",
    "build_playground",
    "launch",
    "make_chart",
    "mount_playground",
    "run_csv",
    "run_query",
]
