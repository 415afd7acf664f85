"""SPEX's structured (aliasing) mask design: which training subsets SPEX retrains on.

The decoder that reads its outputs is :class:`dataspex.fit.estimators.spex.SPEX`.

Design (:class:`SpexDesign`)
----------------------------
C groups, each with a random ``n x b`` binary matrix ``M_c`` and an offset ``r_c`` (n bits), and
P + 1 shared delays ``d_0 = 0, d_1 .. d_P`` (the rows of a t-error-correcting BCH parity-check
matrix).  Mask for group c, delay p and ``l in {0,1}^b``::

    x = M_c l  XOR  d_p  XOR  r_c          (bit 1 = training example KEPT, as everywhere in dataspex)

Row order of :meth:`SpexDesign.masks`: ``row = (c * (P + 1) + p) * 2^b + l`` with bit u of the
integer l being ``l_u``.

Why an offset.  With ``r_c = 0`` (the paper's form) the row ``l = 0, p = 0`` of every group is the
EMPTY training set (a retrain on nothing, far outside the half-size subsets every other mask has)
and the C groups repeat the same P + 1 masks.  ``offset="ones"`` makes those rows the full data set
(the complement design); ``offset="random"`` (default) makes every mask a uniformly random half-size
subset and removes the repeats.  The offset does not move the Fourier support and does not change
the syndromes (it flips all delays of a bin together); it only multiplies the coefficient seen in
group c by ``(-1)^{<k, r_c>}``, which the decoder undoes.  So the decoder reports ``F`` in the
dataspex convention ``f(x) = sum_k F[k] (-1)^{|k & x|}`` whatever the offset.
"""

from __future__ import annotations

import numpy as np

from dataspex.core.errors import DataspexInputError
from dataspex.design._bch import BCHCode, bch_code
from dataspex.design.base import Design
from dataspex.design.random import heldout_masks

__all__ = ["SpexDesign", "spex_design"]

DESIGN_FORMAT = "dataspex.SpexDesign"
DESIGN_FORMAT_VERSION = 1
_OFFSETS = ("random", "ones", "zeros")
_MAX_B = 24  # 2^24 masks per group and delay is far beyond any retraining budget


def _bits_to_str(row: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in row)


