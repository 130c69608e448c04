"""Cleaning of the raw frame: the ordered `RULES` that `clean_ohlcv` walks over shards of whole symbols.

Each rule only judges: it reads the rows (`Work`) and returns a `Verdict` (what it found, and to drop, repair,
mask or reorder them). The walker (`Work.apply`) carries the verdict out, copying a column before its first
change (the raw frame is never touched), and keeps the counts and statistics of the `QualityReport`. What the
rules detect (bar sizes, spikes, bad prints, corporate actions) is in `detect`; the report in `quality`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tradelib.config import Config, settings_values
from tradelib.data import sessions
from tradelib.data.detect import (
    back_adjustment,
    bad_print_rows,
    bar_changes,
    bar_sizes_ns,
    corporate_action_rows,
    run_starts,
    spike_rows,
)
from tradelib.data.load import (
    COLUMNS,
    NUM_COLS,
    PRICE_COLS,
    UTC,
    DataError,
    is_sorted,
    ns_since_epoch,
    sort_order,
    symbol_codes,
    unsorted_rows,
)
from tradelib.data.memory import without_huge_pages
from tradelib.data.quality import QualityReport, quality_report, range_stats


@dataclass(frozen=True)
class CleanSettings:
    """What cleaning reads: Config's cleaning knobs (where their defaults live), the rows a symbol needs
    (`min_rows`: the build asks for a window and its target; 0: any) and the market's clock (`zone`:
    Config.market_zone, whose days the long gaps count sessions on)."""

    max_gap_bars: int
    spike_sigmas: float
    bad_print_decades: float
    bad_volume_decades: float
    corporate_actions: str
    split_sigmas: float
    min_rows: int = 0
    zone: str = UTC

    def __post_init__(self):
        if self.corporate_actions not in ("flag", "mask", "adjust"):
            raise ValueError(f"corporate_actions must be flag, mask or adjust, not {self.corporate_actions!r}")

    @classmethod
    def of(cls, cfg: Config | None = None, **overrides) -> CleanSettings:
        """The settings of `cfg` (default: Config's defaults), with `overrides` by name."""
        cfg = Config() if cfg is None else cfg
        return cls(**settings_values(cls, cfg, {"zone": cfg.market_zone} | overrides, "cleaning"))


class Work:
    """The rows of some whole symbols being cleaned, as numpy arrays (`a`: ts, code, open, high, low, close,
    volume; `keep`: the extra columns carried along, which no rule reads), with the rows still kept (`alive`) and
    the counts so far. Rules only read it and return a `Verdict`; `apply` carries the verdict out (copying an
    array before its first change: the raw frame is never touched) and counts it. Symbols never share a rule's
    decision, so the shards of a frame are cleaned apart (and at once) and their counts merged (`quality_report`);
    the CALENDAR_RULES alone read what all shards tell together, the market's calendar (`calendar`)."""

    def __init__(self, a: dict[str, np.ndarray], symbols: np.ndarray, own: range, attrs: dict,
                 settings: CleanSettings, keep: dict[str, np.ndarray] | None = None) -> None:
        self.a, self.symbols, self.own, self.attrs, self.settings = a, symbols, own, attrs, settings
        self.keep = keep or {}
        self.alive = np.ones(len(a["ts"]), dtype=bool)
        self.counts: list[dict] = []
        self.keys: list[tuple] = []  # per count: (rule position, 0 for a loader's note / 1 for the rule's finding)
        self.flags: dict[str, np.ndarray] = {}  # the rows each "kept" rule found (row-aligned, like `a`)
        self._bar: np.ndarray | None = None
        self._gap: np.ndarray | None = None
        self._changes: list[tuple[int, int, int, int]] | None = None
        self.calendar: tuple[bool, dict] | None = None  # (continuous, traded days) of all symbols: `finish_shards`
        self.owned: set[str] = set()  # the arrays copied already: the others may be views of the raw frame
        self.masked = dict.fromkeys(NUM_COLS, 0)  # values masked (NaN) per column
        self.before: dict = {}
        self.after: dict = {}

    def apply(self, rule: Rule, v: Verdict) -> None:
        """Carry out a rule's verdict and count it: its notes, then a new order, the drops (of rows still kept;
        a dropped row is counted by the first rule that drops it), the repairs and masks. A verdict that found
        no row does nothing."""
        action = v.action
        if v.found is not None and v.order is None and not v.found.any():
            v = Verdict(notes=v.notes)
        for symbol, n in v.notes.items():  # under the rule's own action (what the loader did, the jumps adjusted)
            self.note(rule.name, symbol, rule.action, n, phase=0)
        if v.order is not None:
            self.take(v.order)
        found = v.found
        if v.drop and found is not None:
            found = found & self.alive
            self.alive &= ~found
        for k, (rows, values) in v.repair.items():
            self._writable(k)[rows] = values
        for k, rows in v.mask.items():
            col = self._writable(k)
            self.masked[k] += int(np.count_nonzero(~np.isnan(col[rows])))
            col[rows] = np.nan
        if found is not None:
            if action == "kept":
                self.flags[rule.name] = found
            self.count(rule.name, action, found)

    def _writable(self, k: str) -> np.ndarray:
        """`a[k]`, copied first unless it is a copy already (copy on write: most rows need no repair)."""
        if k not in self.owned:
            self.a[k] = self.a[k].copy()
            self.owned.add(k)
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
            pick = lambda v: np.concatenate([v[r] for r in runs])  # noqa: E731
        else:
            pick = (lambda v: v[sel]) if drop is not None else (lambda v: v.take(sel))  # noqa: E731
        self.a = {k: pick(v) for k, v in self.a.items()}
        self.keep = {k: pick(v) for k, v in self.keep.items()}
        self.flags = {k: pick(v) for k, v in self.flags.items()}
        self.alive = self.alive[sel]
        self.owned = set(self.a)
        self._bar = self._gap = self._changes = None

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
    def bar_changes(self) -> list[tuple[int, int, int, int]]:
        """Where a symbol's bars change size (`bar_changes`: row, the sizes, the rows): found once, for the rule
        bar_change and the report."""
        if self._changes is None:
            self._changes = bar_changes(self.a["code"], self.a["ts"], self.bar)
        return self._changes

    @property
    def new_symbol(self) -> np.ndarray:
        return run_starts(self.a["code"])

    @property
    def gap(self) -> np.ndarray:
        """Rows that follow a gap longer than max_gap_bars bars of their symbol on the market's calendar (made once
        for these rows; `sessions.long_gap_rows`, as the build's segments break)."""
        if self._gap is None:
            assert self.calendar is not None, "the long gaps need the calendar of all symbols (finish_shards)"
            continuous, days = self.calendar
            self._gap = sessions.long_gap_rows(self.a["ts"], self.a["code"], self.bar[self.a["code"]],
                                               self.settings.max_gap_bars, continuous, days,
                                               zone=self.settings.zone)
        return self._gap


@dataclass
class Verdict:
    """What a rule found and what is to be done about it. The rule only reads the rows; `Work.apply` does what
    the verdict says and counts `found` per symbol under its `action`, so no rule can upset another's
    bookkeeping (the copies, the counts, the rows kept, the statistics of what changed)."""

    found: np.ndarray | None = None  # the rows counted (bool per row); None: none
    drop: bool = False  # drop the found rows
    repair: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # column -> (rows, new values)
    mask: dict[str, np.ndarray] = field(default_factory=dict)  # column -> rows whose value is unknown (NaN)
    order: np.ndarray | None = None  # a new order of all rows (`found` then marks the moved rows, in the new order)
    notes: dict[str, int] = field(default_factory=dict)  # rows per symbol counted first, under the rule's own action:
    # those the loader already changed (unsorted), the jumps of the corporate actions whose rows adjust changed

    @property
    def action(self) -> str:
        """How the found rows are counted: dropped, changed (repaired or moved), masked, or kept (flagged)."""
        if self.drop:
            return "dropped"
        return "changed" if self.repair or self.order is not None else "masked" if self.mask else "kept"


NOTHING = Verdict()


def _not_positive(x: np.ndarray, zero_ok: bool = False) -> np.ndarray | None:
    """The rows whose value is not finite and > 0 (>= 0 with zero_ok); None where the column's range shows that
    there is none (a NaN fails both tests)."""
    lo, hi = x.min(initial=np.inf), x.max(initial=-np.inf)
    if (lo >= 0 if zero_ok else lo > 0) and hi < np.inf:
        return None
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(x) & ((x >= 0) if zero_ok else (x > 0)))


