"""Bad-input battery (issue 9): one test per case, each through the `bench` command line.

Every failing case asserts: a non-zero exit, exactly one `error:` line naming the file and the
field at fault, no traceback, and nothing earlier lost (a finished run in the same registry is
byte-identical afterwards, checked after EVERY test by an autouse fixture; where a run had
started, its intact predictions are kept and a re-run resumes). Cases the issue says must be
converted (alpha, CMYK, 16-bit, 1x1, 20000x20000 JPEG) must instead finish a run.

Commands run in-process (`bench.cli.main`): same code path, exit code and printed line as the
shell, without paying the torch import per case. Lower-level tests of the same guards, not
repeated here: test_data_images.py (decoding, path safety), test_data_refs.py (reference formats),
test_settings.py / test_prompts.py (every validation message), test_vit_gpt2.py /
test_clip_flan_t5.py (LoRA targets, hub ids), test_scoring.py / test_score_cli.py (predictions).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.io import read_records
from conftest import tiny_setting_text
from test_data_images import png_with_size, uniform_grey_jpeg

pytestmark = pytest.mark.slow  # real runs of tiny models (still part of make test)

EXTRA = """
[lora]
r = 2
alpha = 4
dropout = 0.0
targets = "attn"
[train]
epochs = 1
lr = 1e-3
batch_size = 5
train_size = 1
[generation]
max_new_tokens = 6
batch_size = 2
"""


# --- helpers -------------------------------------------------------------------------------------

def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`bench ARGS` in-process: (exit code, stdout, stderr). A stray exception fails the test."""
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def error_line(result: tuple[int, str, str]) -> str:
    """The one `error:` line of a failed command (asserting non-zero exit and no traceback)."""
    code, out, err = result
    assert code != 0, out[-2000:]
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


