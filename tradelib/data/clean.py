"""Cleaning of the raw frame: bar sizes, the ordered RULES that clean_ohlcv walks, the QualityReport."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tradelib.data.load import (
    COLUMNS,
    NUM_COLS,
    PRICE_COLS,
    DataError,
    is_sorted,
    ns_since_epoch,
    sort_order,
    symbol_codes,
    unsorted_rows,
)
from tradelib.data.memory import without_huge_pages

# Thresholds (documented in docs/data.md)
SPIKE_MIN_LOG_MOVE = 0.05  # a spike must also move the close by > 5% (log) in and out: ignores tick bounces
SPIKE_MAX_RESIDUAL = 0.25  # the return out undoes the return in to within a quarter of the move
SPIKE_MIN_RETURNS = 10  # robust sigma needs at least this many non-zero returns per symbol
SPIKE_WINDOW = 1000  # robust sigma of bar t: the median |r| of the symbol's previous block of this many returns
BAR_MODE_SHARE = 0.1  # the most common bar diff is the bar size when it covers >= 10% of diffs, else median


# ----------------------------------------------------------------------------------------------------------
# bar size



def run_starts(a: np.ndarray) -> np.ndarray:
    """True at row 0 and wherever a row differs from the row before: the first rows of a's runs."""
    new = np.empty(len(a), dtype=bool)
    new[:1] = True
    np.not_equal(a[1:], a[:-1], out=new[1:])
    return new


def run_bounds(new: np.ndarray) -> tuple[list[int], list[int], bool]:
    """(first rows, end rows) of the runs that start where `new` is True (new[0] True), and whether they are few
    and long (symbols, segments): a slice of each is then worked on in the cache, a few times faster than
    passes over all rows with their temporaries."""
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(new)]
    return starts.tolist(), ends.tolist(), len(starts) <= len(new) // 256


def bar_sizes_ns(codes: np.ndarray, ts: np.ndarray, n_sym: int) -> np.ndarray:
    """Per symbol code: the bar size in ns (mode of positive diffs, or median when no diff dominates).

    Expects rows sorted by (code, ts). Symbols with fewer than two distinct timestamps get 0.
    """
    out = np.zeros(n_sym, dtype=np.int64)
    if len(ts) < 2:
        return out
    regular = _majority_by_symbol(codes, ts, n_sym)
    if regular is not None:
        return regular
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
    mode = _is_majority(hits, total)
    return np.where(total > 0, cand * 1_000_000, 0) if (mode | (total == 0)).all() else None


