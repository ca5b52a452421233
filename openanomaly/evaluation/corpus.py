"""A benchmark corpus: NAB-format folders read as one list of labelled files, and how
the harness groups them (by dataset, by category or machine) and lays them on a grid."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np

from openanomaly.evaluation.nab import NabFile, load_nab_corpus

__all__ = ["dataset_of", "file_step", "group_of", "labelled_rows", "load_corpus"]


def load_corpus(folders: list[str], labels: list[str]) -> list[NabFile]:
    """One corpus of NAB-format ``folders``, each with its labels JSON.

    With several folders each file's path is prefixed ``<folder name>:`` (see
    :func:`dataset_of`), so datasets can be told apart when they are scored together.

    Raises:
        DataError: as :func:`~openanomaly.evaluation.load_nab_corpus`.
    """
    if len(folders) == 1:
        return load_nab_corpus(folders[0], labels[0])
    corpus = []
    for folder, table in zip(folders, labels, strict=True):
        name = Path(folder).resolve().name
        corpus += [replace(item, path=f"{name}:{item.path}") for item in load_nab_corpus(folder, table)]
    return corpus


def group_of(item: NabFile) -> str:
    """The cross-validation group: the machine for SMD files (``machine-1-2_dim01``), else the category."""
    machine = re.search(r"(machine-\d+-\d+)_dim", item.path)
    return machine.group(1) if machine else item.category


def dataset_of(item: NabFile) -> str:
    """The data folder a file came from when several are scored together (``nab:…``), else ``""``."""
    return item.path.split(":", 1)[0] if ":" in item.path else ""


def file_step(item: NabFile) -> timedelta:
    """The file's median sampling interval, whole seconds: the step of the grid it is laid on.

    Some NAB files have duplicate or out-of-order timestamps, which a Prometheus grid
    cannot hold, so row ``i`` is scored at ``t0 + i * step`` (as NAB's own detectors see
    the rows, in order).
    """
    diffs = np.diff(item.timestamps)
    seconds = float(np.median(diffs[diffs > 0])) / 1000 if diffs.size else 300.0
    return timedelta(seconds=max(1.0, round(seconds)))


def labelled_rows(item: NabFile) -> np.ndarray:
    """``(n,)`` bool: the rows inside one of the file's windows."""
    labels = np.zeros(item.values.size, dtype=bool)
    for a, b in item.windows:
        labels[a : b + 1] = True
    return labels
