"""Reference and candidate n-gram tables of CIDEr-D and BLEU, and the vectorised kernels that
compute both metrics for a chunk of bootstrap resamples at once.

A resample is a row of image multiplicities, a chunk of resamples is a matrix, and every CIDEr
quantity is linear in the squared idf weights, so it is a sparse matrix product. N-grams whose
references occur in a single image (most 3- and 4-grams) share that image's multiplicity, so they
collapse into one weight column per image; n-grams of a candidate that occur in no reference
always weigh log(N).

Details checked against pycocoevalcap 1.2 cider_scorer.py (and tested for equality):
* the "length" in the penalty is the number of BIGRAMS of a sentence (words - 1, at least 0);
* the cosine is only divided when both norms are non-zero;
* an image's score is 10 * mean over n of (sum over refs) / number of refs;
* CIDEr's document frequencies are RECOMPUTED on every resample: df_g counts the resampled
  images (with multiplicity) whose references contain g, and w_g = log(N) - log(max(1, df_g));
* BLEU-1..4 come from the summed clipped n-gram counts, guesses and closest reference lengths.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocoevalcap.bleu.bleu_scorer import precook as _bleu_precook

_N = 4  # n-gram orders of CIDEr and BLEU
_SIGMA = 6.0  # CIDEr-D length penalty
_TINY, _SMALL = 1e-15, 1e-9  # BLEU smoothing constants of pycocoevalcap


# --- sparse matrices ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Csr:
    """A CSR matrix built from (row, col, value) triples; products run in torch's sparse kernels
    (30x faster than a numpy gather + reduceat, and no scipy dependency)."""

    matrix: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def build(cls, rows: Sequence[int], cols: Sequence[int], vals: Sequence[float], shape: tuple[int, int]) -> "_Csr":
        """Coalesce the triples, summing duplicates."""
        r = np.asarray(rows, dtype=np.int64)
        c = np.asarray(cols, dtype=np.int64)
        v = np.asarray(vals, dtype=np.float64)
        key = r * shape[1] + c
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=v, minlength=len(uniq)) if len(uniq) else np.zeros(0)
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.add.at(indptr, uniq // shape[1] + 1, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            matrix = torch.sparse_csr_tensor(
                torch.from_numpy(np.cumsum(indptr)),
                torch.from_numpy(uniq % shape[1]),
                torch.from_numpy(summed.astype(np.float64)),
                shape,
                dtype=torch.float64,
            )
        return cls(matrix, shape)

    def matmul(self, dense: np.ndarray) -> np.ndarray:
        """self @ dense, dense of shape (shape[1], b)."""
        if self.matrix.values().numel() == 0:
            return np.zeros((self.shape[0], dense.shape[1]), dtype=np.float64)
        return (self.matrix @ torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float64))).numpy()


# --- per-section reference tables and per-run candidate tables ---------------------------------

def _precook(sentence: str) -> tuple[int, dict[tuple[str, ...], int]]:
    # pycocoevalcap's BLEU precook: (number of words, counts of 1..4-grams of s.split()); CIDEr's
    # precook gives the same counts.
    return _bleu_precook(sentence, _N)


def _bigram_len(sentence: str) -> int:
    # pycocoevalcap's counts2vec counts the term frequencies of n-grams with index n == 1, i.e.
    # bigrams: the "length" in the penalty is words - 1 (0 for an empty or one-word sentence).
    return max(len(sentence.split()) - 1, 0)


@dataclass
class RefTables:
    """Everything about the references of one image set that CIDEr and BLEU need."""

    n_images: int
    n_refs: np.ndarray  # (N,)
    img_of_ref: np.ndarray  # (J,) image of each reference, references grouped by image
    ref_len: np.ndarray  # (J,) bigram counts
    ref_counts: list[dict[tuple[str, ...], int]]  # per reference
    col_of: dict[tuple[str, ...], int]  # n-gram -> weight column (multi-image n-grams, or the single image's column)
    n_multi: int
    df_matrix: _Csr  # (n_multi, N): 1 where the image's references contain the n-gram
    ref_sq: _Csr  # (J*4, n_cols): r_g^2 per reference and order
    bleu_reflens: list[list[int]]
    bleu_maxcounts: list[dict[tuple[str, ...], int]]

    @property
    def n_cols(self) -> int:
        return self.n_multi + self.n_images + 1  # + one column for n-grams in no reference

    @property
    def oov_col(self) -> int:
        return self.n_multi + self.n_images


@dataclass
class _RefScan:
    """What one pass over the references collects."""

    ref_counts: list[dict[tuple[str, ...], int]]
    img_of_ref: list[int]
    images_of: dict[tuple[str, ...], list[int]]  # n-gram -> images whose references contain it
    bleu_reflens: list[list[int]]
    bleu_maxcounts: list[dict[tuple[str, ...], int]]


def _scan_refs(refs: Sequence[Sequence[str]]) -> _RefScan:
    scan = _RefScan([], [], {}, [], [])
    for i, image_refs in enumerate(refs):
        if len(image_refs) == 0:
            raise ValueError(f"image {i} has no references")
        seen: set[tuple[str, ...]] = set()
        maxcounts: dict[tuple[str, ...], int] = {}
        lens: list[int] = []
        for ref in image_refs:
            rl, counts = _precook(ref)
            scan.ref_counts.append(counts)
            scan.img_of_ref.append(i)
            seen.update(counts)
            lens.append(rl)
            for g, c in counts.items():
                if c > maxcounts.get(g, 0):
                    maxcounts[g] = c
        for g in seen:
            scan.images_of.setdefault(g, []).append(i)
        scan.bleu_reflens.append(lens)
        scan.bleu_maxcounts.append(maxcounts)
    return scan


def _weight_columns(images_of: dict[tuple[str, ...], list[int]], n: int) -> tuple[dict[tuple[str, ...], int], int, _Csr]:
    """n-gram -> weight column, the number of multi-image columns, and their df matrix.

    Multi-image n-grams get their own weight column; an n-gram of a single image shares that
    image's column (its df is that image's multiplicity).
    """
    col_of: dict[tuple[str, ...], int] = {}
    df_rows: list[int] = []
    df_cols: list[int] = []
    multi = sorted((g for g, imgs in images_of.items() if len(imgs) > 1), key=lambda g: (len(g), g))
    for k, g in enumerate(multi):
        col_of[g] = k
        df_rows.extend([k] * len(images_of[g]))
        df_cols.extend(images_of[g])
    n_multi = len(multi)
    for g, imgs in images_of.items():
        if len(imgs) == 1:
            col_of[g] = n_multi + imgs[0]
    return col_of, n_multi, _Csr.build(df_rows, df_cols, np.ones(len(df_rows)), (n_multi, n))


def ref_tables(refs: Sequence[Sequence[str]]) -> RefTables:
    """Precompute reference n-gram structures from TOKENIZED references, one list per image."""
    n = len(refs)
    if n == 0:
        raise ValueError("no images")
    scan = _scan_refs(refs)
    col_of, n_multi, df_matrix = _weight_columns(scan.images_of, n)
    rows, cols, vals = [], [], []
    for j, counts in enumerate(scan.ref_counts):
        for g, c in counts.items():
            rows.append(j * _N + len(g) - 1)
            cols.append(col_of[g])
            vals.append(float(c * c))
    n_cols = n_multi + n + 1
    return RefTables(
        n_images=n,
        n_refs=np.bincount(np.asarray(scan.img_of_ref), minlength=n).astype(np.float64),
        img_of_ref=np.asarray(scan.img_of_ref, dtype=np.int64),
        ref_len=np.asarray([_bigram_len(r) for image_refs in refs for r in image_refs], dtype=np.float64),
        ref_counts=scan.ref_counts,
        col_of=col_of,
        n_multi=n_multi,
        df_matrix=df_matrix,
        ref_sq=_Csr.build(rows, cols, vals, (len(scan.ref_counts) * _N, n_cols)),
        bleu_reflens=scan.bleu_reflens,
        bleu_maxcounts=scan.bleu_maxcounts,
    )


@dataclass
class CandTables:
    """One run's candidates against the references of `RefTables`."""

    clip_sq: _Csr  # (J*4, n_cols): min(c_g, r_g) * r_g per reference and order
    cand_sq: _Csr  # (N*4, n_cols): c_g^2 per image and order
    penalty: np.ndarray  # (J,) Gaussian length penalty per reference
    bleu_stats: np.ndarray  # (N, 10): testlen, reflen, guess 1..4, correct 1..4