def _str_to_bits(text: str, length: int, what: str) -> np.ndarray:
    if len(text) != length or set(text) - {"0", "1"}:
        raise DataspexInputError(f"design dict: {what} must be a 0/1 string of length {length}")
    return (np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")).astype(np.uint8)


def _resolve_seed(random_state) -> int:
    """An int seed recorded in the design, so the design can be regenerated from it."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, (int, np.integer)) and random_state >= 0:
        return int(random_state)
    raise DataspexInputError(
        f"random_state must be None, a non-negative int or a numpy Generator, got {random_state!r}"
    )


class SpexDesign:
    """The structured masks SPEX needs, and everything required to decode their outputs.

    Parameters
    ----------
    n : int
        Number of training examples (mask length).
    budget : int, optional
        Retrain budget; ``b`` is the largest with ``n_groups * 2^b * (P + 1) <= budget``.
    b : int, optional
        Bits per group (2^b bins); give exactly one of ``budget`` and ``b``.
    n_groups : int
        Subsampling groups C (3 in the paper).
    max_degree : int
        Largest interaction order t the BCH delays can identify.
    random_state : None, int or numpy Generator
        Seed for the ``M_c`` and offsets; the int actually used is stored as ``seed``.
    offset : {"random", "ones", "zeros"}
        Per-group XOR offset ``r_c`` (see the module docstring): random bits, all ones (the
        complement design: l = 0 is the full data set) or zeros (the paper's form).

    Attributes
    ----------
    matrices : (C, n, b) uint8   the ``M_c``.
    offsets : (C, n) uint8       the ``r_c``.
    delays : (P + 1, n) uint8    ``d_0 = 0`` then the BCH parity-check rows.
    n_masks : int                ``C * (P + 1) * 2^b``.
    """

    def __init__(
        self,
        n: int,
        budget: int | None = None,
        b: int | None = None,
        n_groups: int = 3,
        max_degree: int = 3,
        random_state=None,
        offset: str = "random",
    ) -> None:
        n, n_groups, max_degree = int(n), int(n_groups), int(max_degree)
        if n < 2 or n_groups < 1 or max_degree < 1:
            raise DataspexInputError(
                f"SpexDesign needs n >= 2, n_groups >= 1, max_degree >= 1; got n={n}, "
                f"n_groups={n_groups}, max_degree={max_degree}"
            )
        if offset not in _OFFSETS:
            raise DataspexInputError(f"offset must be one of {_OFFSETS}, got {offset!r}")
        code = bch_code(n, max_degree)
        b = self._choose_b(budget, b, n_groups, code.n_parity + 1)
        seed = _resolve_seed(random_state)
        rng = np.random.default_rng(seed)
        matrices = rng.integers(0, 2, size=(n_groups, n, b), dtype=np.uint8)
        if offset == "random":
            offsets = rng.integers(0, 2, size=(n_groups, n), dtype=np.uint8)
        else:
            offsets = np.full((n_groups, n), offset == "ones", dtype=np.uint8)
        self._set(n, b, max_degree, seed, offset, matrices, offsets, code)

    @staticmethod
    def _choose_b(budget, b, n_groups: int, n_delays: int) -> int:
        if (budget is None) == (b is None):
            raise DataspexInputError("SpexDesign needs exactly one of budget= and b=")
        if b is None:
            per_bit = n_groups * n_delays
            if budget < 2 * per_bit:
                raise DataspexInputError(
                    f"budget {budget} is too small for SPEX: even b=1 needs "
                    f"{2 * per_bit} retrains (n_groups * 2 * (P+1) with P+1={n_delays}); "
                    f"raise the budget or lower max_degree / n_groups"
                )
            b = int(np.floor(np.log2(budget / per_bit) + 1e-12))
        b = int(b)
        if not 1 <= b <= _MAX_B:
            raise DataspexInputError(f"b must be in [1, {_MAX_B}], got {b}")
        return b

    def _set(self, n, b, max_degree, seed, offset, matrices, offsets, code: BCHCode) -> None:
        self.n, self.b, self.max_degree, self.seed, self.offset = n, b, max_degree, seed, offset
        self.n_groups = matrices.shape[0]
        self.matrices = matrices
        self.offsets = offsets
        self.code = code
        self.delays = np.concatenate([np.zeros((1, n), np.uint8), code.parity_check])

    # -- sizes -----------------------------------------------------------------------------
    @property
    def n_delays(self) -> int:
        """P + 1 (the undelayed signal plus one per syndrome bit)."""
        return self.delays.shape[0]

    @property
    def n_bins(self) -> int:
        return 1 << self.b

    @property
    def n_masks(self) -> int:
        return self.n_groups * self.n_delays * self.n_bins

    def __repr__(self) -> str:
        return (
            f"SpexDesign(n={self.n}, b={self.b}, n_groups={self.n_groups}, "
            f"max_degree={self.max_degree}, n_delays={self.n_delays}, n_masks={self.n_masks}, "
            f"offset={self.offset!r}, seed={self.seed})"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, SpexDesign):
            return NotImplemented
        return (
            (self.n, self.b, self.max_degree) == (other.n, other.b, other.max_degree)
            and np.array_equal(self.matrices, other.matrices)
            and np.array_equal(self.offsets, other.offsets)
        )

    # -- masks -----------------------------------------------------------------------------
    def masks(self) -> np.ndarray:
        """All design masks, ``(n_masks, n)`` uint8, in the order of the module docstring."""
        L = self.n_bins
        l_bits = ((np.arange(L)[:, None] >> np.arange(self.b)) & 1).astype(np.uint8)  # (L, b)
        ml = (np.einsum("lu,cnu->cln", l_bits, self.matrices, dtype=np.int64) & 1).astype(np.uint8)
        out = ml[:, None] ^ self.delays[None, :, None] ^ self.offsets[:, None, None]
        return out.reshape(self.n_masks, self.n)

    def check_masks(self, masks: np.ndarray) -> None:
        """Raise a one-line DataspexInputError unless ``masks`` equals :meth:`masks` row by row."""
        expected = self.masks()
        if masks.shape != expected.shape:
            raise DataspexInputError(
                f"masks have shape {masks.shape} but this SPEX design has {expected.shape} "
                f"(n_groups * (P+1) * 2^b = {self.n_groups} * {self.n_delays} * {self.n_bins}): "
                f"fit needs exactly the design's masks, in design order"
            )
        bad = np.flatnonzero(np.any(masks != expected, axis=1))
        if bad.size:
            preview = ", ".join(str(int(r)) for r in bad[:5]) + (" ..." if bad.size > 5 else "")
            raise DataspexInputError(
                f"{bad.size} mask rows differ from the SPEX design (rows {preview}); fit needs "
                f"exactly design.masks() in design order, with Y row i the outputs of mask i"
            )

    # -- hashing used by the decoder ---------------------------------------------------------
    def bin_codes(self) -> np.ndarray:
        """``(C, n + 1)`` int64: bin of the single example i in group c (``M_c^T e_i`` as an int).

        Column n is 0, the padding index for key rows shorter than t.
        """
        weights = 1 << np.arange(self.b, dtype=np.int64)
        codes = (self.matrices.astype(np.int64) * weights).sum(axis=2)
        return np.concatenate([codes, np.zeros((self.n_groups, 1), np.int64)], axis=1)

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable dict that :meth:`from_dict` turns back into an equal design.

        Binary matrices are stored as 0/1 strings: ``matrices[c][i]`` is row i of ``M_c``
        (b characters), ``offsets[c]`` and ``delays[p]`` have n characters.
        """
        return {
            "format": DESIGN_FORMAT,
            "version": DESIGN_FORMAT_VERSION,
            "n": self.n,
            "b": self.b,
            "n_groups": self.n_groups,
            "max_degree": self.max_degree,
            "n_delays": self.n_delays,
            "n_masks": self.n_masks,
            "seed": self.seed,
            "offset": self.offset,
            "bch": {"m": self.code.m, "generator": hex(self.code.generator)},
            "mask_rule": "x = M_c l XOR d_p XOR r_c; bit 1 = example kept",
            "mask_order": "row = (c * n_delays + p) * 2**b + l; bit u of l is l_u",
            "matrices": [[_bits_to_str(row) for row in M] for M in self.matrices],
            "offsets": [_bits_to_str(r) for r in self.offsets],
            "delays": [_bits_to_str(d) for d in self.delays],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SpexDesign:
        """Rebuild a design from :meth:`to_dict` output (validated; the delays are re-derived
        from the BCH code and must match the stored ones)."""
        if not isinstance(data, dict) or data.get("format") != DESIGN_FORMAT:
            raise DataspexInputError(f"not a SPEX design dict (expected format {DESIGN_FORMAT!r})")
        if data.get("version") != DESIGN_FORMAT_VERSION:
            raise DataspexInputError(f"unsupported SPEX design version {data.get('version')!r}")
        try:
            n, b, t = int(data["n"]), int(data["b"]), int(data["max_degree"])
            mats, offs = data["matrices"], data["offsets"]
            matrices = np.array(
                [[_str_to_bits(r, b, "matrices row") for r in M] for M in mats], dtype=np.uint8
            ).reshape(len(mats), n, b)
            offsets = np.array([_str_to_bits(r, n, "offsets") for r in offs], dtype=np.uint8)
            delays = np.array([_str_to_bits(d, n, "delays") for d in data["delays"]], np.uint8)
        except (KeyError, TypeError, ValueError) as err:
            raise DataspexInputError(f"malformed SPEX design dict: {err}") from None
        code = bch_code(n, t)
        obj = cls.__new__(cls)
        obj._set(n, b, t, int(data["seed"]), data.get("offset", "custom"), matrices, offsets, code)
        if offsets.shape != (matrices.shape[0], n) or not np.array_equal(delays, obj.delays):
            raise DataspexInputError(
                "SPEX design dict is inconsistent: its offsets or delays do not match n, "
                "n_groups and the BCH code for max_degree"
            )
        return obj


def spex_design(cfg, n_train: int, rng: np.random.Generator, screen=None):
    """``design=spex``: SPEX's structured masks for the budget ``design.m``, then random held-out masks."""
    spex = SpexDesign(n_train, budget=cfg.m, max_degree=cfg.max_degree, random_state=cfg.seed)
    structured = spex.masks()
    heldout = heldout_masks(n_train, cfg.heldout, 0.5, rng)
    masks = np.vstack([structured, heldout])
    roles = np.array(["spex"] * len(structured) + ["heldout"] * cfg.heldout)
    meta = {"kind": "spex", "spex": spex.to_dict(), "heldout": cfg.heldout, "seed": cfg.seed}
    return Design(masks, np.arange(len(masks)), roles, meta)
