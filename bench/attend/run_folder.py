"""What `bench attend` reads from a run folder: config, split, captions, per-image scores, and its model."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError
from bench.io import read_records
from bench.run.folder import CONFIG, METRICS, SPLIT
from bench.run.folder import RunFolder as Folder  # the owner; RunFolder here is what attend reads

SCORE_KEY = "CLIPScore"
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


@dataclass(frozen=True)
class RunFolder:
    """What `bench attend` reads from a run folder (config.json, split.json, predictions.jsonl)."""

    path: Path
    label: str  # "setting/backend" (or the folder, outside the registry)
    config: dict[str, Any]
    backend: str
    image_paths: dict[str, Path]  # split order
    captions: dict[str, str]


def resolve_run(run: str | None, setting: str | None, backend: str | None, root: Path | None = None) -> Path:
    """The run folder named by `--run NAME|PATH` or by `--setting NAME --backend B`."""
    root = root or paths.runs_dir()
    if run is not None and (setting is not None or backend is not None):
        raise BenchError("bench attend: give --run, or --setting with --backend, not both")
    if run is None:
        if setting is None or backend is None:
            raise BenchError("bench attend: give --run SETTING/BACKEND, or --setting NAME with --backend B")
        run = f"{setting}/{backend}"
    as_path = Path(run).expanduser()
    if Folder(as_path).has(CONFIG):
        return as_path.resolve()
    folder = root / run
    if not Folder(folder).has(CONFIG):
        known = sorted(str(p.relative_to(root)) for p in root.glob("*/*") if Folder(p).has(CONFIG)) if root.is_dir() else []
        hint = f"; runs: {', '.join(known)}" if known else f"; {root} holds no runs"
        raise BenchError(f"--run {run}: no run folder {folder} with a config.json{hint}")
    return folder


def read_run(folder: Path) -> RunFolder:
    """The run's config, its split's image paths and its captions, checked."""
    try:
        label = str(folder.relative_to(paths.runs_dir()))
    except ValueError:
        label = str(folder)
    owner = Folder(folder)
    config_path = owner.member(CONFIG)
    config = owner.read_config()
    backend = config.get("backend")
    if config.get("kind") == "external" or backend == "external":
        raise BenchError(f"{config_path}: an external run has no model to trace; bench attend needs a run bench captioned")
    for key in ("backend", "model", "generation"):
        if key not in config:
            raise BenchError(f"{config_path}: key {key!r} is missing")
    image_paths: dict[str, Path] = {}
    for k, s in enumerate(owner.read_split().samples):
        if not s.path:
            raise BenchError(f"{owner.member(SPLIT)}: key 'samples[{k}]' needs a string 'image_id' and 'path'")
        image_path = Path(paths.expand(s.path))
        image_paths[s.image_id] = image_path if image_path.is_absolute() else paths.project_dir() / image_path
    pred_path = owner.predictions
    if not pred_path.exists():
        raise BenchError(f"{pred_path}: file not found (the run has captioned nothing yet)")
    captions: dict[str, str] = {}
    for k, rec in enumerate(read_records(pred_path), start=1):
        if not isinstance(rec.get("image_id"), (str, int)) or not isinstance(rec.get("caption"), str):
            raise BenchError(f"{pred_path}: record {k} needs a string 'image_id' and 'caption'")
        captions[str(rec["image_id"])] = rec["caption"]
    return RunFolder(folder, label, config, str(backend), image_paths, captions)


def per_image_scores(folder: Path, key: str = SCORE_KEY) -> dict[str, float]:
    """image_id -> the run's per-image `key` score from metrics.json."""
    owner = Folder(folder)
    path = owner.member(METRICS)
    scored = owner.read_metrics()
    if scored is None:
        raise BenchError(f"{path}: file not found; --top/--bottom pick images by the run's per-image {key} (score the run first)")
    if not scored.per_image:
        raise BenchError(f"{path}: key 'per_image' is missing or empty; --top/--bottom need per-image {key}")
    scores: dict[str, float] = {}
    for image_id, values in scored.per_image.items():
        if key not in values:
            raise BenchError(f"{path}: key 'per_image.{image_id}.{key}' is missing (was the run scored with clipscore?)")
        scores[image_id] = values[key]
    return scores