def cand_tables(tables: RefTables, cands: Sequence[str]) -> CandTables:
    if len(cands) != tables.n_images:
        raise ValueError(f"{len(cands)} candidates for {tables.n_images} images")
    cooked = [_precook(c) for c in cands]
    cand_counts = [counts for _, counts in cooked]
    rows, cols, vals = [], [], []
    for i, counts in enumerate(cand_counts):
        for g, c in counts.items():
            rows.append(i * _N + len(g) - 1)
            cols.append(tables.col_of.get(g, tables.oov_col))
            vals.append(float(c * c))
    cand_sq = _Csr.build(rows, cols, vals, (tables.n_images * _N, tables.n_cols))

    rows, cols, vals = [], [], []
    for j, ref in enumerate(tables.ref_counts):
        cc = cand_counts[tables.img_of_ref[j]]
        for g, c in cc.items():
            r = ref.get(g)
            if r:
                rows.append(j * _N + len(g) - 1)
                cols.append(tables.col_of[g])
                vals.append(float(min(c, r) * r))
    clip_sq = _Csr.build(rows, cols, vals, (len(tables.ref_counts) * _N, tables.n_cols))

    cand_len = np.asarray([_bigram_len(c) for c in cands], dtype=np.float64)
    delta = cand_len[tables.img_of_ref] - tables.ref_len
    penalty = np.e ** (-(delta**2) / (2 * _SIGMA**2))

    stats = np.zeros((tables.n_images, 2 + 2 * _N), dtype=np.float64)
    for i, (testlen, counts) in enumerate(cooked):
        # "closest" reference length, ties to the shorter one (pycocoevalcap's cook_test).
        reflen = min((abs(rl - testlen), rl) for rl in tables.bleu_reflens[i])[1]
        maxc = tables.bleu_maxcounts[i]
        correct = [0] * _N
        for g, c in counts.items():
            correct[len(g) - 1] += min(maxc.get(g, 0), c)
        stats[i, 0], stats[i, 1] = testlen, reflen
        stats[i, 2 : 2 + _N] = [max(0, testlen - k + 1) for k in range(1, _N + 1)]
        stats[i, 2 + _N :] = correct
    return CandTables(clip_sq, cand_sq, penalty, stats)


