"""The Ray Data engine (``ray_address=...``, ``povidgen build --ray``): on a local Ray instance
with two workers, a build writes what a local build writes, byte for byte, failed rows
included; Ray is started and shut down only when the build must; what cannot go to Ray is a
clear error."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from povidgen import (
    DiffusionNoise,
    Example,
    Hallucination,
    Hallucinator,
    PairBuilder,
    PovidgenError,
    ShardLimits,
)
from povidgen.cli import main
from povidgen.pairs import ray_engine
from povidgen.pairs.builder import BuildReport
from povidgen.sources.demo import demo_dataset

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.filterwarnings(
    # Ray Data's own DataContext() sets its deprecated fields and warns about them (Ray 2.60)
    "ignore::DeprecationWarning:ray.data.context"
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance with two CPUs (so two actors) for the module: starting one takes
    seconds. Token authentication is off (it would write a token into the home folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()


def scenes() -> list[dict[str, Any]]:
    """24 demo rows with failures in both places: a repeated id (found by the driver), a
    broken image and an empty answer (found on the workers)."""
    rows = [dict(row) for row in demo_dataset(n=24, seed=0)]
    rows[4]["image"] = b"not an image"
    rows[10]["id"] = rows[2]["id"]
    rows[17]["answer"] = " "
    return rows


def build(rows: list[dict[str, Any]], out: Path, **options: Any) -> BuildReport:
    builder = PairBuilder.from_dataset(
        rows,
        prompt_column="question",
        id_column="id",
        distorter=DiffusionNoise(step=500),
        batch_size=4,  # six batches: both actors get some
        workers=2,
        shard_limits=ShardLimits(max_rows=10),  # several output files
        **options,
    )
    return builder.run(out)


def assert_same_output(ray_out: Path, local_out: Path) -> None:
    names = sorted(p.name for p in (local_out / "data").iterdir())
    assert len(names) > 1
    assert sorted(p.name for p in (ray_out / "data").iterdir()) == names
    for name in names:
        assert (ray_out / "data" / name).read_bytes() == (local_out / "data" / name).read_bytes()
    assert (ray_out / "errors.jsonl").read_bytes() == (local_out / "errors.jsonl").read_bytes()


def test_a_build_on_ray_equals_a_local_build(local_ray: None, tmp_path: Path) -> None:
    rows = scenes()
    local = build(rows, tmp_path / "local")
    assert local.complete
    assert (local.errors_by_stage["input"], local.errors_by_stage["image"]) == (2, 1)
    assert local.pairs + local.failed == 24

    on_ray = build(rows, tmp_path / "ray", ray_address="local")
    assert on_ray.complete
    assert on_ray.stopped is None
    assert (on_ray.pairs, on_ray.errors_by_stage) == (local.pairs, local.errors_by_stage)
    assert_same_output(tmp_path / "ray", tmp_path / "local")
    assert ray.is_initialized()  # an instance the build did not start is left running


def test_the_cli_builds_on_ray(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = ["build", "--demo", "--demo-size", "12", "--shard-rows", "5"]
    assert main([*demo, "--out", str(tmp_path / "local")]) == 0
    assert main([*demo, "--out", str(tmp_path / "ray"), "--ray", "local"]) == 0
    assert "pairs built:  12" in capsys.readouterr().out
    assert_same_output(tmp_path / "ray", tmp_path / "local")


class _FakeRay(SimpleNamespace):
    """What the engine asks of the ``ray`` module to start and stop it, recorded."""

    def __init__(self, *, running: bool = False, refuse: bool = False) -> None:
        super().__init__(cloudpickle=ray.cloudpickle, calls=[])
        self.running, self.refuse = running, refuse

    def is_initialized(self) -> bool:
        return bool(self.running)

    def init(self, **options: Any) -> None:
        self.calls.append(("init", options))
        if self.refuse:
            raise ConnectionError("nothing listens there")

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))


@pytest.mark.parametrize(
    ("address", "running", "calls"),
    [
        (
            "local",
            False,
            [("init", {"address": "local", "num_cpus": 3, "include_dashboard": False})],
        ),
        ("auto", False, [("init", {})]),  # Ray's own search: RAY_ADDRESS, `ray start`, or new
        ("ray://head:10001", False, [("init", {"address": "ray://head:10001"})]),
        ("local", True, []),  # this process's instance is used, and left running
    ],
)
def test_ray_is_started_and_shut_down_only_when_the_build_must(
    monkeypatch: pytest.MonkeyPatch, address: str, running: bool, calls: list[Any]
) -> None:
    fake = _FakeRay(running=running)
    ran: list[int] = []

    def run(*args: Any) -> Iterator[Any]:
        ran.append(1)
        yield from ()

    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake)
    monkeypatch.setattr(ray_engine, "_run", run)
    builder = PairBuilder.from_dataset(
        demo_dataset(n=2), prompt_column="question", workers=3, ray_address=address
    )
    assert list(ray_engine.ray_outcomes(builder, 0)) == []
    assert ran == [1]
    assert fake.calls == calls + ([("shutdown", {})] if calls else [])


def test_an_unreachable_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: _FakeRay(refuse=True))
    builder = PairBuilder.from_dataset(
        demo_dataset(n=2), prompt_column="question", ray_address="head:6379"
    )
    with pytest.raises(PovidgenError, match=r"cannot start or reach Ray at 'head:6379'"):
        list(ray_engine.ray_outcomes(builder, 0))


class _Locked(Hallucinator):
    """Holds a lock, which cannot be pickled."""

    name = "locked"

    def __init__(self) -> None:
        self.lock = threading.Lock()

    async def ahallucinate(self, example: Example) -> Hallucination:
        raise AssertionError("never called")


def test_what_cannot_be_pickled_is_named_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeRay()
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake)
    builder = PairBuilder.from_dataset(
        demo_dataset(n=2), prompt_column="question", hallucinator=_Locked(), ray_address="local"
    )
    with pytest.raises(PovidgenError, match=r"hallucinator \(_Locked\).*must be picklable"):
        list(ray_engine.ray_outcomes(builder, 0))
    assert fake.calls == []


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    builder = PairBuilder.from_dataset(
        demo_dataset(n=2), prompt_column="question", ray_address="auto"
    )
    with pytest.raises(PovidgenError, match=r"pip install 'povidgen\[ray\]'"):
        list(ray_engine.ray_outcomes(builder, 0))