# -- the rules, in the order they run. Drop rules see only the rows still kept; the first drop counts. -----------


def _bad_symbol(w: Work) -> Verdict:
    code, empty = w.a["code"], np.flatnonzero(w.symbols == "")
    if (not len(code) or code.min() >= 0) and not any(e in w.own for e in empty):
        return NOTHING
    return Verdict((code < 0) | np.isin(code, empty), drop=True)


def _bad_timestamp(w: Work) -> Verdict:
    return Verdict(w.a["ts"] == np.iinfo(np.int64).min, drop=True)


def _unsorted(w: Work) -> Verdict:
    """Rows out of order in the file (counted by load_ohlcv, which already sorted) or in the frame given."""
    present = {str(w.symbols[c]) for c in w.own}  # this shard's symbols
    notes = {str(s): int(n) for s, n in w.attrs.get("unsorted_by_symbol", {}).items() if s in present and n}
    if is_sorted(w.a["code"], w.a["ts"]):
        return Verdict(notes=notes)
    moved = unsorted_rows(w.a["ts"], w.a["code"])
    order = sort_order(w.a["code"], w.a["ts"])
    return Verdict(moved[order], order=order, notes=notes)


def _bad_close(w: Work) -> Verdict:
    return Verdict(_not_positive(w.a["close"]), drop=True)