def _majority_by_symbol(codes: np.ndarray, ts: np.ndarray, n_sym: int) -> np.ndarray | None:
    """`_majority_steps` a symbol at a time on its own rows (few symbols, grouped in code order), not on all
    steps filtered and divided at once; None where a symbol's middle step is not positive or not a majority."""
    starts, ends, few = run_bounds(run_starts(codes))
    present = codes[starts]
    if not few or (present[1:] <= present[:-1]).any() or present[0] < 0:
        return None
    out = np.zeros(n_sym, dtype=np.int64)
    for c, a, b in zip(present.tolist(), starts, ends):
        d = np.diff(ts[a:b])
        if len(d) == 0:
            continue
        step_ms = int(d[len(d) // 2]) // 1_000_000  # the candidate, in bar_sizes_ns' ms resolution
        if d[len(d) // 2] <= 0 or step_ms + 1 > np.iinfo(np.int64).max // 1_000_000:
            return None
        total = np.count_nonzero(d > 0)
        hits = np.count_nonzero((d >= max(step_ms * 1_000_000, 1)) & (d < (step_ms + 1) * 1_000_000))
        if not _is_majority(hits, total):
            return None
        out[c] = step_ms * 1_000_000
    return out


def _is_majority(hits: np.ndarray | int, total: np.ndarray | int) -> np.ndarray | bool:
    """A step that `hits` of a symbol's `total` positive steps take is its bar size without counting the others:
    more than half of them (so it is the mode), at least two, and the mode's own share (arrays or ints)."""
    return (hits >= 2) & (2 * hits > total) & (hits >= BAR_MODE_SHARE * total)


def infer_bar_size(ts: pd.Series | np.ndarray) -> pd.Timedelta:
    """The bar size of one symbol's timestamps: the most common positive step, robust to gaps.

    Falls back to the median positive step when no step dominates (irregular data). NaT if fewer than two
    distinct timestamps.
    """
    t = pd.to_datetime(ts if isinstance(ts, pd.Series) else pd.Series(ts), utc=True).dropna()
    v = np.sort(ns_since_epoch(t))
    ns = bar_sizes_ns(np.zeros(len(v), dtype=np.int64), v, 1)[0]
    return pd.Timedelta(int(ns), unit="ns") if ns > 0 else pd.NaT


# ----------------------------------------------------------------------------------------------------------
# quality report


def _range_stats(cols: dict[str, np.ndarray], ts: np.ndarray) -> dict:
    """Per column: min/max over finite values and counts of NaN, inf, negative and zero values; the timestamps'
    range in ns. Stats of parts of the rows merge into the whole's (`_merge_ranges`)."""
    return {name: _column_stats(v) for name, v in cols.items()} | {"timestamp": _time_stats(ts)}


def _column_stats(v: np.ndarray) -> dict:
    """_range_stats of one numeric column."""
    lo, hi = map(float, _min_max(v)) if len(v) else (0.0, 0.0)
    if math.isfinite(lo) and math.isfinite(hi):  # NaN propagates through min and max: all finite
        nfin, nan = len(v), 0
    else:
        nan = int(np.count_nonzero(np.isnan(v)))
        lo, hi = float(np.fmin.reduce(v)), float(np.fmax.reduce(v))  # NaN skipped
        if not (math.isfinite(lo) and math.isfinite(hi) and lo != 0 and hi != 0):  # inf too, or a zero's sign
            fin = np.isfinite(v)
            nfin = int(np.count_nonzero(fin))
            lo, hi = (float(v[fin].min()), float(v[fin].max())) if nfin else (None, None)
        else:
            nfin = len(v) - nan
    return {
        "min": lo if nfin else None,
        "max": hi if nfin else None,
        "nan": nan,
        "inf": len(v) - nfin - nan,
        "negative": 0 if nfin and nfin + nan == len(v) and lo >= 0 else int(np.count_nonzero(v < 0)),
        "zero": 0 if nfin and nfin + nan == len(v) and (lo > 0 or hi < 0) else int(np.count_nonzero(v == 0)),
    }


def _time_stats(ts: np.ndarray) -> dict:
    """_range_stats of the timestamps (int64 ns, NaT as int64 min)."""
    nat = np.iinfo(np.int64).min
    t, (lo, hi) = ts, (_min_max(ts) if len(ts) else (None, None))
    if lo == nat:
        t = ts[ts != nat]
        lo, hi = _min_max(t) if len(t) else (None, None)
    return {"min": None if lo is None else int(lo), "max": None if hi is None else int(hi),
            "nat": int(len(ts) - len(t))}


def _stats_after(w: Work) -> dict:
    """_range_stats of the clean rows, without a pass over a column no rule repaired where the values of the
    dropped rows are known (`Work.dropped`): it holds the rows it held before less those, so its counts are the
    counts before less theirs, and its range is the range before unless a dropped row held the smallest or the
    largest finite value (or that is a zero, whose sign depends on the rows reduced). Else computed afresh."""
    out = {}
    for name in (*NUM_COLS, "ts"):
        key, v = ("timestamp" if name == "ts" else name), w.a[name]
        stats = None if w.dropped is None or name in w.changed else _less(w.before[key], w.dropped.get(name))
        if stats is None:
            stats = _time_stats(v) if name == "ts" else _column_stats(v)
        elif len(v) == stats.get("nat", 0) + stats.get("nan", 0) + stats.get("inf", 0):  # no finite value kept
            stats["min"] = stats["max"] = None
        out[key] = stats
    return out


def _less(before: dict, dropped: list[np.ndarray] | None) -> dict | None:
    """Range stats (`_column_stats` or `_time_stats`) of some rows less the `dropped` values; None where the
    range may have changed."""
    d = np.concatenate(dropped) if dropped else np.zeros(0)
    known = np.isfinite(d) if "nan" in before else d != np.iinfo(np.int64).min
    ends = [x for x in (before["min"], before["max"]) if x is not None]
    if 0 in ends or np.isin(d[known], ends).any():
        return None
    if "nat" in before:
        return {"min": before["min"], "max": before["max"], "nat": before["nat"] - int(len(d) - known.sum())}
    nan = int(np.isnan(d).sum())
    return {"min": before["min"], "max": before["max"], "nan": before["nan"] - nan,
            "inf": before["inf"] - int(len(d) - known.sum() - nan), "negative": before["negative"] - int((d < 0).sum()),
            "zero": before["zero"] - int((d == 0).sum())}


def _min_max(v: np.ndarray, block: int = 1 << 15) -> tuple:
    """(v.min(), v.max()) of a non-empty array in one pass of cache-sized blocks (a third less time than two
    passes over a shard's column); NaN propagates as in numpy's."""
    parts = np.array([(x.min(), x.max()) for x in (v[i : i + block] for i in range(0, len(v), block))])
    lo, hi = parts[:, 0].min(), parts[:, 1].max()
    return (v.min() if lo == 0 else lo), (v.max() if hi == 0 else hi)  # a zero's sign as numpy's pass gives it


def _merge_ranges(parts: list[dict]) -> dict:
    """The range stats of the rows of all `parts` together, timestamps as text."""
    def pick(fn, values):
        values = [v for v in values if v is not None]
        return fn(values) if values else None

    out: dict = {}
    for name in parts[0]:
        rows = [p[name] for p in parts]
        out[name] = {"min": pick(min, [r["min"] for r in rows]), "max": pick(max, [r["max"] for r in rows]),
                     **{k: sum(r[k] for r in rows) for k in rows[0] if k not in ("min", "max")}}
    for end in ("min", "max"):
        t = out["timestamp"][end]
        out["timestamp"][end] = str(pd.Timestamp(t, tz="UTC")) if t is not None else None
    out["timestamp"] = {k: out["timestamp"][k] for k in ("min", "max", "nat")}
    return out


@dataclass
class QualityReport:
    """What cleaning did: rows in = kept + dropped; every dropped/changed row counted by rule and symbol."""

    source: str
    rows_in: int
    rows_kept: int
    rows_dropped: int
    counts: list[dict] = field(default_factory=list)  # {"rule", "symbol", "action", "rows"}
    extra_columns: list[str] = field(default_factory=list)
    bar_size_s: dict[str, float | None] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)  # long gaps per symbol (only symbols with any)
    ranges_before: dict = field(default_factory=dict)
    ranges_after: dict = field(default_factory=dict)
    load_notes: dict = field(default_factory=dict)  # facts from load_ohlcv: files, formats, non-numeric cells

    def __post_init__(self):
        dropped = sum(c["rows"] for c in self.counts if c["action"] == "dropped")
        assert self.rows_in == self.rows_kept + self.rows_dropped, "rows_in != rows_kept + rows_dropped"
        assert self.rows_dropped == dropped, f"rows_dropped {self.rows_dropped} != dropped counts {dropped}"

    def to_frame(self) -> pd.DataFrame:
        """The counts table: one row per (rule, symbol, action) with a non-zero count."""
        return pd.DataFrame(self.counts, columns=["rule", "symbol", "action", "rows"])

    def to_dict(self) -> dict:
        """JSON-serialisable copy (plain Python types only)."""
        return asdict(self)

    def totals(self) -> dict[str, int]:
        """Rows per rule, summed over symbols."""
        out: dict[str, int] = {}
        for c in self.counts:
            out[c["rule"]] = out.get(c["rule"], 0) + c["rows"]
        return out

    def summary(self) -> str:
        """A few human lines: rows in/kept/dropped and the rules that fired most."""
        share = self.rows_dropped / self.rows_in if self.rows_in else 0.0
        lines = [f"{self.source or '<frame>'}: {self.rows_in:,} rows in, {self.rows_kept:,} kept, "
                 f"{self.rows_dropped:,} dropped ({share:.2%}); {len(self.bar_size_s)} symbols"]
        for action in ("dropped", "changed", "kept"):
            agg: dict[str, int] = {}
            for c in self.counts:
                if c["action"] == action:
                    agg[c["rule"]] = agg.get(c["rule"], 0) + c["rows"]
            if agg:
                top = sorted(agg.items(), key=lambda kv: -kv[1])[:6]
                label = {"kept": "flagged (kept)"}.get(action, action)
                lines.append(f"  {label}: " + ", ".join(f"{r} {n:,}" for r, n in top))
        if self.extra_columns:
            lines.append("  ignored columns: " + ", ".join(self.extra_columns))
        lines += [f"  timestamps: {note}" for note in self.load_notes.get("timestamp_notes", [])]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# cleaning


class Work:
    """The rows of some whole symbols being cleaned, as numpy arrays (`a`: ts, code, open, high, low, close,
    volume; `keep`: the extra columns carried along, which no rule reads), with the rows still kept (`alive`) and
    the counts so far. Rules read and repair `a`, copying an array before its first repair: the raw frame is never
    touched. Symbols never share a rule's decision, so the shards of a frame are cleaned apart (and at once) and
    their counts merged (`clean_shards`)."""

    def __init__(self, a: dict[str, np.ndarray], symbols: np.ndarray, own: range, attrs: dict, params: dict,
                 keep: dict[str, np.ndarray] | None = None) -> None:
        self.a, self.symbols, self.own, self.attrs, self.params = a, symbols, own, attrs, params
        self.keep = keep or {}
        self.alive = np.ones(len(a["ts"]), dtype=bool)
        self.counts: list[dict] = []
        self.keys: list[tuple] = []  # per count: (rule position, 0 for a loader's note / 1 for the rule's finding)
        self._bar: np.ndarray | None = None
        self.gap = np.zeros(0, dtype=bool)
        self.spike: np.ndarray | None = None  # the price_spike rule's rows (no row is dropped after it)
        self.owned: set[str] = set()  # the arrays copied already: the others may be views of the raw frame
        self.ohlc_checked = False  # ohlc_outside_range left every row's high and low around its open and close, and
        #   no array changed since
        self.changed: set[str] = set()  # the columns a rule repaired
        self.dropped: dict[str, list[np.ndarray]] | None = {}  # the dropped rows' values (None: too many kept)
        self.before: dict = {}
        self.after: dict = {}

    def writable(self, k: str) -> np.ndarray:
        """`a[k]`, copied first unless it is a copy already (copy on write: most rows need no repair)."""
        if k not in self.owned:
            self.a[k] = self.a[k].copy()
            self.owned.add(k)
        self.ohlc_checked = False
        self.changed.add(k)
        return self.a[k]

    def note(self, rule: str, symbol: str, action: str, rows: int, phase: int = 1) -> None:
        self.counts.append({"rule": rule, "symbol": symbol, "action": action, "rows": rows})
        self.keys.append((RULE_POS[rule], phase, symbol))  # where one pass over the whole frame puts it

    def count(self, rule: str, action: str, mask: np.ndarray) -> None:
        """Rows per symbol of `mask` (a missing symbol counts under '')."""
        if not mask.any():  # most rules find nothing
            return
        per = np.bincount(self.a["code"][mask] + 1, minlength=len(self.symbols) + 1)
        by_name: dict[str, int] = {}
        for i in np.flatnonzero(per):
            name = "" if i == 0 else str(self.symbols[i - 1])  # an empty symbol also counts under ''
            by_name[name] = by_name.get(name, 0) + int(per[i])
        for k, n in by_name.items():
            self.note(rule, k, action, n)

    def take(self, sel: np.ndarray) -> None:
        """Keep (boolean mask) or reorder (index array) every working array."""
        drop = np.flatnonzero(~sel) if sel.dtype == bool else None
        if drop is not None and len(drop) <= 1024:  # a few rows dropped: copy the runs between them
            runs = [slice(a, b) for a, b in zip([0, *(drop + 1)], [*drop, len(sel)])]
            for k in (*NUM_COLS, "ts") if self.dropped is not None else ():
                self.dropped.setdefault(k, []).append(self.a[k][drop])
            pick = lambda v: np.concatenate([v[r] for r in runs])  # noqa: E731
        else:
            pick = (lambda v: v[sel]) if drop is not None else (lambda v: v.take(sel))  # noqa: E731
            self.dropped = self.dropped if drop is None else None  # (a reordering keeps every value)
        self.a = {k: pick(v) for k, v in self.a.items()}
        self.keep = {k: pick(v) for k, v in self.keep.items()}
        self.alive = self.alive[sel]
        self.owned = set(self.a)
        self.ohlc_checked = False

    def compact(self) -> None:
        if not self.alive.all():
            self.take(self.alive)

    @property
    def bar(self) -> np.ndarray:
        """Bar size in ns per symbol code (after the drops: timestamps no longer change)."""
        if self._bar is None:
            self._bar = bar_sizes_ns(self.a["code"], self.a["ts"], len(self.symbols))
        return self._bar

    @property
    def new_symbol(self) -> np.ndarray:
        return run_starts(self.a["code"])


# -- the rules, in the order they run. Drop rules see only the rows still kept; the first drop counts. -----------
def _none(w: Work) -> np.ndarray:
    return np.zeros(len(w.alive), dtype=bool)


def _positive_finite(x: np.ndarray, zero_ok: bool = False) -> bool:
    """Every value finite and > 0 (>= 0 with zero_ok), in two passes (NaN fails both tests)."""
    lo, hi = _min_max(x) if len(x) else (1.0, 1.0)
    return bool((lo >= 0 if zero_ok else lo > 0) and hi < np.inf)


def _bad_symbol(w: Work) -> np.ndarray:
    code, empty = w.a["code"], np.flatnonzero(w.symbols == "")
    if (not len(code) or code.min() >= 0) and not any(e in w.own for e in empty):
        return _none(w)
    return (code < 0) | np.isin(code, empty)


def _bad_timestamp(w: Work) -> np.ndarray:
    return w.a["ts"] == np.iinfo(np.int64).min


def _unsorted(w: Work) -> np.ndarray:
    """Rows out of order in the file (counted by load_ohlcv, which already sorted) or in the frame given."""
    present = {str(w.symbols[c]) for c in w.own}  # this shard's symbols
    for s, n in w.attrs.get("unsorted_by_symbol", {}).items():
        if s in present and n:
            w.note("unsorted", str(s), "changed", int(n), phase=0)
    if is_sorted(w.a["code"], w.a["ts"]):
        return _none(w)
    moved = unsorted_rows(w.a["ts"], w.a["code"])
    order = sort_order(w.a["code"], w.a["ts"])
    w.take(order)
    return moved[order]


def _bad_close(w: Work) -> np.ndarray:
    c = w.a["close"]
    if _positive_finite(c):
        return _none(w)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(c) & (c > 0))


def _duplicate(w: Work) -> np.ndarray:
    """Same (symbol, timestamp) as the next kept row: rows are stably sorted, so the last one is the file's."""
    out = _none(w)
    if w.alive.all():
        sc, st, at = w.a["code"], w.a["ts"], slice(0, len(out) - 1)
    else:
        surv = np.flatnonzero(w.alive)
        sc, st, at = w.a["code"][surv], w.a["ts"][surv], surv[:-1]
    out[at] = (sc[:-1] == sc[1:]) & (st[:-1] == st[1:])
    return out


def _too_short(w: Work) -> np.ndarray:
    if w.params["min_rows"] <= 0:
        return _none(w)
    code = w.a["code"]
    kept = code if w.alive.all() else code[w.alive]  # sorted by the rule unsorted, no missing symbol left
    per_sym = np.diff(np.searchsorted(kept, np.arange(len(w.symbols) + 1, dtype=kept.dtype)))
    short = np.flatnonzero((per_sym > 0) & (per_sym < w.params["min_rows"]))
    if not len(short):  # (a symbol with no row left has none to drop)
        return _none(w)
    return per_sym[code] < w.params["min_rows"]


def _bad_ohl(w: Work) -> np.ndarray:
    """Open/high/low unusable -> close (close is finite and > 0 here)."""
    c, changed = w.a["close"], _none(w)
    for k in ("open", "high", "low"):
        if _positive_finite(w.a[k]):
            continue
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(w.a[k]) & (w.a[k] > 0))
        w.writable(k)[bad] = c[bad]
        changed |= bad
    return changed


