"""ray_session: a local cluster started by the program comes with the dashboard (and so the State API) and with
Ray Train settings for one machine."""

from __future__ import annotations

import pytest
import ray

from emodis_ray.runtime.session import LOCAL_TRAIN_ENV, ray_session


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_local_session_serves_the_dashboard_and_state_api(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with ray_session(num_cpus=1):
        # Ray Train's placement-group cleaner polls this API; without it a stopped trial's cleaner never exits
        assert len(list_nodes(timeout=60)) == 1
        assert "Ray dashboard: http://127.0.0.1:" in capsys.readouterr().err
    assert not ray.is_initialized()  # started here, so shut down here

    monkeypatch.setenv("EMODIS_DASHBOARD", "0")
    # The local cluster's processes (Ray Train's controller among them) get LOCAL_TRAIN_ENV; a user's value is kept.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "")  # restored after the test
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    with ray_session(num_cpus=1):
        with pytest.raises(RayStateApiException):
            list_nodes(timeout=10)
        assert "dashboard" not in capsys.readouterr().err
        env = ray.get(_train_env.remote(), timeout=60)
    assert env == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert set(env) == set(LOCAL_TRAIN_ENV)


@ray.remote(num_cpus=0)
def _train_env() -> dict[str, str | None]:
    import os

    return {k: os.environ.get(k) for k in LOCAL_TRAIN_ENV}


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_the_console_stays_quiet_unless_verbose(capfd: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Data's execution lines and progress bars, and Ray's notices, stay off the console by default."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("EMODIS_VERBOSE", raising=False)
    for var in ("RAY_DATA_DISABLE_PROGRESS_BARS", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.setenv(var, "")  # remembers the value before the test, restored after it
        monkeypatch.delenv(var)  # the session sets it again
    monkeypatch.setenv("EMODIS_DASHBOARD", "0")
    capfd.readouterr()
    with ray_session(num_cpus=1):
        assert ray.data.range(100).map_batches(lambda b: b).count() == 100
    err = capfd.readouterr().err
    for noise in ("Starting execution", "Progress bars", "Running Dataset", "Token authentication is enabled",
                  "Execution plan"):
        assert noise not in err, err
    assert not ray.is_initialized()


def test_cached_runs_share_the_cpus_and_always_leave_ray_data_one() -> None:
    """Runs over a materialised cache: one per train worker's CPU (two 1-worker runs on two cores), capped by
    GPUs and by memory; their workers split every CPU but Ray Data's."""
    from emodis_ray.config import load_config, replace
    from emodis_ray.runtime.session import cached_runs_at_once
    from emodis_ray.train.fit import worker_resources

    assert cached_runs_at_once(1, 2, memory_gb=24) == 2
    assert cached_runs_at_once(2, 2, memory_gb=24) == 1
    assert cached_runs_at_once(1, 16, memory_gb=7) == 2  # 3 GB a run
    assert cached_runs_at_once(1, 16, gpus=2, use_gpu=True, memory_gb=500) == 2
    cfg = load_config("tiny")
    assert worker_resources(cfg, 2) == {"CPU": 1.0}
    assert worker_resources(cfg, 2, runs_at_once=2) == {"CPU": 0.5}  # 2 x 0.5: one CPU stays for Ray Data
    assert worker_resources(replace(cfg, train={"workers": 2}), 4, runs_at_once=2) == {"CPU": 0.75}


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_run_at_once_returns_every_result_in_order_and_reports_each() -> None:
    from emodis_ray.runtime.session import run_at_once

    seen: list[str] = []
    with ray_session(num_cpus=2, dashboard=False):
        power = lambda a, b: a**b  # noqa: E731 (a Python function, pickled by value for the tasks)
        got = run_at_once(power, [(f"2^{k}", (2, k)) for k in range(5)], 2, lambda label, r: seen.append(label))
    assert got == [1, 2, 4, 8, 16] and sorted(seen) == sorted(f"2^{k}" for k in range(5))
    assert run_at_once(pow, [("a", (3, 2))], 1) == [9]  # one at a time: on this process, no Ray needed
