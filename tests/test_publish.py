"""povidgen.publish / ``povidgen push``: the dry run, the card, and pushes: through a recording
:class:`povidgen.hub.client.HubClient`, and through ``huggingface_hub.HfApi`` to a fake Hub on
127.0.0.1 (:mod:`tests.fakes.hub_server`, LFS "basic" transfer with Xet disabled)."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

import povidgen
from povidgen.cli import main
from povidgen.hub import PublishError, PublishResult, publish
from povidgen.hub.card import (
    END,
    START,
    CardFacts,
    EditCounter,
    mark_spans,
    render_card,
    size_category,
)
from povidgen.hub.client import HfHubClient
from tests.fakes.hub_server import FakeHubServer
from tests.fakes.llm_server import FakeLLMServer, FaultKind

SECRET = "hf_publishTestSecret0123456789"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("publish") / "demo_pairs"
    assert main(["build", "--demo", "--demo-size", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dry(demo: Path) -> Path:
    out = demo.parent / "dry"
    assert main(["push", str(demo), "user/demo", "--dry-run", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def summary(demo: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((demo / "summary.json").read_text(encoding="utf-8"))
    return loaded


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(ds: datasets.Dataset) -> list[dict[str, Any]]:
    rows = []
    for row in ds:
        row = dict(row)
        for column in ("images", "rejected_images"):
            row[column] = [(im.size, im.mode, im.tobytes()) for im in row.get(column) or []]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The dry run


def test_dry_run_writes_exactly_the_upload(demo: Path, dry: Path) -> None:
    files = _files(dry)
    assert set(files) == {"README.md", "preview.png", "data/train-00000.parquet"}
    # the shards go up as the build wrote them
    assert files["data/train-00000.parquet"] == (demo / "data/train-00000.parquet").read_bytes()


def test_dry_run_loads_back_the_same_rows_with_images(demo: Path, dry: Path) -> None:
    loaded = datasets.load_dataset(str(dry), split="train")
    assert isinstance(loaded, datasets.Dataset)
    original = povidgen.load_pairs(demo)
    assert loaded.column_names == original.column_names
    assert len(loaded) == len(original) == 8
    assert _rows(loaded) == _rows(original)
    assert loaded[0]["images"][0].size == (256, 256)


def test_card_metadata(dry: Path) -> None:
    card = DatasetCard.load(dry / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert {"image-text-to-text", "visual-question-answering"} <= set(data["task_categories"])
    assert {"povidgen", "dpo", "vision-language"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]


def _table(text: str) -> dict[str, str]:
    cells = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(parts) == 2:
            cells[parts[0]] = parts[1]
    return cells


def test_card_states_the_runs_facts(demo: Path, dry: Path, summary: dict[str, Any]) -> None:
    text = DatasetCard.load(dry / "README.md").text
    assert text.count(START) == 1
    assert text.count(END) == 1
    configuration = summary["configuration"]
    table = _table(text)
    assert table["Source dataset"] == f"`{configuration['source']}`"
    assert table["Source license"].startswith("apache-2.0")
    assert table["Hallucinator"] == f"`{configuration['hallucinator']['name']}`"
    assert table["Distorter"] == f"`{configuration['distorter']['name']}`"
    assert table["Seed"] == str(configuration["seed"])
    assert table["Rows in"] == str(summary["rows"])
    assert table["Pairs out"] == str(summary["pairs"])
    assert table["Rows failed"] == str(summary["failed"])
    assert table["Cost"] == "none (no paid calls)"
    assert summary["cost_usd_all_runs"] is None
    assert table["Time"] == f"{summary['seconds_all_runs']:.1f} s"
    assert table["Built with"] == f"povidgen {summary['povidgen_version']}"
    assert table["Published with"] == f"povidgen {povidgen.__version__}"
    # parameters, as JSON blocks
    params = [json.loads(b.split("```", 1)[0]) for b in text.split("```json\n")[1:]]
    assert params == [
        configuration["hallucinator"]["params"],
        configuration["distorter"]["params"],
    ]
    # edits by kind and pair modes, counted from the rows themselves
    pairs = povidgen.load_pairs(demo)
    kinds: dict[str, int] = {}
    for provenance in pairs["provenance"]:
        for edit in provenance["edits"]:
            kinds[edit["kind"]] = kinds.get(edit["kind"], 0) + 1
    section = text.split("### Edits by kind", 1)[1].split("###", 1)[0]
    assert {k: int(v) for k, v in _table(section).items() if k not in ("kind", "---")} == kinds
    assert table["Text-contrast pairs"] == "8"
    assert table["Image-contrast pairs"] == "8"
    assert "None: every row became a pair." in text  # no failures in this run
    # three examples, injected spans marked
    examples = text.split("### Examples", 1)[1].split("### Preview", 1)[0]
    for row in pairs.select(range(3)):
        assert f"`{row['id']}`" in examples
        for edit in row["provenance"]["edits"]:
            assert f'<mark title="{edit["kind"]}">{edit["injected"]}</mark>' in examples
    assert f"`{pairs[3]['id']}`" not in examples
    # the preview, loading, training, citation
    assert "](preview.png)" in text
    assert 'load_dataset("user/demo", split="train")' in text
    assert "DPOTrainer" in text
    assert "povidgen train" in text
    assert "@article{zhou2024povid" in text
    assert "2402.11411" in text


def test_preview_picture_opens(dry: Path) -> None:
    from PIL import Image

    with Image.open(dry / "preview.png") as picture:
        assert picture.format == "PNG"
        assert picture.width == 1200


def test_a_later_dry_run_keeps_the_users_text(demo: Path, dry: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(dry, out)
    card = DatasetCard.load(out / "README.md")
    card.data.language = ["en"]
    card.data.tags = [*card.data.tags, "my-tag"]
    start, end = card.text.index(START), card.text.index(END)
    card.text = (
        "My own introduction.\n\n"
        + card.text[:start]
        + START
        + "\nstale povidgen text\n"
        + card.text[end:]
        + "\n## My notes\n\nKeep me.\n"
    )
    card.save(out / "README.md")
    publish(demo, "user/demo", dry_run=out)
    again = DatasetCard.load(out / "README.md")
    assert again.text.startswith("My own introduction.")
    assert again.text.rstrip().endswith("## My notes\n\nKeep me.")
    assert "stale povidgen text" not in again.text
    assert again.text.count(START) == 1
    assert "### Examples" in again.text
    data = again.data.to_dict()
    assert data["language"] == ["en"]
    assert "my-tag" in data["tags"]
    assert "povidgen" in data["tags"]
    assert (out / "data/train-00000.parquet").read_bytes() == (
        dry / "data/train-00000.parquet"
    ).read_bytes()


def test_a_card_without_povidgens_section_gets_it_appended(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# Mine\n\nWritten by hand.\n", encoding="utf-8")
    publish(demo, "user/demo", dry_run=out)
    card = DatasetCard.load(out / "README.md")
    assert card.text.lstrip().startswith("# Mine\n\nWritten by hand.")
    assert START in card.text
    assert card.data.to_dict()["license"] == "apache-2.0"


def test_a_dataset_source_is_written_as_parquet(demo: Path, tmp_path: Path) -> None:
    pairs = povidgen.load_pairs(demo)
    result = publish(pairs, "user/from-dataset", dry_run=tmp_path / "ds", license="cc-by-4.0")
    assert result.uploaded == ("data/train-00000.parquet", "preview.png", "README.md")
    loaded = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    assert isinstance(loaded, datasets.Dataset)
    assert _rows(loaded) == _rows(pairs)
    card = DatasetCard.load(tmp_path / "ds" / "README.md")
    assert card.data.to_dict()["license"] == "cc-by-4.0"
    table = _table(card.text)
    assert table["Hallucinator"] == "`rule`"
    assert table["Distorter"] == "`diffusion`"
    assert table["Pairs out"] == "8"
    assert table["Rows failed"] == "not recorded"


def test_a_dataset_with_image_paths_gets_them_embedded(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = povidgen.load_pairs(demo).select(range(2))
    paths = []
    for number, row in enumerate(pairs):
        path = tmp_path / f"image-{number}.png"
        row["images"][0].save(path)
        paths.append(path)
    source = datasets.Dataset.from_dict(
        {
            "id": pairs["id"],
            "images": [[str(path)] for path in paths],
            "prompt": pairs["prompt"],
            "chosen": pairs["chosen"],
            "rejected": pairs["rejected"],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "images": datasets.List(datasets.Image()),
                "prompt": pairs.features["prompt"],
                "chosen": pairs.features["chosen"],
                "rejected": pairs.features["rejected"],
            }
        ),
    )
    out = tmp_path / "out"
    capsys.readouterr()
    publish(source, "user/paths", dry_run=out)
    # the library prints nothing: datasets' and huggingface_hub's bars are off
    assert capsys.readouterr().err == ""
    stored = pq.read_table(out / "data/train-00000.parquet").to_pylist()
    assert [row["images"][0]["bytes"] for row in stored] == [p.read_bytes() for p in paths]
    for path in paths:
        path.unlink()  # the upload must not need them
    loaded = datasets.load_dataset(str(out), split="train")
    assert isinstance(loaded, datasets.Dataset)
    for row, original in zip(loaded, pairs, strict=True):
        assert row["images"][0].tobytes() == original["images"][0].tobytes()
    # without povidgen's provenance there is no preview picture, and the card says what it can
    assert sorted(_files(out)) == ["README.md", "data/train-00000.parquet"]
    card = DatasetCard.load(out / "README.md")
    assert "preview.png" not in card.text
    assert _table(card.text)["Hallucinator"] == "not recorded"
    assert _table(card.text)["Pairs out"] == "2"


@pytest.fixture(scope="module")
def llm_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo build through the OpenAI provider against the fake API, where every row about
    kites is refused (so it has a model, a prompt, a cost and failures)."""
    folder = tmp_path_factory.mktemp("llm")

    def refuse_kites(provider: str, index: int, body: dict[str, Any]) -> FaultKind | None:
        return "refusal" if "kite" in json.dumps(body) else None

    with pytest.MonkeyPatch.context() as patch, FakeLLMServer(faults=refuse_kites) as server:
        patch.setenv("OPENAI_API_KEY", "sk-publish-test-0123456789")
        argv = ["build", "--demo", "--demo-size", "8", "--provider", "openai"]
        argv += ["--base-url", server.openai_base_url, "--model", "gpt-4o-mini"]
        argv += ["--cache-dir", str(folder / "cache"), "--out", str(folder / "out")]
        assert main(argv) == 0
    return folder / "out"


