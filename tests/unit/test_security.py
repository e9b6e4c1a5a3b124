"""Safe defaults: no shell anywhere, no YAML value on a command line, orphaned trials reclaimed only when
their search is gone."""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

import optuna
import psutil
from optuna.trial import TrialState

from tests.conftest import REPO
from tuner.orphans import INTERRUPTED, OWNER, owner_tag, reclaim_orphans
from tuner.trial.launch import worker_command

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def test_no_process_is_started_through_a_shell() -> None:
    offenders = []
    for path in sorted((REPO / "tuner").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            named = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            if named and (func.value.id, func.attr) in SHELL_CALLS:  # type: ignore[union-attr]
                offenders.append(f"{path.name}:{node.lineno} {func.value.id}.{func.attr}")  # type: ignore[union-attr]
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{path.name}:{node.lineno} shell=")
    assert not offenders


def test_a_trial_command_line_holds_no_value_from_the_space() -> None:
    """The space reaches the ranks as a JSON file; the command is fixed words, a pid, a count and that path."""
    hostile = Path("/tmp/run/$(touch pwned); rm -rf ~/trial_0000/spec.json")
    command = worker_command(hostile, 2)
    assert isinstance(command, list) and command.count(str(hostile)) == 1
    others = [c for c in command if c != str(hostile)]
    assert all(re.fullmatch(r"[\w./+-]+", c) for c in others), others


def test_only_trials_whose_search_is_gone_are_reclaimed() -> None:
    study = optuna.create_study()
    dead = f"{socket.gethostname()}:{2**22 + 12345}:0"  # no such pid
    elsewhere = "some-other-host:1:0"
    me = owner_tag()
    numbers = {}
    for name, tag in (("dead", dead), ("elsewhere", elsewhere), ("alive", me), ("untagged", None)):
        trial = study.ask()
        if tag:
            trial.set_user_attr(OWNER, tag)
        numbers[name] = trial.number
    reclaimed, foreign = reclaim_orphans(study)
    assert sorted(reclaimed) == sorted([numbers["dead"], numbers["untagged"]])
    assert foreign == [numbers["elsewhere"]]
    by_number = {t.number: t for t in study.trials}
    for name in ("dead", "untagged"):
        t = by_number[numbers[name]]
        assert t.state == TrialState.FAIL and t.user_attrs["failure_category"] == INTERRUPTED
        assert "ended without recording it" in t.user_attrs["failure_reason"]
    assert by_number[numbers["alive"]].state == TrialState.RUNNING
    assert by_number[numbers["elsewhere"]].state == TrialState.RUNNING
    assert psutil.Process().pid == int(me.split(":")[1])