def _repeats(w: Work) -> tuple[np.ndarray, np.ndarray]:
    """(the kept rows that share their symbol and timestamp with a later kept row, the row kept of each: the last
    of them; rows are stably sorted, so the last one is the file's)."""
    surv = None if w.alive.all() else np.flatnonzero(w.alive)  # (all kept: no copy of the columns)
    sc, st = (w.a["code"], w.a["ts"]) if surv is None else (w.a["code"][surv], w.a["ts"][surv])
    repeat = np.flatnonzero((sc[:-1] == sc[1:]) & (st[:-1] == st[1:]))
    last = np.r_[repeat[1:] != repeat[:-1] + 1, True]  # the last repeat of each run: the kept row is the next
    kept = np.repeat(repeat[last] + 1, np.diff(np.r_[0, np.flatnonzero(last) + 1])) if len(repeat) else repeat
    return (repeat, kept) if surv is None else (surv[repeat], surv[kept])


def _conflicting_duplicate(w: Work) -> Verdict:
    """A repeat of (symbol, timestamp) whose values (open .. volume) differ from the row kept: the data disagrees
    with itself (two series under one ticker, a correction), which the report says apart from a row written
    twice."""
    rows, kept = _repeats(w)
    differ = np.zeros(len(rows), dtype=bool)
    for c in NUM_COLS:
        a, b = w.a[c][rows], w.a[c][kept]
        differ |= (a != b) & ~(np.isnan(a) & np.isnan(b))
    out = np.zeros(len(w.alive), dtype=bool)
    out[rows[differ]] = True
    return Verdict(out, drop=True)


def _duplicate(w: Work) -> Verdict:
    """A repeat of (symbol, timestamp) with the same values as the row kept (those that differ went first)."""
    out = np.zeros(len(w.alive), dtype=bool)
    out[_repeats(w)[0]] = True
    return Verdict(out, drop=True)


def _too_short(w: Work) -> Verdict:
    min_rows = w.settings.min_rows
    if min_rows <= 0:
        return NOTHING
    code = w.a["code"]
    kept = code if w.alive.all() else code[w.alive]  # sorted by the rule unsorted, no missing symbol left
    per_sym = np.diff(np.searchsorted(kept, np.arange(len(w.symbols) + 1, dtype=kept.dtype)))
    return Verdict(per_sym[code] < min_rows, drop=True)


