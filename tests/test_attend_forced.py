"""A model made to look at one known patch: `bench attend` must draw the heat there.

For each backend the tiny model's weights are set so that every caption token, in every layer and
head, attends to patch P only: the vision tower's position embedding of P gets one huge feature,
the keys read that feature, and the queries are a large positive constant on it. A run of that
model over a uniform grey image is written in the run-folder format, `bench attend` draws it, and
the test reads the heat back from the PNG's pixels (on grey, red minus blue is the jet colour map
alone) inside each panel box the PNG records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_setting_text

BIG = 50.0
GRID = 4  # tiny models: 32 px input, 8 px patches


def _mark_patch(position_weight: torch.Tensor, patch: int) -> None:
    """Position embeddings (CLS first, then patches row-major): patch gets a huge feature 0."""
    position_weight[1 + patch, 0] += BIG


def force_vit_gpt2(src: Path, dst: Path, patch: int) -> Path:
    from transformers import VisionEncoderDecoderModel

    shutil.copytree(src, dst)
    model = VisionEncoderDecoderModel.from_pretrained(dst)
    with torch.no_grad():
        _mark_patch(model.encoder.embeddings.position_embeddings[0], patch)
        proj = model.enc_to_dec_proj  # ViT width 32 -> GPT-2 width 64: feature 0 passes through
        proj.weight[0].zero_()
        proj.weight[0, 0] = 1.0
        proj.bias[0] = 0.0
        for block in model.decoder.transformer.h:
            att = block.crossattention
            d, hd = att.embed_dim, att.head_dim
            att.q_attn.weight.zero_()
            att.q_attn.bias.zero_()
            att.c_attn.weight[:, :d].zero_()  # GPT-2 Conv1D: (in, out); keys are the first d outputs
            att.c_attn.bias[:d].zero_()
            for h in range(att.num_heads):
                att.q_attn.bias[h * hd] = 200.0  # a constant query ...
                att.c_attn.weight[0, h * hd] = 1.0  # ... against key = encoder feature 0
    model.save_pretrained(dst)
    return dst


def force_clip_flan_t5(src: Path, dst: Path, patch: int) -> Path:
    from transformers import CLIPVisionModel, T5ForConditionalGeneration

    shutil.copytree(src, dst)
    vision = CLIPVisionModel.from_pretrained(dst / "vision")
    with torch.no_grad():
        _mark_patch(vision.embeddings.position_embedding.weight, patch)
    vision.save_pretrained(dst / "vision")
    t5 = T5ForConditionalGeneration.from_pretrained(dst / "t5")
    with torch.no_grad():
        for block in t5.encoder.block:  # an identity encoder: its output is RMSNorm(projection)
            block.layer[0].SelfAttention.o.weight.zero_()
            block.layer[-1].DenseReluDense.wo.weight.zero_()
        # Every decoder input carries a huge feature 0 (the same for every token, so the tied LM
        # head only shifts all logits alike) and nothing writes to feature 0 afterwards.
        t5.shared.weight[:, 0] = BIG
        for block in t5.decoder.block:
            block.layer[0].SelfAttention.o.weight[0].zero_()
            block.layer[-1].DenseReluDense.wo.weight[0].zero_()
            att = block.layer[1].EncDecAttention
            att.o.weight[0].zero_()
            att.q.weight.zero_()
            att.k.weight.zero_()
            for h in range(att.n_heads):
                att.q.weight[h * att.key_value_proj_dim, 0] = 10.0
                att.k.weight[h * att.key_value_proj_dim, 0] = 1.0
    t5.save_pretrained(dst / "t5")
    return dst


def force_projection(projection: torch.nn.Module) -> None:
    """ClipT5's projection (saved with the adapter): feature 0 = CLIP feature 0, the rest 1."""
    with torch.no_grad():
        norm, linear = projection[0], projection[1]
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        linear.weight.zero_()
        linear.weight[0, 0] = 1.0
        linear.bias.fill_(1.0)
        linear.bias[0] = 0.0


