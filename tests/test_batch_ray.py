"""The Ray executor against a local Ray (2 CPUs, one-thread workers): the local executor's results, bit
for bit; resume; a crashed worker replaced and its asset given once more."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from batch_fixtures import ROWS, quick_assets, result_arrays, summary
from page_faults import BLOCK_PAGES, GLIBC, NOT_GLIBC

from engine.batch.ray_executor import AssetWorker, RayExecutor
from engine.batch.run import AssetEvent, LocalExecutor, run_batch
from engine.compat import TENSOR_CHECKS_VARIABLE
from engine.events import CancelToken
from engine.export import RESULT_FILES

ray = pytest.importorskip("ray", reason="Ray is an optional extra (partstyle[ray]); the test extras install it")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def ray_run(assets, out, **kwargs):
    executor = RayExecutor(address=None, models="tiny", device="cpu", workers=2, threads=1, **kwargs)
    return run_batch(assets, str(out), executor, models="tiny"), executor


def statuses(report) -> dict[str, str]:
    return {p.asset.id: report.status(p) for p in report.planned}


@pytest.fixture(scope="module")
def both(tmp_path_factory, local_ray):
    """The three assets with the Ray executor and with the local one (one thread, as a Ray worker)."""
    folder = tmp_path_factory.mktemp("ray")
    assets = quick_assets(folder)
    ray_report, executor = ray_run(assets, folder / "ray")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local_report = run_batch(assets, str(folder / "local"), LocalExecutor("tiny", device="cpu"), models="tiny")
    finally:
        torch.set_num_threads(before)
    return folder, assets, ray_report, local_report, executor


def test_ray_gives_the_local_executors_outcomes_and_results(both):
    folder, _, ray_report, local_report, executor = both
    assert statuses(ray_report) == statuses(local_report) == {"lamp": "done", "broken": "failed", "mug": "done"}
    for asset_id in ("lamp", "mug"):
        on_ray, here = result_arrays(folder / "ray" / asset_id), result_arrays(folder / "local" / asset_id)
        assert on_ray.keys() == here.keys()
        for key in on_ray:  # same seed, same thread count, same machine: bit-identical
            assert np.array_equal(on_ray[key], here[key]), (asset_id, key)
    failure = json.loads((folder / "ray" / "broken" / "failure.json").read_text())
    assert "no mesh could be read" in failure["error"]
    assert {k: v["status"] for k, v in summary(folder / "ray").items()} == {
        "lamp": "done", "broken": "failed", "mug": "done"}
    workers = {json.loads((folder / "ray" / a / "run.json").read_text())["device"] for a in ("lamp", "mug")}
    assert workers == {"cpu"}
    assert len(executor.round_trips) == 3
    # the worker's seconds are rounded to the millisecond, the round trip's are not
    assert all(trip.seconds >= trip.worker_seconds - 0.0005 for trip in executor.round_trips)


def test_a_ray_rerun_skips_the_done_assets(both, tmp_path):
    folder, assets, _, _, _ = both
    import shutil

    shutil.copytree(folder / "ray", tmp_path / "out")
    again, executor = ray_run(assets, tmp_path / "out")
    assert statuses(again) == {"lamp": "skipped (done)", "broken": "skipped (failed before)", "mug": "skipped (done)"}
    assert executor.round_trips == []  # nothing was handed to a worker
    changed = quick_assets(tmp_path, [{**ROWS[0], "prompt": "blue base, red shade"}, *ROWS[1:]])
    redone, executor = ray_run(changed, tmp_path / "out")
    assert statuses(redone) == {"lamp": "done", "broken": "skipped (failed before)", "mug": "skipped (done)"}
    assert [trip.asset_id for trip in executor.round_trips] == ["lamp"]
    assert json.loads((tmp_path / "out" / "lamp" / "run.json").read_text())["prompt"] == "blue base and red shade"


def test_stop_lets_the_running_assets_finish_and_starts_no_other(tmp_path, local_ray):
    rows = [{**ROWS[0], "id": f"lamp{k}"} for k in range(3)]
    assets = quick_assets(tmp_path, rows)
    stop = CancelToken()

    def stop_after_first(event):
        if isinstance(event, AssetEvent) and event.outcome is not None:
            stop.cancel()

    executor = RayExecutor(address=None, models="tiny", device="cpu", workers=2, threads=1)
    report = run_batch(assets, str(tmp_path / "out"), executor, models="tiny", on_event=stop_after_first, stop=stop)
    # two workers: lamp0 and lamp1 were running when the first ended; lamp2 was never handed out
    assert statuses(report) == {"lamp0": "done", "lamp1": "done", "lamp2": "not run"} and report.stopped
    assert not (tmp_path / "out" / "lamp2").exists()
    assert sorted(os.listdir(tmp_path / "out" / "lamp1")) == sorted(RESULT_FILES)


def test_a_crashed_worker_is_replaced_and_its_asset_retried_once(both, tmp_path):
    folder, _, _, _, _ = both
    assets = quick_assets(tmp_path, [ROWS[0], ROWS[2]])
    marker = str(tmp_path / "crashed-once")

    class CrashingOnce(AssetWorker):
        """Kills its own process the first time it is given the lamp."""

        def run(self, asset, out_dir, fingerprint):
            if asset.id == "lamp" and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return super().run(asset, out_dir, fingerprint)

    report, _ = ray_run(assets, tmp_path / "out", worker_class=CrashingOnce)
    assert os.path.exists(marker)
    assert statuses(report) == {"lamp": "done", "mug": "done"}
    assert np.array_equal(result_arrays(tmp_path / "out" / "lamp")["colors_srgb"],
                          result_arrays(folder / "ray" / "lamp")["colors_srgb"])


def test_an_asset_whose_worker_dies_twice_fails_alone(tmp_path, local_ray):
    assets = quick_assets(tmp_path, [ROWS[0], ROWS[2]])

    class CrashingOnLamp(AssetWorker):
        def run(self, asset, out_dir, fingerprint):
            if asset.id == "lamp":
                os._exit(1)
            return super().run(asset, out_dir, fingerprint)

    report, _ = ray_run(assets, tmp_path / "out", worker_class=CrashingOnLamp)
    assert statuses(report) == {"lamp": "failed", "mug": "done"}
    assert "died twice" in summary(tmp_path / "out")["lamp"]["error"]
    assert "died twice" in json.loads((tmp_path / "out" / "lamp" / "failure.json").read_text())["error"]


def test_a_worker_keeps_freed_memory_and_skips_tensor_checks(local_ray):
    """A Ray worker's process keeps freed memory for reuse (test_allocator.py) and skips transformers'
    in-forward tensor checks (test_compat.py), as `python -m engine` does."""
    if not GLIBC:
        pytest.skip(NOT_GLIBC)
    tests = os.path.dirname(os.path.abspath(__file__))

    class CountingFaults(AssetWorker):
        def faults(self) -> int:
            import sys

            sys.path.insert(0, tests)
            from page_faults import steady_step_faults

            return steady_step_faults()

        def tensor_checks(self) -> str | None:
            return os.environ.get(TENSOR_CHECKS_VARIABLE)

    actor = ray.remote(CountingFaults).remote("tiny", "cpu", False, 1)
    assert ray.get(actor.faults.remote()) < BLOCK_PAGES // 10
    assert ray.get(actor.tensor_checks.remote()) == "1"
    ray.kill(actor)
