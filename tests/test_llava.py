"""Zero-shot LLaVA backend on a tiny random LLaVA-1.5 saved with save_pretrained and loaded by path,
through the same `load()` as a hub id."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.tiny.llava import build_tiny_llava
from bench.backends.llava import (
    LlavaCaptioner,
    encode,
    pick_dtype,
    postprocess_caption,
    render_prompt,
    split_sentences,
)
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.paths import shared_data_dir
from bench.prompts import list_prompts, load_prompt
from bench.tiny.llava import LLAVA15_CHAT_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
GREEDY = GenerationConfig(max_new_tokens=8)
OFFLINE_ERROR = (  # the same line every loader gives (bench.model_source), then the hub client's reason
    "llava model '{model}' is not a local folder, not in the Hugging Face cache and could not be fetched "
    "from the hub (offline?): download it once on a connected machine with `hf download {model} --local-dir DIR` "
    "and set models.llava.model to DIR"
)


def flickr_images(n: int) -> list[Path]:
    folder = shared_data_dir() / "flickr8k-1k" / "images"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"needs {n} Flickr8k images in {folder}")
    return paths


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture(scope="module")
def brief():
    return load_prompt("brief", REPO / "prompts")


@pytest.fixture(scope="module")
def captioner(tiny_dir, brief) -> LlavaCaptioner:
    c = backend_class("llava").load(ModelConfig(model=str(tiny_dir)), CPU, prompt=brief)
    assert isinstance(c, LlavaCaptioner)
    return c


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [Sample(p.stem, p, ("ref",)) for p in flickr_images(5)]


# --- loading and the prompt ----------------------------------------------------------------------

def test_registered_with_defaults():
    from bench.backends import backend_spec

    assert backend_class("llava") is LlavaCaptioner
    assert backend_spec("llava").default_model == "llava-hf/llava-1.5-7b-hf"
    assert backend_spec("llava").supports_lora is False


def test_loads_through_hub_path_with_sdpa_fp32(captioner, tiny_dir):
    assert captioner.model.config._attn_implementation == "sdpa"
    assert next(captioner.model.parameters()).dtype == torch.float32 == pick_dtype(CPU)
    assert captioner.processor.tokenizer.padding_side == "left"
    assert captioner.processor.chat_template == LLAVA15_CHAT_TEMPLATE
    assert (tiny_dir / "model.safetensors").is_file()
    assert not list(tiny_dir.glob("*.bin"))


def test_prompt_by_name(monkeypatch, tiny_dir):
    monkeypatch.setenv("BENCH_HOME", str(REPO))
    c = backend_class("llava").load(ModelConfig(model=str(tiny_dir)), CPU, prompt="lmms_eval_caption")
    assert c.prompt == "lmms_eval_caption"
    assert c.prompt_text == "USER: <image>\nProvide a one-sentence caption for the provided image. ASSISTANT:"


def test_chat_template_placement_matches_llava15(captioner):
    # llava-1.5's own format: "USER: <image>\n<text> ASSISTANT:" (exactly, spaces included)
    assert captioner.prompt_text == (
        "USER: <image>\nBriefly describe this image in a sentence. Thank you. ASSISTANT:"
    )
    for p in list_prompts(REPO / "prompts"):
        assert render_prompt(captioner.processor, p) == f"USER: <image>\n{p.text} ASSISTANT:"


def test_fallback_without_chat_template(captioner, brief):
    class NoTemplate:
        chat_template = None
        image_token = captioner.processor.image_token

    assert render_prompt(NoTemplate(), brief) == (
        "USER: <image>\nBriefly describe this image in a sentence. Thank you. ASSISTANT:"
    )


def test_options_and_quantization_errors_on_cpu(tiny_dir, brief):
    backend = backend_class("llava")
    for cfg, expected in [
        (ModelConfig(model=str(tiny_dir), quantization="4bit"), "models.llava.quantization = '4bit' needs a CUDA GPU"),
        (ModelConfig(model=str(tiny_dir), quantization="8bit"), "models.llava.quantization = '8bit' needs a CUDA GPU"),
        (ModelConfig(model=str(tiny_dir), options={"flash": True}), "models.llava.options: unknown key 'flash'"),
        (ModelConfig(model=str(tiny_dir), options={"attn_implementation": "flash"}),
         "models.llava.options.attn_implementation must be 'sdpa' or 'eager'"),
    ]:
        if cfg.quantization != "none" and torch.cuda.is_available():
            continue  # on a GPU these load; covered by the quantization tests
        with pytest.raises(BenchError) as info:
            backend.load(cfg, CPU, prompt=brief)
        assert expected in str(info.value) and "\n" not in str(info.value)


def test_eager_attention_option(tiny_dir, brief):
    c = backend_class("llava").load(
        ModelConfig(model=str(tiny_dir), options={"attn_implementation": "eager"}), CPU, prompt=brief
    )
    assert c.model.config._attn_implementation == "eager"


def test_missing_local_dir_and_non_model_dir(tmp_path, brief):
    backend = backend_class("llava")
    with pytest.raises(BenchError, match=r"^llava model '/\S+': no such model folder \(give a folder written by save_pretrained or a hub id\)$"):
        backend.load(ModelConfig(model=str(tmp_path / "nope")), CPU, prompt=brief)
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(BenchError) as info:
        backend.load(ModelConfig(model=str(tmp_path)), CPU, prompt=brief)
    assert str(info.value).startswith(f"llava model '{tmp_path}': cannot load from this folder:")
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_checkpoint_is_refused_without_running_it(tmp_path, tiny_dir, brief):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "model"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Evil()}))
    with pytest.raises(BenchError) as info:
        backend_class("llava").load(ModelConfig(model=str(bad)), CPU, prompt=brief)
    assert str(info.value).startswith(f"llava model '{bad}': cannot load from this folder: pytorch_model.bin is a pickle that would run code")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_offline_missing_hub_model_is_one_line(monkeypatch, brief):
    # HF_HUB_OFFLINE=1 as the hub client sees it (it reads the variable once, at import).
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BenchError) as info:
        backend_class("llava").load(ModelConfig(model="bench-tests/no-such-llava"), CPU, prompt=brief)
    assert str(info.value).startswith(OFFLINE_ERROR.format(model="bench-tests/no-such-llava"))
    assert isinstance(info.value.__cause__, OSError)  # transformers' own error, translated


def test_unreachable_hub_uses_cache_or_fails_fast(tmp_path, tiny_dir):
    """No network and no HF_HUB_OFFLINE (the hub endpoint refuses connections): a cached model
    loads from the cache without retries, a model that is not cached is the one-line error at once
    rather than after minutes of retries."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hf" / "hub" / "models--bench-tests--tiny-llava" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    code = (
        "import time, torch\n"
        "from bench.backends import backend_class\n"
        "from bench.config import ModelConfig\n"
        "from bench.errors import BenchError\n"
        "from bench.prompts import load_prompt\n"
        "p = load_prompt(%r)\n"
        "c = backend_class('llava').load(ModelConfig(model='bench-tests/tiny-llava'), torch.device('cpu'), p)\n"
        "print('LOADED', type(c.model).__name__)\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    backend_class('llava').load(ModelConfig(model='bench-tests/not-cached'), torch.device('cpu'), p)\n"
        "except BenchError as e:\n"
        "    print('BENCHERROR', e)\n"
    ) % str(REPO / "prompts" / "brief.toml")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    env.update({"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "TRANSFORMERS_VERBOSITY": "error"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "LOADED LlavaForConditionalGeneration" in out.stdout, out.stdout + out.stderr
    errors = [line for line in out.stdout.splitlines() if line.startswith("BENCHERROR")]
    assert len(errors) == 1 and errors[0].startswith("BENCHERROR " + OFFLINE_ERROR.format(model="bench-tests/not-cached")), out.stdout + out.stderr
    assert "Retrying" not in out.stderr


# --- batching and generation -------------------------------------------------------------------------

def test_collate_is_picklable_and_keeps_ids(captioner, samples):
    collate = pickle.loads(pickle.dumps(captioner.caption_collate()))
    batch = collate(samples[:3])
    assert batch["image_ids"] == [s.image_id for s in samples[:3]]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 3
    image_token = captioner.processor.image_token_id
    # 16 image tokens per row (32px / patch 8, CLS dropped) where the prompt's <image> was
    assert ((batch["input_ids"] == image_token).sum(dim=1) == 16).all()


def test_collate_runs_in_dataloader_workers(captioner, samples):
    from torch.utils.data import DataLoader

    loader = DataLoader(samples, batch_size=2, num_workers=1, collate_fn=captioner.caption_collate())
    batches = list(loader)
    assert [i for b in batches for i in b["image_ids"]] == [s.image_id for s in samples]
    in_process = captioner.caption_collate()(samples[:2])
    assert torch.equal(batches[0]["pixel_values"], in_process["pixel_values"])
    assert torch.equal(batches[0]["input_ids"], in_process["input_ids"])


@pytest.mark.parametrize("gen", [GREEDY, GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8)])
def test_batched_equals_batch_size_one(captioner, samples, gen):
    collate = captioner.caption_collate()
    singles = [captioner.generate(collate([s]), gen)[0] for s in samples]
    assert captioner.generate(collate(samples), gen) == singles
    assert captioner.generate(collate(samples[:2]), gen) + captioner.generate(collate(samples[2:]), gen) == singles
    # the images reach the model: captions are non-empty and not all alike
    assert all(singles) and len(set(singles)) > 1


def test_left_padded_generation_equals_unpadded(captioner, samples):
    """Two prompts of different lengths in one batch: padding really happens, on the left, and
    each row still generates what it generates alone (fails with right padding)."""
    from bench.data import load_image

    images = [load_image(s.path) for s in samples[:2]]
    texts = [
        "USER: <image>\nDescribe it. ASSISTANT:",
        "USER: <image>\nIn one sentence, describe the key objects in the image and their state. ASSISTANT:",
    ]
    batch = encode(captioner.processor, images, texts)
    mask = batch["attention_mask"]
    assert mask[0].sum() < mask[1].sum()  # row 0 is padded ...
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # ... on the left
    singles = [captioner.generate(encode(captioner.processor, [i], [t]), GREEDY)[0] for i, t in zip(images, texts)]
    assert captioner.generate(batch, GREEDY) == singles


@pytest.mark.parametrize("max_new_tokens", [3, 8])
def test_generate_returns_only_the_new_tokens(captioner, samples, max_new_tokens):
    batch = captioner.caption_collate()(samples[:2])
    tok = captioner.processor.tokenizer
    with torch.inference_mode():
        out = captioner.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"], max_new_tokens=max_new_tokens, do_sample=False,
            num_beams=1, pad_token_id=tok.pad_token_id,
        )
    new = out[:, batch["input_ids"].shape[1]:]
    expected = [postprocess_caption(t, 1) for t in tok.batch_decode(new, skip_special_tokens=True)]
    got = captioner.generate(batch, GenerationConfig(max_new_tokens=max_new_tokens))
    assert got == expected
    assert not any("describe" in c.lower() for c in got)  # no prompt text leaks into captions


