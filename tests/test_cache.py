"""The feature cache is keyed on the data, the parameters and the feature code: it cannot go stale."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tradelib.config import Config
from tradelib.data import cache, dataset

from .conftest import TINY


def test_prepare_caches_and_reloads_identically(capsys):
    cfg = Config(**TINY)
    first = dataset.prepare(cfg)
    assert "features built" in capsys.readouterr().out
    second = dataset.prepare(cfg)
    assert "cache hit" in capsys.readouterr().out
    for name in first.ARRAYS:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.meta["cache_key"] == second.meta["cache_key"]
    dataset.prepare(cfg, force=True)
    assert "features built" in capsys.readouterr().out


def test_key_changes_with_data_and_feature_parameters(tmp_path):
    base = Config(**TINY)
    key = cache.cache_key(base)
    assert cache.cache_key(base.replace(window=17)) != key
    assert cache.cache_key(base.replace(data_seed=8)) != key
    assert cache.cache_key(base.replace(lr=0.5, batch_size=7, cost_bps=3.0)) == key  # nor other knobs
    assert cache.cache_key(base.replace(spike_sigmas=8.0)) != key  # cleaning shapes the features too
    f = tmp_path / "a.csv"
    f.write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n")
    k1 = cache.cache_key(base.replace(data_path=str(f)))
    f.write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,1,1,2,1\n")
    assert cache.cache_key(base.replace(data_path=str(f))) != k1


def test_key_changes_with_a_numpy_pandas_or_pyarrow_minor_release(monkeypatch):
    """The libraries that compute the features and read the files are part of the key; a patch release is not (a
    resume survives it)."""
    import pandas as pd
    import pyarrow as pa

    base = Config(**TINY)
    key = cache.cache_key(base)
    major, minor, *_ = pd.__version__.split(".")
    monkeypatch.setattr(pd, "__version__", f"{major}.{minor}.999")
    assert cache.cache_key(base) == key
    monkeypatch.setattr(pd, "__version__", f"{major}.{int(minor) + 1}.0")
    assert cache.cache_key(base) != key
    monkeypatch.setattr(np, "__version__", "0.1.0")
    monkeypatch.setattr(pa, "__version__", "99.0.0")
    assert cache.library_versions() == {"numpy": "0.1", "pandas": f"{major}.{int(minor) + 1}", "pyarrow": "99.0"}
    key = cache.cache_key(base)
    monkeypatch.setattr(pa, "__version__", "99.1.0")  # a reader that parses a file otherwise builds afresh
    assert cache.cache_key(base) != key


def test_editing_the_feature_code_invalidates_the_cache(tmp_path):
    """A copy of the package with one edit to features.py computes another key and rebuilds."""
    pkg = Path(cache.__file__).parents[1]
    for variant in ("orig", "edited"):
        shutil.copytree(pkg, tmp_path / variant / "tradelib", ignore=shutil.ignore_patterns("__pycache__"))
    feats = tmp_path / "edited" / "tradelib" / "data" / "features.py"
    feats.write_text(feats.read_text().replace("VOLUME_WINDOW = 64", "VOLUME_WINDOW = 63"))
    script = ("from tradelib.data import dataset; from tradelib.config import Config; "
              f"cfg = Config(**{TINY!r}); fs = dataset.prepare(cfg); print('KEY', fs.meta['cache_key'])")
    env = dict(os.environ, TRADELIB_OUTPUTS=str(tmp_path / "out"))
    outs = {}
    for variant in ("orig", "edited", "orig"):
        res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / variant, env=env,
                             capture_output=True, text=True, check=True)
        outs.setdefault(variant, []).append(res.stdout)
    key = {v: [line for line in o[0].splitlines() if line.startswith("KEY")][0] for v, o in outs.items()}
    assert key["orig"] != key["edited"]
    assert "features built" in outs["edited"][0]  # the edit forced a rebuild
    assert "cache hit" in outs["orig"][1]  # the untouched code still finds its own cache


def test_editing_the_code_of_config_that_shapes_the_features_changes_the_key(tmp_path):
    """config.py's target_reach sets the purge and the rows a symbol needs: an edit to it changes the code
    fingerprint; an edit to a knob's help there does not (the cache stays reused)."""
    pkg = Path(cache.__file__).parents[1]
    edits = {"orig": ("", ""), "reach": ("return self.target_delay + self.horizon\n",
                                         "return self.target_delay + self.horizon + 1\n"),
             "help": ("bars of history per sample", "rows of history per sample")}
    prints = {}
    for variant, (old, new) in edits.items():
        shutil.copytree(pkg, tmp_path / variant / "tradelib", ignore=shutil.ignore_patterns("__pycache__"))
        config = tmp_path / variant / "tradelib" / "config.py"
        assert old in config.read_text()
        config.write_text(config.read_text().replace(old, new))
        prints[variant] = subprocess.run([sys.executable, "-c", "from tradelib.data import cache; "
                                          "print(cache.code_fingerprint())"], cwd=tmp_path / variant,
                                         env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True,
                                         check=True).stdout
    assert prints["reach"] != prints["orig"] == prints["help"]


def test_missing_path_is_a_clear_error(tmp_path):
    import pytest

    from tradelib.data.load import DataError

    with pytest.raises(DataError, match="path does not exist"):
        dataset.prepare(Config(**TINY, data_path=str(tmp_path / "nope.csv")))


def test_key_follows_only_the_files_the_loader_reads(tmp_path):
    folder = tmp_path / "daily"
    folder.mkdir()
    (folder / "AAA.csv").write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n")
    cfg = Config(**TINY, data_path=str(folder))
    key = cache.cache_key(cfg)
    (folder / "README.txt").write_text("notes")  # skipped by the loader
    (folder / ".DS_Store").write_text("x")
    assert cache.cache_key(cfg) == key
    (folder / "BBB.csv").write_text("timestamp,open,high,low,close,volume\n2024-01-01,2,2,2,2,2\n")
    assert cache.cache_key(cfg) != key


