"""Safe loading (issue 9): nothing bench loads can run code, and reports escape what they quote.

- bench never passes trust_remote_code=True, never unpickles with pickle/torch.load without
  weights_only=True (checked on bench's source with `ast`);
- base model weights: safetensors, or a `pytorch_model.bin` read with torch.load(weights_only=True)
  (plain tensors load; a pickle that would run code is refused, and the code does not run);
- LoRA adapters: safetensors only, whatever the file is called; training checkpoints (optimizer,
  scheduler, scaler, RNG state) only through weights_only;
- the markdown report escapes captions (`<script>`).

The hostile files are REAL pickles whose `__reduce__` creates a marker file when unpickled; a
control test shows that an unsafe load of the very same bytes does create it.
Also covered elsewhere: LLaVA refuses a code-running .bin (test_llava.py::
test_pickle_checkpoint_is_refused_without_running_it); markdown cells escaping every markdown/HTML
character (test_report.py::test_cells_are_escaped_folded_and_truncated).
"""

from __future__ import annotations

import ast
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bench.backends import backend_class
from bench.config import LoraConfig, ModelConfig
from bench.errors import BenchError
from conftest import REPO, tiny_setting_text

CPU = torch.device("cpu")
BENCH = REPO / "bench"


class RunsCode:
    """Unpickling this calls open(marker, "w"): the marker file appears iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def hostile_checkpoint(path: Path, marker: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A torch.save zip checkpoint: real tensors plus one object that runs code when unpickled."""
    state: dict[str, Any] = dict(tensors or {"weight": torch.zeros(2)})
    state["payload"] = RunsCode(marker)
    torch.save(state, path)
    return path


