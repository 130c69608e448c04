"""What the cleaning rules detect, over the rows of whole symbols sorted by (symbol code, time): each symbol's
bar size, one-bar price spikes, bad prints, corporate actions. Plain numpy functions of the
arrays (no frame, no counting: the rules in `clean` call them and the walker keeps the books); where a faster
path replaces a plain definition (bad prints' trailing level, the bar-size majority), tests/test_fastpaths.py
holds them equal. Thresholds are documented in docs/data.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tradelib.data.load import PRICE_COLS

# Thresholds (documented in docs/data.md)
SPIKE_MIN_LOG_MOVE = 0.05  # a spike must also move the close by > 5% (log) in and out: ignores tick bounces
SPIKE_MAX_RESIDUAL = 0.25  # the return out undoes the return in to within a quarter of the move
SPIKE_MIN_RETURNS = 10  # robust sigma needs at least this many non-zero returns per symbol
SPIKE_WINDOW = 1000  # robust sigma of bar t: the median |r| of the symbol's previous block of this many returns
BAR_MODE_SHARE = 0.1  # the most common bar diff is the bar size when it covers >= 10% of diffs, else median
BAR_CHANGE_STEPS = 20  # a bar size change: this many steps in a row, none the symbol's bar size, ...
BAR_CHANGE_SHARE = 0.5  # ... and at least this share of them one other step (a coarser or finer bar that stays)
LEVEL_BLOCK = 64  # a bad print's level: the median of the symbol's previous block of this many rows
LEVEL_MIN_ROWS = 5  # ... or, in a symbol's first block, of at least this many earlier rows
SPLIT_RATIOS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 100)  # a corporate action's jump: one of
# these ratios or their inverses (AAPL's 7:1, AMZN's 20:1, a penny stock's 1:50; not 3:2, a real move's size) ...
SPLIT_TOLERANCE = 0.01  # ... to within 1%, or within this many sigmas of the move over the step (a split's day
SPLIT_TOL_SIGMAS = 2.0  # opens off its ratio by the night's move, more after a halt or missing weeks) ...
SPLIT_MAX_TOLERANCE = 0.07  # ... up to this share of the ratio's log (5% for 2:1: a real fall of 45% or 55% is no
# halving; 16% for 1:10)
SPLIT_MIN_SIGMAS = 4.0  # ... and beyond this many trailing sigmas (prices a few ticks in size jump by 2x)
SPLIT_MIN_MOVE = 0.1  # any corporate action's jump is beyond this abs log move (about 10%)
SPLIT_CONFIRM = 10  # the median close of the jump's bar and the 9 after it, against the 10 before, ...
SPLIT_STAYS = 0.75  # ... keeps this share of the jump


# ----------------------------------------------------------------------------------------------------------
# rows and bar sizes


def run_starts(a: np.ndarray) -> np.ndarray:
    """True at row 0 and wherever a row differs from the row before: the first rows of a's runs."""
    new = np.empty(len(a), dtype=bool)
    new[:1] = True
    np.not_equal(a[1:], a[:-1], out=new[1:])
    return new


