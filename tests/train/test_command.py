"""``povidgen train``, run in-process through ``povidgen.cli.main`` on a tiny offline LLaVA."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import datasets
import torch

from povidgen.cli import main
from povidgen.train.command import MARKER
from povidgen.train.config import DPOConfig
from povidgen.train.tiny import save_tiny_vlm, tiny_image
from povidgen.train.trainer import DPOTrainer

TINY = ["--batch-size", "2", "--lora-r", "4", "--lora-alpha", "8", "--device", "cpu"]
METRIC_KEYS = {
    "loss",
    "learning_rate",
    "logps/chosen",
    "logps/rejected",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "pairs_per_second",
    "tokens_per_second",
    "peak_memory_gib",
}
_TEXT = {"type": datasets.Value("string"), "text": datasets.Value("string")}
_MESSAGES = [{"role": datasets.Value("string"), "content": [_TEXT]}]
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Image()),
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
    }
)


def pairs(n: int = 4) -> datasets.Dataset:
    """``n`` preference rows in TRL's vision format (typed content, one image each)."""
    answers = [
        ("A red dog sits next to two cats.", "A blue car drives past three cats."),
        ("Two green kites fly over the beach.", "Five green kites fly over the city."),
        ("A man holds a yellow cup.", "A woman holds a black hat."),
        ("Three birds stand on a fence.", "One bird sleeps on a roof."),
    ]
    rows: dict[str, list[Any]] = {k: [] for k in FEATURES}
    for i in range(n):
        chosen, rejected = answers[i % len(answers)]
        rows["id"].append(f"row-{i}")
        rows["images"].append([tiny_image(i)])
        rows["prompt"].append(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "text": None},
                        {"type": "text", "text": "What is in the picture?"},
                    ],
                }
            ]
        )
        rows["chosen"].append(
            [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}]
        )
        rows["rejected"].append(
            [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}]
        )
    return datasets.Dataset.from_dict(rows, features=FEATURES)


@dataclass(frozen=True)
class Inputs:
    """Paths shared by the tests of this module (built once)."""

    model: Path
    data: Path  # save_to_disk Dataset
    splits: Path  # save_to_disk DatasetDict (train, test)
    parquet: Path  # one .parquet file
    parquet_dir: Path  # a folder of .parquet files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("train-inputs")
    model = save_tiny_vlm("llava", root / "model")
    ds = pairs(4)
    ds.save_to_disk(str(root / "data"))
    datasets.DatasetDict({"train": ds, "test": pairs(2)}).save_to_disk(str(root / "splits"))
    ds.to_parquet(str(root / "pairs.parquet"))
    (root / "parquet").mkdir()
    ds.select(range(2)).to_parquet(str(root / "parquet" / "part-0.parquet"))
    ds.select(range(2, 4)).to_parquet(str(root / "parquet" / "part-1.parquet"))
    return Inputs(model, root / "data", root / "splits", root / "pairs.parquet", root / "parquet")


def train(inputs: Inputs, out: Path, *extra: str, data: Path | None = None) -> int:
    """Run ``povidgen train`` on the tiny model."""
    argv = ["train", "--model", str(inputs.model), "--data", str(data or inputs.data)]
    return main([*argv, "--out", str(out), *TINY, *extra])


def metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_error(err: str) -> str:
    """The CLI's single error line (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("povidgen: error: "), err
    return lines[0]


# -- runs ------------------------------------------------------------------------------------


# peft reads transformers' deprecated is_gradient_checkpointing property when it wraps a model
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_train_lora_on_a_saved_dataset(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train(inputs, out, "--max-steps", "2", "--rpo-alpha", "0.5") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "training" in captured.err  # the tqdm bar
    assert "steps:        2" in captured.out
    assert str(out / "final") in captured.out

    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert set(record) >= METRIC_KEYS
        assert all(math.isfinite(record[key]) for key in METRIC_KEYS)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]

    marker = json.loads((out / MARKER).read_text())
    assert marker["model"] == str(inputs.model.resolve())
    assert marker["data"] == str(inputs.data.resolve())
    config = DPOConfig.model_validate(marker["config"])
    assert (config.max_steps, config.batch_size, config.lora_r, config.lora_alpha) == (2, 2, 4, 8)
    assert config.rpo_alpha == 0.5
    assert all(record["nll/chosen"] > 0 for record in records)

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(str(inputs.model), local_files_only=True)
    tuned = PeftModel.from_pretrained(base, str(out / "final"), local_files_only=True)
    assert any("lora_A" in name for name, _ in tuned.named_parameters())
    assert (out / "final" / "chat_template.jinja").exists() or (
        out / "final" / "processor_config.json"
    ).exists()

    # the finished run is not overwritten by accident
    capsys.readouterr()
    assert train(inputs, out, "--max-steps", "2") == 2
    assert "already holds a training run" in one_error(capsys.readouterr().err)
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_povid_mode_on_a_parquet_file(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a run that failed before its first checkpoint left its marker and a metrics line: a new
    # run may start over in its folder (without --resume) and its log starts afresh
    out = _marked_folder(tmp_path)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    code = train(inputs, out, "--max-steps", "1", "--mode", "povid", data=inputs.parquet)
    assert code == 0, capsys.readouterr().err
    (record,) = metrics(out)
    assert METRIC_KEYS | {"logps/noisy", "rewards/noisy"} <= set(record)


def test_resume_continues_the_step_count_and_merges(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resumed"
    first = ["--max-steps", "1", "--seed", "3"]
    assert train(inputs, out, *first, data=inputs.splits) == 0
    capsys.readouterr()
    other_seed = ["--max-steps", "3", "--seed", "4", "--resume"]
    assert train(inputs, out, *other_seed, data=inputs.splits) == 2
    assert "--seed 3 -> 4" in one_error(capsys.readouterr().err)

    code = train(
        inputs, out, "--max-steps", "3", "--seed", "3", "--resume", "--merge", data=inputs.splits
    )
    assert code == 0, capsys.readouterr().err
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert "steps:        3" in capsys.readouterr().out
    assert json.loads((out / MARKER).read_text())["resumed"] is True

    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(str(out / "final"), local_files_only=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_ctrl_c_finishes_the_step_checkpoints_and_resume_repeats_the_curve(
    inputs: Inputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    straight = tmp_path / "straight"
    assert train(inputs, straight, "--max-steps", "3", data=inputs.parquet_dir) == 0

    out = tmp_path / "interrupted"
    real = DPOTrainer.compute_loss
    calls = []

    def ctrl_c_in_step_two(self: DPOTrainer, batch: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        return real(self, batch)

    monkeypatch.setattr(DPOTrainer, "compute_loss", ctrl_c_in_step_two)
    assert train(inputs, out, "--max-steps", "3", data=inputs.parquet_dir) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "stopping after this step" in err
    assert "interrupted; rerun with --resume to continue from the last checkpoint" in err
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert (state["global_step"], state["consumed"]) == (2, 2)  # step 2 was finished

    monkeypatch.setattr(DPOTrainer, "compute_loss", real)
    assert train(inputs, out, "--max-steps", "3", "--resume", data=inputs.parquet_dir) == 0
    # the stop came between steps: the resumed curve is the uninterrupted one, bit for bit
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(straight)]


def test_interrupt_before_training(
    inputs: Inputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stop(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("povidgen.train.command._load_model", stop)
    assert train(inputs, tmp_path / "out", "--max-steps", "1") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted before any checkpoint" in err


def test_train_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--data",
        "--out",
        "--mode",
        "--loss-type",
        "--loss-weights",
        "--beta",
        "--rpo-alpha",
        "--learning-rate",
        "--max-steps",
        "--epochs",
        "--batch-size",
        "--grad-accum",
        "--lora-r",
        "--lora-alpha",
        "--full",
        "--ref",
        "--distorter",
        "--seed",
        "--resume",
        "--max-length",
        "--save-steps",
        "--no-packing",
        "--gradient-checkpointing",
        "--dtype",
        "--device",
        "--report-to",
        "--merge",
        "--split",
    ):
        assert flag in text


# -- bad invocations -------------------------------------------------------------------------


def _user_folder(tmp: Path) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("do not delete")
    return folder


def _finished_run(tmp: Path) -> Path:
    """A folder that looks like a finished run (marker and a checkpoint), made without training."""
    out = tmp / "run"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / MARKER).write_text("{}")
    config = DPOConfig(max_steps=2, batch_size=2, lora_r=4, lora_alpha=8, beta=0.5)
    state = {"global_step": 2, "consumed": 2, "config": config.model_dump(mode="json")}
    (out / "checkpoints" / "step-2" / "trainer_state.json").write_text(json.dumps(state))
    return out


def _marked_folder(tmp: Path) -> Path:
    """A folder with povidgen's marker but no checkpoint: a run that failed early."""
    out = _mkdir(tmp / "failed-run")
    (out / MARKER).write_text("{}")
    return out


