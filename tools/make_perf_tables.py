"""Make docs/perf.md's GPU tables from the GPU check's files, so that every GPU figure there can be traced.

    python tools/make_perf_tables.py            # rewrite the part of docs/perf.md between the markers
    python tools/make_perf_tables.py --check    # exit 1 if docs/perf.md is not what the files give

Reads docs/gpu-runs/*.json (written by `bash tools/gpu_check.sh`, named <date>-<device>-<commit>), newest first;
each table names its file. A projected figure says "projected"; NVML's busy % stands beside MFU, never alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS, DOC = ROOT / "docs" / "gpu-runs", ROOT / "docs" / "perf.md"
BEGIN = "<!-- gpu-tables: made by tools/make_perf_tables.py from docs/gpu-runs/*.json; edit those, not this -->"
END = "<!-- gpu-tables: end -->"
NONE = ("No GPU run file is in `docs/gpu-runs/` yet (the three earlier H200 runs left none): every GPU figure of "
        "this page is open until `bash tools/gpu_check.sh` runs on a GPU and its two files are committed there.")


def num(value, fmt: str, na: str = "n/a") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else na


def mfu(r: dict) -> str:
    if r.get("mfu_invalid") is not None:
        return "invalid"
    return num(r.get("mfu"), ".1%")


def busy(r: dict) -> str:
    value = r.get("gpu_busy_pct")
    return f"{value:.0f}%" if isinstance(value, (int, float)) and value == value else "n/a"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                             for r in rows]


def run_section(name: str, result: dict) -> list[str]:
    """One check's figures: its targets, the bench rows, the epoch, the streamed data; every table names the file."""
    env, f = result["figures"].get("env") or {}, result["figures"]
    commit = str(env.get("git_commit") or "unknown").split()[0][:10]
    kind = " (quick dry run: not GPU figures)" if result.get("quick") else ""
    out = [f"### `{name}.json`{kind}", "",
           f"{env.get('device_name', result['device'])}, torch {env.get('torch')}, CUDA {env.get('cuda')}, commit "
           f"{commit}, started {result.get('started')}; the check {'passed' if result.get('passed') else 'FAILED'} "
           f"(its log: `{name}.log`).", ""]
    if result.get("targets"):
        out += table(["target (issue 19)", "want", "measured", "met"],
                     [[t["target"], t["want"], t["shown"], {True: "yes", False: "**no**", None: "n/a"}[t["met"]]]
                      for t in result["targets"]]) + [""]
    bench = (f.get("bench") or {}).get("records", [])
    if bench:
        out += table(["bench row", "batch", "samples/s", "data wait", "MFU", "NVML busy", "graph / eager",
                      "loader gain"],
                     [[r["label"], f"{r['batch_size']} {r.get('batch_unit', '')}".strip(),
                       num(r["samples_per_s"], ",.0f"), num(r["data_wait_share"], ".1%"), mfu(r), busy(r),
                       num(r.get("graph_speedup"), ".2f") + ("x" if r.get("graph_speedup") else ""),
                       num(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else "")] for r in bench]) + [""]
    e = f.get("epoch")
    if e:
        out += [f"Epoch, full.yaml with no flags ({e['model']}, {e['loader']} loader, batch {e['batch_size']}, step "
                f"graph {'replayed ' + str(e['graph_steps']) + ' steps' if e.get('graph_steps') else 'not used'}): "
                f"{num(e['samples_per_s'], ',.0f')} samples/s steady, data wait {num(e['data_wait_share'], '.1%')}, "
                f"MFU {mfu(e)} with NVML busy {busy(e)}; the epoch {e['epoch_measured']}; **projected** from the "
                f"steady rate: {num(e['projected_epoch_s'], '.1f')} s.", ""]
    streamed = (f.get("stream") or {}).get("records", [])
    if streamed:
        out += table(["streamed data (`bench --stream`)", "samples/s", "data wait", "MFU", "NVML busy"],
                     [[r["label"], num(r["samples_per_s"], ",.0f"), num(r["data_wait_share"], ".1%"), mfu(r),
                       busy(r)] for r in streamed]) + [""]
    return out


def render(runs: Path) -> str:
    files = sorted(runs.glob("*.json"), reverse=True)
    if not files:
        return "\n".join([BEGIN, "", NONE, "", END])
    lines = [BEGIN, ""]
    for path in files:
        lines += run_section(path.stem, json.loads(path.read_text()))
    return "\n".join(lines + [END])


def replaced(doc: str, block: str, where: Path) -> str:
    if doc.count(BEGIN) != 1 or doc.count(END) != 1:
        raise SystemExit(f"{where}: expected one pair of gpu-tables markers ({BEGIN!r} ... {END!r})")
    head, rest = doc.split(BEGIN)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(RUNS), help="folder of the GPU check's files (default docs/gpu-runs)")
    p.add_argument("--doc", default=str(DOC), help="the page to update (default docs/perf.md)")
    p.add_argument("--check", action="store_true", help="exit 1 if the page is not what the files give")
    args = p.parse_args(argv)
    doc_path = Path(args.doc)
    doc = doc_path.read_text()
    new = replaced(doc, render(Path(args.runs)), doc_path)
    if args.check:
        if new != doc:
            print(f"{doc_path}: the GPU tables differ from {args.runs}: run python tools/make_perf_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    doc_path.write_text(new)
    print(f"updated {doc_path} from {len(list(Path(args.runs).glob('*.json')))} run file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
