"""bench's CLIP-S / RefCLIP-S against an independent implementation of Hessel et al.'s pipeline.

The reference below is written from jmhessel/clipscore's clipscore.py and OpenAI CLIP's clip.py /
simple_tokenizer.py, and calls no bench code: images go through the torchvision transform of the
reference rewritten as PIL operations (Resize(224, BICUBIC) of the short side, CenterCrop(224)
with rounded offsets, convert("RGB"), ToTensor, Normalize), texts through OpenAI's cleaning and a
byte-level BPE written here over the real vocab.json / merges.txt of openai/clip-vit-base-patch32.
The CLIP is built from that checkpoint's real config (image size 224, patch 32, its tokenizer),
narrowed for CPU time, with seeded random weights shifted so that every cosine is well above 0.
"""

from __future__ import annotations

import html
import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

from bench.scoring.scorer import Scorer

torch.set_num_threads(1)

N_PX = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
REAL_CLIP = "openai__clip-vit-base-patch32"
N_FLICKR = 100


# --- the reference text path: OpenAI's simple_tokenizer, written from its description -----------

def _byte_alphabet() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class OpenAIBPE:
    PATTERN = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
    )

    def __init__(self, folder: Path) -> None:
        self.vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(l.split()) for l in lines[1:] if l.strip() and not l.startswith("#version")]
        self.rank = {m: k for k, m in enumerate(merges)}
        self.bytes = _byte_alphabet()
        self.sot, self.eot = self.vocab["<|startoftext|>"], self.vocab["<|endoftext|>"]

    @staticmethod
    def clean(text: str) -> str:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower() if text else text

    @lru_cache(maxsize=None)
    def bpe(self, word: str) -> tuple[str, ...]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.rank.get(p, np.inf))
            if pair not in self.rank:
                break
            merged, k = [], 0
            while k < len(parts):
                if k < len(parts) - 1 and (parts[k], parts[k + 1]) == pair:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return tuple(parts)

    def text_ids(self, text: str) -> list[int]:
        ids = []
        for piece in self.PATTERN.findall(self.clean(text)):
            word = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[t] for t in self.bpe(word))
        return ids

    def tokenize(self, text: str, context: int = 77) -> list[int]:
        """clip.tokenize(text, truncate=True) as a list padded with 0."""
        ids = [self.sot, *self.text_ids(text), self.eot]
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = self.eot
        return ids + [0] * (context - len(ids))


# --- the reference image path: the torchvision transform as PIL operations -----------------------

