"""CLIPScore / RefCLIPScore against the paper's formulas, computed here independently from the raw
embeddings of a tiny CLIP (built from a config, saved locally; nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.scoring.scorer import Scorer
from bench.tiny.clip import build_tiny_clip

torch.set_num_threads(1)

LONG = "a dog runs " + "and jumps over the very long fence " * 290  # ~10,000 characters
assert len(LONG) >= 10_000

CANDIDATES = {
    "im0": "a dog runs on the grass",
    "im1": "two men play soccer",
    "im2": "",
    "im3": LONG,
    "im4": "a boat on the river under a bridge",
    "im5": "zebra",
    "im6": "people walk past a shop in the rain",
    "im7": "a cat sleeps on a red sofa",
}
REFS = {
    "im0": ["a brown dog is running through the snow", "the little dog carries a stick"],
    "im1": ["two women drink coffee"],
    "im2": ["a train at the station", "a bird flies over the lake at sunset", "a baby sits in the grass"],
    "im3": ["a dog jumps over a fence"],
    "im4": ["a small boat floats on the calm river"],
    "im5": ["a giraffe standing next to a tree", "an old woman reads a book"],
    "im6": ["zebra"],
    "im7": ["a cat lying on the couch"],
}


def _centre_text_projection(src: Path, dst: Path) -> Path:
    """A copy of the tiny CLIP whose text projection removes the direction all its texts share.

    With random weights every text embedding is dominated by one common component (the shared
    "A photo depicts" prefix and the EOS token), so text-text cosines are all positive; projecting
    that component out yields negative ones, which the RefCLIP-S clip-at-0 rule needs.
    """
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(src).eval()
    proc = AutoProcessor.from_pretrained(src)
    texts = ["A photo depicts " + t for t in list(CANDIDATES.values()) + [r for v in REFS.values() for r in v]]
    enc = proc.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_model(**enc).pooler_output
        common = pooled.mean(0)
        common = common / common.norm()
        eye = torch.eye(common.numel())
        model.text_projection.weight.copy_(model.text_projection.weight @ (eye - torch.outer(common, common)))
    model.save_pretrained(dst)
    proc.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip")
    plain = build_tiny_clip(root / "tiny", seed=0)
    return {"plain": plain, "centred": _centre_text_projection(plain, root / "centred")}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for i, key in enumerate(CANDIDATES):
        arr = rng.integers(0, 256, (30 + 3 * i, 40 + i, 3), dtype=np.uint8)
        path = root / (f"{key}.png" if i % 2 else f"{key}.jpg")
        Image.fromarray(arr).save(path)
        paths[key] = path
    return paths


def paper_clipscore(model_dir: Path, cands: dict[str, str], refs: dict[str, list[str]], images: dict[str, Path]):
    """Hessel et al. 2021 written out with plain torch/numpy: raw cosines and both scores."""
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    ids = list(cands)

    def text_features(texts: list[str]) -> np.ndarray:
        enc = proc.tokenizer(["A photo depicts " + t for t in texts], padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            feats = model.get_text_features(**enc).pooler_output.numpy()
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)

    # The reference's torchvision transform on PIL images (Resize short side, CenterCrop with
    # rounded offsets, then RGB), written out; transformers' image processor floors the offsets.
    n_px = model.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    tensors = []
    for i in ids:
        im = Image.open(images[i])
        w, h = im.size
        im = im.resize((n_px, n_px * h // w) if w <= h else (n_px * w // h, n_px), Image.BICUBIC)
        top, left = round((im.height - n_px) / 2), round((im.width - n_px) / 2)
        im = im.crop((left, top, left + n_px, top + n_px)).convert("RGB")
        tensors.append((torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 - mean) / std)
    pixels = torch.stack(tensors)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    cand = text_features([cands[i] for i in ids])
    cos_iv = np.sum(img * cand, axis=1)
    clip_s = 2.5 * np.maximum(cos_iv, 0.0)
    max_ref_cos = np.array([np.max(text_features(refs[i]) @ cand[n]) for n, i in enumerate(ids)])
    b = np.maximum(max_ref_cos, 0.0)
    refclip = np.array([2 * x * y / (x + y) if x + y > 0 else 0.0 for x, y in zip(clip_s, b)])
    texts = [cands[i] for i in ids] + [r for i in ids for r in refs[i]]
    n_long = sum(len(proc.tokenizer("A photo depicts " + t)["input_ids"]) > 77 for t in texts)
    return {"cos_iv": cos_iv, "max_ref_cos": max_ref_cos, "clip_s": clip_s, "refclip_s": refclip, "n_truncated": n_long}


def _score(model_dir: Path, images: dict[str, Path], batch_size: int = 64):
    with Scorer(metrics=("clipscore",), clip_model=str(model_dir), clip_batch_size=batch_size) as scorer:
        return scorer.score(CANDIDATES, REFS, images, progress=False)


@pytest.mark.parametrize("which", ["plain", "centred"])
def test_clipscore_equals_paper_formulas(clip_dirs, images, which):
    expected = paper_clipscore(clip_dirs[which], CANDIDATES, REFS, images)
    result = _score(clip_dirs[which], images)
    got_clip = np.array([result.per_image[i]["CLIPScore"] for i in CANDIDATES])
    got_ref = np.array([result.per_image[i]["RefCLIPScore"] for i in CANDIDATES])
    np.testing.assert_allclose(got_clip, expected["clip_s"], atol=1e-5)
    np.testing.assert_allclose(got_ref, expected["refclip_s"], atol=1e-5)
    assert result.corpus["CLIPScore"] == pytest.approx(float(expected["clip_s"].mean()), abs=1e-5)
    assert result.corpus["RefCLIPScore"] == pytest.approx(float(expected["refclip_s"].mean()), abs=1e-5)
    assert list(result.corpus) == ["CLIPScore", "RefCLIPScore"]
    assert result.clip_model == str(clip_dirs[which])
    # The 10,000-character caption is cut to 77 tokens, counted, and scored like the truncated text.
    assert expected["n_truncated"] == 1 and result.n_clip_truncated == 1
    # The clip-at-0 cases are really exercised (else this test could not catch a missing clip).
    assert (expected["cos_iv"] < 0).any() and (expected["cos_iv"] > 0).any()
    if which == "centred":
        assert (expected["max_ref_cos"] < 0).any() and (expected["max_ref_cos"] > 0).any()
        both_zero = (expected["cos_iv"] <= 0) & (expected["max_ref_cos"] <= 0)
        one_zero = (expected["cos_iv"] > 0) & (expected["max_ref_cos"] < 0)
        assert one_zero.any(), "need an image whose references all have a negative cosine"
        assert np.all(got_ref[one_zero | both_zero] == 0.0)
        assert np.isfinite(got_ref).all()


def test_batch_size_does_not_change_scores(clip_dirs, images):
    one = _score(clip_dirs["centred"], images, batch_size=1)
    many = _score(clip_dirs["centred"], images, batch_size=64)
    three = _score(clip_dirs["centred"], images, batch_size=3)
    for key in ("CLIPScore", "RefCLIPScore"):
        for image_id in CANDIDATES:
            assert one.per_image[image_id][key] == pytest.approx(many.per_image[image_id][key], abs=1e-6)
            assert three.per_image[image_id][key] == pytest.approx(many.per_image[image_id][key], abs=1e-6)
    assert one.n_clip_truncated == many.n_clip_truncated == 1


def test_clip_loaded_once_per_scorer(clip_dirs, images, monkeypatch):
    from transformers import CLIPModel

    loads: list[str] = []
    original = CLIPModel.from_pretrained.__func__

    def counting(cls, name, *args, **kwargs):
        loads.append(str(name))
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(counting))
    with Scorer(metrics=("clipscore",), clip_model=str(clip_dirs["plain"])) as scorer:
        first = scorer.score(CANDIDATES, REFS, images, progress=False)
        second = scorer.score(CANDIDATES, REFS, images, progress=False)
    assert loads == [str(clip_dirs["plain"])]
    assert first.per_image == second.per_image


def test_model_not_found_errors(tmp_path, images, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(BenchError, match=r"CLIP model '.*nope': no such model folder"):
        _score(tmp_path / "nope", images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=r"CLIP model '.*empty': cannot load from this folder"):
        _score(tmp_path / "empty", images)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(BenchError, match=r"gpt2': config.json has model_type 'gpt2', not 'clip'"):
        _score(tmp_path / "gpt2", images)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expected = (
        "CLIP model 'bench-tests/no-such-clip' is not a local folder, not in the Hugging Face cache and could not be "
        "fetched from the hub (offline?): download it once on a connected machine with "
        "`hf download bench-tests/no-such-clip --local-dir DIR` and set scoring.clip_model (or --clip-model) to DIR"
    )
    with pytest.raises(BenchError) as info:
        with Scorer(metrics=("clipscore",), clip_model="bench-tests/no-such-clip") as scorer:
            scorer.score(CANDIDATES, REFS, images, progress=False)
    assert str(info.value).startswith(expected)
    # Not flagged offline, but the hub does not answer: the same error at once, not after retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(BenchError) as info:
        _score("bench-tests/no-such-clip", images)  # type: ignore[arg-type]
    assert str(info.value).startswith(expected)


def test_partial_checkpoint_is_refused(clip_dirs, images, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(clip_dirs["plain"], partial)
    weights = load_file(partial / "model.safetensors")
    dropped = sorted(k for k in weights if "text_projection" in k)
    save_file({k: v for k, v in weights.items() if k not in dropped}, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BenchError, match=r"partial': 1 weight tensors missing or mis-shaped"):
        _score(partial, images)


def test_missing_image_for_an_id_is_an_error(clip_dirs, images):
    partial = {k: v for k, v in images.items() if k != "im3"}
    with pytest.raises(BenchError, match=r"1 scored images have no image file \('im3'\)"):
        _score(clip_dirs["plain"], partial)


def test_tiny_tokenizers_cover_any_text():
    from bench.tiny.clip import build_tiny_clip_tokenizer
    from bench.tiny.text import TINY_CAPTION_CORPUS, build_bpe_tokenizer

    text = "A dog runs in the park, ünïcödé 中文 🙂 \x07"
    plain = build_bpe_tokenizer(TINY_CAPTION_CORPUS, 500, ["<|endoftext|>"])
    assert plain.decode(plain.encode(text).ids) == text  # byte-level: lossless, no unknown token
    assert plain.token_to_id("<|endoftext|>") == plain.get_vocab_size() - 1
    assert plain.encode("a dog in the park").tokens == ["a", "Ġdog", "Ġin", "Ġthe", "Ġpark"]  # learned merges

    tok = build_tiny_clip_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert {bos, eos} == {len(tok) - 2, len(tok) - 1}  # as in CLIP: EOS is the highest id
    ids = tok(text)["input_ids"]
    assert ids[0] == bos and ids[-1] == eos and eos not in ids[1:-1]  # nothing mapped to unk (= EOS)
    # CLIP lower-cases and splits punctuation off words; every character comes back.
    assert tok.decode(ids, skip_special_tokens=True) == "a dog runs in the park , ünïcödé 中文 🙂 \x07"
    long = tok(LONG, truncation=True, max_length=77)["input_ids"]
    assert len(long) == 77 and long[0] == bos and long[-1] == eos
