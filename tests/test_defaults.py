"""Defaults live once, in `Config`: no function or method of tradelib restates a Config default in its
signature (it takes the Config, a settings object built from it, or a required argument)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import types
from collections.abc import Iterator

import tradelib
from tradelib.config import Config

CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING}

# Module prefixes left out. Config itself: its fields are where the defaults live (and `knob(resume=False)` is
# knob's metadata, not a restated default). A parameter that shares a Config field's name but means something
# else would be listed here with why; there is none.
ALLOWED = ("tradelib.config",)


def restated_defaults(fn, where: str) -> list[str]:
    """`where(param=default)` for each parameter of `fn` named like a Config field whose default is that field's
    default (same type and value: `hidden=64.0` is not `hidden=64`, `resume=0` is not `resume=False`)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name not in CONFIG_DEFAULTS or p.default is inspect.Parameter.empty:
            continue
        default = CONFIG_DEFAULTS[p.name]
        if type(p.default) is type(default) and p.default == default:
            out.append(f"{where}({p.name}={p.default!r})")
    return out


def functions(module: types.ModuleType) -> Iterator[tuple[str, types.FunctionType]]:
    """(qualified name, function) of every function and method defined in `module` (not imported into it)."""
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                fn = getattr(member, "__func__", member)  # staticmethod, classmethod
                if inspect.isfunction(fn):
                    yield f"{module.__name__}.{name}.{attr}", fn


def offenders(modules: list[types.ModuleType]) -> list[str]:
    return [hit for m in modules for where, fn in functions(m) for hit in restated_defaults(fn, where)]


def tradelib_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(tradelib.__path__, "tradelib.")]
    return [importlib.import_module(n) for n in names
            if not n.endswith(".__main__") and not any(n == a or n.startswith(a + ".") for a in ALLOWED)]


def test_no_signature_restates_a_config_default():
    modules = tradelib_modules()
    assert len(modules) > 30  # the walk found the package
    found = offenders(modules)
    assert not found, ("these signatures restate a Config default (take the Config, a settings object built from "
                       "it, or make the parameter required):\n" + "\n".join(found))


def test_a_planted_restated_default_is_flagged():
    """The same check on a made-up module: a function, a method, a static method and a keyword-only parameter
    repeating Config's default are flagged; another value, another type, None and a required one are not."""
    d = Config()
    src = f"""
def planted(x, window={d.window!r}, lr={d.lr * 2!r}, hidden={float(d.hidden)!r}, resume={int(d.resume)!r},
            batch_size=None, *, model={d.model!r}, epochs):
    return x

class Planted:
    def method(self, dense={d.dense!r}):
        return dense

    @staticmethod
    def static(cost_bps={d.cost_bps!r}):
        return cost_bps
"""
    module = types.ModuleType("planted_module")
    exec(compile(src, "planted_module", "exec"), module.__dict__)
    assert offenders([module]) == [
        f"planted_module.planted(window={d.window!r})", f"planted_module.planted(model={d.model!r})",
        f"planted_module.Planted.method(dense={d.dense!r})", f"planted_module.Planted.static(cost_bps={d.cost_bps!r})",
    ]