def _model_of_type(tmp: Path, model_type: str | None, text: str | None = None) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    config = {} if model_type is None else {"model_type": model_type}
    (folder / "config.json").write_text(text if text is not None else json.dumps(config))
    return folder


def _no_rejected_images(tmp: Path) -> Path:
    folder = tmp / "text-only"
    pairs(2).save_to_disk(str(folder))
    return folder


@dataclass(frozen=True)
class Bad:
    """One bad invocation: extra flags (or path overrides) and a piece of the message."""

    flags: tuple[str, ...] = ()
    message: str = ""
    model: Callable[[Path], Path] | None = None
    data: Callable[[Path], Path] | None = None
    out: Callable[[Path], Path] | None = None


BAD: dict[str, Bad] = {
    "beta zero": Bad(("--beta", "0"), "--beta must be a positive number"),
    "beta negative": Bad(("--beta", "-1"), "--beta must be a positive number"),
    "beta nan": Bad(("--beta", "nan"), "--beta must be a positive number"),
    "rpo alpha negative": Bad(("--rpo-alpha", "-0.1"), "--rpo-alpha must be a number of at least"),
    "learning rate zero": Bad(("--learning-rate", "0"), "--learning-rate must be a positive"),
    "learning rate inf": Bad(("--learning-rate", "inf"), "--learning-rate must be a positive"),
    "max steps zero": Bad(("--max-steps", "0"), "--max-steps must be at least 1"),
    "epochs zero": Bad(("--epochs", "0"), "--epochs must be a positive number"),
    "batch size zero": Bad(("--batch-size", "0"), "--batch-size must be at least 1"),
    "grad accum zero": Bad(("--grad-accum", "0"), "--grad-accum must be at least 1"),
    "lora r zero": Bad(("--lora-r", "0"), "--lora-r must be at least 1"),
    "lora alpha zero": Bad(("--lora-alpha", "0"), "--lora-alpha must be at least 1"),
    "max length one": Bad(("--max-length", "1"), "--max-length must be at least 2"),
    "save steps zero": Bad(("--save-steps", "0"), "--save-steps must be at least 1"),
    "seed negative": Bad(("--seed", "-1"), "--seed must be in [0, 2**63)"),
    "seed too big": Bad(("--seed", str(2**63)), "--seed must be in [0, 2**63)"),
    "max steps with epochs": Bad(("--max-steps", "2", "--epochs", "1"), "mutually exclusive"),
    "full with lora r": Bad(("--full",), "--full trains every weight"),  # TINY sets --lora-r
    "ref adapter with full": Bad(
        ("--full", "--ref", "adapter"), "--ref adapter needs a LoRA adapter"
    ),
    "unknown loss type": Bad(("--loss-type", "sigmoid", "hinge2"), "unknown --loss-type hinge2"),
    "loss weights count": Bad(
        ("--loss-type", "sigmoid", "ipo", "--loss-weights", "1"), "--loss-weights has 1 values"
    ),
    "povid with a loss type": Bad(("--mode", "povid", "--loss-type", "ipo"), "--mode povid"),
    "unknown distorter": Bad(
        ("--mode", "image", "--distorter", "smudge"), "available: color_jitter, diffusion"
    ),
    "distorter in text mode": Bad(("--distorter", "diffusion"), "only for --mode image or povid"),
    "bad device": Bad(("--device", "toaster"), "--device 'toaster' is not a device"),
    "missing model": Bad(model=lambda tmp: tmp / "nowhere", message="no such folder"),
    "model is a file": Bad(
        model=lambda tmp: _touch(tmp / "model.safetensors"), message="is a file"
    ),
    "model without config": Bad(model=lambda tmp: _mkdir(tmp / "empty"), message="no config.json"),
    "model with garbage config": Bad(
        model=lambda tmp: _model_of_type(tmp, None, "{not json"), message="cannot read config.json"
    ),
    "unsupported family": Bad(
        model=lambda tmp: _model_of_type(tmp, "gpt2"), message="supported: llava, llava_next"
    ),
    "missing data": Bad(data=lambda tmp: tmp / "no-data", message="no such file or folder"),
    "data is not a dataset": Bad(data=lambda tmp: _mkdir(tmp / "nothing"), message="neither"),
    "data is a text file": Bad(data=lambda tmp: _touch(tmp / "rows.csv"), message="expected"),
    "out is the data": Bad(out=lambda tmp: tmp / "data", message="is the --data folder"),
    "out inside the data": Bad(out=lambda tmp: tmp / "data" / "run", message="is the --data"),
    "out is a file": Bad(out=lambda tmp: _touch(tmp / "out.txt"), message="is a file"),
    "out is a symlink": Bad(out=lambda tmp: _symlink(tmp), message="symbolic link"),
    "out is a user folder": Bad(out=_user_folder, message="not a povidgen training folder"),
    "out holds a run": Bad(out=_finished_run, message="already holds a training run"),
    "resume without a run": Bad(("--resume",), "holds no training run to continue"),
    "resume without a checkpoint": Bad(("--resume",), "no checkpoint", out=_marked_folder),
    "resume with other settings": Bad(
        ("--resume", "--max-steps", "2"), message="--beta 0.5 -> 0.1", out=_finished_run
    ),
    "image mode without rejected images": Bad(
        ("--mode", "image"), "needs the column(s) rejected_images", data=_no_rejected_images
    ),
    "batch larger than the data": Bad(("--batch-size", "9"), "fewer than one batch"),
    "split of a single dataset": Bad(("--split", "train"), "drop --split"),
}


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _symlink(tmp: Path) -> Path:
    target = _mkdir(tmp / "real")
    link = tmp / "link"
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_invocations_are_one_line_exit_2(
    case: Bad, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = case.model(tmp_path) if case.model else inputs.model
    data = tmp_path / "data"
    if case.data is not None:
        data = case.data(tmp_path)
    else:
        pairs(2).save_to_disk(str(data))
    out = case.out(tmp_path) if case.out else tmp_path / "out"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["train", "--model", str(model), "--data", str(data), "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, *TINY, *case.flags]) == 2
    line = one_error(capsys.readouterr().err)
    assert case.message in line
    # nothing was written or deleted
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_split_names(inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = train(inputs, tmp_path / "out", "--split", "validation", data=inputs.splits)
    assert code == 2
    assert "it holds: test, train" in one_error(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(inputs, tmp_path / "out", "--device", "cuda") == 2
    assert "CUDA is not available" in one_error(capsys.readouterr().err)


def test_unwritable_out(
    inputs: Inputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("povidgen.train.command.os.access", lambda *args: False)
    assert train(inputs, tmp_path / "new" / "out", "--max-steps", "1") == 2
    assert f"{tmp_path} is not writable" in one_error(capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_train_under_torchrun_on_two_processes(
    inputs: Inputs, tmp_path: Path, distributed: str
) -> None:
    """What ``torchrun --nproc-per-node 2 -m povidgen.cli train ...`` starts: two processes
    with the rendezvous in the environment; the command joins the group (gloo on CPU)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    command = [sys.executable, "-W", "error", "-m", "povidgen.cli", "train"]
    command += ["--model", str(inputs.model), "--data", str(inputs.data), "--out", str(out)]
    command += ["--max-steps", "2", "--batch-size", "1", "--lora-r", "4", "--lora-alpha", "8"]
    command += ["--distributed", distributed, "--device", "cpu"]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            command,
            cwd=root,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    assert "final loss" in outputs[0][0]  # the summary, from the first process only
    assert outputs[1][0] == ""
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert (out / "final" / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "step-2" / "rng-1.pt").is_file()


def test_data_in_the_other_pair_layouts_is_read(tmp_path: Path) -> None:
    """A build folder, and the same pairs exported as LLaVA/POVID JSON or VLFeedback parquet,
    give the trainer the same rows."""
    from povidgen.convert import export
    from povidgen.train.command import _load_data

    build = tmp_path / "build"
    assert main(["build", "--demo", "--demo-size", "4", "--out", str(build)]) == 0
    built = _load_data(build, None)
    for fmt in ("llava", "vlfeedback"):
        out = tmp_path / fmt
        export(build, out, format=fmt)
        sources = [out, *sorted(out.glob("data/*.parquet"))]  # the folder; VLFeedback's file
        for source in sources:
            loaded = _load_data(source, None)
            assert loaded["id"] == built["id"]
            assert loaded["chosen"] == built["chosen"]
            assert loaded["rejected"] == built["rejected"]
    assert len(sources) == 2