def select_images(
    run: RunFolder, images: str | None, top: int | None, bottom: int | None
) -> list[tuple[str, float | None]]:
    """(image_id, per-image score or None) for `--images`, `--top K` or `--bottom K`."""
    chosen = [name for name, value in (("--images", images), ("--top", top), ("--bottom", bottom)) if value is not None]
    if len(chosen) != 1:
        raise BenchError("bench attend: give exactly one of --images ID[,ID...], --top K or --bottom K")
    if images is not None:
        ids = list(dict.fromkeys(i.strip() for i in images.split(",") if i.strip()))
        if not ids:
            raise BenchError("--images: no image id given")
        for image_id in ids:
            if image_id not in run.image_paths:
                raise BenchError(f"--images: image id {image_id!r} is not in {Folder(run.path).member(SPLIT)}")
        scores = _scores_if_any(run.path)
        picked = [(i, scores.get(i)) for i in ids]
    else:
        k = top if top is not None else bottom
        assert k is not None
        if k < 1:
            raise BenchError(f"{chosen[0]} must be >= 1, got {k}")
        scores = per_image_scores(run.path)
        ranked = [(i, s) for i, s in scores.items() if i in run.image_paths]
        # Ties broken by image id, so the choice never depends on dict order.
        ranked.sort(key=lambda p: (-p[1], p[0]) if top is not None else (p[1], p[0]))
        picked = [(i, s) for i, s in ranked[:k]]
    for image_id, _ in picked:
        if image_id not in run.captions:
            raise BenchError(f"{run.path / 'predictions.jsonl'}: no caption for image id {image_id!r} (finish the run with bench run)")
    return picked


def _scores_if_any(folder: Path) -> dict[str, float]:
    try:
        return per_image_scores(folder)
    except BenchError:
        return {}


def final_adapter(run: RunFolder) -> Path:
    """train/adapter/epoch-N of the run's last epoch (the weights its captions came from)."""
    root = run.path / "train" / "adapter"
    done = sorted(
        int(m.group(1))
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := EPOCH_DIR.match(p.name)) and (p / "train_state.json").is_file()
    )
    epochs = run.config.get("train", {}).get("epochs") if isinstance(run.config.get("train"), dict) else None
    if not done:
        raise BenchError(f"{root}: no finished epoch; the run's LoRA training is not done (finish it with bench run)")
    if isinstance(epochs, int) and done[-1] != epochs:
        raise BenchError(f"{root}: last finished epoch is {done[-1]}, the run trains {epochs} (finish it with bench run)")
    return root / f"epoch-{done[-1]}"


def generation_config(run: RunFolder) -> GenerationConfig:
    raw = run.config.get("generation")
    if not isinstance(raw, dict):
        raise BenchError(f"{run.path / 'config.json'}: key 'generation' must be an object")
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise BenchError(f"{run.path / 'config.json'}: key 'generation.{unknown[0]}' is unknown to this bench")
    return GenerationConfig(**raw)


def model_config(run: RunFolder) -> ModelConfig:
    raw = run.config.get("model")
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
        raise BenchError(f"{run.path / 'config.json'}: key 'model.model' must be a string")
    return ModelConfig(
        model=raw["model"], quantization=raw.get("quantization", "none"), options=dict(raw.get("options") or {})
    )


def run_prompt(run: RunFolder) -> Any:
    """The PromptTemplate a zero-shot run used: its prompts/ file, with the run's recorded text."""
    from bench.prompts import PromptTemplate, load_prompt

    name, text = run.config.get("prompt"), run.config.get("prompt_text")
    if not name and not text:
        return None
    try:
        template = load_prompt(name) if name else None
    except BenchError:
        template = None
    if template is not None and (text is None or template.template == text):
        return template
    if not isinstance(text, str):
        raise BenchError(f"{run.path / 'config.json'}: key 'prompt_text' is missing and prompt {name!r} cannot be loaded")
    # The prompt file changed or is gone: the run's recorded text wins (post-processing as before).
    sentences = template.sentences if template is not None else 1
    return PromptTemplate(str(name or "run"), text, "", "", sentences, run.path / "config.json")


def load_captioner(run: RunFolder, device: Any) -> Any:
    """The backend loaded as the run used it, with the final LoRA adapter of a LoRA run."""
    import torch

    from bench.backends import backend_class

    cls = backend_class(run.backend)
    torch.manual_seed(int(run.config.get("seed", 0)))  # as bench run does before loading
    captioner = cls.load(model_config(run), device, prompt=run_prompt(run))
    if run.config.get("kind") == "lora":
        captioner.load_adapter(final_adapter(run))
    captioner.torch_module().eval()
    return captioner
