"""``povidgen build --config FILE.yaml``: every flag a key, flags over the file, component
options checked against the constructors, the resolved settings written beside the output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from pydantic import SecretStr

from povidgen.cli import _build_config, _parser, main
from povidgen.distort.crop import RandomResizedCrop
from povidgen.distort.noise import GaussianNoise
from povidgen.hallucinate.pricing import ModelPrice
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.pairs.build_config import CONFIG_FILE, BuildConfig, BuildConfigError
from povidgen.pairs.output import MARKER
from povidgen.pairs.shards import MANIFEST, load_pairs


def build_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = subparsers.choices["build"]
    return parser


def resolved(argv: list[str]) -> BuildConfig:
    """The configuration ``povidgen build ARGV`` would run with."""
    return _build_config(_parser().parse_args(["build", *argv]))


def write(path: Path, settings: dict[str, Any] | str) -> Path:
    text = settings if isinstance(settings, str) else yaml.safe_dump(settings)
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``povidgen ARGV``, which must fail with exit 2 and a one-line message."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("povidgen: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- every flag has a key --------------------------------------------------------------------


def test_every_build_flag_has_a_config_key_and_every_key_a_flag() -> None:
    dests = {
        action.dest
        for action in build_parser()._actions
        if action.dest not in (argparse.SUPPRESS, "help", "config")
    }
    keys = set(BuildConfig.model_fields)
    assert dests - keys == set(), "flags without a config key"
    assert keys - dests == set(), "config keys without a flag"


def test_the_key_is_the_flag_name_with_underscores() -> None:
    renamed = {"--hallucinator": "provider", "--hallucinator-option": "hallucinator_options"}
    renamed["--distorter-option"] = "distorter_options"
    for action in build_parser()._actions:
        if action.dest in (argparse.SUPPRESS, "help", "config"):
            continue
        flags = [f for f in action.option_strings if f.startswith("--")]
        names = {renamed.get(f, f[2:].replace("-", "_")) for f in flags}
        assert action.dest in names, (flags, action.dest)


def test_build_flags_have_no_argparse_defaults() -> None:
    """Defaults live in BuildConfig; a default in argparse would override the file."""
    for action in build_parser()._actions:
        if action.dest not in ("help",):
            assert action.default is argparse.SUPPRESS, action.dest


# -- the must-show: a file reproduces the flags ------------------------------------------------

FLAGS = [
    "--demo",
    "--demo-size",
    "6",
    "--seed",
    "7",
    "--distorter",
    "gaussian_noise",
    "--distorter-option",
    "sigma=0.2",
    "--hallucinator-option",
    "max_edits=2",
    "--shard-rows",
    "4",
    "--concurrency",
    "2",
]
SETTINGS: dict[str, Any] = {
    "demo": True,
    "demo_size": 6,
    "seed": 7,
    "distorter": "gaussian_noise",
    "distorter_options": {"sigma": 0.2},
    "hallucinator_options": {"max_edits": 2},
    "shard_rows": 4,
    "concurrency": 2,
}


def manifest_lines(folder: Path) -> list[dict[str, Any]]:
    """The manifest, less the time each shard took (the only field a rerun changes)."""
    lines = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    for line in lines:
        del line["seconds"]
    return lines


def same_dataset(first: Path, second: Path) -> None:
    shards = sorted(p.name for p in (first / "data").glob("*.parquet"))
    assert shards == sorted(p.name for p in (second / "data").glob("*.parquet"))
    assert len(shards) == 2  # 6 rows at 4 a shard: the shard setting reached the builder
    for name in shards:
        assert (first / "data" / name).read_bytes() == (second / "data" / name).read_bytes()
    assert manifest_lines(first) == manifest_lines(second)
    marker = [json.loads((f / MARKER).read_text())["configuration"] for f in (first, second)]
    assert marker[0] == marker[1]
    assert (first / "errors.jsonl").read_bytes() == (second / "errors.jsonl").read_bytes()


def test_a_config_file_builds_the_same_dataset_as_the_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "build.yaml", SETTINGS)
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    assert main(["build", "--config", str(config), "--out", str(a)]) == 0
    assert main(["build", *FLAGS, "--out", str(b)]) == 0
    same_dataset(a, b)
    configuration = json.loads((a / MARKER).read_text())["configuration"]
    assert configuration["distorter"] == {"name": "gaussian_noise", "params": {"sigma": 0.2}}
    assert configuration["hallucinator"]["params"]["max_edits"] == 2
    assert configuration["seed"] == 7
    # the settings written beside each output are the same, but for where it went
    written = [yaml.safe_load((f / CONFIG_FILE).read_text()) for f in (a, b)]
    assert written[0].pop("out") == str(a)
    assert written[1].pop("out") == str(b)
    assert written[0] == written[1]
    # ... and the written file builds the same dataset again
    assert main(["build", "--config", str(a / CONFIG_FILE), "--out", str(c)]) == 0
    same_dataset(a, c)
    # the output folder still opens as a dataset with the YAML file in it
    assert load_pairs(a)["id"] == load_pairs(b)["id"]
    assert datasets.load_dataset(str(a), split="train").num_rows == 6


# -- flags over the file -------------------------------------------------------------------------


def test_flags_override_the_file_even_when_equal_to_the_default(tmp_path: Path) -> None:
    config = write(
        tmp_path / "build.yaml",
        {
            "demo": True,
            "out": "from-file",
            "seed": 5,
            "concurrency": 3,
            "provider": "rule",
            "distorter": "gaussian_noise",
            "distorter_options": {"sigma": 0.3, "severity": None},
        },
    )
    settings = resolved(["--config", str(config)])
    assert (settings.seed, settings.concurrency, settings.out) == (5, 3, Path("from-file"))
    over = resolved(
        [
            *("--config", str(config), "--seed", "0", "--out", "cli"),
            *("--distorter-option", "sigma=0.1"),
        ]
    )
    assert over.seed == 0  # the default, given: it still wins
    assert over.out == Path("cli")
    assert over.concurrency == 3  # not given: the file's
    assert over.distorter_options == {"sigma": 0.1, "severity": None}  # merged key by key
    # --dataset replaces the file's demo: true (they are one choice)
    other = resolved(["--config", str(config), "--dataset", "rows.jsonl"])
    assert (other.demo, other.dataset) == (False, Path("rows.jsonl"))


def test_without_a_file_the_defaults_are_the_old_flag_defaults() -> None:
    settings = resolved(["--demo", "--out", "x"])
    assert settings.model_dump(exclude={"demo", "out"}) == BuildConfig(
        demo=True, out=Path("x")
    ).model_dump(exclude={"demo", "out"})
    assert (settings.seed, settings.provider, settings.distorter) == (0, "rule", "diffusion")
    assert (settings.concurrency, settings.demo_size, settings.shard_rows) == (8, 64, 10_000)
    assert settings.shard_limits().max_bytes == 512 * 2**20
    # the diffusion distorter gets its own defaults: step 500, clamp, as before
    distorter = settings.create_distorter()
    assert distorter is not None
    assert distorter.params()["step"] == 500
    assert distorter.params()["overflow"] == "clamp"


# -- errors: one line, naming the key, exit 2 ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("demo: true\nseed: many\n", "seed: Input should be a valid integer"),
        ("demo: true\nsede: 3\n", "unknown key 'sede'; did you mean 'seed'?"),
        ("demo: true\ndistorter_options: [1, 2]\n", "distorter_options: Input should be a"),
        ("demo: true\nseed: -1\n", "seed: Input should be greater than or equal to 0"),
        ("demo: [true\n", "not valid YAML"),
        ("demo: true\ndemo: false\n", "the key 'demo' is given twice"),
        ("- demo\n- seed\n", "expected a mapping of settings (key: value), got a list"),
        ("seed: 1\n", "no input: give --dataset PATH|HUB_ID or --demo"),
        ("demo: true\ndataset: x.jsonl\n", "--demo and --dataset exclude each other"),
        ("demo: true\nsplit: test\n", "--split and --streaming need --dataset"),
        ("demo: true\nnum_shards: 2\nshard_index: 2\n", "--shard-index 2 must be less than"),
    ],
)
def test_config_file_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    config = write(tmp_path / "bad.yaml", text)
    out = tmp_path / "out"
    line = one_line_error(["build", "--config", str(config), "--out", str(out)], capsys)
    assert expected in line
    assert not out.exists()


def test_missing_file_and_missing_out_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    line = one_line_error(["build", "--config", str(missing), "--out", "x"], capsys)
    assert f"--config {missing}: no such file" in line
    line = one_line_error(["build", "--config", str(tmp_path), "--out", "x"], capsys)
    assert "a folder, not a YAML file" in line
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    line = one_line_error(["build", "--config", str(fifo), "--out", "x"], capsys)
    assert "not a regular file" in line
    config = write(tmp_path / "build.yaml", {"demo": True})
    line = one_line_error(["build", "--config", str(config)], capsys)
    assert "no output folder: give --out DIR" in line


# -- component options ---------------------------------------------------------------------------


def test_options_reach_the_constructors(tmp_path: Path) -> None:
    settings = resolved(
        [
            *("--demo", "--out", "x", "--distorter", "random_resized_crop"),
            *("--distorter-option", "area=[0.1, 0.3]", "--distorter-option", "ratio=[1, 1]"),
            *("--hallucinator-option", "min_edits=1", "--hallucinator-option", "max_edits=1"),
            *("--hallucinator-option", "kinds=[count]"),
        ]
    )
    distorter = settings.create_distorter()
    assert isinstance(distorter, RandomResizedCrop)
    assert (distorter.area, distorter.ratio) == ((0.1, 0.3), (1.0, 1.0))
    hallucinator = settings.create_hallucinator()
    assert isinstance(hallucinator, RuleHallucinator)
    assert (hallucinator.min_edits, hallucinator.max_edits) == (1, 1)
    assert {kind.value for kind in hallucinator.kinds} == {"count"}
    noise = resolved(["--demo", "--out", "x", "--distorter", "gaussian_noise"])
    noise_file = write(
        tmp_path / "noise.yaml",
        {"distorter": "gaussian_noise", "distorter_options": {"sigma": "1e-3"}},
    )
    with_file = resolved(["--config", str(noise_file), "--demo", "--out", "x"])
    assert isinstance(noise.create_distorter(), GaussianNoise)
    # a string the annotation reads as a number becomes one (YAML 1.1 reads 1e-3 as text)
    assert with_file.distorter_options_resolved() == {"sigma": 0.001}


def test_a_mapping_becomes_the_pydantic_model_the_constructor_takes(tmp_path: Path) -> None:
    config = write(
        tmp_path / "openai.yaml",
        {
            "demo": True,
            "provider": "openai",
            "model": "my-model",
            "base_url": "http://localhost:8000/v1",
            "hallucinator_options": {
                "prices": {"my-model": {"input_per_mtok": 1.5, "output_per_mtok": 6}},
                "max_attempts": 2,
            },
        },
    )
    options = resolved(["--config", str(config), "--out", "x"]).hallucinator_options_resolved()
    assert options["prices"] == {"my-model": ModelPrice(input_per_mtok=1.5, output_per_mtok=6)}
    assert options["max_attempts"] == 2
    assert options["model"] == "my-model"
    # --price-in/--price-out are the same option: both at once is an error
    with pytest.raises(BuildConfigError, match=r"--price-in/--price-out and the hallucinator"):
        resolved(
            ["--config", str(config), "--out", "x", "--price-in", "1", "--price-out", "2"]
        ).hallucinator_options_resolved()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--distorter", "gaussian_noise", "--noise-step", "300"],
            "--noise-step: the 'gaussian_noise' distorter takes no option 'step' (its options: "
            "severity, sigma)",
        ),
        (
            ["--distorter", "jpeg", "--overflow", "wrap"],
            "--overflow: the 'jpeg' distorter takes no option 'overflow'",
        ),
        (
            ["--distorter", "none", "--noise-step", "300"],
            "--noise-step: there is no distorter (--distorter none)",
        ),
        (
            ["--distorter-option", "sigma=0.1"],
            "distorter option 'sigma': the 'diffusion' distorter takes no such option (its "
            "options: num_steps, overflow, schedule, severity, space, step)",
        ),
        (
            ["--distorter-option", "stpe=3"],
            "takes no such option; did you mean 'step'?",
        ),
        (
            ["--noise-step", "300", "--distorter-option", "step=200"],
            "--noise-step and the distorter option 'step' both set 'step' of the 'diffusion' "
            "distorter",
        ),
        (
            ["--distorter", "gaussian_noise", "--distorter-option", "sigma=loud"],
            "distorter option 'sigma' of the 'gaussian_noise' distorter: Input should be a "
            "valid number",
        ),
        (
            ["--hallucinator-option", "temperature=0.5"],
            "hallucinator option 'temperature': the 'rule' hallucinator takes no such option "
            "(its options: kinds, max_edits, min_edits, omissions, word_lists)",
        ),
        (
            ["--hallucinator-option", "omissions=2"],
            "cannot set up the 'rule' provider: omissions must be a number from 0 to 1, got 2",
        ),
        (
            ["--hallucinator-option", "min_edits=true"],  # kept a bool: the constructor refuses
            "cannot set up the 'rule' provider: min_edits must be an int, got True",
        ),
        (["--rpm", "10"], "--rpm: only for model providers, not 'rule'"),
        (
            ["--price-in", "0", "--price-out", "0"],
            "--price-in, --price-out: only for model providers, not 'rule'",
        ),
        (["--hallucinator-option", "nokey"], "expected KEY=VALUE"),
        (["--distorter-option", "a=[1"], "not a YAML value"),
    ],
)
def test_options_a_component_does_not_take_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    line = one_line_error(["build", "--demo", "--demo-size", "2", *argv, "--out", str(out)], capsys)
    assert expected in line
    assert not out.exists()


def test_an_open_ended_constructor_takes_any_option() -> None:
    from povidgen.pairs.build_config import _parameters

    class Loose:
        def __init__(self, size: int = 1, **anything: Any) -> None: ...

    class Strict(Loose):
        def __init__(self, *, depth: int = 2, **options: Any) -> None:
            super().__init__(**options)

    class Closed:
        def __init__(self, depth: int) -> None: ...

    assert _parameters(Strict) == ({"depth": int, "size": int}, True)
    assert _parameters(Closed) == ({"depth": int}, False)
    assert _parameters(type("Bare", (), {})) == ({}, False)


# -- secrets and the written file ---------------------------------------------------------------


def test_an_api_key_option_is_passed_as_a_secret_and_never_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = resolved(
        [
            *("--demo", "--out", "x", "--provider", "openai", "--model", "m"),
            *("--base-url", "http://localhost:9/v1", "--price-in", "1", "--price-out", "1"),
            *("--hallucinator-option", "api_key=sk-do-not-write"),
            *("--hallucinator-option", "timeout=5"),
        ]
    )
    options = settings.hallucinator_options_resolved()
    assert isinstance(options["api_key"], SecretStr)
    text = settings.resolved_yaml()
    assert "sk-do-not-write" not in text
    assert "api_key:" not in text
    written = yaml.safe_load(text)
    assert written["hallucinator_options"] == {"timeout": 5}
    assert written["price_in"] == 1.0
    # a SecretStr given through the Python API is left out too
    direct = BuildConfig(demo=True, out=Path("x"), distorter_options={"token": SecretStr("s3cret")})
    assert "s3cret" not in direct.resolved_yaml()


def test_the_written_file_reads_back_as_the_same_configuration(tmp_path: Path) -> None:
    config = write(tmp_path / "build.yaml", {**SETTINGS, "word_lists": None, "limit": 3})
    settings = resolved(["--config", str(config), "--out", str(tmp_path / "o")])
    again = write(tmp_path / "again.yaml", settings.resolved_yaml())
    assert BuildConfig.resolve(again, {}) == settings


def test_the_file_goes_only_into_this_builds_folder(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    assert main(["build", *FLAGS, "--out", str(out)]) == 0
    first = (out / CONFIG_FILE).read_text()
    configuration = json.loads((out / MARKER).read_text())["configuration"]
    settings = resolved([*FLAGS, "--out", str(out), "--concurrency", "5"])
    # another build's configuration: the folder is not this build's, nothing is written
    assert settings.write_beside(out, {**configuration, "seed": 8}) is None
    assert (out / CONFIG_FILE).read_text() == first
    # a folder without the marker is never written into
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    assert settings.write_beside(stranger, configuration) is None
    assert list(stranger.iterdir()) == []
    # a link in place of the file is not followed
    target = tmp_path / "elsewhere.txt"
    target.write_text("mine")
    (out / CONFIG_FILE).unlink()
    (out / CONFIG_FILE).symlink_to(target)
    assert settings.write_beside(out, configuration) is None
    assert target.read_text() == "mine"
    (out / CONFIG_FILE).unlink()
    # this build's folder: written, and no temporary file left beside it
    assert settings.write_beside(out, configuration) == out / CONFIG_FILE
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["concurrency"] == 5
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_an_already_finished_build_keeps_its_file(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    assert main(["build", *FLAGS, "--out", str(out)]) == 0
    first = (out / CONFIG_FILE).read_bytes()
    # the same build with another concurrency: nothing is built, the file describes the run
    # that built it
    assert main(["build", *FLAGS, "--concurrency", "3", "--out", str(out)]) == 0
    assert (out / CONFIG_FILE).read_bytes() == first
    # another build swapped in with --overwrite: its settings replace the earlier ones
    assert main(["build", *FLAGS, "--seed", "8", "--overwrite", "--out", str(out)]) == 0
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["seed"] == 8


def test_the_example_in_the_docs_resolves(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "docs" / "building.md").read_text(encoding="utf-8")
    block = text.split("## Configuration files", 1)[1].split("```yaml\n", 1)[1].split("```")[0]
    config = write(tmp_path / "build.yaml", block)
    settings = resolved(["--config", str(config), "--out", str(tmp_path / "pairs")])
    assert (settings.provider, settings.distorter, settings.rpm) == ("openai", "gaussian_blur", 500)
    options = settings.hallucinator_options_resolved()
    assert options["prices"]["gpt-4o-mini"] == ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6)
    assert options["requests_per_minute"] == 500
    assert options["max_cost_usd"] == 20
    assert settings.distorter_options_resolved() == {"radius": 3}