def reference_image_tensor(path: Path) -> torch.Tensor:
    from PIL import Image

    im = Image.open(path)
    w, h = im.size
    short, long = min(w, h), max(w, h)
    new_long = int(N_PX * long / short)
    im = im.resize((N_PX, new_long) if w == short else (new_long, N_PX), Image.BICUBIC)
    top = int(round((im.size[1] - N_PX) / 2.0))
    left = int(round((im.size[0] - N_PX) / 2.0))
    im = im.crop((left, top, left + N_PX, top + N_PX)).convert("RGB")
    t = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return (t - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def reference_scores(model, bpe: OpenAIBPE, cands: dict, refs: dict, images: dict) -> dict[str, np.ndarray]:
    """jmhessel/clipscore's get_clip_score and get_refonlyclip_score + harmonic mean."""
    ids = list(cands)

    def text(texts: list[str]) -> np.ndarray:
        tokens = torch.tensor([bpe.tokenize("A photo depicts " + t) for t in texts])
        with torch.no_grad():
            out = model.get_text_features(input_ids=tokens)  # pooled at argmax = end token
        f = (out if torch.is_tensor(out) else out.pooler_output).numpy().astype(np.float64)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.stack([reference_image_tensor(images[i]) for i in ids]))
    img = (out if torch.is_tensor(out) else out.pooler_output).numpy().astype(np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cand = text([cands[i] for i in ids])
    cos = np.sum(img * cand, axis=1)
    clip_s = 2.5 * np.clip(cos, 0, None)
    ref_cos = np.array([np.max(text(refs[i]) @ cand[k]) for k, i in enumerate(ids)])
    refclip = 2 * clip_s * ref_cos / (clip_s + ref_cos)
    return {"cos": cos, "ref_cos": ref_cos, "clip_s": clip_s, "refclip_s": refclip}


# --- the model: real config and tokenizer, narrowed, seeded, every cosine well above 0 -----------

@pytest.fixture(scope="module")
def real_clip_dir(shared_data: Path) -> Path:
    folder = shared_data.parent / "models" / REAL_CLIP
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def clip_model(real_clip_dir: Path, tmp_path_factory) -> tuple[Path, object]:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_pretrained(real_clip_dir)
    for sub in (config.text_config, config.vision_config):
        sub.hidden_size, sub.intermediate_size, sub.num_hidden_layers, sub.num_attention_heads = 64, 128, 2, 2
    config.projection_dim = 32
    assert config.vision_config.image_size == N_PX and config.vision_config.patch_size == 32
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        # Random CLIPs give cosines around 0, half of them clipped: a shared offset after the final
        # layer norms and one projection for both towers put them well above 0, with a spread.
        shared = torch.randn(64)
        model.vision_model.post_layernorm.bias.copy_(0.6 * shared)
        model.text_model.final_layer_norm.bias.copy_(0.6 * shared)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    out = tmp_path_factory.mktemp("clip-real-config")
    model.save_pretrained(out)
    for f in real_clip_dir.iterdir():
        if f.suffix in (".json", ".txt") and f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out, model


# --- the cases ------------------------------------------------------------------------------------

ODD_TEXTS = [
    "a dog &amp; a cat &lt;3 on the grass",
    "two\tmen   play\t\tsoccer  \n in the  park ",
    "cafÃ© with a crÃ¨me brÃ»lÃ©e",  # mojibake that ftfy repairs
    "a café in zürich, naïve façade, e\u0301 &#769;",
    "A LARGE BROWN DOG RUNS ACROSS THE FIELD",
    "&amp;amp; double-escaped &amp;quot;quotes&amp;quot;",
    "a man " + "and a very long sentence about many things " * 20,
    "ﬁsh ﬂoat in the water ’s edge … — “quoted”",
    "",
    "12345 bikes, 3.5 cars & 1/2 a bus!!!",
    # With a "<" in the text ftfy leaves entities alone, so OpenAI's html.unescape does the work,
    # and leaves "e" + a combining accent that an NFC normaliser would compose.
    "<b>fish</b> &amp; chips &quot;hot&quot; &amp;amp; peas",
    "<i>a cafe&#769;</i> serving cre&#768;me bru&#770;le&#769;e",
]


def _odd_images(root: Path) -> dict[str, Path]:
    from PIL import Image

    rng = np.random.default_rng(1)
    out: dict[str, Path] = {}

    def noise(h: int, w: int, c: int = 3) -> np.ndarray:
        base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, c))
        return np.clip(base + rng.normal(0, 40, (h, w, c)), 0, 255).astype(np.uint8)

    for orientation in range(2, 9):
        im = Image.fromarray(noise(300, 451))
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"exif{orientation}"] = root / f"exif{orientation}.jpg"
        im.save(out[f"exif{orientation}"], exif=exif)
    out["huge"] = root / "huge.jpg"
    Image.fromarray(noise(1700, 2601)).save(out["huge"], quality=90)
    out["grey"] = root / "grey.png"
    Image.fromarray(noise(333, 250, 1)[:, :, 0]).save(out["grey"])
    out["palette"] = root / "palette.png"
    Image.fromarray(noise(257, 389)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out["palette"])
    rgba = np.dstack([noise(301, 402), np.full((301, 402), 255, np.uint8)])
    rgba[50:200, 100:300] = (200, 30, 60, 0)  # transparent, and red underneath, not white
    rgba[:, :40, 3] = 90
    out["rgba"] = root / "rgba.png"
    Image.fromarray(rgba).save(out["rgba"])
    out["cmyk"] = root / "cmyk.jpg"
    Image.fromarray(noise(280, 375)).convert("CMYK").save(out["cmyk"])
    out["i16"] = root / "i16.png"
    Image.fromarray((noise(310, 230, 1)[:, :, 0].astype(np.uint16) * 257)).save(out["i16"])
    return out


