"""The machine a run was measured on, in words and numbers (CPU, cores, torch and its threads, GPU, the
commit of the checkout precondalg is imported from): what every experiment's ``results.json`` and every
benchmark records beside its figures."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import precondalg

__all__ = ["describe_machine", "machine_info"]


def machine_info(device: torch.device, *, git: bool = True) -> dict[str, Any]:
    """The machine, in words and numbers: CPU model (/proc/cpuinfo), cores, torch, threads, GPU, and
    with git the commit of the checkout precondalg is imported from (git_commit, git_dirty_precondalg;
    None without git, or where git fails or it is not a checkout)."""
    cpu_model, family, model = platform.processor() or "unknown", None, None
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and cpu_model in ("unknown", platform.processor()):
                cpu_model = value
            elif key == "cpu family" and family is None:
                family = value
            elif key == "model" and model is None:
                model = value
    except OSError:
        pass
    info = {
        "cpu_model": cpu_model,
        "cpu_family": family,
        "cpu_model_number": model,
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "precondalg": getattr(precondalg, "__version__", "unknown"),
        "precondalg_path": str(Path(precondalg.__file__).resolve().parent),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    info["git_consulted"], info["git_commit"], info["git_dirty_precondalg"] = git, None, None
    if git:
        root = Path(precondalg.__file__).resolve().parent.parent  # the checkout precondalg is imported from

        def run_git(*a: str) -> str:
            run = subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)
            return run.stdout.strip()

        try:
            info["git_commit"] = run_git("rev-parse", "--short", "HEAD") or None
            if info["git_commit"]:
                info["git_dirty_precondalg"] = bool(run_git("status", "--porcelain", "--", "precondalg"))
        except (OSError, subprocess.SubprocessError):
            info["git_commit"], info["git_dirty_precondalg"] = None, None
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        info["load_average"] = None
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """`machine_info`'s record in one line, for a report."""
    cpu = info["cpu_model"]
    if info["cpu_family"] is not None:
        cpu += f" (family {info['cpu_family']}, model {info['cpu_model_number']})"
    line = (
        f"CPU {cpu}, {info['cores_available']} of {info['logical_cores']} logical cores available; "
        f"torch {info['torch']} with {info['torch_threads']} intra-op thread(s); Python {info['python']}; "
        f"device {info['device']}"
    )
    if info["gpu"]:
        line += f" ({info['gpu']})"
    if info.get("git_commit"):
        line += f"; precondalg at {info['git_commit']}" + (
            " (+ uncommitted changes)" if info["git_dirty_precondalg"] else ""
        )
    else:
        why = "git not run" if info.get("git_consulted") is False else "not a git checkout"
        line += f"; precondalg from {info['precondalg_path']} ({why})"
    if info["load_average"]:
        line += "; load average at start " + ", ".join(f"{x:.2f}" for x in info["load_average"])
    return line