# --- metric kernels on a chunk of multiplicity rows ----------------------------------------------

def idf_weights_sq(tables: RefTables, counts: np.ndarray) -> np.ndarray:
    """(n_cols, b) squared idf weights for a chunk of multiplicity rows (b, N)."""
    ref_len = np.log(float(tables.n_images))
    m = counts.T.astype(np.float64)  # (N, b)
    df = tables.df_matrix.matmul(m)  # (n_multi, b)
    w_multi = ref_len - np.log(np.maximum(1.0, df))
    w_single = ref_len - np.log(np.maximum(1.0, m))
    w_oov = np.full((1, m.shape[1]), ref_len)
    return np.vstack([w_multi, w_single, w_oov]) ** 2


def cider_per_image(tables: RefTables, cand: CandTables, w2: np.ndarray, ref_norm_sq: np.ndarray) -> np.ndarray:
    """(N, b) per-image CIDEr under the weights of each resample in the chunk."""
    b = w2.shape[1]
    num = cand.clip_sq.matmul(w2).reshape(-1, _N, b)  # (J, 4, b)
    cnorm = np.sqrt(cand.cand_sq.matmul(w2)).reshape(-1, _N, b)[tables.img_of_ref]  # (J, 4, b)
    den = cnorm * np.sqrt(ref_norm_sq)
    nonzero = den != 0
    val = np.where(nonzero, num / np.where(nonzero, den, 1.0), num)
    val *= cand.penalty[:, None, None]
    per_ref = val.sum(axis=1)  # (J, b)
    starts = np.concatenate([[0], np.cumsum(tables.n_refs.astype(np.int64))[:-1]])
    per_image = np.add.reduceat(per_ref, starts, axis=0) / _N  # mean over n of the summed refs
    return per_image / tables.n_refs[:, None] * 10.0


def ref_norms_sq(tables: RefTables, w2: np.ndarray) -> np.ndarray:
    return tables.ref_sq.matmul(w2).reshape(-1, _N, w2.shape[1])


def bleu_from_totals(totals: np.ndarray) -> np.ndarray:
    """(b, 4) corpus BLEU-1..4 from summed stats (b, 10), as pycocoevalcap's compute_score."""
    testlen, reflen = totals[:, 0], totals[:, 1]
    guess, correct = totals[:, 2 : 2 + _N], totals[:, 2 + _N :]
    out = np.zeros((totals.shape[0], _N))
    bleu = np.ones(totals.shape[0])
    for k in range(_N):
        bleu = bleu * (correct[:, k] + _TINY) / (guess[:, k] + _SMALL)
        out[:, k] = bleu ** (1.0 / (k + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.where(ratio < 1, ratio, 1.0)), 1.0)
    return out * brevity[:, None]


def corpus_metrics(refs: Sequence[Sequence[str]], cands: Sequence[str], counts: np.ndarray | None = None) -> dict[str, float]:
    """Corpus CIDEr and BLEU-1..4 of tokenized text for one multiplicity vector (default: every
    image once), computed by the same kernels as the bootstrap."""
    tables = ref_tables(refs)
    cand = cand_tables(tables, cands)
    m = np.ones(len(refs)) if counts is None else np.asarray(counts, dtype=np.float64)
    w2 = idf_weights_sq(tables, m[None, :])
    per_image = cider_per_image(tables, cand, w2, ref_norms_sq(tables, w2))
    out = {"CIDEr": float((per_image[:, 0] * m).sum() / m.sum())}
    bleu = bleu_from_totals(m[None, :] @ cand.bleu_stats)[0]
    out.update({f"BLEU-{k + 1}": float(bleu[k]) for k in range(_N)})
    return out


def corpus_cider(refs: Sequence[Sequence[str]], cands: Sequence[str], counts: np.ndarray | None = None) -> float:
    return corpus_metrics(refs, cands, counts)["CIDEr"]


def corpus_bleu(refs: Sequence[Sequence[str]], cands: Sequence[str], counts: np.ndarray | None = None) -> list[float]:
    values = corpus_metrics(refs, cands, counts)
    return [values[f"BLEU-{k + 1}"] for k in range(_N)]