def bar_sizes_ns(codes: np.ndarray, ts: np.ndarray, n_sym: int) -> np.ndarray:
    """Per symbol code: the bar size in ns (mode of positive diffs, or median when no diff dominates).

    Expects rows sorted by (code, ts). Symbols with fewer than two distinct timestamps get 0.
    """
    out = np.zeros(n_sym, dtype=np.int64)
    if len(ts) < 2:
        return out
    d = np.diff(ts)
    ok = (codes[1:] == codes[:-1]) & (d > 0)
    d, c = d[ok], codes[1:][ok]
    if len(d) == 0:
        return out
    d_ms = np.minimum(d // 1_000_000, 10**13 - 1)  # ms resolution is plenty for 1 min .. 1 day bars
    majority = _majority_steps(c, d_ms, n_sym)
    if majority is not None:
        return majority
    key = pd.Series(c.astype(np.int64) * 10**13 + d_ms)
    vc = key.value_counts()  # sorted by count, descending: the first per symbol is its mode
    top = pd.DataFrame({"c": vc.index.to_numpy() // 10**13, "d": vc.index.to_numpy() % 10**13,
                        "n": vc.to_numpy()}).drop_duplicates("c")
    total = np.bincount(c, minlength=n_sym)
    dominant = top[(top["n"].to_numpy() >= 2) & (top["n"].to_numpy() >= BAR_MODE_SHARE * total[top["c"]])]
    out[dominant["c"].to_numpy()] = dominant["d"].to_numpy() * 1_000_000
    irregular = (total > 0) & (out == 0)  # no step dominates: the median step
    if irregular.any():
        sel = irregular[c]
        med = pd.Series(d[sel]).groupby(c[sel]).median()
        out[med.index.to_numpy()] = med.to_numpy().astype(np.int64)
    return out


def bar_changes(codes: np.ndarray, ts: np.ndarray, bar: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Where a symbol's bars change size and stay changed (1-minute bars that become 5-minute ones, daily that
    become weekly): per change (row, the step before it, the step from it, rows from it to the next change or the
    symbol's end), steps in ns. A stretch of BAR_CHANGE_STEPS or more steps in a row none of which is the symbol's
    bar size (`bar`, per code: its most common step), at least BAR_CHANGE_SHARE of them one other step, begins at
    its first row (unless that is the symbol's first row) and ends where the bar size comes back. A night, a
    weekend or a hole is one step, and the steps of irregular bars share no one size. Rows sorted by (code, ts)."""
    n = len(ts)
    if n < 2:
        return []
    d = np.diff(ts)
    same = codes[1:] == codes[:-1]
    other = same & (d != bar[codes[1:]])  # steps i: from row i to row i + 1
    edges = np.flatnonzero(np.diff(np.r_[0, other.astype(np.int8), 0]))
    out = []
    for s0, s1 in zip(edges[::2].tolist(), edges[1::2].tolist()):
        if s1 - s0 < BAR_CHANGE_STEPS:
            continue
        values, counts = np.unique(d[s0:s1], return_counts=True)
        if counts.max() < BAR_CHANGE_SHARE * (s1 - s0):
            continue
        size, usual = int(values[counts.argmax()]), int(bar[codes[s0 + 1]])
        if s0 > 0 and same[s0 - 1]:  # the stretch begins after the symbol's first row
            out.append((s0 + 1, usual, size))
        if s1 < n - 1 and same[s1]:  # the bar size comes back
            out.append((s1 + 1, size, usual))
    ends = np.searchsorted(codes, codes[[r for r, _, _ in out]], side="right")
    nxt = [r for r, _, _ in out[1:]] + [n]
    return [(r, a, b, int(min(e, x)) - r) for (r, a, b), e, x in zip(out, ends.tolist(), nxt)]


def _majority_steps(c: np.ndarray, d_ms: np.ndarray, n_sym: int) -> np.ndarray | None:
    """bar_sizes_ns' answer when each symbol with steps has one step in more than half of them (its mode, then,
    and the only one: regular bars), found without counting every distinct step; else None. Each symbol's
    middle step is the candidate; the steps are sorted by symbol (checked)."""
    if len(c) > 1 and (c[1:] < c[:-1]).any():
        return None
    edges = np.searchsorted(c, np.arange(n_sym + 1, dtype=c.dtype))
    total = np.diff(edges)
    cand = d_ms[np.minimum(edges[:-1] + total // 2, len(d_ms) - 1)]
    hits = total - np.bincount(c[np.flatnonzero(d_ms != np.repeat(cand, total))], minlength=n_sym)
    mode = (hits >= 2) & (2 * hits > total) & (hits >= BAR_MODE_SHARE * total)  # more than half: the mode
    return np.where(total > 0, cand * 1_000_000, 0) if (mode | (total == 0)).all() else None


# ----------------------------------------------------------------------------------------------------------
# one-bar spikes


def spike_rows(c: np.ndarray, code: np.ndarray, breaks: np.ndarray, k: float) -> np.ndarray:
    """Rows whose close is a one-bar spike: |r_t| and |r_t+1| above the threshold of t, and the next bar
    undoes the move (|r_t + r_t+1| within SPIKE_MAX_RESIDUAL of the smaller move), so a volatile stretch is
    not taken for one. Rows sorted by (code, time); `breaks` marks rows whose return is undefined.

    r_t = log(c_t / c_t-1). The threshold of t is max(k * sigma_t, SPIKE_MIN_LOG_MOVE), sigma_t from returns
    before t only (`trailing_sigma`). Confirming needs r_t+1, so a spike is known one bar late: use the flag
    on the label side only (targets), never to change what the features at t see.
    """
    n = len(c)
    spike = np.zeros(n, dtype=bool)
    if n < 3 or not math.isfinite(k) or k <= 0:
        return spike
    r = np.empty(n)
    r[0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        np.log(np.divide(c[1:], c[:-1], out=r[1:]), out=r[1:])
    r[breaks] = np.nan
    with np.errstate(invalid="ignore"):  # the floor first: cheap, and rare to pass in and out
        big = np.abs(r) > SPIKE_MIN_LOG_MOVE
    rows = np.flatnonzero(big[:-1] & big[1:])
    if rows.size:  # the reversal, then the threshold from the candidates' symbols' returns alone
        a_in, a_out = np.abs(r[rows]), np.abs(r[rows + 1])
        rows = rows[np.abs(r[rows] + r[rows + 1]) <= SPIKE_MAX_RESIDUAL * np.minimum(a_in, a_out)]
    if rows.size:
        sub = symbol_rows(code, rows)
        sigma = trailing_sigma(r[sub], code[sub], np.searchsorted(sub, rows))
        thr = np.maximum(k * sigma, SPIKE_MIN_LOG_MOVE)  # NaN sigma -> no spike
        with np.errstate(invalid="ignore"):
            spike[rows] = (np.abs(r[rows]) > thr) & (np.abs(r[rows + 1]) > thr)  # the move out, against t's threshold
    return spike


def symbol_rows(code: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Every row of the symbols that `rows` fall in, in order (`code` sorted): the few symbols a rare candidate
    is judged on, so its trailing statistics are not made for every row."""
    syms = np.unique(code[rows])
    lo, hi = np.searchsorted(code, syms, side="left"), np.searchsorted(code, syms, side="right")
    return np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])


