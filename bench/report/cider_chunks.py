"""CIDEr-D and BLEU of many runs on the same bootstrap resamples, chunk by chunk, with the
reference work done once per section and each run adding only its candidates' work.

Per chunk of resamples (a matrix of image multiplicities), shared by every run of the section:
the squared idf weights (document frequencies by one sparse product, the weights by a table
lookup: df is an integer <= N) and the square roots of the reference norms. Per run: the clipped
products and candidate norms as sparse products, then the cosine terms only on the (reference,
order) rows where candidate and reference share an n-gram: every other row is exactly 0.

The numbers are bit for bit those of the dense kernel `cider_tables.cider_per_image` (the same
float operations on the same values, in the same order; a test checks it): rows that are 0 are
skipped only where adding 0 is exact, and the sums numpy may associate differently (reduceat)
are taken over the same dense array as there.

Chunks are sized so that no array exceeds CHUNK_ELEMENTS, so peak memory depends neither on the
number of resamples nor, per array, on the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from bench.report.cider_tables import _N, CandTables, RefTables, _Csr, bleu_from_totals
from bench.scoring.metrics import keys_aggregated

CHUNK_ELEMENTS = 1 << 21  # float64 elements of the largest per-chunk array (16 MiB)


def _rows(csr: _Csr, keep: np.ndarray) -> _Csr:
    """The CSR matrix of the given rows only (each row's entries unchanged, so are its sums)."""
    m = csr.matrix
    crow, cols, vals = m.indptr, m.indices, m.data
    lengths = crow[keep + 1] - crow[keep]
    take = np.repeat(crow[keep], lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    rows = np.repeat(np.arange(len(keep)), lengths)
    return _Csr.build(rows, cols[take], vals[take], (len(keep), csr.shape[1]))


def _nonempty_rows(csr: _Csr) -> np.ndarray:
    return np.flatnonzero(np.diff(csr.matrix.indptr))


@dataclass
class RunKernel:
    """One run's candidate work, restricted to its non-zero (reference, order) rows."""

    clip: _Csr  # (R, n_cols): the non-empty rows of CandTables.clip_sq
    rows: np.ndarray  # (R,) their row in clip_sq: reference * 4 + order
    cand_sq: _Csr
    penalty: np.ndarray  # (R,) length penalty of each row's reference
    # (J, R) ones: sums each reference's rows in order, from 0, as val.sum(axis=1) adds the four
    # orders (a row left out is an exact 0 there).
    per_ref: _Csr
    bleu_stats: np.ndarray

    @classmethod
    def build(cls, cand: CandTables) -> "RunKernel":
        rows = _nonempty_rows(cand.clip_sq)
        n_refs = cand.clip_sq.shape[0] // _N
        per_ref = _Csr.build(rows // _N, np.arange(len(rows)), np.ones(len(rows)), (n_refs, len(rows)))
        return cls(_rows(cand.clip_sq, rows), rows, cand.cand_sq, cand.penalty[rows // _N], per_ref, cand.bleu_stats)


class SectionKernel:
    """The reference side of one section, shared by the runs to compute."""

    def __init__(self, tables: RefTables, runs: Sequence[RunKernel]):
        self.tables = tables
        n = tables.n_images
        # Rows of the reference norms some run needs; each run's rows as positions among them.
        self.norm_rows = np.unique(np.concatenate([r.rows for r in runs])) if runs else np.zeros(0, np.int64)
        self.ref_sq = _rows(tables.ref_sq, self.norm_rows)
        # Only the weights of columns some product reads: a re-compare that adds one run to a
        # cached sweep computes fewer document frequencies.
        used = [self.ref_sq] + [m for r in runs for m in (r.clip, r.cand_sq)]
        cols = np.unique(np.concatenate([m.matrix.indices for m in used]))
        self.multi = cols[cols < tables.n_multi]
        # df is a sum of integer multiplicities: exact in any order, and fastest in scipy's int32.
        df = tables.df_matrix.matrix
        full = scipy.sparse.csr_matrix((df.data.astype(np.int32), df.indices, df.indptr), shape=tables.df_matrix.shape)
        self.df = full[self.multi]
        ref_len = np.log(float(n))
        # df and multiplicities are integers in 0..N: w^2 of each, as idf_weights_sq computes it.
        self.w2_of = (ref_len - np.log(np.maximum(1.0, np.arange(n + 1, dtype=np.float64)))) ** 2
        self.oov_w2 = np.full(1, ref_len) ** 2
        self.starts = np.concatenate([[0], np.cumsum(tables.n_refs.astype(np.int64))[:-1]])

    def chunk_size(self, requested: int) -> int:
        t = self.tables
        biggest = max(t.n_cols, len(t.img_of_ref) * _N, t.n_multi, 1)
        return max(1, min(requested, CHUNK_ELEMENTS // biggest))

    def weights(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(squared idf weights (n_cols, b), square roots of the needed reference norms) of a
        chunk of multiplicity rows (b, N)."""
        t = self.tables
        m = np.ascontiguousarray(counts.T, dtype=np.int32)  # (N, b)
        w2 = np.zeros((t.n_cols, m.shape[1]))  # columns no product reads stay 0
        w2[self.multi] = self.w2_of[self.df @ m]
        np.take(self.w2_of, m, out=w2[t.n_multi : t.oov_col])
        w2[t.oov_col] = self.oov_w2
        return w2, np.sqrt(self.ref_sq.matmul(w2))

    def cider(self, run: RunKernel, positions: np.ndarray, w2: np.ndarray, root_norms: np.ndarray) -> np.ndarray:
        """(N, b) per-image CIDEr of one run under the chunk's weights."""
        t = self.tables
        num = run.clip.matmul(w2)  # (R, b)
        cnorm = np.sqrt(run.cand_sq.matmul(w2))  # (N*4, b)
        ref, order = run.rows // _N, run.rows % _N
        den = cnorm[t.img_of_ref[ref] * _N + order]
        den *= root_norms[positions]
        # In place: num / den where den != 0, num where it is 0 (the dense kernel's np.where).
        val = np.divide(num, den, out=num, where=den != 0)
        val *= run.penalty[:, None]
        # reduceat over the same dense (J, b) array as the dense kernel: its sums may be pairwise.
        per_image = np.add.reduceat(run.per_ref.matmul(val), self.starts, axis=0) / _N
        return per_image / t.n_refs[:, None] * 10.0


@dataclass
class CorpusSamples:
    """CIDEr and BLEU-1..4 of every multiplicity row, and per-image CIDEr of row 0."""

    values: dict[str, np.ndarray]  # metric -> (rows,)
    cider_per_image: np.ndarray  # (N,)


def corpus_samples(
    tables: RefTables,
    runs: dict[str, CandTables],
    all_counts: np.ndarray,
    chunk: int,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, CorpusSamples]:
    """CIDEr/BLEU samples of each run for every row of all_counts (row 0: the full sample).

    `progress(done, total, run)` is called after each run's share of each chunk.
    """
    kernels = {name: RunKernel.build(c) for name, c in runs.items()}
    section = SectionKernel(tables, list(kernels.values()))
    positions = {name: np.searchsorted(section.norm_rows, k.rows) for name, k in kernels.items()}
    n = tables.n_images
    size = section.chunk_size(chunk)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in kernels}  # CIDEr of each chunk
    (cider,) = keys_aggregated("cider")
    first: dict[str, np.ndarray] = {}
    steps = -(-len(all_counts) // size) * len(kernels)
    done = 0
    for start in range(0, len(all_counts), size):
        m = all_counts[start : start + size]
        mf = m.astype(np.float64)
        w2, root_norms = section.weights(m)
        for name, k in kernels.items():
            per_image = section.cider(k, positions[name], w2, root_norms)
            if start == 0:
                first[name] = per_image[:, 0].copy()
            parts[name].append((mf * per_image.T).sum(axis=1) / n)
            done += 1
            if progress is not None:
                progress(done, steps, name)
    out = {}
    for name, k in kernels.items():
        # BLEU's totals are sums of integer counts: exact, so one product for every row.
        bleu = bleu_from_totals(all_counts.astype(np.float64) @ k.bleu_stats)
        values = {key: bleu[:, j] for j, key in enumerate(keys_aggregated("bleu"))}  # BLEU-1..4
        values[cider] = np.concatenate(parts[name])
        out[name] = CorpusSamples(values, first[name])
    return out