def _flickr_images(shared_data: Path) -> dict[str, Path]:
    """N_FLICKR Flickr8k photos, half of them ones whose crop offset differs between floor and round."""
    from PIL import Image

    folder = shared_data / "flickr8k-1k" / "images"
    off_by_one, others = [], []
    for path in sorted(folder.glob("*.jpg")):
        w, h = Image.open(path).size
        long = int(N_PX * max(w, h) / min(w, h))
        (off_by_one if int(round((long - N_PX) / 2.0)) != (long - N_PX) // 2 else others).append(path)
        if len(off_by_one) >= N_FLICKR // 2 and len(others) >= N_FLICKR // 2:
            break
    assert len(off_by_one) >= N_FLICKR // 2
    return {p.stem: p for p in off_by_one[: N_FLICKR // 2] + others[: N_FLICKR // 2]}


@pytest.fixture(scope="module")
def cases(shared_data: Path, tmp_path_factory) -> tuple[dict, dict, dict]:
    images = _odd_images(tmp_path_factory.mktemp("odd-images"))
    images.update(_flickr_images(shared_data))
    coco = json.loads((shared_data / "coco-12" / "refs.json").read_text())
    images.update({Path(name).stem: shared_data / "coco-12" / "images" / name for name in coco})
    pool = ODD_TEXTS + [r for refs in coco.values() for r in refs]
    cands, refs = {}, {}
    for k, key in enumerate(images):
        cands[key] = pool[k % len(pool)]
        refs[key] = [pool[(k * 7 + 3) % len(pool)], pool[(k * 3 + 1) % len(pool)], ODD_TEXTS[k % len(ODD_TEXTS)]]
    return cands, refs, images


def test_clipscore_equals_the_reference_pipeline(clip_model, real_clip_dir, cases):
    model_dir, model = clip_model
    cands, refs, images = cases
    bpe = OpenAIBPE(real_clip_dir)
    expected = reference_scores(model, bpe, cands, refs, images)
    # The test case can tell: cosines well above 0 (nothing clipped) and spread out.
    assert expected["cos"].min() > 0.2 and expected["ref_cos"].min() > 0.2
    assert expected["cos"].std() > 0.02

    with Scorer(metrics=("clipscore",), clip_model=str(model_dir), clip_batch_size=16) as scorer:
        result = scorer.score(cands, refs, images, progress=False)
    ids = list(cands)
    got_clip = np.array([result.per_image[i]["CLIPScore"] for i in ids])
    got_ref = np.array([result.per_image[i]["RefCLIPScore"] for i in ids])
    worst = int(np.argmax(np.abs(got_clip - expected["clip_s"])))
    assert np.abs(got_clip - expected["clip_s"]).max() <= 1e-5, f"CLIP-S differs most on {ids[worst]}"
    worst = int(np.argmax(np.abs(got_ref - expected["refclip_s"])))
    assert np.abs(got_ref - expected["refclip_s"]).max() <= 1e-5, f"RefCLIP-S differs most on {ids[worst]}"
    n_long = sum(len(bpe.text_ids("A photo depicts " + t)) > 75 for i in ids for t in [cands[i], *refs[i]])
    assert n_long > 0 and result.n_clip_truncated == n_long


def test_reference_text_path_differs_from_raw_text(real_clip_dir):
    """The odd texts really exercise the cleaning: raw BPE of them gives other tokens."""
    bpe = OpenAIBPE(real_clip_dir)
    raw = OpenAIBPE(real_clip_dir)
    raw.clean = staticmethod(lambda t: t.lower())  # type: ignore[method-assign]
    changed = [t for t in ODD_TEXTS if bpe.tokenize(t) != raw.tokenize(t)]
    assert len(changed) >= 5
