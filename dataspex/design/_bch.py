"""Binary BCH codes used as SPEX delays, with a syndrome decoder batched over many syndromes.

SPEX needs, for an unknown set ``k`` of at most ``t`` training examples, a short fingerprint from
which ``k`` can be read back.  A t-error-correcting binary BCH code gives one: its parity-check
matrix ``H`` (``P x n`` over GF(2), ``P <= t * ceil(log2(n + 1))``) maps every weight <= t vector to
a distinct syndrome ``H k``.  Here column ``i`` of ``H`` holds the coefficients of
``x^i mod g(x)`` (``g`` = generator polynomial), so the syndrome of ``k`` is the polynomial
``k(x) mod g(x)``; evaluated at ``alpha^1 .. alpha^2t`` it gives the power sums that
Berlekamp-Massey turns into the error locator, whose roots (Chien search) are the members of ``k``.

Everything here is our own GF(2^m) arithmetic on log / antilog tables; decoding works on a batch
of syndromes at once (numpy arrays, no per-syndrome Python loop).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["BCHCode", "GF2m", "bch_code"]

# Primitive polynomials over GF(2), bit i = coefficient of x^i.  GF2m checks primitivity.
_PRIMITIVE_POLY = {
    2: 0b111,
    3: 0b1011,
    4: 0b10011,
    5: 0b100101,
    6: 0b1000011,
    7: 0b10001001,
    8: 0x11D,
    9: 0x211,
    10: 0x409,
    11: 0x805,
    12: 0x1053,
    13: 0x201B,
    14: 0x4443,
    15: 0x8003,
    16: 0x1100B,
    17: 0x20009,
    18: 0x40081,
    19: 0x80027,
    20: 0x100009,
}


class GF2m:
    """The field GF(2^m); elements are ints in [0, 2^m), addition is XOR.

    ``exp[e] = alpha^e`` for ``0 <= e < 2 * order`` (doubled so that sums of two logs index
    directly) and ``log[a]`` for ``a != 0`` (``log[0] = -1``, never used as a value).
    """

    def __init__(self, m: int):
        if m not in _PRIMITIVE_POLY:
            raise ValueError(f"GF(2^m) is only tabulated for 2 <= m <= 20, got m={m}")
        self.m = m
        self.size = 1 << m
        self.order = self.size - 1
        poly = _PRIMITIVE_POLY[m]
        exp = np.zeros(2 * self.order, dtype=np.int64)
        value = 1
        for e in range(self.order):
            exp[e] = value
            value <<= 1
            if value & self.size:
                value ^= poly
        if value != 1 or len(np.unique(exp[: self.order])) != self.order:
            raise AssertionError(f"tabulated polynomial for m={m} is not primitive")
        exp[self.order :] = exp[: self.order]
        log = np.full(self.size, -1, dtype=np.int64)
        log[exp[: self.order]] = np.arange(self.order)
        self.exp = exp
        self.log = log

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise product of two broadcastable arrays of field elements."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        prod = self.exp[(self.log[a] + self.log[b]) % self.order]
        return np.where((a == 0) | (b == 0), 0, prod)

    def inv(self, a: np.ndarray) -> np.ndarray:
        """Elementwise inverse; the caller guarantees ``a != 0``."""
        a = np.asarray(a, dtype=np.int64)
        return self.exp[(-self.log[a]) % self.order]

    def alpha_pow(self, e: np.ndarray) -> np.ndarray:
        """``alpha^e`` for any integer exponents (negative allowed)."""
        return self.exp[np.asarray(e, dtype=np.int64) % self.order]


def _poly_mul_gf2(a: int, b: int) -> int:
    """Product of two GF(2)[x] polynomials stored as ints (carry-less multiply)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def _minimal_poly(gf: GF2m, j: int) -> int:
    """Minimal polynomial over GF(2) of ``alpha^j``: product of ``(x + beta)`` over its conjugates."""
    coset = []
    e = j % gf.order
    while e not in coset:
        coset.append(e)
        e = (2 * e) % gf.order
    coeffs = np.array([1], dtype=np.int64)  # coefficients in GF(2^m), lowest degree first
    for e in coset:
        root = int(gf.exp[e])
        shifted = np.concatenate([[0], coeffs])  # x * p(x)
        scaled = np.concatenate([gf.mul(coeffs, root), [0]])  # root * p(x)
        coeffs = shifted ^ scaled
    if np.any(coeffs > 1):
        raise AssertionError("minimal polynomial has coefficients outside GF(2)")
    return int(sum(int(c) << i for i, c in enumerate(coeffs)))


