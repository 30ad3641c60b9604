"""`bench attend` on real runs of tiny models over Flickr8k images, for all three backends.

The runs are made once per module by `bench.run.execute_run` (LoRA training included), in
process: the CLI is also called in process (`bench.cli.main`), so the model imports are paid once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.io import read_records
from conftest import tiny_setting_text

LIMIT = 3
# Tiny, fast runs: 1 LoRA epoch on 2 training images; CLIPScore only (no JVM for METEOR).
LORA_EXTRA = """
[lora]
r = 4
alpha = 8
[train]
epochs = 1
batch_size = 4
train_size = 2
[generation]
max_new_tokens = 7
batch_size = 4
"""
# LLaVA with beam search: attention must follow the beam's caption, not a greedy one.
LLAVA_EXTRA = """
[generation]
strategy = "beam"
num_beams = 2
max_new_tokens = 7
batch_size = 4
"""
METRICS = 'metrics = ["clipscore"]\n'
BACKENDS = ("vit-gpt2", "clip-flan-t5", "llava")


def _setting(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text.replace("[scoring]\n", "[scoring]\n" + METRICS))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, tiny_models: dict[str, Path], tiny_clip: Path) -> Iterator[dict]:
    """One finished run per backend under a private BENCH_RUNS: {"root", backend: run folder}."""
    from bench.run import execute_run
    from bench.settings import load_setting

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("attend")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_RUNS", str(root / "runs"))
        mp.setenv("BENCH_CACHE", str(root / "cache"))
        lora = {b: tiny_models[b] for b in ("vit-gpt2", "clip-flan-t5")}
        lora_path = _setting(root / "settings", "tiny_lora", tiny_setting_text(lora, tiny_clip, extra=LORA_EXTRA))
        llava_path = _setting(
            root / "settings", "tiny_llava",
            tiny_setting_text({"llava": tiny_models["llava"]}, tiny_clip, extra=LLAVA_EXTRA, backends=("llava",), prompt="brief"),
        )
        out: dict = {"root": root / "runs"}
        for path, backends in ((lora_path, ("vit-gpt2", "clip-flan-t5")), (llava_path, ("llava",))):
            setting = load_setting(path)
            for backend in backends:
                result = execute_run(setting, backend, device="cpu", limit=LIMIT, progress=False, num_workers=0)
                out[backend] = result.run_dir
        yield out


def run_name(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def captions(folder: Path) -> dict[str, str]:
    return {r["image_id"]: r["caption"] for r in read_records(folder / "predictions.jsonl")}


def clip_scores(folder: Path) -> dict[str, float]:
    per_image = json.loads((folder / "metrics.json").read_text())["per_image"]
    return {k: v["CLIPScore"] for k, v in per_image.items()}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`bench ARGS` in process: (exit code, stdout, stderr)."""
    from bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as im:
        return dict(im.text)


def load_captioner(folder: Path):
    from bench.attend import load_captioner as load, read_run

    return load(read_run(folder), torch.device("cpu"))


def sample_batch(captioner, folder: Path, image_ids: list[str], with_captions: list[str] | None = None) -> dict:
    from bench.attend import read_run
    from bench.data.types import Sample

    run = read_run(folder)
    batch = captioner.caption_collate()([Sample(i, run.image_paths[i], ()) for i in image_ids])
    if with_captions is not None:
        batch["captions"] = with_captions
    return batch


