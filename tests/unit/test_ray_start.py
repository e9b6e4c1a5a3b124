"""tuner.ray_start: a search's own Ray starts without the processes a local, fixed cluster never uses."""

from __future__ import annotations

import pytest
from ray._private import node, parameter

from tuner.ray_start import lean_head


def test_lean_head_asks_for_no_monitors_and_puts_ray_back() -> None:
    original, api_server = parameter.RayParams.__init__, node.Node.start_api_server
    with lean_head():
        lean = parameter.RayParams()
        chosen = parameter.RayParams(no_monitor=False, include_log_monitor=True)  # a caller's choice stands
        assert node.Node.start_api_server is not api_server
    assert (lean.no_monitor, lean.include_log_monitor) == (True, False)
    assert (chosen.no_monitor, chosen.include_log_monitor) == (False, True)
    assert parameter.RayParams.__init__ is original and node.Node.start_api_server is api_server
    assert parameter.RayParams().no_monitor is False


def test_joining_a_cluster_changes_nothing() -> None:
    with lean_head(enabled=False):
        assert parameter.RayParams().no_monitor is False


def test_the_prewarmed_worker_has_the_environment_tune_gives_its_trial_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose variables differ in any way is never given the actor: the copy must match Ray Tune's own."""
    from ray.tune.execution import class_cache

    from tuner.trial.trainable import tune_actor_env_vars

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a key")  # one Tune passes on to its actors
    monkeypatch.setenv("TUNER_NOT_PASSED_ON", "1")
    given: list[dict] = []
    monkeypatch.setattr(
        class_cache.ray, "remote", lambda **options: given.append(options["runtime_env"]) or (lambda c: c)
    )
    class_cache._ActorClassCache().get(object)
    assert given == [{"env_vars": tune_actor_env_vars()}]
    assert tune_actor_env_vars() == {"PL_DISABLE_FORK": "1", "AWS_ACCESS_KEY_ID": "a key"}