class BCHCode:
    """A shortened binary BCH code of length ``n`` correcting ``t`` errors.

    Attributes:
        n: code length after shortening (number of training examples).
        t: number of correctable errors (the SPEX ``max_degree``).
        m: field degree; the mother code has length ``2^m - 1 >= n``.
        generator: generator polynomial ``g(x)`` as an int (bit i = coefficient of ``x^i``).
        n_parity: ``P = deg g``, the number of syndrome bits.
        parity_check: ``(P, n)`` uint8; column ``i`` = coefficients of ``x^i mod g(x)``.
    """

    def __init__(self, n: int, t: int):
        if n < 1 or t < 1:
            raise ValueError(f"BCH code needs n >= 1 and t >= 1, got n={n}, t={t}")
        m = max(2, int(n).bit_length())
        # The designed distance 2t + 1 must fit in the mother code, else the bound says nothing.
        while (1 << m) - 1 < 2 * t + 1:
            m += 1
        self.n, self.t, self.m = int(n), int(t), m
        self.gf = GF2m(m)
        gen = 1
        seen: set[int] = set()
        for j in range(1, 2 * t + 1):
            root = j % self.gf.order
            if root in seen:
                continue
            mp = _minimal_poly(self.gf, j)
            e = root
            while e not in seen:  # mark the whole cyclotomic coset as covered
                seen.add(e)
                e = (2 * e) % self.gf.order
            gen = _poly_mul_gf2(gen, mp)
        self.generator = gen
        self.n_parity = gen.bit_length() - 1
        self.parity_check = self._parity_check()
        # alpha^(q * j) for syndrome bit q and power-sum index j = 1..2t: turns bits into S_j.
        q = np.arange(self.n_parity)[:, None]
        j = np.arange(1, 2 * t + 1)[None, :]
        self._power_table = self.gf.alpha_pow(q * j)  # (P, 2t)

    def _parity_check(self) -> np.ndarray:
        P = self.n_parity
        H = np.zeros((P, self.n), dtype=np.uint8)
        rem = 1
        for i in range(self.n):
            for q in range(P):
                H[q, i] = (rem >> q) & 1
            rem <<= 1
            if (rem >> P) & 1:
                rem ^= self.generator
        return H

    def syndrome(self, supports: np.ndarray) -> np.ndarray:
        """Syndromes of sets given as padded index rows.

        Args:
            supports: ``(B, w)`` int; entries in ``[0, n)`` are members, ``-1`` pads.

        Returns:
            ``(B, P)`` uint8 syndrome bits (XOR of the members' parity-check columns).
        """
        supports = np.asarray(supports, dtype=np.int64)
        cols = np.concatenate([self.parity_check.T, np.zeros((1, self.n_parity), np.uint8)])
        idx = np.where(supports < 0, self.n, supports)
        return np.bitwise_xor.reduce(cols[idx], axis=1) if idx.shape[1] else cols[idx].sum(1)

    def decode(self, syndromes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode a batch of syndromes to the weight <= t sets that produce them.

        Args:
            syndromes: ``(B, P)`` 0/1 syndrome bits.

        Returns:
            ``(supports, ok)``: ``supports`` is ``(B, t)`` int64, members in increasing order then
            ``-1`` padding; ``ok`` is ``(B,)`` bool, False where no set of weight <= t among the
            ``n`` positions has this syndrome (the row of ``supports`` is then all ``-1``).
        """
        s = np.asarray(syndromes, dtype=np.int64).reshape(-1, self.n_parity)
        B = s.shape[0]
        # Power sums S_j = s(alpha^j), j = 1..2t.
        terms = np.where(s[:, :, None] != 0, self._power_table[None], 0)
        S = np.bitwise_xor.reduce(terms, axis=1) if self.n_parity else np.zeros((B, 2 * self.t))
        locator, degree = _berlekamp_massey(self.gf, S.astype(np.int64), self.t)
        return self._roots(locator, degree)

    def _roots(self, locator: np.ndarray, degree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Error positions from each locator ``Lambda(x) = prod_i (1 + alpha^{pos_i} x)``.

        Degrees 1 and 2 are solved in closed form (table lookups); higher degrees by Chien
        search over the ``n`` positions.  Success iff the locator has ``degree`` distinct roots
        among the positions ``0 .. n-1``.
        """
        B, t = locator.shape[0], self.t
        supports = np.full((B, t), -1, dtype=np.int64)
        ok = degree <= t
        for d, solver in ((1, self._linear), (2, self._quadratic)):
            rows = np.flatnonzero(ok & (degree == d))
            if rows.size and d <= t:
                pos, good = solver(locator[rows])
                ok[rows[~good]] = False
                supports[rows[good], :d] = np.sort(pos[good], axis=1)
        rows = np.flatnonzero(ok & (degree > 2))
        if rows.size:
            pos, good = self._chien(locator[rows], degree[rows])
            ok[rows[~good]] = False
            supports[rows[good]] = pos[good]
        return supports, ok

    def _position(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position i of locator numbers ``X = alpha^i``; valid iff ``X != 0`` and ``i < n``."""
        pos = self.gf.log[X]
        return pos, (X != 0) & (pos < self.n)

    def _linear(self, lam: np.ndarray):
        """``1 + L1 x``: the one locator number is ``L1``."""
        pos, good = self._position(lam[:, 1])
        return pos[:, None], good

    def _quadratic(self, lam: np.ndarray):
        """``1 + L1 x + L2 x^2``: locator numbers solve ``z^2 + L1 z + L2 = 0``.

        With ``z = L1 w`` this is ``w^2 + w = L2 / L1^2``, read from a table; the second root
        is ``z + L1``.  ``L1 = 0`` would mean a double root (not a valid error pattern).
        """
        gf = self.gf
        l1, l2 = lam[:, 1], lam[:, 2]
        solvable = (l1 != 0) & (l2 != 0)
        safe_l1 = np.where(solvable, l1, 1)
        c = gf.mul(l2, gf.inv(gf.mul(safe_l1, safe_l1)))
        w = self._half_trace_table()[c]
        solvable &= w >= 0
        z1 = gf.mul(safe_l1, np.maximum(w, 0))
        p1, g1 = self._position(z1)
        p2, g2 = self._position(z1 ^ safe_l1)
        return np.stack([p1, p2], axis=1), solvable & g1 & g2

    def _half_trace_table(self) -> np.ndarray:
        """``table[c]`` = some ``w`` with ``w^2 + w = c``, or -1 where none exists."""
        if getattr(self, "_quad_table", None) is None:
            w = np.arange(self.gf.size)
            table = np.full(self.gf.size, -1, dtype=np.int64)
            table[self.gf.mul(w, w) ^ w] = w
            self._quad_table = table
        return self._quad_table

    def _chien(self, lam: np.ndarray, degree: np.ndarray):
        """Chien search: evaluate each locator at ``alpha^-i`` for all positions i < n.

        Works in the log domain with a zero-padded antilog table so one gather per
        coefficient does ``Lambda_u * alpha^(-i u)`` (zero coefficients land in the padding).
        """
        gf, t, N = self.gf, self.t, self.gf.order
        exp_pad = np.concatenate([gf.exp, np.zeros(N, dtype=np.int64)]).astype(np.int32)
        log_pad = np.where(np.arange(gf.size) == 0, 2 * N, gf.log).astype(np.int32)
        pos = np.arange(self.n)
        value = np.ones((lam.shape[0], self.n), dtype=np.int32)
        for u in range(1, t + 1):
            value ^= exp_pad[log_pad[lam[:, u]][:, None] + ((-pos * u) % N)[None, :]]
        is_root = value == 0
        good = is_root.sum(axis=1) == degree
        # Members in increasing order: a stable sort puts the roots first, in position order.
        order = np.argsort(~is_root, axis=1, kind="stable")[:, :t]
        members = np.where(np.take_along_axis(is_root, order, 1), order, -1)
        return members, good


def _berlekamp_massey(gf: GF2m, S: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Shortest LFSR (error locator) for each row of power sums, all rows at once.

    Args:
        S: ``(B, 2t)`` field elements ``S_1 .. S_2t``.

    Returns:
        ``(locator, degree)``: ``(B, 2t + 1)`` locator coefficients (lowest first, constant 1)
        and the LFSR length ``L`` per row.
    """
    B = S.shape[0]
    width = 2 * t + 1
    C = np.zeros((B, width), dtype=np.int64)
    C[:, 0] = 1
    prev = C.copy()  # the locator before the last length change
    L = np.zeros(B, dtype=np.int64)
    shift = np.ones(B, dtype=np.int64)  # steps since the last length change
    last_d = np.ones(B, dtype=np.int64)  # discrepancy at the last length change
    idx = np.arange(width)
    for r in range(2 * t):
        d = S[:, r].copy()
        for i in range(1, r + 1):
            d ^= gf.mul(C[:, i], S[:, r - i])
        nonzero = d != 0
        src = idx[None, :] - shift[:, None]
        shifted = np.where(src >= 0, np.take_along_axis(prev, np.clip(src, 0, None), 1), 0)
        coef = gf.mul(d, gf.inv(last_d))
        updated = C ^ gf.mul(coef[:, None], shifted)
        grow = nonzero & (2 * L <= r)
        prev = np.where(grow[:, None], C, prev)
        last_d = np.where(grow, d, last_d)
        L = np.where(grow, r + 1 - L, L)
        shift = np.where(grow, 1, shift + 1)
        C = np.where(nonzero[:, None], updated, C)
    return C, L


@lru_cache(maxsize=32)
def bch_code(n: int, t: int) -> BCHCode:
    """Cached :class:`BCHCode` (building one tabulates GF(2^m), cheap but not free)."""
    return BCHCode(n, t)
