"""Generated runs with generated images for the HTML explorer's tests and benchmark.

`explorer_runs(root, image_dir, n_images, n_runs)` writes n_runs finished run folders over the
same n_images generated JPEGs: seeded template captions (some repetitive, some empty, one
hostile) scored with pycocoevalcap, seeded per-image CLIPScore stand-ins (no CLIP weights
offline), a loss curve on the LoRA runs and one attention figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.testing.run_folders import held_out_run, loss_curve

HOSTILE = "<img src=x onerror=\"window.__benchPwned=1\"> </script><script>window.__benchPwned=2</script> & <b>bold</b>"
_NOUNS = ("dog", "cat", "man", "woman", "child", "bike", "car", "horse", "ball", "boat", "tree", "beach")
_ADJ = ("black", "white", "small", "young", "red", "happy", "old", "brown")
_VERBS = ("runs", "sits", "jumps", "stands", "plays", "walks", "rides")
_PLACES = ("on the grass", "in the water", "near a wall", "on the street", "in a park", "by the sea")


def _sentence(rng: np.random.Generator) -> str:
    return f"a {rng.choice(_ADJ)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}"


def generated_images(image_dir: Path, n_images: int, seed: int = 0) -> list[dict[str, Any]]:
    """n small JPEGs (a coloured square on a coloured ground) and their samples, 3 refs each."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(n_images):
        path = image_dir / f"img{k:05d}.jpg"
        if not path.is_file():
            im = Image.new("RGB", (160, 120), tuple(int(c) for c in rng.integers(0, 255, 3)))
            im.paste(tuple(int(c) for c in rng.integers(0, 255, 3)), (40, 30, 110, 90))
            im.save(path, quality=85)
        samples.append({"image_id": f"img{k:05d}", "path": str(path), "refs": [_sentence(rng) for _ in range(3)]})
    return samples


def _captions(rng: np.random.Generator, ids: list[str], run: int) -> dict[str, str]:
    out = {}
    for k, i in enumerate(ids):
        u = rng.random()
        text = _sentence(rng)
        if u < 0.05:
            text = ""
        elif u < 0.12:
            text = f"{text} tropical tropical tropical"
        out[i] = text
    if run == 1:
        out[ids[min(2, len(ids) - 1)]] = HOSTILE
    return out


def explorer_runs(root: Path, image_dir: Path, n_images: int, n_runs: int, seed: int = 0) -> list[str]:
    """Write the runs (zero-shot and LoRA, alternating); returns their names, in order."""
    samples = generated_images(image_dir, n_images, seed)
    ids = [s["image_id"] for s in samples]
    rng = np.random.default_rng(seed + 1)
    names = []
    for r in range(n_runs):
        lora = r % 2 == 1
        extra: dict[str, Any] = {"loss_rows": loss_curve(20, 4.0, 2.0 + r / 10)} if lora else {
            "prompt": f"prompt{r}", "prompt_text": f"USER: <image>\nDescribe it ({r}). ASSISTANT:"}
        folder = held_out_run(root, samples, setting=f"run{r:02d}", backend="vit-gpt2" if lora else "vlm",
                              kind="lora" if lora else "zero-shot", captions=_captions(rng, ids, r), seed=seed + r,
                              dataset="generated", fingerprint=f"generated-{n_images}", **extra)
        names.append(f"run{r:02d}/{folder.name}")
    attend = root / names[0] / "attend"
    attend.mkdir(exist_ok=True)
    Image.new("RGB", (64, 32), (200, 10, 10)).save(attend / f"{ids[0]}.png")
    return names
