"""`format = "hf"` datasets: a parquet file and a save_to_disk folder built here from the real
Flickr8k images and captions give the same split and fingerprint as the CSV declaration; each
caption layout; every bad input is one line naming the dataset file and the column.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from bench.data import fingerprint, load_dataset, load_image, make_split, partition
from bench.errors import BenchError
from conftest import REPO

datasets = pytest.importorskip("datasets")
if not hasattr(datasets, "load_dataset"):  # the repo's datasets/ folder, not the library
    pytest.skip("the datasets library is not installed (pip install 'bench[hf]')", allow_module_level=True)

FLICKR_TOML = REPO / "datasets" / "flickr8k-1k.toml"


def flickr_refs(shared_data: Path) -> dict[str, list[str]]:
    """file name -> references, read with the csv module (independently of bench's reader)."""
    refs: dict[str, list[str]] = defaultdict(list)
    with open(shared_data / "flickr8k-1k" / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            refs[row["image"]].append(row["caption"].strip())
    return refs


def image_cell(shared_data: Path, name: str) -> dict:
    """An `Image` cell as hub parquet files hold it: the encoded bytes and the file name."""
    return {"bytes": (shared_data / "flickr8k-1k" / "images" / name).read_bytes(), "path": name}


def list_layout(shared_data: Path, count: int | None = None) -> datasets.Dataset:
    refs = flickr_refs(shared_data)
    names = list(refs)[:count]
    features = datasets.Features({
        "image": datasets.Image(), "filename": datasets.Value("string"), "captions": datasets.List(datasets.Value("string")),
    })
    return datasets.Dataset.from_dict(
        {"image": [image_cell(shared_data, n) for n in names], "filename": names, "captions": [refs[n] for n in names]},
        features=features,
    )


def write_toml(folder: Path, name: str, hf: str, split: str = "val_size = 500") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'format = "hf"\n[hf]\n{hf}\n[split]\n{split}\n')
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no test may reach the hub
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    # datasets converts parquet into its own Arrow cache: keep it in the test's folder, not ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def flickr_hf(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The 1,000 Flickr8k images as f.parquet and as a save_to_disk folder `disk/`."""
    folder = tmp_path_factory.mktemp("flickr-hf")
    ds = list_layout(shared_data)
    ds.to_parquet(str(folder / "f.parquet"))
    ds.save_to_disk(str(folder / "disk"))
    return folder


def test_parquet_and_save_to_disk_give_the_csv_split_and_fingerprint(flickr_hf: Path, shared_data: Path) -> None:
    csv_split = make_split(load_dataset(FLICKR_TOML))
    # parquet: ids from the Image cells' file names; save_to_disk: from the id column
    parquet = write_toml(flickr_hf, "pq", 'path = "f.parquet"\ncaption_column = "captions"')
    disk = write_toml(flickr_hf, "disk", 'path = "disk"\ncaption_column = "captions"\nid_column = "filename"')
    for toml in (parquet, disk):
        split = make_split(load_dataset(toml))
        assert split.fingerprint == csv_split.fingerprint
        assert [s.image_id for s in split.val] == [s.image_id for s in csv_split.val]
        assert [s.image_id for s in split.train] == [s.image_id for s in csv_split.train]
        assert [s.refs for s in split.val] == [s.refs for s in csv_split.val]
        for hf_sample, csv_sample in list(zip(split.val, csv_split.val))[:3]:
            assert hf_sample.path != csv_sample.path  # decoded from the dataset's bytes...
            assert np.array_equal(np.asarray(load_image(hf_sample.path)), np.asarray(load_image(csv_sample.path)))


def test_caption_per_row_layout_is_grouped_by_the_id_column(tmp_path: Path, shared_data: Path) -> None:
    refs = flickr_refs(shared_data)
    names = list(refs)[:12]
    rows = [(n, caption) for n in names for caption in refs[n]]
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [image_cell(shared_data, n) for n, _ in rows], "image_id": [n for n, _ in rows], "caption": [c for _, c in rows]},
        features=features,
    )
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    toml = write_toml(tmp_path, "rows", 'path = "rows.parquet"\nid_column = "image_id"', "val_size = 12")
    loaded = load_dataset(toml)
    assert len(loaded.samples) == 12 and all(len(s.refs) == 5 for s in loaded.samples)
    assert len(list(loaded.images_dir.glob("*.jpg"))) == 12  # each image written once, not per row
    csv_samples = [s for s in load_dataset(FLICKR_TOML).samples if s.path.name in names]
    assert fingerprint(partition(loaded)[1]) == fingerprint(csv_samples)