# --- the world: a synthetic dataset, a tiny LoRA setting, one finished run -----------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_vit_gpt2: Path, tiny_clip: Path) -> Iterator[dict[str, Any]]:
    import torch

    from bench.data.synth import write_synth

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("battery")
    synth = root / "synth"
    write_synth(synth, n=8, seed=2, variant="target", size=32)
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=EXTRA, backends=("vit-gpt2",))
    text = text.replace("[scoring]\n", '[scoring]\nmetrics = ["clipscore"]\n')
    (root / "settings").mkdir()
    setting = root / "settings" / "battery.toml"
    setting.write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_RUNS", str(root / "runs"))
    mp.setenv("BENCH_CACHE", str(root / "cache"))
    world = {"root": root, "synth": synth, "setting": setting, "text": text, "tiny_vit_gpt2": tiny_vit_gpt2,
             "tiny_clip": tiny_clip}
    good = make_dataset(root / "good", synth, {})
    from bench.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--setting", str(setting), "--data", str(good), "--workers", "0", "--no-progress"])
    assert info.value.code == 0
    world["finished"] = root / "runs" / "battery" / "vit-gpt2"
    assert (world["finished"] / "results.json").is_file()
    world["finished_snapshot"] = snapshot(world["finished"])
    try:
        yield world
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def nothing_earlier_lost(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BENCH_RUNS", str(world["root"] / "runs"))
    monkeypatch.setenv("BENCH_CACHE", str(world["root"] / "cache"))
    yield
    assert snapshot(world["finished"]) == world["finished_snapshot"]


def synth_names(synth: Path) -> list[str]:
    return sorted(p.name for p in (synth / "images").iterdir())


def make_dataset(
    folder: Path,
    synth: Path,
    special: dict[str, bytes],
    *,
    captions: str | None = None,
    annotations: str = "captions.txt",
    split: str | None = None,
) -> Path:
    """A dataset folder: the synthetic images + `special` ones; val = 2 synth, the specials, 1 synth.

    With the generation batch size of 2, the first batch is on disk before a special image is
    decoded. `captions` replaces the annotations file's text (for reference-file cases).
    """
    images = folder / "images"
    shutil.copytree(synth / "images", images)
    text = (synth / "captions.txt").read_text()
    for name, data in special.items():
        (images / name).write_bytes(data)
        text += f"{name},a special picture\n{name},another special picture\n"
    names = synth_names(synth)
    if captions is not None:
        text = captions
    (folder / annotations).write_bytes(text.encode() if isinstance(text, str) else text)
    if split is None:
        (folder / "val.txt").write_text("\n".join([names[0], names[1], *special, names[2]]) + "\n")
        split = 'val_ids = "val.txt"'
    toml = folder / "dataset.toml"
    toml.write_text(f'annotations = "{annotations}"\nimages = "images"\nformat = "auto"\n[split]\n{split}\n')
    return toml


def run_case(world: dict[str, Any], capsys: pytest.CaptureFixture[str], case: str, dataset: Path,
             setting_text: str | None = None) -> tuple[tuple[int, str, str], Path]:
    """`bench run` of the battery setting (as run `case`) on `dataset`; (result, run folder)."""
    setting = world["root"] / "cases" / f"{case}.toml"
    setting.parent.mkdir(exist_ok=True)
    setting.write_text(setting_text if setting_text is not None else world["text"])
    result = cli(capsys, "run", "--setting", str(setting), "--data", str(dataset), "--workers", "0", "--no-progress")
    return result, world["root"] / "runs" / case / "vit-gpt2"


def assert_finished(result: tuple[int, str, str], run: Path, n: int = 4) -> dict[str, Any]:
    code, out, err = result
    assert code == 0, err[-3000:]
    assert "Traceback" not in out + err
    assert len(read_records(run / "predictions.jsonl")) == n
    results = json.loads((run / "results.json").read_text())
    assert results["n_images"] == n and results["metrics"]["CLIPScore"] > 0
    return results


def assert_stopped_at_the_bad_image(world: dict[str, Any], capsys: pytest.CaptureFixture[str], case: str,
                                    data: bytes, name: str, message: str) -> None:
    folder = world["root"] / case
    dataset = make_dataset(folder, world["synth"], {name: data})
    result, run = run_case(world, capsys, case, dataset)
    line = error_line(result)
    assert line.startswith(f"error: {folder / 'images' / name}: {message}"), line
    assert result[0] == 2
    # The batch captioned before the bad image is kept, whole; the run is not marked complete.
    kept = read_records(run / "predictions.jsonl")
    assert [r["image_id"] for r in kept] == [Path(n).stem for n in synth_names(world["synth"])[:2]]
    assert not (run / "results.json").exists()
    # Fixing the file and running again captions exactly the two images left.
    (folder / "images" / name).write_bytes(jpeg(noise((40, 30), seed=5)))
    result, _ = run_case(world, capsys, case, dataset)
    assert_finished(result, run)
    assert "captioning 2 of 4 images" in " ".join(result[1].split())


# --- images --------------------------------------------------------------------------------------

def test_corrupt_jpeg(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
    assert_stopped_at_the_bad_image(world, capsys, "corrupt", data, "corrupt.jpg", "corrupt or truncated image")


def test_truncated_jpeg(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = jpeg(noise((64, 48)))
    assert_stopped_at_the_bad_image(world, capsys, "truncated", data[: len(data) // 2], "cut.jpg",
                                    "corrupt or truncated image")


def test_png_with_alpha_is_converted(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    im = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (10, 10, 30, 20))
    result, run = run_case(world, capsys, "alpha", make_dataset(world["root"] / "alpha", world["synth"], {"alpha.png": png(im)}))
    assert_finished(result, run)


def test_cmyk_jpeg_is_converted(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = jpeg(Image.new("CMYK", (40, 30), (0, 255, 255, 0)))
    result, run = run_case(world, capsys, "cmyk", make_dataset(world["root"] / "cmyk", world["synth"], {"cmyk.jpg": data}))
    assert_finished(result, run)


def test_16bit_greyscale_is_converted(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    data = png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    result, run = run_case(world, capsys, "grey16", make_dataset(world["root"] / "grey16", world["synth"], {"grey16.png": data}))
    assert_finished(result, run)


def test_one_by_one_image(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = png(Image.new("RGB", (1, 1), (10, 200, 10)))
    result, run = run_case(world, capsys, "tiny", make_dataset(world["root"] / "tiny", world["synth"], {"dot.png": data}))
    assert_finished(result, run)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_20000x20000_jpeg_is_captioned_with_bounded_memory(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    status = Path("/proc/self/clear_refs")
    if not status.exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    dataset = make_dataset(world["root"] / "huge", world["synth"], {"huge.jpg": uniform_grey_jpeg(20000, 20000)})
    status.write_text("5")  # reset this process's peak RSS (VmHWM) to its current RSS
    before = _peak_rss_mb()
    result, run = run_case(world, capsys, "huge", dataset)
    assert_finished(result, run)
    # Decoded at 1/8 scale: a full decode would need 400 MB (grey) to 1.2 GB (RGB) more.
    assert _peak_rss_mb() - before < 300


def test_20000x20000_png_is_refused_from_its_header(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = png_with_size(world["root"] / "huge-png.png", 20000, 20000).read_bytes()
    folder = world["root"] / "hugepng"
    result, run = run_case(world, capsys, "hugepng", make_dataset(folder, world["synth"], {"huge.png": data}))
    line = error_line(result)
    assert line.startswith(f"error: {folder / 'images' / 'huge.png'}: image is too large to decode"), line
    assert len(read_records(run / "predictions.jsonl")) == 2  # the batch before it is kept


def test_missing_image_file(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder = world["root"] / "missing"
    dataset = make_dataset(folder, world["synth"], {"ghost.png": b""})
    (folder / "images" / "ghost.png").unlink()
    result, run = run_case(world, capsys, "missing", dataset)
    line = error_line(result)
    assert line.startswith(f"error: {folder / 'images' / 'ghost.png'}: image file not found (1 of 9 images are missing"), line
    assert not run.exists()  # found while planning: no run folder was touched


def test_image_path_escaping_the_images_folder(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder = world["root"] / "escape"
    captions = (world["synth"] / "captions.txt").read_text() + "../../etc/passwd,a caption about a password file\n"
    dataset = make_dataset(folder, world["synth"], {}, captions=captions, split="val_size = 2")
    result, run = run_case(world, capsys, "escape", dataset)
    line = error_line(result)
    assert f"{folder / 'captions.txt'} image 'passwd'" in line
    assert "image path '../../etc/passwd' leads outside the images folder" in line
    assert not run.exists()


def _coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> str:
    return json.dumps({"images": images, "annotations": annotations})


def test_duplicate_image_ids(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    names = synth_names(world["synth"])
    folder = world["root"] / "dupes"
    coco = _coco([{"id": 1, "file_name": names[0]}, {"id": 2, "file_name": names[1]}, {"id": 1, "file_name": names[2]}],
                 [{"image_id": i, "caption": "a shape"} for i in (1, 2)])
    dataset = make_dataset(folder, world["synth"], {}, captions=coco, annotations="refs.json", split="val_size = 2")
    line = error_line(run_case(world, capsys, "dupes", dataset)[0])
    assert line == f"error: {folder / 'refs.json'} images[2]: duplicate image id '1'"


def test_image_with_zero_references(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    names = synth_names(world["synth"])
    folder = world["root"] / "zero"
    coco = _coco([{"id": k, "file_name": names[k]} for k in range(3)],
                 [{"image_id": k, "caption": "a shape"} for k in (0, 2)])
    dataset = make_dataset(folder, world["synth"], {}, captions=coco, annotations="refs.json", split="val_size = 2")
    line = error_line(run_case(world, capsys, "zero", dataset)[0])
    assert line == f"error: {folder / 'refs.json'} images[1]: image '1' has zero references"


def test_references_with_non_utf8_bytes(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder = world["root"] / "latin1"
    text = (world["synth"] / "captions.txt").read_bytes()
    lines = text.split(b"\n")
    lines[3] = lines[3] + " caf\xe9".encode("latin-1")  # a Latin-1 byte in a UTF-8 file
    dataset = make_dataset(folder, world["synth"], {}, captions=b"\n".join(lines), split="val_size = 2")  # type: ignore[arg-type]
    offset = len(b"\n".join(lines[:3])) + 1 + len(lines[3]) - 1
    line = error_line(run_case(world, capsys, "latin1", dataset)[0])
    assert line == f"error: {folder / 'captions.txt'} line 4: not UTF-8 text (byte {offset})"


# --- predictions (bench score) -------------------------------------------------------------------

@pytest.fixture
def scoring_files(world: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    names = synth_names(world["synth"])[:3]
    refs = {n: ["a red circle on a blue background", "a circle"] for n in names}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return {"refs": tmp_path / "refs.json", "images": world["synth"] / "images", "dir": tmp_path,
            "names": names}  # type: ignore[dict-item]


def test_empty_prediction_strings_are_scored_zero_and_reported(
    scoring_files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = scoring_files["names"]
    preds = scoring_files["dir"] / "preds.json"
    preds.write_text(json.dumps({a: "a red circle", b: "", c: "   "}))
    a, b, c = (Path(n).stem for n in (a, b, c))  # image ids
    per_image = scoring_files["dir"] / "per_image.json"
    code, out, err = cli(capsys, "score", str(preds), "--refs", str(scoring_files["refs"]), "--metrics", "bleu,cider",
                         "--json", "--per-image", str(per_image))
    assert code == 0, err
    assert "Traceback" not in err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {preds}: 2 of 3 predictions are empty ({b!r}, {c!r}); scored as empty captions"]
    scores = json.loads(per_image.read_text())
    assert scores[b]["BLEU-1"] == 0 and scores[c]["BLEU-1"] == 0 and scores[a]["BLEU-1"] > 0.5
    assert json.loads(out)["n_images"] == 3


def test_predictions_with_unknown_ids(scoring_files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = scoring_files["names"]
    preds = scoring_files["dir"] / "preds.json"
    preds.write_text(json.dumps({a: "x", b: "y", c: "z", "no-such-image.jpg": "w"}))
    line = error_line(cli(capsys, "score", str(preds), "--refs", str(scoring_files["refs"]), "--metrics", "bleu"))
    assert line.startswith(f"error: {preds}: 1 of 4 predictions name images not in {scoring_files['refs']} ('no-such-image.jpg')")


def test_captions_of_10000_characters(
    world: dict[str, Any], scoring_files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = scoring_files["names"]
    long = ("a red circle on a blue background " * 300)[:10_000]
    preds = scoring_files["dir"] / "long.json"
    preds.write_text(json.dumps({a: long, b: "a circle", c: "a circle"}))
    code, out, err = cli(capsys, "score", str(preds), "--refs", str(scoring_files["refs"]), "--images",
                         str(scoring_files["images"]), "--clip-model", str(world["tiny_clip"]), "--metrics",
                         "bleu,cider,clipscore", "--json", "--as-run", "long", "--dataset", "long")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_clip_truncated"] == 1  # counted, not silently cut
    assert result["CLIPScore"] > 0
    report = scoring_files["dir"] / "report.md"
    code, _, err = cli(capsys, "compare", "--data", "long", "--out", str(report), "--resamples", "20")
    assert code == 0, err
    md = report.read_text()
    assert "a red circle on a blue background a red circle" in md  # quoted...
    assert long not in md and all(len(line) < 2000 for line in md.splitlines())  # ...but cut short
    assert "…" in md
    shutil.rmtree(world["root"] / "runs" / "long")


# --- settings and prompts ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "edit, message",
    [
        (("[train]\n", "[train]\nepoch = 3\n"), "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        (("r = 2\n", "r = 'big'\n"), "lora.r must be an integer (got 'big')"),
        (("lr = 1e-3\n", "lr = -1e-3\n"), "train.lr must be > 0 (got -0.001)"),
    ],
    ids=["unknown-key", "wrong-type", "negative-value"],
)
def test_bad_setting_names_file_and_key_and_leaves_the_run_alone(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    # The same setting name as the finished run: a bad edit must not touch that run folder.
    bad = tmp_path / "battery.toml"
    bad.write_text(world["text"].replace(*edit, 1))
    line = error_line(cli(capsys, "run", "--setting", str(bad), "--data", str(world["root"] / "good" / "dataset.toml")))
    assert line == f"error: {bad}: {message}"


def test_prompt_without_the_image_placeholder(world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    prompt = tmp_path / "noimage.toml"
    prompt.write_text('template = "Describe the picture in one sentence."\n')
    line = error_line(cli(capsys, "run", "--prompt", str(prompt), "--limit", "2"))
    assert line.startswith(f"error: {prompt}: key 'template' must contain the <image> placeholder exactly once, found 0")


def test_lora_target_module_that_does_not_exist(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    text = world["text"].replace('targets = "attn"', 'targets = ["attn.c_attn", "attn.q_proj"]')
    result, run = run_case(world, capsys, "targets", world["root"] / "good" / "dataset.toml", text)
    line = error_line(result)
    setting = world["root"] / "cases" / "targets.toml"
    assert line.startswith(f"error: {setting}: lora.targets: module 'attn.q_proj' does not exist in the vit-gpt2 decoder; available: ")
    assert "attn.c_attn" in line and "crossattention.q_attn" in line and "mlp.c_fc" in line
    assert not (run / "predictions.jsonl").exists() and not (run / "train").exists()


def test_hub_id_that_cannot_be_reached_offline(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 as the hub client sees it (it reads the variable once, at import).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    text = world["text"].replace(str(world["tiny_vit_gpt2"]), "bench-tests/no-such-captioner")
    result, run = run_case(world, capsys, "offline", world["root"] / "good" / "dataset.toml", text)
    line = error_line(result)
    setting = world["root"] / "cases" / "offline.toml"
    assert line.startswith(f"error: {setting}: vit-gpt2 model 'bench-tests/no-such-captioner' is not a local folder, "
                           "not in the Hugging Face cache and could not be fetched from the hub (offline?)"), line
    assert "--local-dir" in line
    assert not (run / "predictions.jsonl").exists()
