"""``povidgen eval`` end to end on a tiny random LLaVA (in-process), and its one-line errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from povidgen.cli import main
from povidgen.eval import SCENE_VOCABULARY, chair, hf_generate, parse_yes_no
from povidgen.train.tiny import save_tiny_vlm, tiny_image

ROWS = [
    ("img-0", "images/a.png", ["dog", "cat"]),
    ("img-1", "images/b.png", ["sports ball"]),
    ("img-2", "images/c.png", ["person", "car", "bus"]),
]
FAST = ["--max-new-tokens", "6", "--resamples", "200", "--device", "cpu"]


@dataclass(frozen=True)
class Inputs:
    model: Path
    data: Path


def write_data(folder: Path, rows: list[tuple[str, str, list[str]]]) -> Path:
    (folder / "images").mkdir(parents=True)
    with (folder / "ground_truth.jsonl").open("w", encoding="utf-8") as f:
        for i, (name, image, objects) in enumerate(rows):
            tiny_image(i).save(folder / image)
            f.write(json.dumps({"id": name, "image": image, "objects": objects}) + "\n")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("eval-inputs")
    model = save_tiny_vlm("llava", root / "model")
    return Inputs(model, write_data(root / "data", ROWS))


def one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("povidgen: error: "), err
    return lines[0]


def test_chair_report_and_plot(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "chair.json"
    argv = ["eval", "--model", str(inputs.model), "--data", str(inputs.data), "--metric", "chair"]
    assert main([*argv, "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "chair_s" in printed
    assert str(out) in printed
    report = json.loads(out.read_text())
    assert report["metric"] == "chair"
    assert report["settings"]["max_new_tokens"] == 6
    assert report["settings"]["vocabulary"] == "coco"
    assert [item["id"] for item in report["items"]] == ["img-0", "img-1", "img-2"]
    assert report["items"][1]["present"] == ["sports ball"]
    # the figures are CHAIR of the captions the report holds
    again = chair(
        [item["caption"] for item in report["items"]],
        [objects for _, _, objects in ROWS],
        resamples=200,
    )
    assert report["figures"] == again.figures()
    assert report["counts"]["captions"] == 3
    for name, value in report["figures"].items():
        interval = report["intervals"][name]
        assert interval["low"] <= value <= interval["high"]
    # the captions are the model's greedy answers
    generate = hf_generate(inputs.model, device="cpu", max_new_tokens=6)
    images = [tiny_image(i) for i in range(3)]
    prompts = ["Describe this image in detail."] * 3
    assert [item["caption"] for item in report["items"]] == generate(images, prompts)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pope_report(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "pope.json"
    argv = ["eval", "--model", str(inputs.model), "--data", str(inputs.data), "--metric", "pope"]
    extra = ["--strategy", "popular", "--n-per-image", "2", "--limit", "2", "--no-plot"]
    assert main([*argv, "--out", str(out), *FAST, *extra]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["strategy"] == "popular"
    assert report["settings"]["images"] == 2
    items = report["items"]
    # image 0 (dog, cat): 2 yes and 2 no questions; image 1 (sports ball): 1 and 1
    assert [(item["id"], item["label"]) for item in items] == [
        ("img-0", True),
        ("img-0", False),
        ("img-0", True),
        ("img-0", False),
        ("img-1", True),
        ("img-1", False),
    ]
    for item in items:
        assert item["predicted"] is parse_yes_no(item["answer"])
    counts = report["counts"]
    assert counts["tp"] + counts["fn"] == 3
    assert counts["n"] == 6
    assert not out.with_suffix(".png").exists()


def test_batches_and_single_prompts_agree(inputs: Inputs) -> None:
    images = [tiny_image(i, size=(30 + 7 * i, 40)) for i in range(3)]
    prompts = ["Describe this image in detail.", "Is there a dog in the image?", "Hi"]
    one = hf_generate(inputs.model, device="cpu", max_new_tokens=5, batch_size=1)
    three = hf_generate(inputs.model, device="cpu", max_new_tokens=5, batch_size=3)
    assert one(images, prompts) == three(images, prompts)


# peft reads transformers' deprecated is_gradient_checkpointing property when it wraps a model
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_a_lora_adapter_folder(inputs: Inputs, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    import torch
    import transformers

    base = transformers.AutoModelForImageTextToText.from_pretrained(str(inputs.model))
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    adapted = peft.get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh adapter (B = 0) would change nothing
        for name, weight in adapted.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 1.0, generator=generator)
    adapted.save_pretrained(str(tmp_path / "adapter"))  # no processor: the base model's is used
    adapted.merge_and_unload().save_pretrained(str(tmp_path / "merged"))
    transformers.AutoProcessor.from_pretrained(str(inputs.model)).save_pretrained(
        str(tmp_path / "merged")
    )
    images, prompts = [tiny_image(5), tiny_image(6)], ["Describe this image in detail."] * 2
    answers = hf_generate(tmp_path / "adapter", device="cpu", max_new_tokens=8)(images, prompts)
    merged = hf_generate(tmp_path / "merged", device="cpu", max_new_tokens=8)(images, prompts)
    plain = hf_generate(inputs.model, device="cpu", max_new_tokens=8)(images, prompts)
    assert answers == merged
    assert answers != plain


def test_a_saved_scene_dataset(inputs: Inputs, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from povidgen.sources.demo import make_scene, render_scene

    def rows(first: int) -> dict[str, list[object]]:
        scenes = [make_scene(first + i) for i in range(2)]
        return {
            "scene_id": [f"s{first + i}" for i in range(2) for _ in range(2)],
            "image": [render_scene(s) for s in scenes for _ in range(2)],
            "objects": [sorted(s.names()) for s in scenes for _ in range(2)],
        }

    folder = tmp_path / "scenes"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows(0)), "test": datasets.Dataset.from_dict(rows(2))}
    ).save_to_disk(str(folder))
    out = tmp_path / "scenes.json"
    argv = ["eval", "--model", str(inputs.model), "--data", str(folder), "--metric", "chair"]
    extra = ["--vocabulary", "scenes", "--no-plot"]
    assert main([*argv, "--out", str(out), *FAST, *extra]) == 0
    report = json.loads(out.read_text())
    assert [item["id"] for item in report["items"]] == ["s2", "s3"]  # the test split, once each
    assert report["items"][0]["present"] == sorted(make_scene(2).names())
    assert report["settings"]["vocabulary"] == "scenes"
    assert set(SCENE_VOCABULARY) >= {o for item in report["items"] for o in item["present"]}


def bad_data(tmp_path: Path, lines: list[str]) -> Path:
    folder = write_data(tmp_path / "bad", ROWS[:1])
    (folder / "ground_truth.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"image": "images/a.png"}'], "ground_truth.jsonl:1: missing 'objects'"),
        (['{"objects": ["dog"]}'], "missing 'image'"),
        (['{"image": "images/zzz.png", "objects": []}'], "image 'images/zzz.png' is not a file"),
        (['{"image": "images/a.png", "objects": "dog"}'], "'objects' must be a list of strings"),
        (["not json"], "ground_truth.jsonl:1: not JSON"),
        ([""], "lists no image"),
        (['{"image": "images/a.png", "objects": ["lamp"]}'], "'lamp' is not an object"),
    ],
)
def test_bad_data_is_one_line(
    inputs: Inputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    message: str,
) -> None:
    data = bad_data(tmp_path, lines)
    argv = ["eval", "--model", str(inputs.model), "--data", str(data), "--metric", "chair"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    assert message in one_error(capsys.readouterr().err)
    assert not (tmp_path / "r.json").exists()


def test_bad_arguments_are_one_line(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "nodata").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    model, data = str(inputs.model), str(inputs.data)
    mine = tmp_path / "mine.json"  # the user's own file, which povidgen must not replace
    mine.write_text('{"precious": true}')
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    beside = tmp_path / "report.json"
    (tmp_path / "report.png").write_bytes(b"the user's picture")
    cases = [
        (["--model", model, "--data", str(tmp_path / "missing")], "no such folder or file"),
        (["--model", model, "--data", str(tmp_path / "nodata")], "has no ground_truth.jsonl"),
        (["--model", str(tmp_path / "empty"), "--data", data], "not a Hugging Face model folder"),
        (["--model", str(tmp_path / "nope"), "--data", data], "--model"),
        (["--model", str(tmp_path / "bert"), "--data", data], "bert: cannot load it"),
        (["--model", model, "--data", data, "--limit", "0"], "--limit must be at least 1"),
        (["--model", model, "--data", data, "--split", "test"], "only for a save_to_disk"),
        (["--model", model, "--data", data, "--vocabulary", "x.json"], "--vocabulary x.json"),
        (["--model", model, "--data", data, "--out", str(tmp_path)], "is a folder"),
        (["--model", model, "--data", data, "--out", str(mine)], "not a povidgen eval report"),
        (["--model", model, "--data", data, "--out", str(fifo)], "not a povidgen eval report"),
        (["--model", model, "--data", data, "--out", str(beside)], "povidgen did not write it"),
        (["--model", model, "--data", data, "--out", str(tmp_path / "r.png")], "report is JSON"),
    ]
    for flags, message in cases:
        assert main(["eval", "--metric", "chair", *flags]) == 2, flags
        assert message in one_error(capsys.readouterr().err), flags
    assert mine.read_text() == '{"precious": true}'
    assert (tmp_path / "report.png").read_bytes() == b"the user's picture"
    assert main(["eval", "--model", model, "--data", data, "--metric", "bleu"]) == 2
    assert "invalid choice" in one_error(capsys.readouterr().err)