def test_a_split_column_gives_the_karpathy_split(tmp_path: Path, shared_data: Path) -> None:
    # like nlphuji/flickr30k: one hub split, the Karpathy split in a column
    ds = list_layout(shared_data, 6)
    ds = ds.add_column("split", ["train", "val", "test", "test", "train", "restval"])
    ds.to_parquet(str(tmp_path / "k.parquet"))
    toml = write_toml(tmp_path, "k", 'path = "k.parquet"\ncaption_column = "captions"\nsplit_column = "split"', 'karpathy_split = "test"')
    loaded = load_dataset(toml)
    train, val = partition(loaded)
    names = ds["filename"]
    assert [s.image_id for s in val] == [Path(names[2]).stem, Path(names[3]).stem]
    assert {s.image_id for s in train} == {Path(names[i]).stem for i in (0, 4, 5)}  # val is held out too


def test_images_are_written_once_and_reused(flickr_hf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.data.hf

    toml = write_toml(flickr_hf, "small", 'path = "disk"\ncaption_column = "captions"', "val_size = 10")
    first = load_dataset(toml)
    stamps = {p: p.stat().st_mtime_ns for p in first.images_dir.iterdir()}
    assert len(stamps) == 1001 and first.images_dir.is_relative_to(cache)  # 1,000 images + entries.json

    def no_second_pass(*args: object) -> None:
        raise AssertionError("the rows were read again")

    monkeypatch.setattr(bench.data.hf, "_collect", no_second_pass)
    second = load_dataset(toml)
    assert second.samples == first.samples
    assert {p: p.stat().st_mtime_ns for p in second.images_dir.iterdir()} == stamps


def anon_rss_kb() -> int:
    """Resident anonymous memory (heap, Arrow buffers); mapped Arrow file pages are not counted."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_memory_does_not_grow_with_the_images(flickr_hf: Path) -> None:
    """Writing the 1,000 images (134 MB of JPEG) holds only a few rows in memory at a time."""
    import threading

    toml = write_toml(flickr_hf, "mem", 'path = "disk"\ncaption_column = "captions"', "val_size = 10")
    before, peak, done = anon_rss_kb(), [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anon_rss_kb())
            done.wait(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        load_dataset(toml)
    finally:
        done.set()
        poller.join()
    assert (peak[0] - before) / 1024 < 40  # measured about 13 MB; all rows in one batch: 75


def test_imagefolder_with_metadata_uses_the_image_files_in_place(tmp_path: Path, shared_data: Path) -> None:
    refs = flickr_refs(shared_data)
    names = list(refs)[:4]
    folder = tmp_path / "folder"
    folder.mkdir()
    lines = []
    for n in names:
        (folder / n).write_bytes((shared_data / "flickr8k-1k" / "images" / n).read_bytes())
        lines.append('{"file_name": "%s", "captions": %s}' % (n, __import__("json").dumps(refs[n])))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    toml = write_toml(tmp_path, "folder", 'path = "folder"\ncaption_column = "captions"', "val_size = 4")
    loaded = load_dataset(toml)
    assert sorted(s.path for s in loaded.samples) == sorted((folder / n).resolve() for n in names)
    csv_samples = [s for s in load_dataset(FLICKR_TOML).samples if s.path.name in names]
    assert fingerprint(loaded.samples) == fingerprint(csv_samples)


def test_image_paths_outside_the_dataset_folder_are_refused(tmp_path: Path, shared_data: Path) -> None:
    # datasets' to_parquet keeps file paths, not bytes: here absolute paths into ../shared/data
    name = list(flickr_refs(shared_data))[0]
    ds = datasets.Dataset.from_dict(
        {"image": [str(shared_data / "flickr8k-1k" / "images" / name)], "captions": [["a child"]]},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}),
    )
    ds.to_parquet(str(tmp_path / "paths.parquet"))
    toml = write_toml(tmp_path, "paths", 'path = "paths.parquet"\ncaption_column = "captions"', "val_size = 1")
    with pytest.raises(BenchError, match=f"^{toml}: key 'hf.image_column': row 0 of paths.parquet: image path .* leads outside the images folder {tmp_path}$"):
        load_dataset(toml)


# --- bad input: one line naming the dataset file and the column ----------------------------------

@pytest.fixture(scope="module")
def small_parquet(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("small-hf")
    list_layout(shared_data, 3).to_parquet(str(folder / "s.parquet"))
    list_layout(shared_data, 3).save_to_disk(str(folder / "disk"))
    return folder


@pytest.mark.parametrize(("hf", "expected"), [
    ('path = "s.parquet"\ncaption_column = "caption"', "key 'hf.caption_column': no column 'caption' in s.parquet (columns: image, filename, captions)"),
    ('path = "s.parquet"\ncaption_column = "captions"\nimage_column = "pic"', "key 'hf.image_column': no column 'pic'"),
    ('path = "s.parquet"\ncaption_column = "filename"\nimage_column = "captions"', "key 'hf.image_column': column 'captions' must be an Image feature, got a list of strings"),
    ('path = "s.parquet"\ncaption_column = "image"', "key 'hf.caption_column': column 'image' must be a string or a list of strings, got an Image feature"),
    ('path = "s.parquet"\ncaption_column = "captions"\nsplit = "validation"', "key 'hf.split'"),
    ('path = "missing.parquet"\ncaption_column = "captions"', "key 'hf.path': no such file or folder"),
    ('path = "disk"\ncaption_column = "captions"\nsplit = "test"', "key 'hf.split': no split 'test': disk is a single split (unnamed)"),
    ('path = "s.parquet"\ncaption_column = "captions"\ncolour = "red"', "unknown key 'hf.colour'"),
])
def test_bad_declarations_are_one_line_errors(small_parquet: Path, hf: str, expected: str) -> None:
    toml = write_toml(small_parquet, "bad", hf, "val_size = 2")
    with pytest.raises(BenchError) as info:
        load_dataset(toml)
    message = str(info.value)
    assert message.startswith(f"{toml}: ") and expected in message and "\n" not in message


def test_undecodable_image_bytes_name_the_row_and_the_column(tmp_path: Path, shared_data: Path) -> None:
    good = image_cell(shared_data, list(flickr_refs(shared_data))[0])
    truncated = {"bytes": good["bytes"][:2000], "path": "cut.jpg"}  # a JPEG header, then nothing
    for cell, why in (({"bytes": b"not an image at all", "path": "x.jpg"}, "not an image Pillow can read"), (truncated, "corrupt or truncated")):
        ds = datasets.Dataset.from_dict(
            {"image": [good, cell], "captions": [["a dog"], ["a cat"]]},
            features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}),
        )
        ds.to_parquet(str(tmp_path / "bad.parquet"))
        toml = write_toml(tmp_path, "bad", 'path = "bad.parquet"\ncaption_column = "captions"', "val_size = 1")
        with pytest.raises(BenchError, match=f"^{toml}: key 'hf.image_column': row 1 of bad.parquet: column 'image'.*{why}"):
            load_dataset(toml)


def test_hub_id_offline_and_not_cached_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = write_toml(tmp_path, "hub", 'path = "nobody/no-such-captions"\nsplit = "test"')
    with pytest.raises(BenchError, match=r"key 'hf.path': hub dataset 'nobody/no-such-captions' is not in the local Hugging Face cache and the hub is unreachable"):
        load_dataset(toml)


def run_without_datasets(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_missing_library_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "x", 'path = "x.parquet"', "val_size = 1")
    # From the repo root, `import datasets` without the library finds the repo's datasets/ folder
    # as a namespace package; both that and a plain ImportError must give the same line.
    for setup in ("import types; sys.modules['datasets'] = types.ModuleType('datasets')", "sys.modules['datasets'] = None"):
        proc = run_without_datasets(
            f"import sys; {setup}\nfrom bench.data import load_dataset\nfrom bench.errors import BenchError\n"
            f"try:\n    load_dataset({str(toml)!r})\nexcept BenchError as e:\n    print(e)\n"
        )
        assert proc.stdout.strip() == f"{toml}: format 'hf' needs the Hugging Face datasets library: pip install 'bench[hf]'", proc.stderr


@pytest.mark.slow
def test_bench_run_on_parquet_matches_the_csv_run(flickr_hf: Path, shared_data: Path, tmp_path: Path,
                                                   tiny_vit_gpt2: Path, tiny_clip: Path) -> None:
    """`bench run --data` end to end (tiny LoRA ViT-GPT2): same fingerprint, captions and scores."""
    import json

    from conftest import tiny_setting_text

    extra = ("[lora]\nr = 4\nalpha = 8\n[train]\nepochs = 1\nbatch_size = 4\ntrain_size = 4\n"
             "[generation]\nmax_new_tokens = 8\nbatch_size = 8\n")
    setting = tmp_path / "hfcheck.toml"
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=extra, backends=("vit-gpt2",))
    setting.write_text(text.replace("[scoring]\n", '[scoring]\nmetrics = ["bleu", "cider", "clipscore"]\n'))
    parquet = write_toml(flickr_hf, "pq-run", 'path = "f.parquet"\ncaption_column = "captions"')
    outputs = {}
    for label, data in (("csv", FLICKR_TOML), ("parquet", parquet)):
        env = {**os.environ, "BENCH_RUNS": str(tmp_path / label / "runs"), "BENCH_CACHE": str(tmp_path / label / "cache"),
               "BENCH_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(tmp_path / label / "hf-datasets")}
        proc = subprocess.run([sys.executable, "-m", "bench", "run", "--setting", str(setting), "--data", str(data),
                               "--limit", "8", "--workers", "1", "--no-progress"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        run_dir = tmp_path / label / "runs" / "hfcheck" / "vit-gpt2"
        outputs[label] = (
            json.loads((run_dir / "split.json").read_text())["fingerprint"],
            [(r["image_id"], r["caption"]) for r in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())],
            json.loads((run_dir / "results.json").read_text())["metrics"],
        )
    assert outputs["parquet"] == outputs["csv"]
    assert set(outputs["csv"][2]) >= {"CIDEr", "CLIPScore"}