def _bad_ohl(w: Work) -> Verdict:
    """Open/high/low unusable -> close (close is finite and > 0 here)."""
    bad = {k: rows for k in ("open", "high", "low") if (rows := _not_positive(w.a[k])) is not None}
    if not bad:
        return NOTHING
    return Verdict(np.logical_or.reduce(list(bad.values())), repair={k: (r, w.a["close"][r]) for k, r in bad.items()})


def _bad_volume(w: Work) -> Verdict:
    bad = _not_positive(w.a["volume"], zero_ok=True)
    return NOTHING if bad is None else Verdict(bad, repair={"volume": (bad, 0.0)})


def _bad_print(w: Work) -> Verdict:
    """Values no market prints in one bar, judged against the symbol's own trailing level (`bad_print_rows`);
    masked (NaN), so the features and targets that read them see a missing value."""
    s = w.settings
    mask = bad_print_rows(w.a, w.a["code"], s.bad_print_decades, s.bad_volume_decades)
    return Verdict(np.logical_or.reduce(list(mask.values())), mask=mask) if mask else NOTHING


def _high_below_low(w: Work) -> Verdict:
    h, lo = w.a["high"], w.a["low"]
    swap = h < lo
    return Verdict(swap, repair={"high": (swap, lo[swap]), "low": (swap, h[swap])})


def _ohlc_outside_range(w: Work) -> Verdict:
    o, h, lo, c = (w.a[k] for k in PRICE_COLS)
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    above, below = h < top, lo > bottom  # high widened to max(open, close), low to min(open, close)
    sides = (("high", above, top), ("low", below, bottom))  # a side with no row is not listed: not copied
    return Verdict(above | below, repair={k: (rows, v[rows]) for k, rows, v in sides if rows.any()})


def _bar_change(w: Work) -> Verdict:
    """Where a symbol's bars change size and stay changed (`bar_changes`): the series restarts there, so no window
    mixes 1-minute and 5-minute rows; the quality report names the symbol, the time and the two sizes. Bars are
    counted in the symbol's one bar size (its most common step), so the targets of a coarser stretch span missing
    bars and are masked: that is what the report's line warns of."""
    rows = np.zeros(len(w.a["ts"]), dtype=bool)
    rows[[c[0] for c in w.bar_changes]] = True
    return Verdict(rows)


def _corporate_action(w: Work) -> Verdict:
    """A split-like jump that stays (`corporate_action_rows`). flag: counted only; mask: the series restarts
    there (segments.segment_ids), so no feature, window or target spans it; adjust: the prices before it
    scaled by the jump and the volumes inversely (back-adjusted): every row scaled is counted as changed (the
    report counts each row it changed), the jumps themselves as kept."""
    s = w.settings
    rows, ratio = corporate_action_rows(w.a, w.a["code"], w.new_symbol, s.split_sigmas, _step_spans(w))
    if s.corporate_actions != "adjust" or not rows.any():
        return Verdict(rows)
    factor = back_adjustment(rows, ratio, w.a["code"])
    repair = {k: (slice(None), w.a[k] * factor) for k in PRICE_COLS}
    jumps = np.bincount(w.a["code"][rows], minlength=len(w.symbols))
    notes = {str(w.symbols[i]): int(jumps[i]) for i in np.flatnonzero(jumps)}
    return Verdict(factor != 1, repair=repair | {"volume": (slice(None), w.a["volume"] / factor)}, notes=notes)


def _step_spans(w: Work) -> np.ndarray:
    """Per row: the bars of its symbol that the step to it spans by the clock (at least 1): the time over which
    the jump to its open was made. A price moves further over a weekend, a halt or twenty weeks without data than
    over one bar: a 36% rise across twenty weeks was taken for a corporate action (and adjust scaled it away), and
    a 2:1 split after a week without data moves by more than 1% off its ratio."""
    ts, code = w.a["ts"], w.a["code"]
    spans = np.ones(len(ts))
    if len(ts) > 1:
        d, bar = np.diff(ts), w.bar[code[1:]]
        step = (code[1:] == code[:-1]) & (bar > 0) & (d > bar)
        spans[1:][step] = d[step] / bar[step]
    return spans


