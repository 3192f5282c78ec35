"""Setup facts of the report: dataset, face-crop and split statistics, hardware, devices, wall times,
and the DVC experiments (``dvc exp show --json``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report.runs import RunInfo

STAGE_ORDER = ("download", "faces", "split", "train_classifier", "evaluate", "train_generator", "fid", "report")
SPLIT_SUMMARY = Path("data/splits/summary.json")
FACE_METRICS = Path("data/faces/metrics.json")


@dataclass(frozen=True)
class DvcExp:
    name: str
    rev: str
    baseline: str
    timestamp: str


@dataclass
class SetupData:
    data_params: dict[str, str]
    faces_params: dict[str, str]
    split_params: dict[str, str]
    split_summary: dict[str, Any] | None
    face_metrics: dict[str, Any] | None
    hardware: dict[str, str]
    devices: dict[str, str]  # stage -> device tag of its latest run
    wall_times: list[dict[str, Any]]  # stage, runs, latest_s, median_s, total_s


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def hardware() -> dict[str, str]:
    """The machine that runs the report (the runs' own devices are in their tags)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.M)
        cpu = model.group(1).strip() if model else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "CPU": cpu,
        "CPU cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "Python": platform.python_version(),
        "OS": platform.platform(),
    }
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.M)
        if mem:
            out["Memory"] = f"{int(mem.group(1)) / 1024**2:.1f} GiB"
    try:
        out["torch"] = importlib.metadata.version("torch")
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            out["CUDA"] = f"{torch.version.cuda}: {names}"
        else:
            out["CUDA"] = f"not available (torch built with CUDA {torch.version.cuda or 'none'})"
    except (importlib.metadata.PackageNotFoundError, ImportError):
        out["torch"] = "not installed"
    return out


def wall_times(runs: Sequence[RunInfo]) -> list[dict[str, Any]]:
    rows = []
    stages = sorted({r.stage for r in runs}, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
    for stage in stages:
        durations = [d for r in runs if r.stage == stage and (d := r.duration) is not None]
        if durations:
            rows.append(
                {
                    "stage": stage,
                    "runs": len(durations),
                    "latest_s": durations[-1],
                    "median_s": statistics.median(durations),
                    "total_s": sum(durations),
                }
            )
    return rows


def devices(runs: Sequence[RunInfo]) -> dict[str, str]:
    """stage -> the device of its latest run, with the data-parallel process count when > 1."""
    out: dict[str, str] = {}
    for run in runs:  # time order: the latest wins
        device = next((v for k, v in run.tags.items() if k.endswith(".device")), None)
        world = next((v for k, v in run.tags.items() if k.endswith(".world_size")), "1")
        if device is not None:
            out[run.stage] = device if world == "1" else f"{device} × {world} processes"
    return out


def latest_params(runs: Sequence[RunInfo], stage: str) -> dict[str, str]:
    mine = [r for r in runs if r.stage == stage]
    return dict(mine[-1].params) if mine else {}


def setup_data(runs: Sequence[RunInfo]) -> SetupData:
    return SetupData(
        data_params=latest_params(runs, "download"),
        faces_params=latest_params(runs, "faces"),
        split_params=latest_params(runs, "split"),
        split_summary=read_json(SPLIT_SUMMARY),
        face_metrics=read_json(FACE_METRICS),
        hardware=hardware(),
        devices=devices(runs),
        wall_times=wall_times(runs),
    )


def dvc_experiments(repo: Path, timeout: float) -> tuple[list[DvcExp], str | None]:
    """Experiments listed by ``dvc exp show --json`` in ``repo``; an error message instead when it fails."""
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run(
            [exe, "exp", "show", "--json", "--all-commits"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"dvc exp show did not run: {err}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return [], f"dvc exp show failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    try:
        return parse_exp_show(json.loads(proc.stdout)), None
    except (json.JSONDecodeError, AttributeError, TypeError) as err:
        return [], f"dvc exp show output not understood: {err}"


def parse_exp_show(entries: list[dict[str, Any]]) -> list[DvcExp]:
    out: list[DvcExp] = []
    for commit in entries:
        baseline = (commit.get("name") or str(commit.get("rev", ""))[:7]) or "?"
        for group in commit.get("experiments") or []:
            for rev in group.get("revs") or []:
                data = rev.get("data") or {}
                out.append(
                    DvcExp(
                        name=rev.get("name") or group.get("name") or "",
                        rev=str(rev.get("rev", ""))[:7],
                        baseline=baseline,
                        timestamp=str(data.get("timestamp") or ""),
                    )
                )
    return out