def _bad_volume(w: Work) -> np.ndarray:
    v = w.a["volume"]
    if _positive_finite(v, zero_ok=True):
        return _none(w)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(v) & (v >= 0))
    w.writable("volume")[bad] = 0.0
    return bad


def _high_below_low(w: Work) -> np.ndarray:
    swap = w.a["high"] < w.a["low"]
    if swap.any():
        h, lo = w.writable("high"), w.writable("low")
        h[swap], lo[swap] = lo[swap], h[swap].copy()
    return swap


def _ohlc_outside_range(w: Work) -> np.ndarray:
    o, h, lo, c = (w.a[k] for k in PRICE_COLS)
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    above, below = h < top, lo > bottom
    if above.any():  # high widened to max(open, close)
        w.writable("high")[above] = top[above]
    if below.any():
        w.writable("low")[below] = bottom[below]
    w.ohlc_checked = True
    return above | below


def _long_gaps(w: Work) -> np.ndarray:
    """Rows that follow a gap longer than max_gap_bars bars of their symbol (computed once, then reused)."""
    if len(w.gap) != len(w.alive):
        ts, code, n, k = w.a["ts"], w.a["code"], len(w.alive), w.params["max_gap_bars"]
        w.gap = np.zeros(n, dtype=bool)
        starts, ends, few = run_bounds(w.new_symbol)
        if n > 1 and k > 0 and not few:
            bar = w.bar[code[1:]]
            limit = bar.astype(np.float64) * k
            w.gap[1:] = ~w.new_symbol[1:] & (bar > 0) & (np.diff(ts) > limit)
        for a, b in zip(starts, ends) if n > 1 and k > 0 and few else ():  # a symbol at a time, in the cache
            bar = w.bar[code[a]]
            if bar > 0:
                np.greater(np.diff(ts[a:b]), np.float64(bar) * k, out=w.gap[a + 1 : b])
    return w.gap