def _price_spike(w: Work) -> Verdict:
    """A close that jumps > k trailing robust sigmas and back on the next bar. Flagged, not repaired: the
    features at t keep the print a live feed showed (repairing it needs the next bar, after t); the targets
    and returns that start or end at it are masked on the label side (features.targets)."""
    breaks = w.new_symbol | w.gap
    restart = _restart(w)
    if restart is not None:
        breaks |= restart  # where the features' segments break: what targets would find
    return Verdict(spike_rows(w.a["close"], w.a["code"], breaks, w.settings.spike_sigmas))


def _long_gaps(w: Work) -> Verdict:
    return Verdict(w.gap)


def _restart(w: Work) -> np.ndarray | None:
    """Rows where the series restarts (a new feature segment): bar size changes, and corporate actions where
    corporate_actions is mask; None where there is none."""
    found = [w.flags[k] for k in ("bar_change", "corporate_action") if k in w.flags
             and (k == "bar_change" or w.settings.corporate_actions == "mask")]
    return np.logical_or.reduce(found) if found else None


@dataclass(frozen=True)
class Rule:
    """One cleaning rule: its name, what it does to the rows it finds (as docs/data.md says; the counts carry
    what its verdict did), the sentence docs/data.md carries, and the function that judges the rows."""

    name: str
    action: str  # dropped | changed | masked | kept
    doc: str
    judge: Callable[[Work], Verdict]

    @property
    def text(self) -> str:
        return ("drop" if self.action == "dropped" else self.action) + ": " + self.doc


RULES: tuple[Rule, ...] = (
    Rule("bad_symbol", "dropped", "symbol missing or empty", _bad_symbol),
    Rule("bad_timestamp", "dropped", "timestamp missing, unparseable, out of range (before 1677, after 2262) or a "
         "data_timezone local time that DST skips or repeats", _bad_timestamp),
    Rule("unsorted", "changed", "reordered by time", _unsorted),
    Rule("bad_close", "dropped", "close non-finite or <= 0", _bad_close),
    Rule("conflicting_duplicate", "dropped", "same symbol and timestamp as a later row, other values (open .. "
         "volume); keep the last", _conflicting_duplicate),
    Rule("duplicate", "dropped", "same symbol and timestamp as a later row, same values; keep the last", _duplicate),
    Rule("too_short", "dropped", "symbol has fewer rows than min_rows", _too_short),
    Rule("bad_ohl", "changed", "open/high/low non-finite or <= 0 set from close", _bad_ohl),
    Rule("bad_volume", "changed", "negative or non-finite volume set to 0", _bad_volume),
    Rule("bad_print", "masked", "a price more than bad_print_decades powers of ten from the symbol's trailing "
         "median close, or a volume more than bad_volume_decades above its trailing median volume; set to NaN "
         "(missing)", _bad_print),
    Rule("high_below_low", "changed", "swapped", _high_below_low),
    Rule("ohlc_outside_range", "changed", "high/low widened to contain open and close", _ohlc_outside_range),
    Rule("bar_change", "kept", "the symbol's bars change size and stay changed (20 steps or more in a row, none its "
         "bar size, most of them one other size: 1-minute bars that become 5-minute ones); the series restarts "
         "there, and the quality summary names the symbol, the time and the sizes", _bar_change),
    Rule("corporate_action", "kept", "a split-like jump from the last close to the open that stays (ratio of 2 to "
         "8, 10, 12, 15, 20, 25, 30, 40, 50, 100 or their inverses to within 1% or 2 trailing sigmas of a move over "
         "its step, at most 7% of its log; or beyond split_sigmas such sigmas, off by default); corporate_actions: "
         "flag, mask (the series restarts there) or adjust (prices before it back-adjusted: changed)",
         _corporate_action),
    Rule("price_spike", "kept", "a one-bar spike that reverts (abs log move > spike_sigmas trailing robust sigmas, "
         "and > 0.05, both in and out, the move out undoing the move in to within a quarter); prices kept, the "
         "targets and returns that start or end at it masked", _price_spike),
    Rule("long_gap", "kept", "gap longer than max_gap_bars bars of the market's calendar (a night, a lunch "
         "break or a weekend on an exchange is no gap); windows do not cross it", _long_gaps),
)
RULE_POS = {rule.name: i for i, rule in enumerate(RULES)}
CALENDAR_RULES = ("price_spike", "long_gap")  # read the long gaps, counted on the calendar of all symbols' clean rows


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
    restart: np.ndarray | None = None  # rows where the series restarts (bar size changes; corporate actions, mask)

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


