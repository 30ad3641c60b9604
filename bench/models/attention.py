"""Helpers the backends' `generate_with_attention` share (not a backend itself).

How every backend traces attention: the caption's tokens are fed once more, teacher-forced, to the
model with eager attention, and forward hooks on the attention modules keep only the rows of the
caption's tokens and the columns of the image positions (memory O(tokens x layers x heads x
patches), never the full attention matrices of every layer). The row that predicts caption token t
is the one generation ran when it produced t, so the map of token t is where the model looked while
choosing it.

Which tokens: the run's captions are stored as text. When the backend's own decoding (the run's
GenerationConfig, greedy or beam) reproduces the caption, its exact token ids are used; otherwise
the caption text is tokenized (`source="retokenized"`), so the figure always shows the run's
caption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.backends.base import AttentionTrace
from bench.errors import BenchError

SOURCE_GENERATED = "generated"  # the token ids the backend's decoding produced (== the run's caption)
SOURCE_RETOKENIZED = "retokenized"  # the run's caption text tokenized again (decoding did not reproduce it)


@dataclass
class CapturedTrace(AttentionTrace):
    """An AttentionTrace with what the figure states about it.

    `image_mass[t]` is the share of token t's attention (mean over heads and layers) that fell on
    the image patches before renormalising (1.0 where nothing was dropped).
    """

    token_ids: list[int] = field(default_factory=list)
    source: str = SOURCE_GENERATED
    image_mass: list[float] = field(default_factory=list)
    positions: str = ""  # what the patches are, for the figure ("196 ViT patches; CLS dropped")


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Switch a transformers model (and its sub-models) to eager attention, then back.

    SDPA and flash kernels never materialise the attention weights; eager does. The previous
    implementation is restored so the captioner behaves as before afterwards.
    """
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    try:
        model.set_attn_implementation("eager")
    except (ValueError, AttributeError) as exc:
        raise BenchError(f"this model cannot switch to eager attention, so its attention weights are hidden ({exc})") from exc
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextmanager
def capture(modules: Sequence[torch.nn.Module], index: int, keep: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[list[torch.Tensor]]]:
    """Forward hooks on `modules` (one per layer): `keep(output[index])` is appended per call.

    `keep` slices the (batch, heads, queries, keys) weights down to what the figure needs and
    moves it to the CPU as float32, so the full matrix of a layer is freed right after the layer.
    """
    kept: list[list[torch.Tensor]] = [[] for _ in modules]

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            weights = output[index] if isinstance(output, tuple) else None
            if weights is None:
                raise BenchError("the attention module returned no weights (a fused attention kernel is active)")
            kept[layer].append(keep(weights.detach()))

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield kept
    finally:
        for h in handles:
            h.remove()


def renormalise(weights: torch.Tensor, columns: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights over `columns` rescaled to sum to 1 on the last axis, the mass they had before)."""
    if isinstance(columns, torch.Tensor):
        columns = columns.to(weights.device)  # a model split over devices: index where the weights are
    part = weights[..., columns].float()
    mass = part.sum(-1, keepdim=True)
    return part / mass.clamp_min(torch.finfo(part.dtype).tiny), mass.squeeze(-1)


def trace_forward(
    forward: Callable[[], Any],
    modules: Sequence[torch.nn.Module],
    index: int,
    rows: slice,
    columns: torch.Tensor | slice,
    n_keys: int,
) -> tuple[list[torch.Tensor], list[float]]:
    """Run `forward()` once with hooks on the per-layer attention `modules` (batch of one).

    Keeps the query `rows` (one per caption token) and the image `columns` of each layer's
    (1, heads, queries, keys) weights, renormalised over those columns. Returns the per-token
    (heads, layers, patches) maps and each token's image mass before renormalising (mean over
    heads and layers). `n_keys` is the key length the columns were computed for.
    """

    def keep(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if weights.shape[-1] != n_keys:
            raise BenchError(f"attention over {weights.shape[-1]} positions, expected {n_keys} (image size differs from the model's?)")
        maps, mass = renormalise(weights[0, :, rows, :], columns)
        return maps.cpu(), mass.float().cpu()

    with capture(modules, index, keep) as kept, torch.inference_mode():
        forward()
    missing = [i for i, calls in enumerate(kept) if len(calls) != 1]
    if missing:
        raise BenchError(f"attention of layer {missing[0]} was captured {len(kept[missing[0]])} times, expected once")
    maps = torch.stack([calls[0][0] for calls in kept], dim=1)  # (heads, layers, tokens, patches)
    mass = torch.stack([calls[0][1] for calls in kept], dim=1)  # (heads, layers, tokens)
    per_token = [maps[:, :, t, :].contiguous() for t in range(maps.shape[2])]
    return per_token, [float(m) for m in mass.mean(dim=(0, 1))]


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token as the text it adds (leading space markers dropped), for panel titles."""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append(text.strip() or "\u2423")  # a token that is only a space
    return out