def _price_spike(w: Work) -> np.ndarray:
    """A close that jumps > k trailing robust sigmas and back on the next bar. Flagged, not repaired: the
    features at t keep the print a live feed showed (repairing it needs the next bar, after t); the targets
    and returns that start or end at it are masked on the label side (features.targets)."""
    w.spike = spike_rows(w.a["close"], w.a["code"], w.new_symbol | _long_gaps(w), w.params["spike_sigmas"])
    return w.spike


@dataclass(frozen=True)
class Rule:
    """One cleaning rule: its name, what it does to the rows it finds, the sentence docs/data.md carries, and
    the function that finds (and, for "changed", repairs) them."""

    name: str
    action: str  # dropped | changed | kept
    doc: str
    find: Callable[[Work], np.ndarray]

    @property
    def text(self) -> str:
        return {"dropped": "drop", "changed": "changed", "kept": "kept"}[self.action] + ": " + self.doc


RULES: tuple[Rule, ...] = (
    Rule("bad_symbol", "dropped", "symbol missing or empty", _bad_symbol),
    Rule("bad_timestamp", "dropped", "timestamp missing, unparseable or out of range (before 1677, after 2262)",
         _bad_timestamp),
    Rule("unsorted", "changed", "reordered by time", _unsorted),
    Rule("bad_close", "dropped", "close non-finite or <= 0", _bad_close),
    Rule("duplicate", "dropped", "same symbol and timestamp; keep the last", _duplicate),
    Rule("too_short", "dropped", "symbol has fewer rows than min_rows", _too_short),
    Rule("bad_ohl", "changed", "open/high/low non-finite or <= 0 set from close", _bad_ohl),
    Rule("bad_volume", "changed", "negative or non-finite volume set to 0", _bad_volume),
    Rule("high_below_low", "changed", "swapped", _high_below_low),
    Rule("ohlc_outside_range", "changed", "high/low widened to contain open and close", _ohlc_outside_range),
    Rule("price_spike", "kept", "a one-bar spike that reverts (abs log move > spike_sigmas trailing robust sigmas, "
         "and > 0.05, both in and out, the move out undoing the move in to within a quarter); prices kept, the "
         "targets and returns that start or end at it masked", _price_spike),
    Rule("long_gap", "kept", "gap longer than max_gap_bars bars; windows do not cross it", _long_gaps),
)
RULE_POS = {rule.name: i for i, rule in enumerate(RULES)}