# --- the command, per backend -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_attend_writes_one_png_per_image_with_a_panel_per_caption_token(
    backend: str, runs: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("BENCH_RUNS", str(runs["root"]))
    folder = runs[backend]
    caps = captions(folder)
    ids = list(caps)[:2]
    code, out, err = cli(capsys, "attend", "--run", run_name(folder), "--images", ",".join(ids), "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in (folder / "attend").glob("*.png")) == sorted(f"{i}.png" for i in ids)
    model_dir = json.loads((folder / "config.json").read_text())["model"]["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for image_id in ids:
        text = png_text(folder / "attend" / f"{image_id}.png")
        assert text["bench:image_id"] == image_id
        assert text["bench:caption"] == caps[image_id]  # the run's caption, not a new one
        tokens, token_ids = json.loads(text["bench:tokens"]), json.loads(text["bench:token_ids"])
        n = int(text["bench:panels"])
        assert n == len(tokens) == len(token_ids) == len(json.loads(text["bench:panel_boxes"])) > 0
        # The panels are exactly the caption's tokens: they decode back to the caption.
        decoded = " ".join(tokenizer.decode(token_ids, skip_special_tokens=True).split())
        if backend == "llava":
            from bench.backends.llava import postprocess_caption

            decoded = postprocess_caption(decoded, 1)
        assert decoded == caps[image_id]
        assert text["bench:source"] == "generated"  # the run's own decoding was reproduced
        assert "mean over the" in text["bench:aggregation"] and "all" in text["bench:aggregation"]
        assert f"{image_id}.png" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_head_map_sums_to_one_over_the_patches(backend: str, runs: dict) -> None:
    folder = runs[backend]
    captioner = load_captioner(folder)
    caps = captions(folder)
    ids = list(caps)
    from bench.attend import generation_config, read_run

    gen = generation_config(read_run(folder))
    traces = captioner.generate_with_attention(sample_batch(captioner, folder, ids, [caps[i] for i in ids]), gen)
    assert [t.caption for t in traces] == [caps[i] for i in ids]
    for trace in traces:
        gh, gw = trace.grid
        assert gh == gw == 4  # tiny models: 32 px images, 8 px patches
        assert len(trace.maps) == len(trace.tokens) > 0
        maps = torch.stack(trace.maps)  # (tokens, heads, layers, patches), before any aggregation
        assert maps.shape[1:] == (captioner_heads(captioner, backend), 2, gh * gw)
        assert torch.all(maps >= 0)
        assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)
        # Not a constant: the maps differ between tokens and heads.
        assert maps.std() > 0
        # Aggregation: mean over heads then layers is a distribution; max over heads is the max.
        from bench.attend import aggregate

        first = trace.maps[0]
        assert np.allclose(aggregate(first, None, "mean"), first.mean(dim=(0, 1)).numpy(), atol=1e-6)
        assert np.allclose(aggregate(first, 1, "max"), first[:, 1].amax(dim=0).numpy(), atol=1e-6)


def captioner_heads(captioner, backend: str) -> int:
    if backend == "vit-gpt2":
        return captioner.model.config.decoder.n_head
    if backend == "clip-flan-t5":
        return captioner.model.t5.config.num_heads
    return captioner.model.config.text_config.num_attention_heads


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_equal_the_attention_generation_computed(backend: str, runs: dict) -> None:
    """The teacher-forced pass gives the weights generate() itself computed, step by step."""
    from bench.models.decoding import generation_kwargs
    from bench.config import GenerationConfig

    folder = runs[backend]
    captioner = load_captioner(folder)
    image_id = next(iter(captions(folder)))
    gen = GenerationConfig(max_new_tokens=5)  # greedy
    batch = sample_batch(captioner, folder, [image_id])
    trace = captioner.generate_with_attention(batch, gen)[0]
    assert trace.maps
    if backend == "llava":
        model = captioner.model
        model.set_attn_implementation("eager")
        inputs = captioner._inputs(batch)
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, num_beams=1,
                             output_attentions=True, return_dict_in_generate=True)
        image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
        steps = [torch.stack([a[0, :, -1, :] for a in step], 1)[..., image] for step in out.attentions]
    else:
        model = captioner.model if backend == "vit-gpt2" else captioner.model.t5
        model.set_attn_implementation("eager")
        kwargs = {**generation_kwargs(gen), "output_attentions": True, "return_dict_in_generate": True}
        if backend == "vit-gpt2":
            out = model.generate(pixel_values=batch["pixel_values"], **kwargs)
        else:
            embeds, mask = captioner.model.encode_image(batch["pixel_values"])
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        steps = [torch.stack([a[0, :, -1, 1:] for a in step], 1) for step in out.cross_attentions]
    for t, expected in enumerate(steps[: len(trace.maps)]):
        expected = expected / expected.sum(-1, keepdim=True)
        assert torch.allclose(trace.maps[t], expected, atol=1e-5), f"token {t}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_caption_the_decoding_does_not_reproduce_is_tokenized(backend: str, runs: dict) -> None:
    from bench.config import GenerationConfig

    folder = runs[backend]
    captioner = load_captioner(folder)
    caption = "a dog runs on the green grass ."
    image_id = next(iter(captions(folder)))
    trace = captioner.generate_with_attention(
        sample_batch(captioner, folder, [image_id], [caption]), GenerationConfig(max_new_tokens=5)
    )[0]
    tokenizer = captioner.processor.tokenizer if backend == "llava" else captioner.tokenizer
    ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    assert trace.caption == caption and trace.source == "retokenized"
    assert trace.token_ids == ids and len(trace.maps) == len(ids)


# --- choosing images ----------------------------------------------------------------------------------