def _within_ns(times: pd.arrays.DatetimeArray) -> pd.arrays.DatetimeArray:
    """The timestamps, those that datetime64[ns] cannot hold (before 1677, after 2262: a year-9999 placeholder,
    which pandas 3 reads in us) made NaT, so that bad_timestamp counts them rather than the conversion failing."""
    if times.unit == "ns" or not len(times):
        return times
    utc = times.tz_convert("UTC").tz_localize(None) if times.tz is not None else times
    out = (utc < pd.Timestamp.min) | (utc > pd.Timestamp.max)
    if not out.any():
        return times
    times = times.copy()
    times[out] = pd.NaT
    return times


def _clean_shard(a: dict[str, np.ndarray], symbols: np.ndarray, own: range, attrs: dict, settings: CleanSettings,
                 keep: dict[str, np.ndarray] | None = None) -> Work:
    """Walk `RULES` over the rows of some whole symbols (see clean_ohlcv): each rule judges, the walker applies.
    The CALENDAR_RULES (kept rows only) wait for the calendar of all symbols (`finish_shards`)."""
    w = Work(a, symbols, own, attrs, settings, keep)
    w.before = range_stats({c: w.a[c] for c in NUM_COLS}, w.a["ts"])
    for rule in RULES:
        if rule.name in CALENDAR_RULES:
            continue
        if rule.action != "dropped":  # a rule that keeps rows sees only the rows kept
            w.compact()
        w.apply(rule, rule.judge(w))
    w.compact()
    w.after = range_stats({c: w.a[c] for c in NUM_COLS}, w.a["ts"])
    _check_clean(w.a, w.after, w.masked)
    return w


def market_calendar(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], zone: str) -> tuple[bool, dict]:
    """(whether the market is continuous, the sessions each bar size traded) of the clean rows of all symbols,
    given per shard as (ts, code, bar size per row), on the market's clock `zone`: what `sessions.bar_steps`
    counts bars with. The build finds the same from its SharedFacts (`sessions.calendar` of their timestamps and
    the median of their bar sizes)."""
    days = sessions.merge_days([sessions.traded_days(*p, zone) for p in parts])
    hours = np.logical_or.reduce([sessions.hours_traded(ts, zone) for ts, _, _ in parts]
                                 or [np.zeros(24, dtype=bool)])
    bars = np.concatenate([bar[run_starts(code)] for _, code, bar in parts] or [np.zeros(0)])
    return sessions.continuous_market(days, hours, float(np.median(bars)) if bars.size else 0.0), days


def finish_shards(works: list[Work], pool: ThreadPoolExecutor, zone: str) -> None:
    """The CALENDAR_RULES walked over every shard, with the calendar of all of them (`market_calendar`, on the
    market's clock `zone`)."""
    cal = market_calendar(list(pool.map(lambda w: (w.a["ts"], w.a["code"], w.bar[w.a["code"]]), works)), zone)

    def finish(w: Work) -> None:
        w.calendar = cal
        for rule in (r for r in RULES if r.name in CALENDAR_RULES):
            w.apply(rule, rule.judge(w))

    list(pool.map(finish, works))