@dataclass
class CleanShard:
    """The clean rows of some whole symbols, as arrays: what the features of those symbols are made from.

    `a` holds `ts` (int64 ns UTC), `code` (the symbol's position in `symbols`, the raw frame's distinct symbols in
    lexical order) and the float64 `open` .. `volume`, sorted by (code, ts); `keep` the extra columns asked for,
    row-aligned (numpy arrays of the raw column's values)."""

    a: dict[str, np.ndarray]
    symbols: np.ndarray
    keep: dict[str, np.ndarray] = field(default_factory=dict)
    bar: np.ndarray | None = None  # bar size in ns per symbol code (bar_sizes_ns of these rows), when known
    spike: tuple | None = None  # (spike_rows of these rows, spike_sigmas, max_gap_bars), when cleaning found them

    def __len__(self) -> int:
        return len(self.a["ts"])


def symbol_shards(codes: np.ndarray, n_symbols: int, shard_rows: int) -> list[tuple[slice | np.ndarray, range]]:
    """The rows cut into shards of whole symbols, about `shard_rows` rows each, in symbol order: per shard, its
    rows (a slice where they are contiguous, else their positions in frame order) and its symbol codes. Rows
    without a symbol go with the first shard."""
    grouped = len(codes) < 2 or bool((codes[1:] >= codes[:-1]).all())  # as loaded: sorted by symbol
    if grouped:  # rows per symbol without a pass over the rows
        per = np.diff(np.searchsorted(codes, np.arange(-1, n_symbols + 1, dtype=codes.dtype)))  # (no cast of codes)
    else:
        per = np.bincount(codes + 1, minlength=n_symbols + 1)
    start = np.cumsum(per[1:]) - per[1:]  # rows before each symbol
    group = np.unique(start // max(shard_rows, 1), return_inverse=True)[1].ravel()
    n_shards = int(group.max()) + 1 if n_symbols else 1
    first = np.searchsorted(group, np.arange(n_shards + 1))  # shard k holds codes first[k] .. first[k+1]-1
    own = [range(int(first[k]), int(first[k + 1])) for k in range(n_shards)]
    if n_shards == 1:
        return [(slice(0, len(codes)), own[0])]
    if grouped:  # slices: no copy
        edges = np.r_[0, np.searchsorted(codes, first[1:-1].astype(codes.dtype), side="left"), len(codes)]
        return [(slice(int(edges[k]), int(edges[k + 1])), own[k]) for k in range(n_shards)]
    shard_of_row = np.r_[0, group].astype(np.int32)[codes + 1]
    order = np.argsort(shard_of_row, kind="stable")  # each shard's rows in frame order
    cuts = np.cumsum(np.bincount(shard_of_row, minlength=n_shards))[:-1]
    return list(zip(np.split(order, cuts), own))


def _float_column(col: pd.Series) -> np.ndarray:
    """A column as float64 numbers (what is not a number becomes NaN); float64 columns are not copied."""
    if col.dtype == np.float64:
        return col.to_numpy()
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _clean_shard(a: dict[str, np.ndarray], symbols: np.ndarray, own: range, attrs: dict, params: dict,
                 keep: dict[str, np.ndarray] | None = None) -> Work:
    """Walk `RULES` over the rows of some whole symbols (see clean_ohlcv)."""
    w = Work(a, symbols, own, attrs, params, keep)
    w.before = _range_stats({c: w.a[c] for c in NUM_COLS}, w.a["ts"])
    for rule in RULES:
        if rule.action != "dropped":
            w.compact()
        found = rule.find(w)
        if rule.action == "dropped" and found.any():
            found &= w.alive
            w.alive &= ~found
        w.count(rule.name, rule.action, found)
    w.compact()
    w.after = _stats_after(w)
    _check_clean(w.a, w.after, ohlc=not w.ohlc_checked)
    return w


def clean_shards(
    raw: pd.DataFrame,
    source: str = "",
    *,
    min_rows: int = 0,
    max_gap_bars: int = 50,
    spike_sigmas: float = 12.0,
    keep: tuple[str, ...] = (),
    shard_rows: int = 1_000_000,
    workers: int = 0,
) -> tuple[list[CleanShard], QualityReport]:
    """`clean_ohlcv` without the frame: the clean rows as shards of whole symbols (about `shard_rows` rows each),
    cleaned on `workers` threads (0: every core), and the report of them all."""
    source = source or str(raw.attrs.get("source", ""))
    done = clean_parts(raw, source, min_rows=min_rows, max_gap_bars=max_gap_bars, spike_sigmas=spike_sigmas,
                       keep=keep, shard_rows=shard_rows, workers=workers)
    return [d[1] for d in done], quality_report([d[0] for d in done], raw, source, keep)


def clean_parts(raw: pd.DataFrame, source: str = "", *, min_rows: int = 0, max_gap_bars: int = 50,
                spike_sigmas: float = 12.0, keep: tuple[str, ...] = (), shard_rows: int = 1_000_000,
                workers: int = 0, only: set[int] | None = None) -> list[tuple[dict, CleanShard] | None]:
    """Per shard of whole symbols (`symbol_shards`): its report part (`quality_report` merges them) and its clean
    rows; only the shards in `only` (the others None)."""
    missing = [c for c in COLUMNS + tuple(keep) if c not in raw.columns]
    if missing:
        raise DataError(f"{source or '<frame>'}: frame is missing column(s) {', '.join(map(repr, missing))} "
                        f"(found: {', '.join(map(str, raw.columns))})")
    tcol = raw["timestamp"]
    if not isinstance(tcol.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(tcol.dtype):
        raise DataError(f"{source or '<frame>'}: column 'timestamp' is {tcol.dtype}, not datetime "
                        "(read files with load_ohlcv)")
    _, codes, symbols = symbol_codes(raw["symbol"])
    times = tcol.array  # each shard's converted to int64 ns on its own thread
    num = {c: _float_column(raw[c]) for c in NUM_COLS}
    extra = {k: raw[k].to_numpy() for k in keep}
    params = {"min_rows": min_rows, "max_gap_bars": max_gap_bars, "spike_sigmas": spike_sigmas}
    shards = symbol_shards(codes, len(symbols), shard_rows)

    def one(k: int) -> tuple[dict, CleanShard] | None:
        if only is not None and k not in only:
            return None
        rows, own = shards[k]
        a = {"ts": ns_since_epoch(times[rows]), "code": codes[rows]} | {c: num[c][rows] for c in NUM_COLS}
        rows_in = len(a["ts"])
        w = _clean_shard(a, symbols, own, raw.attrs, params, {k: v[rows] for k, v in extra.items()})
        return _shard_part(w, rows_in), CleanShard(w.a, symbols, w.keep, w.bar, (w.spike, spike_sigmas, max_gap_bars))

    with without_huge_pages(), ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(len(shards))))


