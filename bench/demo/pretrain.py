"""Pretraining of the tiny demo models on the source world: one plain training loop, one loss per backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from bench.demo.profile import SEED, Profile, prompt_names
from bench.errors import BenchError


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def optimize(
    params: Sequence[Any],
    step_loss: Callable[[Any], Any],
    n_items: int,
    steps: int,
    lr: float,
    batch_size: int,
    label: str,
    console: Any = None,
    progress: bool = True,
) -> list[float]:
    """A plain training loop: AdamW, 5% linear warmup then linear decay, gradient clipping.

    `step_loss(indices)` returns the loss of one batch (indices drawn with a seeded generator).
    Returns the loss of every step.
    """
    import torch

    from bench.training import LinearWarmupDecay

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearWarmupDecay(max(1, steps // 20), steps))
    generator = torch.Generator().manual_seed(SEED)
    losses: list[float] = []
    with _progress(console, progress) as bar:
        task = bar.add_task(label, total=steps, loss="-")
        for _ in range(steps):
            indices = torch.randint(n_items, (batch_size,), generator=generator)
            loss = step_loss(indices)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise BenchError(f"demo pretraining of {label}: the loss became {value}")
            losses.append(value)
            bar.update(task, advance=1, loss=f"{value:.3f}")
    return losses


def pixels_of(processor: Any, samples: Sequence[Any]) -> Any:
    """All images of `samples` through an image processor, once (the demo images are 64 px)."""
    from bench.data import load_image

    images = [load_image(s.path) for s in samples]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _pairs(samples: Sequence[Any]) -> list[tuple[int, str]]:
    return [(i, ref) for i, s in enumerate(samples) for ref in s.refs]


def _pretrain_vit_gpt2(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    from bench.models.collate import labels_from

    pixels = pixels_of(captioner.processor, source)
    pairs = _pairs(source)
    model = captioner.model
    model.requires_grad_(True)
    model.train()
    tok = captioner.tokenizer

    def step_loss(indices: Any) -> Any:
        chosen = [pairs[int(k)] for k in indices]
        labels = labels_from(tok, [c for _, c in chosen], tok.eos_token_id, 64)
        return captioner.loss({"pixel_values": pixels[[i for i, _ in chosen]], "labels": labels})

    return _optimize_trainable(model, step_loss, len(pairs), "pretrain vit-gpt2", profile, console, progress)


def _optimize_trainable(model: Any, step_loss: Any, n: int, label: str, profile: Profile, console: Any,
                        progress: bool) -> list[float]:
    """The profile's pretraining steps on every trainable parameter of `model`, left in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = optimize(params, step_loss, n, profile.pretrain_steps, profile.pretrain_lr,
                      profile.batch_size, label, console, progress)
    model.eval()
    return losses


def _pretrain_clip_flan_t5(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    """Full fine-tuning of the CLIP tower and T5; the projection stays at the backend's seeded
    initialisation, which is what every later load starts from (it is trained with the LoRA)."""
    import torch

    from bench.models.collate import labels_from

    pixels = pixels_of(captioner.processor, source)
    pairs = _pairs(source)
    model = captioner.model
    model.vision.requires_grad_(True)
    model.t5.requires_grad_(True)
    model.projection.requires_grad_(False)
    model.train()
    model.vision.train()  # ClipT5.train keeps the tower in eval mode for LoRA; here it is trained
    tok = captioner.tokenizer

    def step_loss(indices: Any) -> Any:
        chosen = [pairs[int(k)] for k in indices]
        labels = labels_from(tok, [c for _, c in chosen], tok.eos_token_id, 64)
        # ClipT5.forward runs the frozen tower under no_grad; pretraining needs its gradients.
        embeds = model.projection(model.vision(pixel_values=pixels[[i for i, _ in chosen]]).last_hidden_state)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return model.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    return _optimize_trainable(model, step_loss, len(pairs), "pretrain clip-flan-t5", profile, console, progress)


def _pretrain_llava(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    """Instruction-style pretraining: "USER: <image>\\n<prompt> ASSISTANT: <caption></s>", the
    prompt cycling over every shipped prompt file, loss on the caption tokens only."""
    import torch

    from bench.backends.llava import render_prompt
    from bench.data import load_image
    from bench.prompts import load_prompt

    processor = captioner.processor
    tok = processor.tokenizer
    pixels = pixels_of(processor.image_processor, source)
    first = load_image(source[0].path)
    # Prompt ids with the image placeholder expanded, exactly as captioning will feed them.
    prompt_ids = [
        processor(images=first, text=render_prompt(processor, load_prompt(name)), return_tensors="pt")["input_ids"][0].tolist()
        for name in prompt_names()
    ]
    pairs = _pairs(source)
    caption_ids = {c: tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, c in pairs}
    model = captioner.model
    model.requires_grad_(True)
    model.train()
    step = [0]

    def step_loss(indices: Any) -> Any:
        rows: list[tuple[list[int], list[int]]] = []
        for j, k in enumerate(indices):
            prompt = prompt_ids[(step[0] * len(indices) + j) % len(prompt_ids)]
            caption = caption_ids[pairs[int(k)][1]]
            rows.append((prompt + caption, [-100] * len(prompt) + caption))
        step[0] += 1
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (ids, lab) in enumerate(rows):  # right padding: training needs no generation offset
            input_ids[j, : len(ids)] = torch.tensor(ids)
            labels[j, : len(lab)] = torch.tensor(lab)
            mask[j, : len(ids)] = 1
        batch_pixels = pixels[[pairs[int(k)][0] for k in indices]].to(captioner.dtype)
        return model(input_ids=input_ids, attention_mask=mask, pixel_values=batch_pixels, labels=labels).loss

    return _optimize_trainable(model, step_loss, len(pairs), "pretrain llava", profile, console, progress)


PRETRAIN: dict[str, Callable[..., list[float]]] = {
    "vit-gpt2": _pretrain_vit_gpt2,
    "clip-flan-t5": _pretrain_clip_flan_t5,
    "llava": _pretrain_llava,
}