def test_greedy_is_deterministic_across_fresh_loads(tiny_dir, captioner, samples, brief):
    again = backend_class("llava").load(ModelConfig(model=str(tiny_dir)), CPU, prompt=brief)
    collate = captioner.caption_collate()
    assert again.generate(collate(samples), GREEDY) == captioner.generate(collate(samples), GREEDY)


def test_build_tiny_is_seeded(tmp_path, tiny_dir):
    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    same = build_tiny_llava(tmp_path / "a", seed=0)
    other = build_tiny_llava(tmp_path / "b", seed=1)
    assert digest(same) == digest(tiny_dir)
    assert digest(other) != digest(tiny_dir)
    assert (same / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


# --- post-processing -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, sentences, expected",
    [
        (" A dog runs on the grass.", 1, "A dog runs on the grass."),
        ("ASSISTANT: A dog runs on the grass.", 1, "A dog runs on the grass."),
        ("ASSISTANT: USER: A dog runs.", 1, "A dog runs."),
        ("A dog runs. USER: what else? ASSISTANT: nothing", 0, "A dog runs."),
        ('"A dog runs on the grass."', 1, "A dog runs on the grass."),
        ("\u201cA dog runs on the grass\u201d.", 1, "A dog runs on the grass."),
        ('"A dog runs." It is sunny.', 1, "A dog runs."),
        ("A dog runs.\nIt is happy.\n\nThe end.", 1, "A dog runs."),
        ("A dog runs.\nIt is happy.", 0, "A dog runs. It is happy."),
        ("A dog runs. It is happy. The end.", 2, "A dog runs. It is happy."),
        ("Mr. Smith walks his dog. It is late.", 1, "Mr. Smith walks his dog."),
        ("Animals, e.g. dogs and cats, play. They run.", 1, "Animals, e.g. dogs and cats, play."),
        ("A 3.5 m long boat floats. Birds fly.", 1, "A 3.5 m long boat floats."),
        ("J. R. Smith plays ball. He wins!", 1, "J. R. Smith plays ball."),
        ("Is it a dog? Yes.", 1, "Is it a dog?"),
        ("A dog runs", 1, "A dog runs"),
        ('"Stop" signs stand by the road.', 1, '"Stop" signs stand by the road.'),
        ("'A dog's ball lies on the grass.'", 1, "A dog's ball lies on the grass."),
        ("'Wet' dogs and 'dry' cats.", 1, "'Wet' dogs and 'dry' cats."),
        ("   ", 1, ""),
        ("", 1, ""),
    ],
)
def test_postprocess_caption(raw, sentences, expected):
    assert postprocess_caption(raw, sentences) == expected


def test_split_sentences_keeps_all_text():
    text = "Dr. Who waves. A man, approx. 30, smiles! Is it 4.5 p.m. now? Yes."
    parts = split_sentences(text)
    assert parts == ["Dr. Who waves.", "A man, approx. 30, smiles!", "Is it 4.5 p.m. now?", "Yes."]
    assert " ".join(parts) == text


def test_generate_applies_prompt_sentence_count(captioner, samples, brief, monkeypatch):
    # The tiny model's raw text has no full stops; force some through the decoder to check that
    # generate() post-processes with the prompt's `sentences`.
    monkeypatch.setattr(captioner.processor, "batch_decode", lambda ids, **kw: ["ASSISTANT: One. Two."] * len(ids))
    batch = captioner.caption_collate()(samples[:2])
    assert captioner.generate(batch, GREEDY) == ["One.", "One."]
    monkeypatch.setattr(captioner, "template", dataclasses.replace(brief, sentences=0))
    assert captioner.generate(batch, GREEDY) == ["One. Two.", "One. Two."]
