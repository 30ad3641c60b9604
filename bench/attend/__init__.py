"""`bench attend`: where each caption token looked, drawn over the image, for any captioned run.

For each chosen image of a run: the run's model is loaded as the run used it (its final LoRA
adapter for LoRA runs), the backend's `generate_with_attention` traces the run's own caption
(teacher-forced over the exact tokens the run's decoding produced, or over the caption re-tokenized
when decoding does not reproduce it), and one PNG is written:

    header   the photo, the run's caption, its per-image CLIPScore, how the maps were aggregated
    panels   one per caption token: the model's input view with the token's attention over the
             patch grid upsampled and overlaid (jet colour map, 0 .. the panel's maximum)

The PNG carries its facts as text chunks (`bench:panels`, `bench:tokens`, `bench:token_ids`,
`bench:grid`, `bench:aggregation`, `bench:source`, `bench:panel_boxes` = pixel boxes of the
panels' image areas), so tools and tests read them back without parsing the picture. Rendering
uses matplotlib's Agg canvas with a fixed size and no version metadata: the same inputs give the
same bytes.

The command (`attend_run`) lives in `command`; `run_folder` reads the run and loads its model,
`figure` aggregates the maps and draws the PNG.
"""

from bench.attend.command import attend_run
from bench.attend.figure import aggregate
from bench.attend.run_folder import generation_config, load_captioner, read_run, resolve_run

__all__ = ["aggregate", "attend_run", "generation_config", "load_captioner", "read_run", "resolve_run"]