def test_card_of_an_llm_build_states_model_prompt_failures_and_cost(
    llm_build: Path, tmp_path: Path
) -> None:
    summary = json.loads((llm_build / "summary.json").read_text(encoding="utf-8"))
    assert summary["failed"] > 0  # the fixture did what it meant to
    assert summary["pairs"] > 0
    publish(llm_build, "user/llm", dry_run=tmp_path / "x")
    text = DatasetCard.load(tmp_path / "x" / "README.md").text
    table = _table(text)
    params = summary["configuration"]["hallucinator"]["params"]
    assert table["Hallucinator"] == "`openai`"
    assert table["Model"] == f"`{params['model']}`"
    assert table["Prompt version"] == f"`{params['prompt_version']}`"
    assert table["Prompt fingerprint"] == f"`{params['prompt_fingerprint']}`"
    assert table["Rows in"] == str(summary["rows"])
    assert table["Pairs out"] == str(summary["pairs"])
    assert table["Rows failed"] == str(summary["failed"])
    assert table["Cost"] == f"${summary['cost_usd_all_runs']:.4f}"
    assert table["Text-contrast pairs"] == str(summary["pairs"])
    for stage, reasons in summary["failures"].items():
        for reason, count in reasons.items():
            cell = html.escape(reason).replace("|", "\\|")
            assert f"| {stage} | {cell} | {count} |" in text
    assert "sk-publish-test" not in text