def clean_ohlcv(
    raw: pd.DataFrame,
    source: str = "",
    *,
    min_rows: int = 0,
    max_gap_bars: int = 50,
    spike_sigmas: float = 12.0,
    keep: tuple[str, ...] = (),
    shard_rows: int = 1_000_000,
    workers: int = 0,
) -> tuple[pd.DataFrame, QualityReport]:
    """Walk `RULES` in order and return a new clean frame plus the report; `raw` is never modified.

    Drops come first, so that a duplicate keeps the last *usable* row and repairs are only counted on kept
    rows; a dropped row is counted by the first rule that drops it. `keep` names extra columns carried along
    row-aligned (e.g. the synthetic `oracle`). No rule looks across symbols, so the frame is cleaned in shards of
    whole symbols on several cores (`clean_shards`); the result does not depend on how it was cut.
    """
    shards, report = clean_shards(raw, source, min_rows=min_rows, max_gap_bars=max_gap_bars,
                                  spike_sigmas=spike_sigmas, keep=keep, shard_rows=shard_rows, workers=workers)
    out = clean_frame(shards, keep, raw)
    out.attrs = {"source": report.source, "bar_size_s": report.bar_size_s}
    return out, report


def clean_frame(shards: list[CleanShard], keep: tuple[str, ...] = (), raw: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """The canonical clean frame of these shards (in order); kept columns keep the raw frame's dtype."""
    cat = lambda k: np.concatenate([s.a[k] for s in shards])
    code = cat("code")
    out = pd.DataFrame({"timestamp": pd.DatetimeIndex(cat("ts").view("datetime64[ns]")).tz_localize("UTC")})
    names = pd.array(np.asarray(shards[0].symbols, dtype=object), dtype="str")
    out["symbol"] = names.take(code) if len(code) else pd.array([], dtype="str")
    for k in NUM_COLS:
        out[k] = cat(k)
    for k in keep:
        values = np.concatenate([s.keep[k] for s in shards])
        out[k] = pd.Series(values, dtype=raw[k].dtype) if raw is not None else values
    return out


def _shard_part(w: Work, rows_in: int) -> dict:
    """What the quality report needs of one cleaned shard, JSON-serialisable (a sharded build stores it)."""
    symbols, code, bar = w.symbols, w.a["code"], w.bar
    kept = code[run_starts(code)]  # sorted: the distinct codes
    per = np.bincount(code[w.gap], minlength=len(symbols)) if len(w.gap) == len(code) else np.zeros(0, int)
    return {"rows_in": rows_in, "rows_kept": len(code),
            "counts": [[*key, c["action"], c["rule"], c["rows"]] for key, c in zip(w.keys, w.counts)],
            "bar_size_s": {str(symbols[i]): (float(bar[i]) / 1e9 if bar[i] > 0 else None) for i in kept},
            "gaps": {str(symbols[i]): int(per[i]) for i in np.flatnonzero(per)},
            "before": w.before, "after": w.after}


def _merged_counts(parts: list[dict]) -> list[dict]:
    """The counts of all shards in the order one pass over the whole frame gives: by rule, then the loader's
    notes before the rule's findings, then by symbol ('' first); a name counted in two shards (a missing and an
    empty symbol) added up."""
    merged: dict[tuple, int] = {}
    for part in parts:
        for pos, phase, symbol, action, rule, rows in part["counts"]:
            key = (pos, phase, symbol, action, rule)
            merged[key] = merged.get(key, 0) + rows
    return [{"rule": k[4], "symbol": k[2], "action": k[3], "rows": merged[k]} for k in sorted(merged)]


def quality_report(parts: list[dict], raw: pd.DataFrame, source: str, keep: tuple[str, ...] = ()
                   ) -> QualityReport:
    """The report of the shards whose parts these are (`_shard_part`, in shard order), for this raw frame."""
    extra = list(raw.attrs.get("extra_columns", []))
    extra += [str(col) for col in raw.columns if col not in COLUMNS and col not in keep]
    load_notes = {k: raw.attrs[k] for k in ("n_files", "skipped_files", "timestamp_format", "timestamp_notes",
                                            "bad_timestamps", "non_numeric", "decimal_comma") if k in raw.attrs}
    empty = _range_stats({c: np.zeros(0) for c in NUM_COLS}, np.zeros(0, dtype=np.int64))
    rows_in, kept = sum(p["rows_in"] for p in parts), sum(p["rows_kept"] for p in parts)
    return QualityReport(
        source=source,
        rows_in=rows_in,
        rows_kept=kept,
        rows_dropped=rows_in - kept,
        counts=_merged_counts(parts),
        extra_columns=extra,
        bar_size_s={k: v for p in parts for k, v in p["bar_size_s"].items()},
        gaps={k: v for p in parts for k, v in p["gaps"].items()},
        ranges_before=_merge_ranges([p["before"] for p in parts] or [empty]),
        ranges_after=_merge_ranges([p["after"] for p in parts] or [empty]),
        load_notes=load_notes,
    )


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
        syms = np.unique(code[rows])
        lo, hi = np.searchsorted(code, syms, side="left"), np.searchsorted(code, syms, side="right")
        sub = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])  # rows of those symbols (sorted by code)
        sigma = trailing_sigma(r[sub], code[sub], np.searchsorted(sub, rows))
        thr = np.maximum(k * sigma, SPIKE_MIN_LOG_MOVE)  # NaN sigma -> no spike
        with np.errstate(invalid="ignore"):
            spike[rows] = (np.abs(r[rows]) > thr) & (np.abs(r[rows + 1]) > thr)  # the move out, against t's threshold
    return spike


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


def _check_clean(a: dict[str, np.ndarray], stats: dict, ohlc: bool = True) -> None:
    """The clean rows' promises, from their range stats and a few passes; cheap enough to check on every call.
    `ohlc`: check high and low around open and close again (not where ohlc_outside_range's own pass over every
    row made them so and nothing changed since: its four passes over the prices were 6% of cleaning)."""
    assert not any(stats[k]["nan"] or stats[k]["inf"] for k in NUM_COLS), "non-finite value after cleaning"
    assert not len(a["low"]) or (stats["low"]["min"] > 0 and stats["volume"]["min"] >= 0), \
        "non-positive price or negative volume after cleaning"
    o, h, lo, c = (a[k] for k in PRICE_COLS)
    assert not ohlc or ((np.minimum(o, c) >= lo).all() and (np.maximum(o, c) <= h).all()), \
        "OHLC out of range after cleaning"
    code, ts = a["code"], a["ts"]
    if len(ts) > 1:
        same = code[1:] == code[:-1]
        assert (code[1:] >= code[:-1]).all() and ((ts[1:] > ts[:-1]) | ~same).all(), \
            "not sorted/unique after cleaning"
