"""The QualityReport: what cleaning did, every dropped, changed, masked or flagged row counted by rule and
symbol, with the range statistics of the rows before and after. Each shard of whole symbols is cleaned on its
own (`clean.clean_parts`) and reports a part; `quality_report` merges the parts into the report one pass over
the whole frame would give."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tradelib.data.load import COLUMNS, NUM_COLS
from tradelib.data.sessions import bar_words


def range_stats(cols: dict[str, np.ndarray], ts: np.ndarray) -> dict:
    """Per column: min/max over finite values and counts of NaN, inf, negative and zero values; the timestamps'
    range in ns. Stats of parts of the rows merge into the whole's (`_merge_ranges`)."""
    return {name: _column_stats(v) for name, v in cols.items()} | {"timestamp": _time_stats(ts)}


def _column_stats(v: np.ndarray) -> dict:
    """range_stats of one numeric column."""
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 0.0)
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
    """range_stats of the timestamps (int64 ns, NaT as int64 min)."""
    nat = np.iinfo(np.int64).min
    t, (lo, hi) = ts, ((ts.min(), ts.max()) if len(ts) else (None, None))
    if lo == nat:
        t = ts[ts != nat]
        lo, hi = (t.min(), t.max()) if len(t) else (None, None)
    return {"min": None if lo is None else int(lo), "max": None if hi is None else int(hi),
            "nat": int(len(ts) - len(t))}


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
    bar_changes: list[dict] = field(default_factory=list)  # {"symbol", "at", "from_s", "to_s", "rows"}: bar_change
    every_day: dict[str, bool] = field(default_factory=dict)  # per symbol of a week or more: trades every weekday
    ranges_before: dict = field(default_factory=dict)
    ranges_after: dict = field(default_factory=dict)
    load_notes: dict = field(default_factory=dict)  # facts from load_ohlcv: files, formats, non-numeric cells

    def __post_init__(self):
        dropped = sum(c["rows"] for c in self.counts if c["action"] == "dropped")
        assert self.rows_in == self.rows_kept + self.rows_dropped, "rows_in != rows_kept + rows_dropped"
        assert self.rows_dropped == dropped, f"rows_dropped {self.rows_dropped} != dropped counts {dropped}"

    def to_dict(self) -> dict:
        """JSON-serialisable copy (plain Python types only)."""
        return asdict(self)

    def totals(self, action: str | None = None) -> dict[str, int]:
        """Rows per rule (of one `action` only, if given), summed over symbols."""
        out: dict[str, int] = {}
        for c in self.counts:
            if action is None or c["action"] == action:
                out[c["rule"]] = out.get(c["rule"], 0) + c["rows"]
        return out

    def summary(self) -> str:
        """A few human lines: rows in/kept/dropped and the rules that fired most."""
        share = self.rows_dropped / self.rows_in if self.rows_in else 0.0
        lines = [f"{self.source or '<frame>'}: {self.rows_in:,} rows in, {self.rows_kept:,} kept, "
                 f"{self.rows_dropped:,} dropped ({share:.2%}); {len(self.bar_size_s)} symbols"]
        for action in ("dropped", "changed", "masked", "kept"):
            agg = self.totals(action)
            if agg:
                top = sorted(agg.items(), key=lambda kv: -kv[1])[:6]
                label = {"kept": "flagged (kept)"}.get(action, action)
                lines.append(f"  {label}: " + ", ".join(f"{r} {n:,}" for r, n in top))
        lines += ["  " + line for line in bar_change_lines(self.bar_changes, self.bar_size_s)]
        lines += ["  " + line for line in mixed_calendar_lines(self.every_day, self.gaps)]
        if self.extra_columns:
            lines.append("  ignored columns: " + ", ".join(self.extra_columns))
        lines += [f"  timestamps: {note}" for note in self.load_notes.get("timestamp_notes", [])]
        lines += [f"  timestamps: {line}" for line in zone_lines(self.load_notes.get("timezone", {}))]
        lines += [f"  rows without a symbol (bad_symbol): {name} {n:,}"
                  for name, n in self.load_notes.get("missing_symbols", {}).items()]
        lines += file_lines("unparseable timestamps (bad_timestamp)", self.load_notes.get("bad_timestamps_by_file", {}))
        lines += file_lines("cells not numbers (read as missing)", self.load_notes.get("non_numeric_by_file", {}))
        lines += [f"  files sharing a symbol: {sym} ({', '.join(names)}): one series"
                  for sym, names in self.load_notes.get("shared_symbols", {}).items()]
        return "\n".join(lines)