# ---------------------------------------------------------------------------------------------
# The card's parts, with facts a demo run does not have


def _facts(**changes: Any) -> CardFacts:
    values: dict[str, Any] = {
        "repo_id": "me/pairs",
        "source": "llava.json",
        "source_license": "cc-by-4.0",
        "license": "cc-by-4.0",
        "hallucinator": "openai",
        "hallucinator_params": {
            "model": "gpt-4o",
            "prompt_version": "3",
            "prompt_fingerprint": "abc123",
        },
        "distorter": None,
        "distorter_params": None,
        "seed": 7,
        "rows_in": 12,
        "pairs": 9,
        "failed": 3,
        "failures": {"hallucinate": {"refused": 2, "a | b": 1}},
        "counts": EditCounter(),
        "cost_usd": 0.0123,
        "seconds": 61.25,
        "built_with": "0.1.0",
        "published_with": "0.1.0",
        "examples": [],
        "has_preview": False,
        "from_summary": True,
    }
    values.update(changes)
    return CardFacts(**values)


def test_card_names_the_model_prompt_failures_and_cost() -> None:
    card = DatasetCard(render_card(_facts()))
    table = _table(card.text)
    assert table["Model"] == "`gpt-4o`"
    assert table["Prompt version"] == "`3`"
    assert table["Prompt fingerprint"] == "`abc123`"
    assert table["Distorter"] == "none"
    assert table["Cost"] == "$0.0123"
    assert table["Time"] == "61.2 s"
    assert "| hallucinate | refused | 2 |" in card.text
    assert "| hallucinate | a \\| b | 1 |" in card.text
    assert "preview.png" not in card.text


