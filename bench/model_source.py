"""Where every pretrained file comes from: one loader for backends, the CLIP scorer and processors.

A model is named by a hub id (`openai/clip-vit-base-patch32`) or a local folder written by
`save_pretrained`. The rules, the same for every caller:

- a local folder never touches the network; a path that does not exist is an error at once;
- a hub id is read from the local Hugging Face cache first; the hub is contacted only when the
  model is not cached, and only after one quick TCP probe of the endpoint per process
  (`hub_reachable`): without it, a machine with no network spends about a minute in the hub
  client's retries before failing, per file;
- nothing runs code: `trust_remote_code=False`; weights are safetensors first, and a checkpoint
  that only ships `pytorch_model.bin` is read with `torch.load(weights_only=True)` (plain tensors
  only; a pickle that would import or call code raises `UnpicklingError`, reported as refused);
- every failure is one `BenchError` line naming what was loaded, the model and the setting field;
- transformers' load report (a table of "UNEXPECTED"/"MISSING" rows) is silenced: mismatches the
  caller expects (the text half of a full CLIP checkpoint when only its vision tower is wanted)
  pass quietly, any other is one warning line, and `strict` callers turn missing weights into an
  error (a CLIP with random weights would score silently wrong).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import BenchError

T = TypeVar("T")
log = logging.getLogger("bench")

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_TIMEOUT_S = 3.0
# What a full CLIP checkpoint holds beyond its vision tower (CLIPVisionModel / LLaVA's tower).
CLIP_TEXT_HALF = ("text_model.", "text_projection", "visual_projection", "logit_scale")


def error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def is_local(model: str) -> bool:
    """A model named by a path (it exists, or it is spelled like one), not a hub id."""
    path = Path(model).expanduser()
    return path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout_s: float) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError:  # refused, unresolvable name, timeout
        return False
    return True


def hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection; False in offline mode. Probed once per
    endpoint and process. Behind a proxy a direct probe says nothing, so the hub is assumed up."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in PROXY_VARIABLES):
        return True
    return _probe(constants.ENDPOINT, PROBE_TIMEOUT_S)


def _refused_pickle(folder: Path | None) -> str:
    name = "its .bin weights"
    if folder is not None and folder.is_dir():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        name = pickles[0] if pickles else name
    return (
        f"{name} is a pickle that would run code to load; refused (bench reads safetensors, or "
        "plain-tensor pickles with torch.load(weights_only=True)); convert it to safetensors"
    )


def _unreadable(folder: Path | None, exc: BaseException) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        return _refused_pickle(folder)
    return error_line(exc)


def _unavailable(what: str, model: str, field: str, exc: BaseException | None) -> BenchError:
    why = f" ({error_line(exc).split('. ')[0]})" if exc is not None else ""
    return BenchError(
        f"{what} {model!r} is not a local folder, not in the Hugging Face cache and could not be "
        f"fetched from the hub (offline?): download it once on a connected machine with "
        f"`hf download {model} --local-dir DIR` and "
        + (f"pass {field} DIR" if field.startswith("--") else f"set {field} to DIR") + why
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # OSError: missing files and the hub client's errors; ValueError/KeyError: a folder of another
    # kind; RuntimeError: shapes that do not match the config; UnpicklingError: code in a .bin.
    return (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError)


def from_source(load: Callable[..., T], model: str, what: str, field: str = "the model in the setting") -> T:
    """`load(source, **kwargs)` (a `from_pretrained`) for a local folder or a hub id, by the rules
    above. `what` names the thing for messages ("vit-gpt2 tokenizer"), `field` the setting key
    that chose it ("models.vit-gpt2.model")."""
    errors = _load_errors()
    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if is_local(model):
        if not path.is_dir():
            raise BenchError(f"{what} {model!r}: no such model folder (give a folder written by save_pretrained or a hub id)")
        try:
            return load(str(path), local_files_only=True, **kwargs)
        except errors as exc:
            raise BenchError(f"{what} {model!r}: cannot load from this folder: {_unreadable(path, exc)}") from exc
    try:
        return load(model, local_files_only=True, **kwargs)
    except (pickle.UnpicklingError, RuntimeError) as exc:  # cached, but unsafe or corrupt
        raise BenchError(f"{what} {model!r}: {_unreadable(None, exc)}") from exc
    except errors as exc:
        if not hub_reachable():
            raise _unavailable(what, model, field, exc) from exc
    try:
        return load(model, **kwargs)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise BenchError(f"{what} {model!r}: {_unreadable(None, exc)}") from exc
    except errors as exc:
        raise _unavailable(what, model, field, exc) from exc


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports and "Loading weights" bars off for the block; restored after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _safetensors_preference(source: str) -> bool | None:
    """True where safetensors exist (never fall back to a .bin beside them); None lets
    transformers take a .bin-only checkpoint (read with weights_only=True)."""
    path = Path(source)
    if path.is_dir():
        return True if any(path.glob("*.safetensors")) else None
    return None


def _report(model: str, what: str, info: dict[str, Any], expected: Sequence[str], strict: bool) -> None:
    """One line for weights the checkpoint lacks or has beyond the model, unless expected."""
    missing = sorted(list(info.get("missing_keys", ())) + list(info.get("mismatched_keys", ())), key=str)
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not str(k).startswith(tuple(expected)))
    if missing and strict:
        raise BenchError(
            f"{what} {model!r}: {len(missing)} weight tensors missing or mis-shaped in the checkpoint, e.g. {missing[0]}"
        )
    if missing:
        log.warning("%s %r: %d weight tensors not in the checkpoint (randomly initialised), e.g. %s",
                    what, model, len(missing), missing[0])
    if unexpected:
        log.warning("%s %r: %d checkpoint tensors unused by the model, e.g. %s", what, model, len(unexpected), unexpected[0])


def load_model(
    model_class: Any,
    model: str,
    what: str,
    field: str = "the model in the setting",
    *,
    strict: bool = False,
    expected_unexpected: Sequence[str] = (),
    **kwargs: Any,
) -> Any:
    """`model_class.from_pretrained` by the rules above; `expected_unexpected` lists key prefixes
    a checkpoint may carry beyond this class (e.g. "text_model." for a CLIP vision tower)."""
    # No background "safetensors conversion" request to the hub for .bin-only repos.
    os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")

    def load(source: str, **extra: Any) -> Any:
        with quiet_transformers():
            return model_class.from_pretrained(
                source, use_safetensors=_safetensors_preference(source), weights_only=True,
                output_loading_info=True, **extra, **kwargs,
            )

    loaded, info = from_source(load, model, what, field)
    _report(model, what, info, expected_unexpected, strict)
    return loaded


def load_files(loader: Callable[..., T], model: str, what: str, field: str = "the model in the setting") -> T:
    """A tokenizer, processor or config (`AutoTokenizer.from_pretrained`, ...) by the same rules."""

    def load(source: str, **extra: Any) -> T:
        with quiet_transformers():
            return loader(source, **extra)

    return from_source(load, model, what, field)


def image_processor_loader(processor_class: Any) -> Callable[..., Any]:
    """`processor_class.from_pretrained` taking only what an image processor understands (it
    would keep `trust_remote_code` as an attribute of itself)."""

    def load(source: str, local_files_only: bool = False, **_: Any) -> Any:
        return processor_class.from_pretrained(source, local_files_only=local_files_only)

    return load


def check_available(model: str, what: str, field: str = "the model in the setting") -> None:
    """Fail now, not after an hour of training, when a model the run needs later cannot be had:
    a missing folder, or a hub id neither cached nor reachable. Loads nothing."""
    if is_local(model):
        if not Path(model).expanduser().is_dir():
            raise BenchError(f"{what} {model!r}: no such model folder (give a folder written by save_pretrained or a hub id)")
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
    except ValueError:  # not a valid repo id: let the loader say so
        return
    if not cached and not hub_reachable():
        raise _unavailable(what, model, field, None)