def add_kept(part: dict, rule: str, per_symbol: dict[str, int]) -> None:
    """Count the rows a calendar rule (price_spike, long_gap) found per symbol into a shard's report part: the
    build finds them where the calendar of all shards is known (its segments), not while cleaning."""
    part["counts"] += [[RULE_POS[rule], 1, sym, "kept", rule, int(n)] for sym, n in per_symbol.items() if n]
    if rule == "long_gap":
        part["gaps"] = {sym: int(n) for sym, n in per_symbol.items() if n}


def _check_clean(a: dict[str, np.ndarray], stats: dict, masked: dict[str, int]) -> None:
    """The clean rows' promises, from their range stats and a few passes; cheap enough to check on every call.
    Every value is finite or a masked bad print (NaN; `masked` counts them per column)."""
    assert all(stats[k]["nan"] == masked[k] and not stats[k]["inf"] for k in NUM_COLS), \
        "non-finite value after cleaning (other than a masked bad print)"
    lows = [stats[k]["min"] for k in PRICE_COLS if stats[k]["min"] is not None]
    assert all(m > 0 for m in lows) and (stats["volume"]["min"] is None or stats["volume"]["min"] >= 0), \
        "non-positive price or negative volume after cleaning"
    o, h, lo, c = (a[k] for k in PRICE_COLS)
    assert not ((np.minimum(o, c) < lo).any() or (np.maximum(o, c) > h).any()), \
        "OHLC out of range after cleaning"
    code, ts = a["code"], a["ts"]
    if len(ts) > 1:
        same = code[1:] == code[:-1]
        assert (code[1:] >= code[:-1]).all() and ((ts[1:] > ts[:-1]) | ~same).all(), \
            "not sorted/unique after cleaning"