def test_top_and_bottom_follow_the_runs_per_image_clipscore(runs: dict) -> None:
    from bench.attend import attend_run

    folder = runs["vit-gpt2"]
    scores = clip_scores(folder)
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    out = folder.parent / "picked"
    top = attend_run(folder, top=1, out=out / "top", device="cpu")
    bottom = attend_run(folder, bottom=2, out=out / "bottom", heads="max", layer="-1", device="cpu")
    assert [f.image_id for f in top] == ranked[:1]
    assert [f.image_id for f in bottom] == ranked[::-1][:2]
    assert [f.score for f in bottom] == [scores[i] for i in ranked[::-1][:2]]
    assert sorted(p.name for p in (out / "bottom").glob("*.png")) == sorted(f"{i}.png" for i in ranked[::-1][:2])
    text = png_text(out / "bottom" / f"{ranked[-1]}.png")
    assert text["bench:aggregation"].startswith("max over the 2 heads, in layer 1 of 0..1")
    # The aggregated maps are what the aggregation says: max over heads in the last layer.
    figure = bottom[0]
    assert figure.heat.shape == (figure.n_panels, 4, 4)


def test_figures_are_deterministic(runs: dict) -> None:
    from bench.attend import attend_run

    folder = runs["clip-flan-t5"]
    image_id = next(iter(captions(folder)))
    base = folder.parent / "det"
    a = attend_run(folder, images=image_id, out=base / "a", device="cpu")[0]
    b = attend_run(folder, images=image_id, out=base / "b", device="cpu")[0]
    assert a.path.read_bytes() == b.path.read_bytes()
    assert np.allclose(a.heat.sum(axis=(1, 2)), 1.0, atol=1e-5)  # a mean of distributions sums to one


def test_compare_links_the_attention_figures(runs: dict, tmp_path: Path) -> None:
    from bench.report import build_report

    folder = runs["vit-gpt2"]
    image_id = next(iter(captions(folder)))
    from bench.attend import attend_run

    attend_run(folder, images=image_id, device="cpu")
    report = tmp_path / "report.md"
    build_report(runs["root"], report, dataset="flickr8k-1k", n_boot=10)
    text = report.read_text()
    assert "Attention maps (bench attend)" in text and f"{image_id}.png" in text


# --- one-line errors ------------------------------------------------------------------------------------

def test_one_line_errors(runs: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENCH_RUNS", str(runs["root"]))
    name = run_name(runs["vit-gpt2"])
    image_id = next(iter(captions(runs["vit-gpt2"])))
    no_metrics = tmp_path / "copy" / "vit-gpt2"
    shutil.copytree(runs["vit-gpt2"], no_metrics, ignore=shutil.ignore_patterns(".lock", "attend", "picked", "det"))
    (no_metrics / "metrics.json").unlink()
    cases = [
        (["--run", "nope/vit-gpt2", "--top", "1"], "--run nope/vit-gpt2: no run folder"),
        (["--setting", "nope"], "give --run SETTING/BACKEND, or --setting NAME with --backend B"),
        (["--run", name, "--images", "not_an_image"], "--images: image id 'not_an_image' is not in"),
        (["--run", name], "give exactly one of --images"),
        (["--run", name, "--images", image_id, "--top", "1"], "give exactly one of --images"),
        (["--run", name, "--top", "0"], "--top must be >= 1"),
        (["--run", str(no_metrics), "--top", "1"], "metrics.json: file not found; --top/--bottom pick images"),
        (["--run", name, "--images", image_id, "--heads", "median"], "--heads median: must be one of mean, max"),
        (["--run", name, "--images", image_id, "--layer", "first"], "--layer first: must be 'all' or a layer index"),
        (["--run", name, "--images", image_id, "--layer", "5", "--device", "cpu"], "--layer 5: the model has 2 layers"),
    ]
    external = runs["root"] / "ext" / "external"
    external.mkdir(parents=True)
    (external / "config.json").write_text(json.dumps({"name": "ext", "kind": "external", "backend": "external"}))
    cases.append((["--run", "ext/external", "--top", "1"], "an external run has no model to trace"))
    for args, message in cases:
        code, _, err = cli(capsys, "attend", *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        # One error line (transformers' own "Loading weights" bar may precede it), no traceback.
        lines = err.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
        assert "Traceback" not in err, err


def test_a_run_in_use_is_refused(runs: dict) -> None:
    from bench.attend import attend_run
    from bench.errors import RunLockedError
    from bench.io import exclusive_lock

    folder = runs["llava"]
    with exclusive_lock(folder), pytest.raises(RunLockedError, match="in use by another bench process"):
        attend_run(folder, top=1, device="cpu")
