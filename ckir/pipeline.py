"""Passes, the pass registry, pipeline strings and the pass manager.

A pass is a class with a `name`, typed options (annotated class attributes with defaults) and
`run(module)`:

    @register_pass
    class Unroll(Pass):
        '''Unrolls things.'''
        name = "unroll"
        factor: int = 4
        def run(self, module):
            ...
            self.stat("loops unrolled")

Pipelines are strings: `canonicalize,cse,unroll{factor=8},dce`. A list option takes several
comma-separated values (`autodiff{wrt=w1,w2,loss=y}`) or brackets (`wrt=[w1,w2]`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
import time
import typing
from collections import Counter

from .errors import CkirError, PassError
from .ir import Module, gc_paused

_PASSES: dict[str, type] = {}
_entry_points_loaded = False


class Pass:
    """Base class of passes. Subclasses set `name`, declare options as annotated attributes,
    and implement `run(module)`. Set `open_options = True` to accept any `key=int` options,
    collected in `self.extra` (used by specialize{seq=128})."""
    name: typing.ClassVar[str] = ""
    open_options: typing.ClassVar[bool] = False

    @property
    def statistics(self) -> Counter:
        c = self.__dict__.get("_statistics")
        if c is None:
            c = self.__dict__["_statistics"] = Counter()
        return c

    @property
    def extra(self) -> dict:
        return self.__dict__.setdefault("_extra", {})

    @extra.setter
    def extra(self, value: dict) -> None:
        self.__dict__["_extra"] = dict(value)

    def stat(self, key: str, n: int = 1) -> None:
        """Count something for --stats."""
        self.statistics[key] += n

    def run(self, module: Module) -> None:
        raise NotImplementedError

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    def __str__(self):
        opts = [f"{f.name}={_fmt_opt(getattr(self, f.name))}" for f in self.options()
                if getattr(self, f.name) != _default(f)]
        opts += [f"{k}={v}" for k, v in self.extra.items()]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fmt_opt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def register_pass(cls=None, *, replace: bool = False):
    """Register a pass class by its `name` (usable as a decorator). Makes it a dataclass."""
    def do(cls):
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise CkirError(f"register_pass expects a Pass subclass, got {cls!r}")
        if not cls.name:
            raise CkirError(f"pass class {cls.__name__} has no name")
        if cls.name in _PASSES and _PASSES[cls.name] is not cls and not replace:
            raise CkirError(f"a pass named '{cls.name}' is already registered "
                            f"({_PASSES[cls.name].__module__}.{_PASSES[cls.name].__name__})")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(cls)
        _PASSES[cls.name] = cls
        return cls
    return do(cls) if cls is not None else do


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import ckir.passes  # noqa: F401  (our own passes register on import)
    from importlib.metadata import entry_points
    for ep in entry_points(group="ckir.passes"):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not break ckir
            print(f"warning: cannot load pass plugin {ep.name} ({ep.value}): {e}", file=sys.stderr)
            continue
        if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _PASSES:
            register_pass(obj)


def registered_passes() -> dict[str, type]:
    _load_entry_points()
    return dict(sorted(_PASSES.items()))


def load_plugin(path: str) -> None:
    """Execute a Python file that registers passes (the CLI's --plugin)."""
    if not os.path.isfile(path):
        raise CkirError(f"plugin {path}: no such file")
    modname = "ckir_plugin_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    if modname in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except CkirError:
        del sys.modules[modname]
        raise
    except Exception as e:
        del sys.modules[modname]
        raise CkirError(f"plugin {path} failed to load: {type(e).__name__}: {e}") from e


# --- pipeline strings --------------------------------------------------------------------------
def _split(s: str, what: str) -> list[str]:
    """Split on commas at depth 0 (outside {}, [] and quotes)."""
    out, depth, cur, quote = [], 0, [], None
    for c in s:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth < 0:
                raise PassError(f"malformed {what} '{s}': unbalanced '{c}'")
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(c)
    if depth or quote:
        raise PassError(f"malformed {what} '{s}': unclosed {'quote' if quote else 'bracket'}")
    out.append("".join(cur).strip())
    return out


def _convert(pname: str, key: str, typ, raw):
    """Convert an option's text (or list of texts) to the declared type."""
    origin = typing.get_origin(typ)
    if origin in (list, tuple):
        (inner,) = typing.get_args(typ)[:1] or (str,)
        items = raw if isinstance(raw, list) else (
            [x for x in _split(raw[1:-1], "list") if x] if raw.startswith("[") and raw.endswith("]") else [raw])
        return [_convert(pname, key, inner, x) for x in items]
    if isinstance(raw, list):
        raise PassError(f"pass '{pname}': option '{key}' takes one value, got {','.join(raw)}")
    if origin is typing.Union or isinstance(typ, type(int | None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw in ("none", "None", ""):
            return None
        return _convert(pname, key, args[0], raw)
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw, 0)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
    except ValueError:
        raise PassError(f"pass '{pname}': option '{key}' expects {typ.__name__}, got '{raw}'") from None
    raise PassError(f"pass '{pname}': option '{key}' has unsupported type {typ}")


def make_pass(name: str, raw_opts: dict) -> Pass:
    passes = registered_passes()
    cls = passes.get(name)
    if cls is None:
        raise PassError(f"unknown pass '{name}' (registered: {', '.join(passes)})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in cls.options()}
    kwargs, extra = {}, {}
    for k, v in raw_opts.items():
        if k in fields:
            kwargs[k] = _convert(name, k, hints[k], v)
        elif cls.open_options:
            extra[k] = _convert(name, k, int, v)
        else:
            raise PassError(f"pass '{name}': unknown option '{k}' "
                            f"(options: {', '.join(fields) or 'none'})")
    missing = [f for f in fields.values() if _default(f) is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise PassError(f"pass '{name}': option '{missing[0].name}' is required")
    p = cls(**kwargs)
    p.extra = extra
    return p


def parse_pipeline(text: str) -> list[Pass]:
    """`a,b{k=v,...},c` -> pass instances. Errors name the pass and option at fault."""
    if not isinstance(text, str):
        raise PassError(f"a pipeline is a string like 'canonicalize,cse', got {type(text).__name__}")
    text = text.strip()
    if not text:
        return []
    out = []
    for item in _split(text, "pipeline"):
        if not item:
            raise PassError(f"malformed pipeline '{text}': empty pass name")
        if "{" in item:
            if not item.endswith("}"):
                raise PassError(f"malformed pipeline '{text}': '{item}' must end with '}}'")
            name, body = item[:item.index("{")].strip(), item[item.index("{") + 1:-1]
        else:
            name, body = item, ""
        opts: dict = {}
        last = None
        for kv in _split(body, f"options of '{name}'") if body.strip() else []:
            if "=" in kv:
                k, v = kv.split("=", 1)
                k = k.strip()
                if not k:
                    raise PassError(f"pass '{name}': option without a name in '{kv}'")
                if k in opts:
                    raise PassError(f"pass '{name}': option '{k}' given twice")
                opts[k] = v.strip()
                last = k
            elif last is not None and kv:   # continues a list: wrt=a,b
                prev = opts[last]
                opts[last] = (prev if isinstance(prev, list) else [prev]) + [kv]
            else:
                raise PassError(f"pass '{name}': expected key=value, got '{kv}'")
        out.append(make_pass(name, opts))
    return out


# --- the pass manager --------------------------------------------------------------------------
class PassManager:
    """Runs a pipeline: verifies after each pass, prints IR on request, times passes and collects
    statistics. On a failure the error names the pass; with `dump_on_failure=PATH` the IR the
    failing pass received is written to PATH."""

    def __init__(self, pipeline, *, verify: bool = True, print_ir_before_all: bool = False,
                 print_ir_after_all: bool = False, print_ir_after_change: bool = False,
                 timing: bool = False, stats: bool = False, dump_on_failure: str | None = None,
                 out=None):
        self.passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        self.verify = verify
        self.print_before, self.print_after = print_ir_before_all, print_ir_after_all
        self.print_after_change = print_ir_after_change
        self.timing, self.stats = timing, stats
        self.dump_on_failure = dump_on_failure
        self.out = out
        self.times: list[tuple[str, float]] = []
        self.records: list[dict] = []

    def _emit(self, text: str) -> None:
        (self.out or sys.stderr).write(text)

    def run(self, module: Module) -> Module:
        from .verifier import verify
        if self.verify:
            t0 = time.perf_counter()
            verify(module)
            self.times.append(("(verify input)", time.perf_counter() - t0))
        for p in self.passes:
            before_text = None
            if self.print_before:
                before_text = module.print()
                self._emit(f"// -----// IR Dump Before {p} //----- //\n{before_text}\n")
            if self.print_after_change or self.dump_on_failure:
                before_text = before_text or module.print()
            n_before = module.num_ops()
            t0 = time.perf_counter()
            try:
                with gc_paused():
                    p.run(module)
            except Exception as e:
                self._dump(before_text)
                if isinstance(e, CkirError):
                    raise PassError(f"pass '{p}' failed: {e}") from e
                raise PassError(f"pass '{p}' failed with an internal error: "
                                f"{type(e).__name__}: {e}") from e
            dt_ = time.perf_counter() - t0
            self.times.append((str(p), dt_))
            if self.verify:
                t0 = time.perf_counter()
                try:
                    verify(module)
                except CkirError as e:
                    self._dump(before_text)
                    raise PassError(f"pass '{p}' produced invalid IR: {e}") from e
                self.times.append(("(verify)", time.perf_counter() - t0))
            n_after = module.num_ops()
            self.records.append({"pass": str(p), "ops_before": n_before, "ops_after": n_after,
                                 "seconds": dt_, "statistics": dict(p.statistics)})
            if self.print_after:
                self._emit(f"// -----// IR Dump After {p} //----- //\n{module.print()}\n")
            elif self.print_after_change:
                after = module.print()
                if after != before_text:
                    self._emit(f"// -----// IR Dump After {p} (changed) //----- //\n{after}\n")
        if self.timing:
            self._emit(self.timing_report())
        if self.stats:
            self._emit(self.stats_report())
        return module

    def _dump(self, text: str | None) -> None:
        if self.dump_on_failure and text is not None:
            with open(self.dump_on_failure, "w") as f:
                f.write(text)
            self._emit(f"note: the IR the failing pass received is in {self.dump_on_failure}\n")

    def timing_report(self) -> str:
        total = sum(t for _, t in self.times) or 1e-12
        lines = ["===" + "-" * 60 + "===", "  ... Pass execution timing report ...",
                 "===" + "-" * 60 + "===", f"  Total Execution Time: {total:.4f} seconds", "",
                 "  ----Wall Time----  ----Name----"]
        for name, t in self.times:
            lines.append(f"  {t:8.4f} ({100 * t / total:5.1f}%)  {name}")
        lines.append(f"  {total:8.4f} (100.0%)  Total")
        return "\n".join(lines) + "\n"

    def stats_report(self) -> str:
        lines = ["===" + "-" * 60 + "===", "  ... Pass statistics report ...",
                 "===" + "-" * 60 + "==="]
        for r in self.records:
            lines.append(f"{r['pass']}")
            lines.append(f"  {r['ops_before']:>10}  ops before")
            lines.append(f"  {r['ops_after']:>10}  ops after")
            for k, v in sorted(r["statistics"].items()):
                lines.append(f"  {v:>10}  {k}")
        return "\n".join(lines) + "\n"


def run_pipeline(module: Module, pipeline, **kw) -> Module:
    return PassManager(pipeline, **kw).run(module)