def force_llava(src: Path, dst: Path, patch: int) -> Path:
    from transformers import LlavaForConditionalGeneration

    shutil.copytree(src, dst)
    model = LlavaForConditionalGeneration.from_pretrained(dst)
    lm = model.model.language_model
    with torch.no_grad():
        _mark_patch(model.model.vision_tower.embeddings.position_embedding.weight, patch)
        p = model.model.multi_modal_projector
        p.linear_1.weight.zero_()
        p.linear_1.weight[0, 0] = 1.0
        p.linear_1.bias.zero_()
        p.linear_2.weight.zero_()
        p.linear_2.weight[0, 0] = 1.0
        p.linear_2.bias.fill_(1.0)
        p.linear_2.bias[0] = 0.0
        lm.embed_tokens.weight[:, 0] = BIG  # text positions: a huge feature 0 -> a large query
        model.lm_head.weight[:, 0] = 0.0  # which must not choose the next token
        for layer in lm.layers:
            att = layer.self_attn
            hd = att.head_dim
            att.o_proj.weight.zero_()  # the residual stream stays the embeddings in every layer
            layer.mlp.down_proj.weight.zero_()
            att.q_proj.weight.zero_()
            att.k_proj.weight.zero_()
            slow = hd // 2 - 1  # the rotary pair that turns slowest: RoPE leaves it almost as is
            for h in range(att.q_proj.weight.shape[0] // hd):
                att.q_proj.weight[h * hd + slow, 0] = 10.0
            for h in range(att.k_proj.weight.shape[0] // hd):
                att.k_proj.weight[h * hd + slow, 0] = 1.0
    model.save_pretrained(dst)
    return dst


FORCE = {"vit-gpt2": force_vit_gpt2, "clip-flan-t5": force_clip_flan_t5, "llava": force_llava}
# (backend, patch, options): patches off the diagonal, so a transposed map would fail.
CASES = [
    ("vit-gpt2", 6, []),
    ("clip-flan-t5", 9, ["--heads", "max", "--layer", "0"]),
    ("llava", 3, ["--layer", "-1"]),
]


def fabricate_run(setting_path: Path, backend: str, image: Path) -> Path:
    """A finished run of the setting's model over one image, written in the run-folder format."""
    from bench.backends import backend_class
    from bench.captioning import caption_samples
    from bench.data.types import Sample
    from bench.run import RunFolder, plan_run
    from bench.run.folder import SplitRecord
    from bench.settings import load_setting

    setting = load_setting(setting_path)
    plan = plan_run(setting, backend, limit=1)
    sample = Sample("grey", image, ("a grey square .",))
    run_dir = plan.run_dir
    folder = RunFolder(run_dir)
    folder.write_config(plan.config)
    folder.write_split(SplitRecord.of(plan.split, [sample]))
    captioner = backend_class(backend).load(setting.models[backend], torch.device("cpu"), prompt=plan.prompt)
    if plan.kind == "lora":
        torch.manual_seed(setting.seed)
        captioner.add_lora(setting.lora)
        if backend == "clip-flan-t5":
            force_projection(captioner.model.projection)
        adapter = run_dir / "train" / "adapter" / f"epoch-{setting.train.epochs}"
        captioner.save_adapter(adapter)
        (adapter / "train_state.json").write_text("{}\n")
    captioner.torch_module().eval()
    caption_samples(captioner, [sample], setting.generation, run_dir / "predictions.jsonl", 0, progress=False)
    return run_dir


def heat_cells(png: Path, box: list[int]) -> np.ndarray:
    """(GRID, GRID) mean of red minus blue over each patch's area of one panel."""
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    x0, y0, x1, y1 = box
    panel = pixels[y0:y1, x0:x1]
    redness = panel[..., 0] - panel[..., 2]
    h, w = redness.shape
    return np.array([
        [redness[r * h // GRID : (r + 1) * h // GRID, c * w // GRID : (c + 1) * w // GRID].mean() for c in range(GRID)]
        for r in range(GRID)
    ])


@pytest.mark.parametrize(("backend", "patch", "options"), CASES, ids=[c[0] for c in CASES])
def test_heat_map_peaks_at_the_patch_the_model_attends_to(
    backend: str, patch: int, options: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tiny_models: dict[str, Path], tiny_clip: Path, shared_data: Path,
) -> None:
    from bench.cli import main

    torch.set_num_threads(1)
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    model = FORCE[backend](tiny_models[backend], tmp_path / "forced", patch)
    extra = "[generation]\nmax_new_tokens = 5\n"
    kwargs = {"backends": (backend,), "prompt": "brief"} if backend == "llava" else {}
    setting = tmp_path / "forced.toml"
    setting.write_text(tiny_setting_text({backend: model}, tiny_clip, extra=extra, **kwargs))
    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(grey)
    run_dir = fabricate_run(setting, backend, grey)

    with pytest.raises(SystemExit) as exit_info:
        main(["attend", "--run", f"forced/{backend}", "--images", "grey", "--device", "cpu", *options])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    png = run_dir / "attend" / "grey.png"
    with Image.open(png) as im:
        text = dict(im.text)
    boxes = json.loads(text["bench:panel_boxes"])
    assert int(text["bench:panels"]) == len(boxes) > 0
    row, col = divmod(patch, GRID)
    for k, box in enumerate(boxes):
        cells = heat_cells(png, box)
        assert np.unravel_index(cells.argmax(), cells.shape) == (row, col), f"panel {k}:\n{cells.round(2)}"
        others = np.delete(cells.flatten(), patch)
        assert cells[row, col] > others.max() + 0.2  # a clear peak, not a near-tie
