"""Built-ins are found through the same entry-point groups third parties use."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import povidgen.registry as registry
from povidgen import (
    DiffusionNoise,
    PluginError,
    RuleHallucinator,
    available_distorters,
    available_hallucinators,
    get_distorter,
    get_hallucinator,
)


def test_builtins_are_registered() -> None:
    assert "rule" in available_hallucinators()
    assert "diffusion" in available_distorters()
    assert isinstance(get_hallucinator("rule"), RuleHallucinator)
    noise = get_distorter("diffusion", step=300, overflow="wrap")
    assert isinstance(noise, DiffusionNoise)
    assert noise.step == 300


def test_unknown_names_list_what_exists() -> None:
    with pytest.raises(PluginError, match=r"no hallucinator named 'gpt9'.*available: .*rule"):
        get_hallucinator("gpt9")
    with pytest.raises(PluginError, match=r"available: .*diffusion"):
        get_distorter("smudge")


def test_a_third_party_entry_point_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = EntryPoint(
        name="shouty",
        value="tests.test_hallucinator_base:Upper",
        group=registry.HALLUCINATOR_GROUP,
    )
    real = registry.entry_points

    def fake(*, group: str) -> list[EntryPoint]:
        found = list(real(group=group))
        return [*found, extra] if group == registry.HALLUCINATOR_GROUP else found

    monkeypatch.setattr(registry, "entry_points", fake)
    assert "shouty" in available_hallucinators()
    assert type(get_hallucinator("shouty")).__name__ == "Upper"


def test_a_plugin_of_the_wrong_kind_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = EntryPoint(
        name="wrong", value="collections:OrderedDict", group=registry.DISTORTER_GROUP
    )
    monkeypatch.setattr(registry, "entry_points", lambda *, group: [wrong])
    with pytest.raises(PluginError, match=r"not a povidgen\.Distorter"):
        get_distorter("wrong")
    broken = EntryPoint(name="broken", value="no_such_module:X", group=registry.DISTORTER_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda *, group: [broken])
    with pytest.raises(PluginError, match="cannot load distorter 'broken'"):
        get_distorter("broken")