def one_line(text: str) -> str:
    """What the backends' post-processing does to decoded text: whitespace collapsed."""
    return " ".join(text.split())


def choose_tokens(
    generated: Sequence[int] | None,
    caption: str | None,
    decode: Callable[[Sequence[int]], str],
    tokenize: Callable[[str], list[int]],
) -> tuple[list[int], str]:
    """The caption's token ids and where they come from.

    `generated` are the ids the backend's decoding produced (end-of-sequence and padding already
    cut); `decode` turns ids into the run's caption text (the backend's post-processing included).
    The shortest prefix of `generated` that decodes to the caption is used (a post-processor that
    keeps only the first sentence drops the rest); if none does, the caption is tokenized.
    """
    if caption is None:
        if generated is None:
            raise BenchError("generate_with_attention: neither generated tokens nor a caption")
        return list(generated), SOURCE_GENERATED
    if generated is not None and decode(generated) == caption:
        ids = list(generated)
        for k in range(1, len(ids) + 1):
            if decode(ids[:k]) == caption:
                return ids[:k], SOURCE_GENERATED
        return ids, SOURCE_GENERATED
    return tokenize(caption), SOURCE_RETOKENIZED


def cut_at_eos(ids: Sequence[int], stop: set[int]) -> list[int]:
    """Generated ids up to (without) the first end-of-sequence / padding id."""
    out = []
    for i in ids:
        if int(i) in stop:
            break
        out.append(int(i))
    return out


def captions_of(batch: dict[str, Any], n: int) -> list[str | None]:
    """The run's captions carried by the batch (`batch["captions"]`), else None per image."""
    captions = batch.get("captions")
    if captions is None:
        return [None] * n
    if len(captions) != n:
        raise BenchError(f"generate_with_attention: {len(captions)} captions for {n} images")
    return [None if c is None else str(c) for c in captions]


def square_grid(n: int, what: str) -> tuple[int, int]:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise BenchError(f"{what}: {n} image positions do not form a square patch grid")
    return side, side


def trace_of(
    tokenizer: Any, caption: str, ids: Sequence[int], maps: Sequence[torch.Tensor], mass: Sequence[float],
    grid: tuple[int, int], source: str, positions: str,
) -> CapturedTrace:
    """The trace of one caption, special tokens (eos, pad, ...) left out of the panels."""
    special = set(tokenizer.all_special_ids)
    keep = [k for k, t in enumerate(ids) if t not in special]
    return CapturedTrace(
        caption=caption,
        tokens=token_strings(tokenizer, [ids[k] for k in keep]),
        maps=[maps[k] for k in keep],
        grid=grid,
        token_ids=[ids[k] for k in keep],
        source=source,
        image_mass=[mass[k] for k in keep],
        positions=positions,
    )


def cross_attention_traces(
    tokenizer: Any, generated: Sequence[Sequence[int]], captions: Sequence[str | None], *, start: int, stop: set[int],
    forward: Callable[[int, torch.Tensor], Any], eager_model: Any, layers: Sequence[torch.nn.Module],
    weights_index: int, grid: tuple[int, int], where: str, device: Any,
) -> list[CapturedTrace]:
    """Traces of an encoder-decoder captioner: per image row, the decoder re-fed the caption's
    tokens once (teacher forcing) with its cross-attention over the image patches captured.

    `forward(row, decoder_input_ids)` runs the model on that row; the encoder's first position
    (CLS) is dropped and each map renormalised over the `grid` patches that follow it.
    """
    n_patches = grid[0] * grid[1]

    def decode(ids: Sequence[int]) -> str:
        return one_line(tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    traces: list[CapturedTrace] = []
    for i in range(len(generated)):
        ids, source = choose_tokens(cut_at_eos(generated[i][1:], stop), captions[i], decode, tokenize)
        maps: list[torch.Tensor] = []
        mass: list[float] = []
        if ids:
            # Row t of the decoder input predicts caption token t: feed start + tokens[:-1].
            inputs = torch.tensor([[start] + ids[:-1]], device=device)
            with eager_attention(eager_model):
                maps, mass = trace_forward(
                    lambda: forward(i, inputs), layers, weights_index, slice(None), slice(1, 1 + n_patches), 1 + n_patches,
                )
        caption = captions[i] if captions[i] is not None else decode(ids)
        traces.append(trace_of(tokenizer, caption, ids, maps, mass, grid, source, where))
    return traces
