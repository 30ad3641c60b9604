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

from collections import Counter
from collections.abc import Sequence
from itertools import chain
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse

_N = 4  # n-gram orders of CIDEr and BLEU (_precook spells out the four)
_SIGMA = 6.0  # CIDEr-D length penalty
_TINY, _SMALL = 1e-15, 1e-9  # BLEU smoothing constants of pycocoevalcap


# --- sparse matrices ------------------------------------------------------------------------------

def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, index of each key among them): np.unique(return_inverse=True) by
    one argsort, several times faster on a million keys."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return sorted_keys[first], inverse


@dataclass(frozen=True)
class _Csr:
    """A CSR matrix built from (row, col, value) triples; products by scipy's sparse kernel, which
    sums each row's entries one after the other in column order (the bits torch's CSR kernel gave
    before it, checked on the shipped reports; scipy imports in a fraction of torch's time)."""

    matrix: scipy.sparse.csr_matrix
    shape: tuple[int, int]

    @classmethod
    def build(cls, rows: Sequence[int], cols: Sequence[int], vals: Sequence[float], shape: tuple[int, int]) -> "_Csr":
        """Coalesce the triples, summing duplicates."""
        r = np.asarray(rows, dtype=np.int64)
        c = np.asarray(cols, dtype=np.int64)
        v = np.asarray(vals, dtype=np.float64)
        key = r * shape[1] + c
        uniq, inverse = _unique(key)
        summed = np.bincount(inverse, weights=v, minlength=len(uniq)) if len(uniq) else np.zeros(0)
        indptr = np.bincount(uniq // shape[1] + 1, minlength=shape[0] + 1) if len(uniq) else np.zeros(shape[0] + 1, np.int64)
        matrix = scipy.sparse.csr_matrix((summed.astype(np.float64), uniq % shape[1], np.cumsum(indptr)), shape=shape)
        return cls(matrix, shape)

    def matmul(self, dense: np.ndarray) -> np.ndarray:
        """self @ dense, dense of shape (shape[1], b)."""
        if self.matrix.nnz == 0:
            return np.zeros((self.shape[0], dense.shape[1]), dtype=np.float64)
        return self.matrix @ np.ascontiguousarray(dense, dtype=np.float64)


# --- per-section reference tables and per-run candidate tables ---------------------------------

def _precook(sentence: str) -> tuple[int, dict[tuple[str, ...], int]]:
    """pycocoevalcap's BLEU precook (CIDEr's gives the same counts): (number of words, counts of
    the 1..4-grams of s.split()), counted by Counter in C rather than one tuple at a time."""
    w = sentence.split()
    return len(w), Counter(chain(zip(w), zip(w, w[1:]), zip(w, w[1:], w[2:]), zip(w, w[1:], w[2:], w[3:])))


# pycocoevalcap's counts2vec counts the term frequencies of n-grams with index n == 1, i.e. bigrams:
# the "length" in CIDEr's penalty is words - 1 (0 for an empty or one-word sentence).


@dataclass
class RefTables:
    """Everything about the references of one image set that CIDEr and BLEU need, as arrays.

    Every distinct reference n-gram has an id; an "entry" is one (reference, n-gram) pair.
    """

    n_images: int
    n_refs: np.ndarray  # (N,)
    img_of_ref: np.ndarray  # (J,) image of each reference, references grouped by image
    ref_len: np.ndarray  # (J,) bigram counts
    gram_id: dict[tuple[str, ...], int]  # reference n-gram -> id
    gram_col: np.ndarray  # (G,) weight column of each n-gram (its own, or its single image's)
    gram_order: np.ndarray  # (G,) n - 1
    entry_ref: np.ndarray  # (E,) reference of each entry
    entry_gram: np.ndarray  # (E,) n-gram id of each entry
    entry_count: np.ndarray  # (E,) its count in that reference
    maxc_key: np.ndarray  # sorted image * G + n-gram id of every n-gram of an image's references
    maxc: np.ndarray  # its largest count over the image's references (BLEU's clipping)
    reflens: np.ndarray  # (N, most refs) word counts of each image's references, padded with _PAD
    n_multi: int
    df_matrix: _Csr  # (n_multi, N): 1 where the image's references contain the n-gram
    ref_sq: _Csr  # (J*4, n_cols): r_g^2 per reference and order

    @property
    def n_cols(self) -> int:
        return self.n_multi + self.n_images + 1  # + one column for n-grams in no reference

    @property
    def oov_col(self) -> int:
        return self.n_multi + self.n_images

    entry_key: np.ndarray = field(init=False)  # (E,) image * G + n-gram id of each entry

    def __post_init__(self) -> None:
        self.entry_key = self.img_of_ref[self.entry_ref] * len(self.gram_col) + self.entry_gram

    # --- as arrays (bench.report.compute_cache keeps them per section) ---

    _ARRAYS = ("n_refs", "img_of_ref", "ref_len", "gram_col", "gram_order", "entry_ref", "entry_gram", "entry_count",
               "maxc_key", "maxc", "reflens")
    _FLOAT = {"n_refs": np.float64, "ref_len": np.float64}  # integer-valued floats; the rest are int64

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array, integers in the smallest integer type that holds them
        (from_arrays gives the original types back), the n-grams as UTF-8 lines of space-separated
        words (PTB tokens hold no whitespace): for an npz file."""
        out = {name: _small(getattr(self, name)) for name in self._ARRAYS}
        out["sizes"] = np.asarray([self.n_images, self.n_multi], dtype=np.int64)
        text = "\n".join(" ".join(g) for g in self.gram_id).encode("utf-8")
        out["grams"] = np.frombuffer(text, dtype=np.uint8)
        for name in ("df_matrix", "ref_sq"):
            m = getattr(self, name).matrix
            out.update({f"{name}.data": _small(m.data), f"{name}.indices": m.indices, f"{name}.indptr": m.indptr,
                        f"{name}.shape": np.asarray(m.shape, dtype=np.int64)})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "RefTables":
        """The tables to_arrays() wrote (KeyError/ValueError when the arrays do not fit)."""
        text = arrays["grams"].tobytes().decode("utf-8")
        grams = [tuple(line.split(" ")) for line in text.split("\n")] if text else []
        matrices = {}
        for name in ("df_matrix", "ref_sq"):
            shape = tuple(int(x) for x in arrays[f"{name}.shape"])
            data = arrays[f"{name}.data"].astype(np.float64)  # squared counts and ones: exact integers
            matrix = scipy.sparse.csr_matrix((data, arrays[f"{name}.indices"], arrays[f"{name}.indptr"]), shape=shape)
            matrices[name] = _Csr(matrix, shape)  # type: ignore[arg-type]
        n_images, n_multi = (int(x) for x in arrays["sizes"])
        tables = cls(n_images=n_images, n_multi=n_multi, gram_id={g: k for k, g in enumerate(grams)},
                     **{name: arrays[name].astype(cls._FLOAT.get(name, np.int64)) for name in cls._ARRAYS},
                     **matrices)
        if len(tables.gram_id) != len(tables.gram_col) or len(tables.n_refs) != n_images:
            raise ValueError("reference tables of another shape")
        return tables


def _small(values: np.ndarray) -> np.ndarray:
    """Integer values (ints, or floats that are whole numbers) in the smallest signed integer
    type that holds them exactly: the cached tables take a third of the disk; anything else as is."""
    if values.size == 0 or (values.dtype.kind == "f" and not np.array_equal(values, np.round(values))):
        return values
    lo, hi = values.min(), values.max()
    for kind in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(kind).min <= lo and hi <= np.iinfo(kind).max:
            return values.astype(kind)
    return values


_PAD = 10**9  # a reference length no caption is closest to


@dataclass
class _RefScan:
    """What one pass over the references collects."""

    gram_id: dict[tuple[str, ...], int]
    img_of_ref: np.ndarray
    n_words: np.ndarray  # (J,)
    entry_ref: np.ndarray
    entry_gram: np.ndarray
    entry_count: np.ndarray


def _scan_refs(refs: Sequence[Sequence[str]]) -> _RefScan:
    img_of_ref: list[int] = []
    cooked: list[tuple[int, dict[tuple[str, ...], int]]] = []
    for i, image_refs in enumerate(refs):
        if len(image_refs) == 0:
            raise ValueError(f"image {i} has no references")
        img_of_ref.extend([i] * len(image_refs))
        cooked.extend(_precook(ref) for ref in image_refs)
    grams = list(chain.from_iterable(counts for _, counts in cooked))
    gram_id = {g: k for k, g in enumerate(dict.fromkeys(grams))}
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return _RefScan(
        gram_id,
        as64(img_of_ref),
        as64([words for words, _ in cooked]),
        np.repeat(np.arange(len(cooked), dtype=np.int64), [len(counts) for _, counts in cooked]),
        as64(list(map(gram_id.__getitem__, grams))),
        as64(list(chain.from_iterable(counts.values() for _, counts in cooked))),
    )


def _weight_columns(scan: _RefScan, n: int) -> tuple[np.ndarray, int, _Csr]:
    """Weight column of every n-gram id, the number of multi-image columns, and their df matrix.

    Multi-image n-grams get their own weight column, in (order, n-gram) order; an n-gram of a
    single image shares that image's column (its df is that image's multiplicity).
    """
    grams = list(scan.gram_id)
    n_grams = len(grams)
    pairs, _ = _unique(scan.entry_gram * n + scan.img_of_ref[scan.entry_ref])  # distinct (n-gram, image)
    pair_gram, pair_img = pairs // n, pairs % n
    n_imgs = np.bincount(pair_gram, minlength=n_grams)
    by_order: list[list[tuple[str, ...]]] = [[] for _ in range(_N)]
    for k in np.flatnonzero(n_imgs > 1).tolist():
        by_order[len(grams[k]) - 1].append(grams[k])
    # (order, n-gram) order; tuples compare as the words do.
    multi = [scan.gram_id[g] for same in by_order for g in sorted(same)]
    n_multi = len(multi)
    col = np.empty(n_grams, dtype=np.int64)
    col[np.asarray(multi, dtype=np.int64)] = np.arange(n_multi)
    single = n_imgs[pair_gram] == 1
    col[pair_gram[single]] = n_multi + pair_img[single]
    df_rows = col[pair_gram[~single]]
    df = _Csr.build(df_rows, pair_img[~single], np.ones(len(df_rows)), (n_multi, n))
    return col, n_multi, df


def _bleu_refs(scan: _RefScan, n: int, n_grams: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted image*G+n-gram keys, their largest count over the image's references, padded word
    counts of each image's references)."""
    key = scan.img_of_ref[scan.entry_ref] * n_grams + scan.entry_gram
    order = np.argsort(key, kind="stable")
    key, counts = key[order], scan.entry_count[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    n_refs = np.bincount(scan.img_of_ref, minlength=n)
    reflens = np.full((n, int(n_refs.max())), _PAD, dtype=np.int64)
    first = np.r_[0, np.cumsum(n_refs)[:-1]]
    slot = np.arange(len(scan.img_of_ref)) - first[scan.img_of_ref]
    reflens[scan.img_of_ref, slot] = scan.n_words
    return key[starts], np.maximum.reduceat(counts, starts), reflens


def ref_tables(refs: Sequence[Sequence[str]]) -> RefTables:
    """Precompute reference n-gram structures from TOKENIZED references, one list per image."""
    n = len(refs)
    if n == 0:
        raise ValueError("no images")
    scan = _scan_refs(refs)
    grams = list(scan.gram_id)
    col, n_multi, df_matrix = _weight_columns(scan, n)
    order = np.asarray([len(g) - 1 for g in grams], dtype=np.int64)
    n_refs_img = len(scan.img_of_ref)
    rows = scan.entry_ref * _N + order[scan.entry_gram]
    vals = (scan.entry_count * scan.entry_count).astype(np.float64)
    maxc_key, maxc, reflens = _bleu_refs(scan, n, len(grams))
    return RefTables(
        n_images=n,
        n_refs=np.bincount(scan.img_of_ref, minlength=n).astype(np.float64),
        img_of_ref=scan.img_of_ref,
        ref_len=np.maximum(scan.n_words - 1, 0).astype(np.float64),
        gram_id=scan.gram_id,
        gram_col=col,
        gram_order=order,
        entry_ref=scan.entry_ref,
        entry_gram=scan.entry_gram,
        entry_count=scan.entry_count,
        maxc_key=maxc_key,
        maxc=maxc,
        reflens=reflens,
        n_multi=n_multi,
        df_matrix=df_matrix,
        ref_sq=_Csr.build(rows, col[scan.entry_gram], vals, (n_refs_img * _N, n_multi + n + 1)),
    )


@dataclass
class CandTables:
    """One run's candidates against the references of `RefTables`."""

    clip_sq: _Csr  # (J*4, n_cols): min(c_g, r_g) * r_g per reference and order
    cand_sq: _Csr  # (N*4, n_cols): c_g^2 per image and order
    penalty: np.ndarray  # (J,) Gaussian length penalty per reference
    bleu_stats: np.ndarray  # (N, 10): testlen, reflen, guess 1..4, correct 1..4


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of `wanted` found in the sorted `keys`, the values of those found)."""
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=bool), values[:0]
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[pos] == wanted
    return hit, values[pos[hit]]


def cand_tables(tables: RefTables, cands: Sequence[str]) -> CandTables:
    n = tables.n_images
    if len(cands) != n:
        raise ValueError(f"{len(cands)} candidates for {n} images")
    cooked = [_precook(c) for c in cands]
    get = tables.gram_id.get
    img = np.repeat(np.arange(n, dtype=np.int64), [len(counts) for _, counts in cooked])
    grams = [g for _, counts in cooked for g in counts]
    gid = np.asarray([get(g, -1) for g in grams], dtype=np.int64)
    cnt = np.asarray([c for _, counts in cooked for c in counts.values()], dtype=np.int64)
    order = np.asarray([len(g) - 1 for g in grams], dtype=np.int64)
    known = gid >= 0
    cols = np.where(known, tables.gram_col[np.maximum(gid, 0)], tables.oov_col)
    cand_sq = _Csr.build(img * _N + order, cols, (cnt * cnt).astype(np.float64), (n * _N, tables.n_cols))

    # Entries of the references that the candidate of their image shares an n-gram with.
    key = img[known] * len(tables.gram_col) + gid[known]
    by_key = np.argsort(key)
    hit, c = _lookup(key[by_key], cnt[known][by_key], tables.entry_key)
    r, g = tables.entry_count[hit], tables.entry_gram[hit]
    clip_sq = _Csr.build(tables.entry_ref[hit] * _N + tables.gram_order[g], tables.gram_col[g],
                         (np.minimum(c, r) * r).astype(np.float64), (len(tables.img_of_ref) * _N, tables.n_cols))

    testlen = np.asarray([words for words, _ in cooked], dtype=np.int64)
    delta = np.maximum(testlen - 1, 0).astype(np.float64)[tables.img_of_ref] - tables.ref_len
    penalty = np.e ** (-(delta**2) / (2 * _SIGMA**2))
    return CandTables(clip_sq, cand_sq, penalty, _bleu_stats(tables, testlen, img[known], order[known], key, cnt[known]))


def _bleu_stats(tables: RefTables, testlen: np.ndarray, img: np.ndarray, order: np.ndarray, key: np.ndarray,
                cnt: np.ndarray) -> np.ndarray:
    """(N, 10): testlen, the closest reference length (ties to the shorter one, pycocoevalcap's
    cook_test), guesses and clipped correct counts of orders 1..4."""
    n = tables.n_images
    diff = np.abs(tables.reflens - testlen[:, None])
    closest = np.argmin(diff * (2 * _PAD) + tables.reflens, axis=1)
    hit, maxc = _lookup(tables.maxc_key, tables.maxc, key)
    correct = np.bincount(img[hit] * _N + order[hit], weights=np.minimum(maxc, cnt[hit]), minlength=n * _N)
    stats = np.zeros((n, 2 + 2 * _N), dtype=np.float64)
    stats[:, 0] = testlen
    stats[:, 1] = tables.reflens[np.arange(n), closest]
    stats[:, 2 : 2 + _N] = np.maximum(0, testlen[:, None] - np.arange(_N)[None, :])
    stats[:, 2 + _N :] = correct.reshape(n, _N)
    return stats


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