def one_line(exc: pytest.ExceptionInfo[BenchError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`bench ARGS` in-process: (exit code, stdout, stderr). A stray exception fails the test."""
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def error_line(code: int, out: str, err: str) -> str:
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


# --- the test pickle is live ---------------------------------------------------------------------

def test_the_hostile_pickle_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "x.bin", marker)
    torch.load(path, weights_only=False)  # what bench must never do
    assert marker.exists()
    marker.unlink()
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert not marker.exists()


# --- bench's source: no remote code, no unsafe deserialisation -----------------------------------

def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _sources() -> list[tuple[Path, ast.AST]]:
    files = sorted(BENCH.rglob("*.py"))
    assert len(files) > 20
    return [(f, ast.parse(f.read_text(), str(f))) for f in files]


def test_bench_never_trusts_remote_code() -> None:
    seen = 0
    for path, tree in _sources():
        for node in ast.walk(tree):
            # keyword argument ...(trust_remote_code=X) and dict entry {"trust_remote_code": X}
            pairs: list[tuple[str, ast.AST]] = []
            if isinstance(node, ast.Call):
                pairs += [(k.arg or "", k.value) for k in node.keywords]
            if isinstance(node, ast.Dict):
                pairs += [(k.value, v) for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)]
            for name, value in pairs:
                if name == "trust_remote_code":
                    seen += 1
                    assert isinstance(value, ast.Constant) and value.value is False, f"{path}:{value.lineno}"
    assert seen >= 1  # the one model loader says so explicitly
    text = "\n".join(p.read_text() for p in BENCH.rglob("*.py"))
    assert "trust_remote_code=True" not in text.replace(" ", "")


def test_every_pretrained_load_goes_through_the_model_source() -> None:
    """`from_pretrained` is *called* only in bench/model_source.py (which enforces the rules above);
    backends and the scorer hand it their loaders. Exceptions: the tiny-model builders (they read
    folders they just wrote, as does the demo) and peft's adapter config (a local run folder, JSON only)."""
    allowed = {BENCH / "model_source.py", BENCH / "models" / "adapters.py"}
    for path, tree in _sources():
        if path in allowed or path.parent.name in ("tiny", "demo", "testing") or path.name == "demo.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                raise AssertionError(f"{path}:{node.lineno} calls from_pretrained outside bench.model_source")


def test_bench_never_unpickles_without_weights_only() -> None:
    forbidden = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                 "cloudpickle.load", "cloudpickle.loads", "yaml.load", "yaml.unsafe_load", "marshal.loads",
                 "eval", "exec", "os.system", "shelve.open"}
    torch_loads = 0
    for path, tree in _sources():
        for call in _calls(tree):
            name = _dotted(call.func)
            assert name not in forbidden, f"{path}:{call.lineno}: {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                torch_loads += 1
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
            for key, bad in (("weights_only", False), ("allow_pickle", True), ("shell", True), ("use_safetensors", False)):
                value = keywords.get(key)
                assert not (isinstance(value, ast.Constant) and value.value is bad), f"{path}:{call.lineno}: {key}={bad}"
    assert torch_loads >= 1


# --- base model weights --------------------------------------------------------------------------

def _bin_only_copy(src: Path, dst: Path, bin_writer) -> Path:  # noqa: ANN001 - (state, path) -> None
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    bin_writer(load_file(weights), dst / "pytorch_model.bin")
    weights.unlink()
    return dst


def test_base_model_with_only_a_plain_bin_loads_through_weights_only(
    tiny_vit_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older hub models (e.g. nlpconnect/vit-gpt2-image-captioning) ship only pytorch_model.bin."""
    folder = _bin_only_copy(tiny_vit_gpt2, tmp_path / "model", lambda state, path: torch.save(state, path))
    seen: list[object] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from_bin = backend_class("vit-gpt2").load(ModelConfig(model=str(folder)), CPU)
    assert seen == [True]
    monkeypatch.setattr(torch, "load", real_load)
    reference = backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), CPU)
    a, b = from_bin.model.state_dict(), reference.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("part", ["vit-gpt2", "clip-flan-t5/t5", "clip-flan-t5/vision"])
def test_code_running_bin_base_model_is_refused_without_running_it(
    part: str, tiny_vit_gpt2: Path, tiny_clip_flan_t5: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    backend, _, sub = part.partition("/")
    root = tmp_path / "model"
    if backend == "vit-gpt2":
        folder = _bin_only_copy(tiny_vit_gpt2, root, lambda s, p: hostile_checkpoint(p, marker, s))
        cfg = ModelConfig(model=str(folder))
    else:
        shutil.copytree(tiny_clip_flan_t5, root)
        weights = root / sub / "model.safetensors"
        hostile_checkpoint(root / sub / "pytorch_model.bin", marker, load_file(weights))
        weights.unlink()
        cfg = ModelConfig(model=str(root / "t5"), options={"vision_model": str(root / "vision")})
    with pytest.raises(BenchError) as info:
        backend_class(backend).load(cfg, CPU)
    message = one_line(info)
    assert str(root) in message and "pytorch_model.bin is a pickle that would run code to load; refused" in message
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused_without_running_it(tiny_vit_gpt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "model"
    shutil.copytree(tiny_vit_gpt2, folder)
    hostile_checkpoint(folder / "model.safetensors", marker)
    with pytest.raises(BenchError) as info:
        backend_class("vit-gpt2").load(ModelConfig(model=str(folder)), CPU)
    assert "cannot load from this folder" in one_line(info)
    assert not marker.exists()


def test_clip_scorer_refuses_a_code_running_bin(tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    folder = _bin_only_copy(tiny_clip, tmp_path / "clip", lambda s, p: hostile_checkpoint(p, marker, s))
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    (tmp_path / "refs.json").write_text(json.dumps({"a.png": ["a red square"]}))
    (tmp_path / "preds.json").write_text(json.dumps({"a.png": "a red square"}))
    line = error_line(*cli(capsys, "score", str(tmp_path / "preds.json"), "--refs", str(tmp_path / "refs.json"),
                           "--images", str(tmp_path / "images"), "--metrics", "clipscore", "--clip-model", str(folder)))
    assert f"CLIP model '{folder}': cannot load from this folder: pytorch_model.bin is a pickle that would run code" in line
    assert not marker.exists()


# --- adapters and training checkpoints -----------------------------------------------------------

def _adapter(tiny_vit_gpt2: Path, folder: Path) -> Path:
    captioner = backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), CPU)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    captioner.save_adapter(folder)
    return folder


def test_adapters_bench_writes_are_safetensors_only(tiny_vit_gpt2: Path, tiny_clip_flan_t5: Path, tmp_path: Path) -> None:
    for backend, model in (("vit-gpt2", tiny_vit_gpt2), ("clip-flan-t5", tiny_clip_flan_t5)):
        captioner = backend_class(backend).load(ModelConfig(model=str(model)), CPU)
        captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
        captioner.save_adapter(tmp_path / backend)
        suffixes = {p.suffix for p in (tmp_path / backend).iterdir()}
        assert suffixes <= {".safetensors", ".json"}, suffixes


@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.safetensors"])
def test_code_running_adapter_is_refused_without_running_it(name: str, tiny_vit_gpt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    adapter = _adapter(tiny_vit_gpt2, tmp_path / "adapter")
    state = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    hostile_checkpoint(adapter / name, marker, state)
    captioner = backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), CPU)
    with pytest.raises(BenchError) as info:
        captioner.load_adapter(adapter)
    message = one_line(info)
    assert str(adapter / name) in message
    assert ("pickle checkpoints are refused" if name.endswith(".bin") else "not a readable safetensors file") in message
    assert not marker.exists()


# --- through the CLI: a run whose model, adapter or checkpoint is hostile ------------------------

EXTRA = """
[lora]
r = 2
alpha = 4
dropout = 0.0
targets = "attn"
[train]
epochs = 2
lr = 1e-3
batch_size = 5
train_size = 1
[generation]
max_new_tokens = 6
batch_size = 4
"""


@pytest.fixture
def cli_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_vit_gpt2: Path, tiny_clip: Path) -> dict[str, Path]:
    from bench.data.synth import write_synth

    write_synth(tmp_path / "synth", n=4, seed=1, variant="target", size=32)
    (tmp_path / "synth.toml").write_text(
        'annotations = "synth/captions.txt"\nimages = "synth/images"\nformat = "csv"\n[split]\nval_size = 3\nseed = 0\n'
    )
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=EXTRA, backends=("vit-gpt2",))
    setting = tmp_path / "hostile.toml"
    setting.write_text(text.replace("[scoring]\n", '[scoring]\nmetrics = ["clipscore"]\n'))
    return {"root": tmp_path, "setting": setting, "data": tmp_path / "synth.toml", "run": tmp_path / "runs" / "hostile" / "vit-gpt2"}


def _run_args(world: dict[str, Path]) -> list[str]:
    return ["run", "--setting", str(world["setting"]), "--data", str(world["data"]), "--workers", "0", "--no-progress"]


def test_cli_run_with_a_code_running_base_model_is_one_line_and_runs_nothing(
    cli_world: dict[str, Path], tiny_vit_gpt2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = cli_world["root"] / "ran"
    folder = _bin_only_copy(tiny_vit_gpt2, cli_world["root"] / "model", lambda s, p: hostile_checkpoint(p, marker, s))
    setting = cli_world["setting"]
    setting.write_text(setting.read_text().replace(str(tiny_vit_gpt2), str(folder)))
    line = error_line(*cli(capsys, *_run_args(cli_world)))
    assert line.startswith("error: ") and str(folder) in line and "pytorch_model.bin is a pickle" in line
    assert not marker.exists()


class Crash(Exception):
    pass


def test_cli_resume_with_a_code_running_training_checkpoint_is_refused(
    cli_world: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = cli_world["root"] / "ran"
    cls = backend_class("vit-gpt2")
    original = cls.loss
    calls: list[int] = []

    def crash_in_epoch_2(self: Any, batch: Any) -> Any:  # one optimizer step per epoch here
        calls.append(1)
        if len(calls) > 1:
            raise Crash("killed during epoch 2")
        return original(self, batch)

    monkeypatch.setattr(cls, "loss", crash_in_epoch_2)
    from bench.cli import main

    with pytest.raises(Crash):
        main(_run_args(cli_world))
    monkeypatch.setattr(cls, "loss", original)
    epoch = cli_world["run"] / "train" / "adapter" / "epoch-1"
    assert (epoch / "optimizer.pt").is_file() and not (epoch.parent / "epoch-2").exists()
    state = torch.load(epoch / "optimizer.pt", weights_only=True)
    buffer = io.BytesIO()
    torch.save({**state, "payload": RunsCode(marker)}, buffer)
    (epoch / "optimizer.pt").write_bytes(buffer.getvalue())
    line = error_line(*cli(capsys, *_run_args(cli_world)))
    assert f"{epoch / 'optimizer.pt'}: unreadable training checkpoint" in line
    assert not marker.exists()


def test_cli_run_refuses_a_pickled_adapter_in_the_run_folder(
    cli_world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished training whose adapter was swapped for a pickle: resuming refuses to load it."""
    marker = cli_world["root"] / "ran"
    setting = cli_world["setting"]
    setting.write_text(setting.read_text().replace("epochs = 2", "epochs = 1"))
    code, out, err = cli(capsys, *_run_args(cli_world))
    assert code == 0, err
    run = cli_world["run"]
    (run / "results.json").unlink()
    (run / "predictions.jsonl").unlink()
    epoch = run / "train" / "adapter" / "epoch-1"
    state = load_file(epoch / "adapter_model.safetensors")
    (epoch / "adapter_model.safetensors").unlink()
    hostile_checkpoint(epoch / "adapter_model.bin", marker, state)
    line = error_line(*cli(capsys, *_run_args(cli_world)))
    assert f"{epoch / 'adapter_model.bin'}: pickle checkpoints are refused" in line
    assert not marker.exists()


# --- reports -------------------------------------------------------------------------------------

def test_report_escapes_captions(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    hostile = {
        "a": "<script>alert('x')</script> a dog",
        "b": "![pwn](http://evil.example/x.png) [click](javascript:alert(1)) | col",
        "c": "<img src=x onerror=alert(1)> **bold** `code`",
    }
    refs = {k: ["a dog runs on the grass", "a brown dog"] for k in hostile}
    (tmp_path / "preds.json").write_text(json.dumps(hostile))
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    for name in ("hostile", "plain"):
        preds = hostile if name == "hostile" else {k: "a dog" for k in hostile}
        (tmp_path / f"{name}.json").write_text(json.dumps(preds))
        code, _, err = cli(capsys, "score", str(tmp_path / f"{name}.json"), "--refs", str(tmp_path / "refs.json"),
                           "--metrics", "bleu,cider", "--as-run", name, "--dataset", "tiny")
        assert code == 0, err
    out = tmp_path / "report.md"
    code, _, err = cli(capsys, "compare", "--out", str(out), "--resamples", "20", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    md = out.read_text()
    data = json.loads((tmp_path / "r.json").read_text())
    quoted = json.dumps(data)
    assert "alert" in quoted  # the full text is kept in the JSON...
    assert "alert" in md  # ...and the captions are quoted in the markdown, but inert:
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "<img" not in md and "&lt;img" in md
    # Rendered as a markdown viewer would (raw HTML allowed): no script, image, link or bold.
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<script" not in html and "&lt;script&gt;" in html
    for active in ('<img src="x"', 'src="http://evil.example', 'href="javascript:', "<strong>bold", "<code>code"):
        assert active not in html, active