def zone_lines(zone: dict) -> list[str]:
    """What the timestamps written without a zone were read as (data_timezone), and the local times at a DST
    change that were dropped (bad_timestamp)."""
    if not zone.get("naive"):
        return []
    line = f"{zone['naive']:,} written without a zone read as {zone['zone']} (data_timezone)"
    if zone["dates"]:
        line += f"; dates alone stay midnight UTC ({', '.join(zone['dates'])})"
    dst = [f"{zone[k]:,} {what}" for k, what in (("nonexistent", "skipped by the clocks going forward"),
                                                  ("ambiguous", "repeated by the clocks going back")) if zone[k]]
    return [line] + ([f"local times dropped as bad_timestamp: {', '.join(dst)}"] if dst else [])


def file_lines(what: str, by_file: dict, shown: int = 5) -> list[str]:
    """A line naming the files that hold the most of a loader's finding, `by_file` {file: count, or {column:
    count}}, with their counts: a folder's total alone leaves the researcher to search every file."""
    if not by_file:
        return []
    count = lambda v: sum(v.values()) if isinstance(v, dict) else v  # noqa: E731
    cols = lambda v: f" ({', '.join(f'{c} {n:,}' for c, n in v.items())})" if isinstance(v, dict) else ""  # noqa: E731
    top = sorted(by_file.items(), key=lambda kv: -count(kv[1]))
    more = f" and {len(top) - shown} more files" if len(top) > shown else ""
    total = sum(count(v) for v in by_file.values())
    return [f"  {what}: {total:,} in {len(top)} file{'s' * (len(top) > 1)}: "
            + ", ".join(f"{name} {count(v):,}{cols(v)}" for name, v in top[:shown]) + more]


def bar_change_lines(changes: list[dict], bar_size_s: dict[str, float | None]) -> list[str]:
    """A line per bar size change (`QualityReport.bar_changes`: the series restarts there): the symbol, the time and
    the two sizes. Its bars are still counted in the symbol's one bar size, so a coarser stretch's targets may span
    missing bars and be masked: said, since 01's count of masked targets alone does not say why."""
    lines = []
    for c in changes:
        bar = bar_size_s.get(c["symbol"]) or c["from_s"]
        masked = (f"; counted in {bar_words(bar)} bars, a target over a step of more than one (by the clock, or "
                  f"sessions others traded) is masked" if c["to_s"] > bar else "")
        lines.append(f"bar size changes: {c['symbol']} from {c['at']}, {bar_words(c['from_s'])} bars become "
                     f"{bar_words(c['to_s'])} ({c['rows']:,} rows; the series restarts there{masked})")
    return lines


def mixed_calendar_lines(every_day: dict[str, bool], gaps: dict[str, int]) -> list[str]:
    """A line where some symbols trade every day of the week and others an exchange's week (`every_day`): the
    calendar is one for all, continuous where the 24/7 symbols fill the week, and then the exchange's nights and
    weekends count as missing bars (long gaps that restart its series, targets over them masked), which the gap
    count alone does not explain."""
    daily = [s for s, e in every_day.items() if e]
    weekly = [s for s, e in every_day.items() if not e]
    if not daily or not weekly:
        return []
    names = lambda s: ", ".join(s[:5]) + (f" and {len(s) - 5} more" if len(s) > 5 else "")  # noqa: E731
    lost = sum(gaps.get(s, 0) for s in weekly)
    return [f"calendar: mixed markets ({names(daily)}: every day of the week; {names(weekly)}: an exchange's "
            f"week): one calendar for all symbols, 24/7 where the former fill the week, and on it each night and "
            f"weekend of the latter counts as missing bars ({lost:,} long gaps theirs, targets over them masked); "
            f"load the two markets apart"]


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
    """The report of the shards whose parts these are (`clean._shard_part`, in shard order), for this raw frame."""
    extra = list(raw.attrs.get("extra_columns", []))
    extra += [str(col) for col in raw.columns if col not in COLUMNS and col not in keep]
    load_notes = {k: raw.attrs[k] for k in ("n_files", "skipped_files", "timestamp_format", "timestamp_notes",
                                            "bad_timestamps", "bad_timestamps_by_file", "missing_symbols",
                                            "non_numeric", "non_numeric_by_file", "decimal_comma", "shared_symbols",
                                            "timezone")
                  if k in raw.attrs}
    empty = range_stats({c: np.zeros(0) for c in NUM_COLS}, np.zeros(0, dtype=np.int64))
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
        bar_changes=[c for p in parts for c in p.get("bar_changes", [])],
        every_day={k: v for p in parts for k, v in p.get("every_day", {}).items()},
        ranges_before=_merge_ranges([p["before"] for p in parts] or [empty]),
        ranges_after=_merge_ranges([p["after"] for p in parts] or [empty]),
        load_notes=load_notes,
    )

