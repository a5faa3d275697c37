"""ray_session: a local cluster started by the program comes with the dashboard (and so the State API)."""

from __future__ import annotations

import pytest
import ray

from emodis_ray.runtime.session import ray_session


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
    with ray_session(num_cpus=1):
        with pytest.raises(RayStateApiException):
            list_nodes(timeout=10)
        assert "dashboard" not in capsys.readouterr().err


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