def clean_parts(raw: pd.DataFrame, source: str = "", cfg: Config | None = None, *, keep: tuple[str, ...] = (),
                shard_rows: int | None = None, workers: int | None = None, only: set[int] | None = None,
                plan: tuple[np.ndarray, np.ndarray, list] | None = None, defer: bool = False,
                **settings) -> list[tuple[dict, CleanShard] | None]:
    """Per shard of whole symbols (`symbol_shards`): its report part (`quality_report` merges them) and its clean
    rows; only the shards in `only` (the others None). `cfg` (default: Config's defaults) gives the cleaning
    knobs, `shard_rows` and `workers` (its build_workers) unless given; `settings` override CleanSettings.
    `plan`: the (codes, symbols, shards) of `symbol_codes` and `symbol_shards` where the caller has them (the
    build, whose `only` counts its own shards). `defer`: leave the CALENDAR_RULES (price_spike, long_gap) to the
    caller, who knows the calendar of all shards (the build: `add_kept` counts them), else they run here over all
    shards (`finish_shards`). Its callers (clean_ohlcv, the build) run it under
    `without_huge_pages`, which their later stages need too."""
    cfg = Config() if cfg is None else cfg
    s = CleanSettings.of(cfg, **settings)
    shard_rows = cfg.shard_rows if shard_rows is None else shard_rows
    workers = cfg.build_workers if workers is None else workers
    missing = [c for c in COLUMNS + tuple(keep) if c not in raw.columns]
    if missing:
        raise DataError(f"{source or '<frame>'}: frame is missing column(s) {', '.join(map(repr, missing))} "
                        f"(found: {', '.join(map(str, raw.columns))})")
    tcol = raw["timestamp"]
    if not isinstance(tcol.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(tcol.dtype):
        raise DataError(f"{source or '<frame>'}: column 'timestamp' is {tcol.dtype}, not datetime "
                        "(read files with load_ohlcv)")
    if plan is None:
        _, codes, symbols = symbol_codes(raw["symbol"])
        plan = codes, symbols, symbol_shards(codes, len(symbols), shard_rows)
    codes, symbols, shards = plan
    times = _within_ns(tcol.array)  # each shard's converted to int64 ns on its own thread
    num = {c: _float_column(raw[c]) for c in NUM_COLS}
    extra = {k: raw[k].to_numpy() for k in keep}

    def one(k: int) -> tuple[Work, int] | None:
        if only is not None and k not in only:
            return None
        rows, own = shards[k]
        a = {"ts": ns_since_epoch(times[rows]), "code": codes[rows]} | {c: num[c][rows] for c in NUM_COLS}
        rows_in = len(a["ts"])
        return _clean_shard(a, symbols, own, raw.attrs, s, {k: v[rows] for k, v in extra.items()}), rows_in

    def part(done: tuple[Work, int] | None) -> tuple[dict, CleanShard] | None:
        if done is None:
            return None
        w, rows_in = done
        return _shard_part(w, rows_in), CleanShard(w.a, symbols, w.keep, w.bar, _restart(w))

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        done = list(pool.map(one, range(len(shards))))
        if not defer:
            assert only is None or len(only) >= len(shards), "the calendar rules need every shard (defer them)"
            finish_shards([d[0] for d in done if d is not None], pool, s.zone)
        return list(pool.map(part, done))


def clean_ohlcv(raw: pd.DataFrame, source: str = "", cfg: Config | None = None, *, keep: tuple[str, ...] = (),
                shard_rows: int | None = None, workers: int | None = None, **settings
                ) -> tuple[pd.DataFrame, QualityReport]:
    """Walk `RULES` in order and return a new clean frame plus the report; `raw` is never modified.

    Drops come first, so that a duplicate keeps the last *usable* row and repairs are only counted on kept
    rows; a dropped row is counted by the first rule that drops it. `cfg` gives the cleaning knobs (default:
    Config's defaults); `settings` override them by name (`CleanSettings`: max_gap_bars, spike_sigmas, min_rows,
    ...). `keep` names extra columns carried along row-aligned (e.g. the synthetic `oracle`). No rule looks
    at other symbols' values, so the frame is cleaned in shards of whole symbols on several cores (`clean_parts`);
    the calendar the long gaps are counted on (the days traded, and whether every day of the week is one) is
    gathered from all shards before the CALENDAR_RULES run; the result does not depend on how it was cut. Where a
    symbol's bars change size, or corporate_actions is mask and one was found, the frame has a boolean column
    `restart` (True where the series restarts).
    """
    source = source or str(raw.attrs.get("source", ""))
    with without_huge_pages():  # the clean frame's columns' first touch stalls on them too (0.5 of 1.7 s at 10M rows)
        done = clean_parts(raw, source, cfg, keep=keep, shard_rows=shard_rows, workers=workers, **settings)
        report = quality_report([d[0] for d in done], raw, source, keep)
        out = clean_frame([d[1] for d in done], keep, raw)
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
    if any(s.restart is not None and s.restart.any() for s in shards):
        out["restart"] = np.concatenate([s.restart if s.restart is not None else np.zeros(len(s), bool)
                                         for s in shards])
    return out


def _shard_part(w: Work, rows_in: int) -> dict:
    """What the quality report needs of one cleaned shard, JSON-serialisable (a sharded build stores it)."""
    symbols, code, bar = w.symbols, w.a["code"], w.bar
    kept = code[run_starts(code)]  # sorted: the distinct codes
    per = np.bincount(code[w.gap], minlength=len(symbols)) if w.calendar is not None else np.zeros(0, np.int64)
    changes = w.bar_changes if "bar_change" in w.flags else []
    judged, every_day = sessions.trades_every_day(w.a["ts"], code, bar[code], w.settings.zone)
    return {"rows_in": rows_in, "rows_kept": len(code),
            "bar_changes": [{"symbol": str(symbols[code[r]]), "at": str(pd.Timestamp(int(w.a["ts"][r]), tz="UTC")),
                             "from_s": a / 1e9, "to_s": b / 1e9, "rows": int(k)} for r, a, b, k in changes],
            "counts": [[*key, c["action"], c["rule"], c["rows"]] for key, c in zip(w.keys, w.counts)],
            "bar_size_s": {str(symbols[i]): (float(bar[i]) / 1e9 if bar[i] > 0 else None) for i in kept},
            "gaps": {str(symbols[i]): int(per[i]) for i in np.flatnonzero(per)},
            "every_day": {str(symbols[i]): bool(e) for i, e in zip(judged, every_day)},
            "before": w.before, "after": w.after}