def test_size_categories() -> None:
    assert size_category(999) == "n<1K"
    assert size_category(1000) == "1K<n<10K"
    assert size_category(17_000) == "10K<n<100K"


def test_mark_spans_escapes_and_finds_moved_spans() -> None:
    edits = [
        {"kind": "object", "injected": "dog", "start": 6, "end": 9},
        {"kind": "count", "injected": "<3>", "start": 0, "end": 1},  # wrong offsets: found
        {"kind": "x", "injected": "absent", "start": 0, "end": 6},
    ]
    assert mark_spans("A big dog & <3>", edits) == (
        'A big <mark title="object">dog</mark> &amp; <mark title="count">&lt;3&gt;</mark>'
    )


# ---------------------------------------------------------------------------------------------
# Pushing, through a recorded Hub client


def _git(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeRepo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


@dataclass
class FakeHub:
    """Records the calls publishing makes and keeps the files, per repo and branch."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    fail_on: str | None = None

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        self.calls.append(("create_repo", repo_id, private))
        self.repos.setdefault(repo_id, FakeRepo(private))
        return f"https://hub.test/datasets/{repo_id}"

    def create_branch(self, repo_id: str, branch: str) -> None:
        self.calls.append(("create_branch", repo_id, branch))
        branches = self.repos[repo_id].branches
        branches.setdefault(branch, dict(branches["main"]))

    def _files(self, repo_id: str, revision: str | None) -> dict[str, bytes]:
        return self.repos[repo_id].branches[revision or "main"]

    def read_text(self, repo_id: str, path: str, *, revision: str | None) -> str | None:
        self.calls.append(("read_text", repo_id, path, revision))
        data = self._files(repo_id, revision).get(path)
        return None if data is None else data.decode("utf-8")

    def file_hashes(
        self, repo_id: str, paths: Sequence[str], *, revision: str | None
    ) -> dict[str, set[str]]:
        self.calls.append(("file_hashes", repo_id, tuple(paths), revision))
        files = self._files(repo_id, revision)
        return {
            p: {f"git:{_git(files[p])}", f"sha256:{hashlib.sha256(files[p]).hexdigest()}"}
            for p in paths
            if p in files
        }

    def commit(
        self,
        repo_id: str,
        files: Sequence[tuple[str, Path]],
        *,
        message: str,
        revision: str | None,
    ) -> None:
        self.calls.append(("commit", repo_id, tuple(p for p, _ in files), revision))
        if self.fail_on is not None and any(p == self.fail_on for p, _ in files):
            raise ConnectionError(f"connection reset while sending (token {SECRET})")
        for path, local in files:
            self.sent.append(path)
            self._files(repo_id, revision)[path] = local.read_bytes()


def test_push_creates_a_private_repo_and_lands_the_files(
    demo: Path, dry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = FakeHub()
    with caplog.at_level(logging.DEBUG, logger="povidgen"):
        result = publish(demo, "user/demo", api=hub, token=SECRET)
    assert hub.calls[0] == ("create_repo", "user/demo", True)
    assert isinstance(result, PublishResult)
    assert result.commits == 2
    assert result.uploaded == ("data/train-00000.parquet", "preview.png", "README.md")
    files = hub.repos["user/demo"].branches["main"]
    # the same files as the dry run: data and card
    assert files == _files(dry)
    # the token is in no file and no log line
    assert all(SECRET.encode() not in data for data in files.values())
    assert SECRET not in caplog.text

    # a second push of the same folder uploads nothing
    commits = [c for c in hub.calls if c[0] == "commit"]
    again = publish(demo, "user/demo", api=hub, token=SECRET)
    assert again.uploaded == ()
    assert again.commits == 0
    assert set(again.unchanged) == set(files)
    assert [c for c in hub.calls if c[0] == "commit"] == commits
    assert hub.sent == ["data/train-00000.parquet", "preview.png", "README.md"]


def test_push_public_and_to_a_branch(demo: Path) -> None:
    hub = FakeHub()
    publish(demo, "user/demo", api=hub, private=False, revision="v1")
    assert ("create_repo", "user/demo", False) in hub.calls
    assert ("create_branch", "user/demo", "v1") in hub.calls
    assert all(c[-1] == "v1" for c in hub.calls if c[0] == "commit")
    assert "README.md" in hub.repos["user/demo"].branches["v1"]
    assert hub.repos["user/demo"].branches["main"] == {}


def test_a_later_push_keeps_the_users_card_text(demo: Path) -> None:
    hub = FakeHub()
    publish(demo, "user/demo", api=hub)
    files = hub.repos["user/demo"].branches["main"]
    card = files["README.md"].decode()
    files["README.md"] = (card.rstrip("\n") + "\n\n## Intended use\n\nResearch only.\n").encode()
    hub.sent.clear()
    publish(demo, "user/demo", api=hub)
    # the user's text is kept and povidgen's section is as it was: nothing to push
    assert hub.sent == []
    # a stale povidgen section is regenerated: the card goes up again, the data does not
    stale = files["README.md"].decode().replace("### Examples", "### Old examples")
    files["README.md"] = stale.encode()
    publish(demo, "user/demo", api=hub)
    assert hub.sent == ["README.md"]
    text = files["README.md"].decode()
    assert "### Old examples" not in text
    assert text.rstrip().endswith("## Intended use\n\nResearch only.")
    assert text.count(START) == 1


def test_an_interrupted_push_continues_with_what_is_missing(
    demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = FakeHub(fail_on="README.md")
    with pytest.raises(PublishError) as caught:
        publish(demo, "user/demo", api=hub, token=SECRET)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    assert hub.sent == ["data/train-00000.parquet"]
    hub.fail_on = None
    result = publish(demo, "user/demo", api=hub, token=SECRET)
    assert result.uploaded == ("preview.png", "README.md")
    assert result.unchanged == ("data/train-00000.parquet",)


# ---------------------------------------------------------------------------------------------
# Mistakes: one line, exit code 2, no token


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("povidgen: error: "), err
    assert err.count("\n") == 1, err
    return err


def test_push_through_the_real_client_fails_on_one_line_without_the_token(
    demo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)  # the tests are offline: the Hub is never reached
    err = _error(capsys, ["push", str(demo), "user/demo"])
    assert "cannot create user/demo" in err
    assert SECRET not in err


def test_push_without_a_token(
    demo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(demo.parent / "no-token"))
    err = _error(capsys, ["push", str(demo), "user/demo"])
    assert "no Hugging Face token" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user/demo"], "not a povidgen build folder"),
        (["user"], "not a Hub repository id"),
        (["a/b/c"], "not a Hub repository id"),
    ],
)
def test_bad_sources_and_repo_ids(
    demo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    source = tmp_path / "empty" if args == ["user/demo"] else demo
    source.mkdir(exist_ok=True)
    err = _error(capsys, ["push", str(source), *args, "--dry-run", str(tmp_path / "x")])
    assert message in err


def test_an_unfinished_build_is_refused(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    summary = json.loads((copy / "summary.json").read_text(encoding="utf-8"))
    summary["complete"] = False
    (copy / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    err = _error(capsys, ["push", str(copy), "user/demo", "--dry-run", str(tmp_path / "x")])
    assert "unfinished build" in err


def test_a_changed_shard_is_refused(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    with (copy / "data/train-00000.parquet").open("ab") as handle:
        handle.write(b"x")
    err = _error(capsys, ["push", str(copy), "user/demo", "--dry-run", str(tmp_path / "x")])
    assert "changed since the build wrote it" in err


def test_a_dry_run_folder_with_other_files_is_refused(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    err = _error(capsys, ["push", str(demo), "user/demo", "--dry-run", str(tmp_path)])
    assert "notes.txt" in err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    err = _error(capsys, ["push", str(demo), "user/demo", "--dry-run", str(demo / "out")])
    assert "inside the source folder" in err


def test_push_prints_what_it_did(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", str(demo), "user/demo", "--dry-run", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "dry run: wrote 3 files" in out
    assert "README.md" in out


# ---------------------------------------------------------------------------------------------
# Pushing through huggingface_hub itself, to a fake Hub on 127.0.0.1


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHubServer]:
    import socket

    import huggingface_hub.constants

    real_getaddrinfo = socket.getaddrinfo

    def local_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        assert host in ("127.0.0.1", b"127.0.0.1"), f"a connection to {host!r}"
        return real_getaddrinfo(host, *args, **kwargs)

    with FakeHubServer() as server:
        # online, but only to 127.0.0.1 (huggingface_hub's own calls to its default endpoint
        # go to the fake too); LFS "basic" transfer instead of Xet storage
        monkeypatch.setattr(socket, "getaddrinfo", local_only)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield server


# huggingface_hub's LFS "basic" upload (used with Xet disabled) passes data= to httpx2
_LFS_PUT_WARNING = "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"


@pytest.mark.filterwarnings(_LFS_PUT_WARNING)
def test_push_to_a_fake_hub(
    demo: Path,
    dry: Path,
    fake_hub: FakeHubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = HfHubClient(SECRET, endpoint=fake_hub.endpoint)
    with caplog.at_level(logging.DEBUG):
        result = publish(demo, "user/demo", api=client, token=SECRET)
    repo = fake_hub.repos["user/demo"]
    assert repo.private  # private by default
    assert result.uploaded == ("data/train-00000.parquet", "preview.png", "README.md")
    assert repo.branches["main"] == _files(dry)  # the files land, as the dry run wrote them
    # every call to the Hub API carried the token (huggingface_hub's own unauthenticated
    # look-up of known agent harnesses aside)
    calls = [r for r in fake_hub.requests if r[1] != "/api/agent-harnesses"]
    assert {auth for _, _, auth in calls} == {f"Bearer {SECRET}"}
    assert all(SECRET.encode() not in data for data in repo.branches["main"].values())
    assert SECRET not in caplog.text
    uploads, commits = list(fake_hub.lfs_uploads), fake_hub.commits
    assert len(uploads) == 2  # the shard and the preview (the card is a regular file)

    # a second push of the same folder uploads nothing and makes no commit
    again = publish(demo, "user/demo", api=client, token=SECRET)
    assert again.uploaded == ()
    assert fake_hub.lfs_uploads == uploads
    assert fake_hub.commits == commits

    # the user's text in the card survives a later push; only the card goes up again
    card = repo.branches["main"]["README.md"].decode()
    repo.branches["main"]["README.md"] = card.replace(START, "Mine.\n\n" + START).encode()
    repo.branches["main"]["README.md"] = (
        repo.branches["main"]["README.md"].decode().replace("### Examples", "### Stale")
    ).encode()
    fake_hub.sent.clear()
    publish(demo, "user/demo", api=client, token=SECRET)
    assert fake_hub.sent == ["README.md"]
    text = repo.branches["main"]["README.md"].decode()
    assert "Mine.\n\n" + START in text
    assert "### Stale" not in text
    assert fake_hub.lfs_uploads == uploads


@pytest.mark.filterwarnings(_LFS_PUT_WARNING)
def test_push_to_a_branch_of_a_public_repo_on_a_fake_hub(
    demo: Path, fake_hub: FakeHubServer
) -> None:
    client = HfHubClient(SECRET, endpoint=fake_hub.endpoint)
    publish(demo, "user/open", api=client, private=False, revision="v1")
    repo = fake_hub.repos["user/open"]
    assert not repo.private
    assert repo.branches["main"] == {}
    assert set(repo.branches["v1"]) == {"README.md", "preview.png", "data/train-00000.parquet"}