def trailing_sigma(r: np.ndarray, code: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """At each of `rows`: 1.4826 x a median |r| of the symbol's non-zero returns from before the row, never
    the row's own or a later one. A symbol's returns are taken in blocks of SPIKE_WINDOW: a row with j
    earlier returns uses the median of block j // SPIKE_WINDOW - 1 (the last full block before its own began)
    or, in the first block, of all j earlier returns (NaN below SPIKE_MIN_RETURNS). Rows sorted by symbol."""
    ok = np.flatnonzero(np.isfinite(r) & (r != 0))
    a, c = np.abs(r[ok]), code[ok]
    first = np.searchsorted(c, code[rows], side="left")  # the symbol's first return (c is sorted)
    j = np.searchsorted(ok, rows, side="left") - first  # the symbol's returns before the row
    b = j // SPIKE_WINDOW
    sigma = np.full(len(rows), np.nan)
    later = np.flatnonzero(b >= 1)  # the previous full block: shared by many rows, medians taken together
    starts, where = np.unique(first[later] + (b[later] - 1) * SPIKE_WINDOW, return_inverse=True)
    med = np.empty(len(starts))
    for part in np.array_split(np.arange(len(starts)), max(1, len(starts) // 256)):  # bounded memory
        med[part] = np.median(a[starts[part][:, None] + np.arange(SPIKE_WINDOW)], axis=1)
    sigma[later] = 1.4826 * med[where.ravel()]
    for i in np.flatnonzero((b == 0) & (j >= SPIKE_MIN_RETURNS)):  # the first block: at most its size a symbol
        sigma[i] = 1.4826 * float(np.median(a[first[i]: first[i] + j[i]]))
    return sigma



# ----------------------------------------------------------------------------------------------------------
# bad prints and corporate actions


def _first_block_levels(x: np.ndarray, starts: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The trailing level (`bad_print_rows`) of the rows of each symbol's first block ([symbols, LEVEL_BLOCK],
    NaN where it has none), all symbols at once a row number at a time."""
    out = np.full((len(starts), LEVEL_BLOCK), np.nan)
    for j in range(LEVEL_MIN_ROWS, LEVEL_BLOCK):
        have = np.flatnonzero(length > j)
        if not len(have):
            break
        out[have, j] = np.median(x[starts[have][:, None] + np.arange(j)], axis=1)
    return out


def _block_medians(x: np.ndarray) -> np.ndarray:
    """np.median of each row of a [blocks, LEVEL_BLOCK] array, from a sort (numpy sorts short rows many times
    faster than it partitions them)."""
    s, h = np.sort(x, axis=1), LEVEL_BLOCK // 2
    return (s[:, h - 1] + s[:, h]) / 2


def bad_print_rows(a: dict[str, np.ndarray], code: np.ndarray, price_decades: float, volume_decades: float
                   ) -> dict[str, np.ndarray]:
    """Per column (only those with any), the rows whose value no market prints in one bar: a price (open, high,
    low or close) more than `price_decades` powers of ten above or below the symbol's trailing level of closes,
    or a volume more than `volume_decades` above its trailing level of volumes (a small volume is always possible,
    and a zero level judges nothing). Judged on ratios, so a 1e-8 token trading 1e15 units is as ordinary as a
    stock. inf turns a test off. The trailing level of row t: the median of the symbol's values in the last full
    block of LEVEL_BLOCK rows before t's own block (blocks counted from the symbol's first row), or in the first
    block, of all its earlier rows (NaN with fewer than LEVEL_MIN_ROWS): never row t or a later one, so the
    verdict at t is known at t. Each symbol's blocks are compared with the level of the block before at once."""
    out: dict[str, np.ndarray] = {}
    n, B = len(code), LEVEL_BLOCK
    if n == 0:
        return out
    starts = np.flatnonzero(run_starts(code))
    ends = np.r_[starts[1:], n]
    checks = [(PRICE_COLS, "close", price_decades, True), (("volume",), "volume", volume_decades, False)]
    for cols, of, decades, both in checks:
        if not math.isfinite(decades):
            continue
        with np.errstate(over="ignore", under="ignore"):  # beyond 1e308: inf and 0, nothing is that far off
            up, down = np.power(10.0, decades), np.power(10.0, -decades)
        first = _first_block_levels(a[of], starts, ends - starts)
        for i, (s0, s1) in enumerate(zip(starts.tolist(), ends.tolist())):
            nb = (s1 - s0) // B
            med = _block_medians(a[of][s0 : s0 + nb * B].reshape(nb, B)) if s1 - s0 > B else None
            for k in cols:
                x = a[k]
                parts = [(s0, min(s1, s0 + B), first[i, : min(s1 - s0, B)])]  # (rows from, to, their levels)
                if med is not None:  # block b >= 1 against block b - 1; then the rows after the last full block
                    parts.append((s0 + B, s0 + nb * B, med[: nb - 1, None]))
                    parts.append((s0 + nb * B, s1, med[nb - 1]))
                for r0, r1, lev in parts:
                    if r1 <= r0:
                        continue
                    v = x[r0:r1].reshape(-1, B) if np.ndim(lev) == 2 else x[r0:r1]
                    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
                        bad = (v > lev * up) & (lev > 0)
                        if both:
                            bad |= v < lev * down
                    if bad.any():
                        out.setdefault(k, np.zeros(n, dtype=bool))[r0:r1] = bad.ravel()
    return out


def corporate_action_rows(a: dict[str, np.ndarray], code: np.ndarray, new_symbol: np.ndarray, k: float,
                          spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows t where a symbol's price jumps from the close of t-1 to the open of t as a split or a similar action
    does, and the ratio of that jump (the split's exact ratio where it is one). The jump g = log(open_t /
    close_t-1) counts when it is beyond SPLIT_MIN_MOVE and either it is a split's ratio (one of SPLIT_RATIOS or its
    inverse, to within SPLIT_TOLERANCE or SPLIT_TOL_SIGMAS x the move's sigma, at most SPLIT_MAX_TOLERANCE x its log)
    beyond SPLIT_MIN_SIGMAS trailing sigmas (a price a tick or two in size moves by such ratios all the time), or it
    is beyond `k` of the move's sigmas (a spin-off: a ratio of no split's, which a real move of a quiet stock has as
    often; inf turns that test off); and it stays: the median log close of bars t .. t+SPLIT_CONFIRM-1 is away
    from that of the SPLIT_CONFIRM bars before t by at least SPLIT_STAYS of it, the same way (a bad print before t,
    or one that reverts, moves neither median). Judging needs those bars, so a symbol's first and last SPLIT_CONFIRM
    bars are never one. The move's sigma is `trailing_sigma` of the close-to-close returns before t x sqrt(`spans`:
    per row, the bars the step to it spans by the clock, at least 1): a price moves further over a night, a halt or
    weeks without data than over one bar."""
    n = len(code)
    rows, ratio = np.zeros(n, dtype=bool), np.ones(n)
    if n < SPLIT_CONFIRM + 1:
        return rows, ratio
    c, o = a["close"], a["open"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        q = o[1:] / c[:-1]  # the ratios first (a log of every row costs more than the division)
        cand = np.flatnonzero((q > math.exp(SPLIT_MIN_MOVE)) | (q < math.exp(-SPLIT_MIN_MOVE))) + 1
    cand = cand[~new_symbol[cand]]
    if not len(cand):
        return rows, ratio
    end = np.searchsorted(code, code[cand], side="right")  # each candidate's symbol's end and start
    start = np.searchsorted(code, code[cand], side="left")
    cand = cand[(cand + SPLIT_CONFIRM <= end) & (cand - SPLIT_CONFIRM >= start)]
    if not len(cand):
        return rows, ratio
    sub = symbol_rows(code, cand)  # the candidates' symbols' rows alone (few)
    at = np.searchsorted(sub, cand)  # the candidates among them
    with np.errstate(invalid="ignore", divide="ignore"):
        lc = np.log(c[sub])
        r = np.r_[np.nan, np.diff(lc)]
    r[new_symbol[sub]] = np.nan
    sigma = trailing_sigma(r, code[sub], at)
    gc = np.log(q[cand - 1])
    split = np.asarray(SPLIT_RATIOS, dtype=float)
    move = sigma * np.sqrt(spans[cand])  # the spread of an ordinary move over the step
    off = np.abs(np.abs(gc)[:, None] - np.log(split))  # how far the jump is from each split's ratio (log)
    with np.errstate(invalid="ignore"):  # the tolerance of each ratio: 1% to a share of its own size
        tol = np.fmax(np.fmin(SPLIT_TOL_SIGMAS * move[:, None], SPLIT_MAX_TOLERANCE * np.log(split)),
                      math.log1p(SPLIT_TOLERANCE))
    near = (off <= tol).any(axis=1)
    span = np.arange(SPLIT_CONFIRM)
    with np.errstate(invalid="ignore"):
        big = (near & (np.abs(gc) > SPLIT_MIN_SIGMAS * sigma)) | (np.abs(gc) > k * move)
        stay = np.median(lc[at[:, None] + span], axis=1) - np.median(lc[at[:, None] - 1 - span], axis=1)
        kept = big & (np.sign(stay) == np.sign(gc)) & (np.abs(stay) >= SPLIT_STAYS * np.abs(gc))
    hit, exact = cand[kept], split[off[kept].argmin(axis=1)]
    rows[hit] = True
    ratio[hit] = np.where(near[kept], np.where(gc[kept] > 0, exact, 1 / exact), np.exp(gc[kept]))
    return rows, ratio


def back_adjustment(rows: np.ndarray, ratio: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Per row: the product of the `ratio`s of its symbol's actions after it (1 after the last one), by which
    its prices are multiplied to join the prices after them (and its volumes divided)."""
    lr = np.where(rows, np.log(ratio), 0.0)
    total = np.cumsum(lr)
    last = np.r_[np.flatnonzero(code[1:] != code[:-1]), len(code) - 1]  # each symbol's last row
    at_end = np.repeat(total[last], np.diff(np.r_[-1, last]))
    return np.exp(at_end - total)

