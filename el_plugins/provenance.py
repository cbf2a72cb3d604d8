"""What produced a results file: el-plugins' version and the git commit it was built from.

setup.py records the commit (and whether el_plugins/ had uncommitted changes) in ``_build_info.json`` when it
builds the package; run from a source checkout without installing, the checkout's own git state is read. Every
results.json of el-demo, el-reproduce and the benchmarks carries :func:`provenance` under ``produced_by``.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Optional

from el_plugins import __version__

__all__ = ['describe', 'provenance']

_HERE = os.path.dirname(os.path.abspath(__file__))


def _checkout_state() -> dict:
    """The git state of the source checkout this package is imported from, if it is one."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", _HERE, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=True).stdout.strip()
    try:
        top = git("rev-parse", "--show-toplevel")
        if not os.path.isfile(os.path.join(top, "setup.py")):
            raise ValueError("not el-plugins' checkout")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", _HERE))}
    except (OSError, ValueError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def provenance() -> dict:
    """{'el_plugins_version', 'git_commit' (None when unknown), 'git_dirty' (uncommitted changes in the package
    when it was built; None when unknown)}."""
    state: Optional[dict] = None
    try:
        with open(os.path.join(_HERE, "_build_info.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = _checkout_state()
    return {"el_plugins_version": __version__, "git_commit": state.get("commit"), "git_dirty": state.get("dirty")}


def describe(produced_by: Optional[dict]) -> str:
    """'el-plugins 0.1.0, commit abcdef012345' (with ', uncommitted changes' when so) for tables and docs."""
    if not produced_by:
        return "an el-plugins that did not record its version and commit (a run from before they were recorded)"
    text = f"el-plugins {produced_by.get('el_plugins_version')}"
    if produced_by.get("git_commit"):
        text += f", commit {produced_by['git_commit'][:12]}"
    if produced_by.get("git_dirty"):
        text += ", uncommitted changes"
    return text