def test_hashing_large_data_for_the_key_is_said_small_data_is_not(tmp_path, monkeypatch, capsys):
    """The key hashes every byte of the data on every command: above SAY_HASH_BYTES (a GiB; tens of seconds) a
    line names the path and size before it and the seconds after; below, nothing is printed."""
    folder = tmp_path / "daily"
    folder.mkdir()
    for sym in ("AAA", "BBB"):
        (folder / f"{sym}.csv").write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n" * 10)
    size = sum(f.stat().st_size for f in folder.iterdir())
    cfg = Config(**TINY, data_path=str(folder))
    monkeypatch.setattr(cache, "SAY_HASH_BYTES", size)
    key = cache.cache_key(cfg)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(cache, "SAY_HASH_BYTES", size - 1)
    assert cache.cache_key(cfg) == key
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{folder}: hashing {size / 1e9:.1f} GB of data for the feature cache's key"
    assert len(lines) == 2 and lines[1].startswith(f"{folder}: hashed in ")


def bytes_read() -> int:
    """This process's bytes read by read() calls so far (Linux's /proc/self/io rchar)."""
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io (Linux)")
def test_a_processs_folds_hash_the_data_once_until_a_file_changes(tmp_path):
    """A walk-forward asks for each fold's key, and each read every byte of the data again (seconds a GB, per
    fold). Files left as they were are hashed once per process; a file written since is hashed again, and so is
    one written within SETTLED_NS of the hash (the file clock's tick could hide a second write)."""
    f = tmp_path / "a.csv"
    row = "2024-01-01,1,1,1,1,1\n"
    f.write_text("timestamp,open,high,low,close,volume\n" + row * 200_000)  # 4 MB
    size = f.stat().st_size
    cfg = Config(**TINY, data_path=str(f))
    before = bytes_read()
    key = cache.cache_key(cfg, 0)
    assert bytes_read() - before >= size and cache.cache_key(cfg, 0) == key  # just written: not reused yet
    assert bytes_read() - before >= 2 * size
    time.sleep(cache.SETTLED_NS / 1e9 + 0.1)
    keys = [cache.cache_key(cfg, k) for k in range(3)]  # hashed once, reused by the other two
    before = bytes_read()
    assert [cache.cache_key(cfg, k) for k in range(3)] == keys and keys[0] == key
    assert bytes_read() - before < size / 10
    with f.open("r+") as fh:  # one byte changed in place: same size, same inode
        fh.seek(size - 3)
        fh.write("2")
    assert cache.cache_key(cfg, 0) != key


def test_a_build_that_would_not_fit_in_memory_is_refused_before_the_read(tmp_path):
    """Past the memory left the kernel killed `prepare` minutes in with no word but "Killed". The rows are
    estimated from the files before any is read, their build's memory set against what is available (here a
    made-up 1 MB), and a build that would not fit is refused naming the rows, the estimate, the memory and what
    to change; one that fits goes on."""
    from tradelib.data import memory
    from tradelib.data.load import DataError, estimated_rows

    f = tmp_path / "a.csv"
    f.write_text("timestamp,open,high,low,close,volume\n" + "".join(
        f"2024-01-01T{h:02d}:{m:02d}:00Z,1,1,1,1,1\n" for h in range(24) for m in range(60)) * 20)  # 28,800 rows
    assert estimated_rows([f]) == 28_800
    (tmp_path / "b.csv.gz").write_bytes(b"not gzip")  # the loader's to name (BadGzipFile), not an internal error
    assert estimated_rows([tmp_path / "b.csv.gz"]) == 0
    cfg = Config(**TINY, data_path=str(f))
    need = memory.build_bytes(28_800)
    with pytest.raises(DataError) as err:
        dataset.check_memory(cfg, available=(1_000_000, "a test's budget"))
    said = str(err.value)
    assert said.startswith(f"{f} (") and "about 28,800 rows" in said and f"{need / 1e9:.1f} GB" in said
    assert "the 0.0 GB this process can take (a test's budget)" in said and "fewer symbols" in said
    assert f"at most about {1_000_000 // memory.BUILD_BYTES_PER_ROW:,} rows" in said
    dataset.check_memory(cfg, available=(need + 1, "a test's budget"))
    dataset.check_memory(cfg.replace(memory_check=False), available=(1_000_000, "a test's budget"))  # tries anyway
    with pytest.raises(DataError, match="x 2 processes on this machine: torchrun's ranks each read"):
        dataset.check_memory(cfg, available=(need + 1, "a test's budget"), processes=2)
    assert "memory_check false tries anyway" in said
    with pytest.raises(DataError, match="the synthetic market: about 4,500 rows"):
        dataset.check_memory(Config(**TINY), available=(1000, "a test's budget"))


@pytest.mark.parametrize("entry, value", [("arrays", []), ("shards", {}), ("meta", []), ("rows", "x"),
                                          ("shards", [{"rows": "x"}])])
def test_a_manifest_of_the_wrong_structure_is_a_damaged_cache_and_rebuilt(capsys, entry, value):
    """Valid JSON that is not a cache's manifest (an entry of another type) is a damaged cache: named, and rebuilt."""
    cfg = Config(**TINY)
    first = dataset.prepare(cfg)
    manifest = Path(first.meta["cache_dir"]) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), entry: value}))
    capsys.readouterr()
    again = dataset.prepare(cfg)
    out = capsys.readouterr().out
    assert f"{manifest}: " in out and "the feature cache is damaged; rebuilding it" in out
    for name in first.ARRAYS:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
