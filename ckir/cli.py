"""The `ckir` command line: opt, run, dump, passes, generate, bench, ...

A user error prints one line `error: ...` to stderr and exits 1; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .errors import CkirError

EPILOG = "Run 'ckir COMMAND --help' for a command's options."


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load a Python file that registers passes (repeatable)")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    p.add_argument("--no-cache", action="store_true",
                   help="compile with the llvm backend without reading or writing the disk cache "
                        "(CKIR_CACHE_DIR)")


def _passes_arg(p, default=None):
    p.add_argument("--passes", "-p", default=default, metavar="PIPELINE",
                   help="pass pipeline, e.g. 'canonicalize,cse,dce' or 'specialize{seq=128}' "
                        "(see 'ckir passes')")


def _bind(items) -> dict:
    out = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise CkirError(f"--bind expects NAME=SIZE, got '{it}'")
        try:
            out[k] = int(v)
        except ValueError:
            raise CkirError(f"--bind {k}: size must be an integer, got '{v}'") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ckir", description="ckir: a graph IR and optimizer for AI models on CPUs. "
        "Load a model (.ckir text IR or .onnx), run passes, inspect and run it.", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"ckir {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("opt", help="run a pass pipeline and print or save the IR",
                       description="Run a pass pipeline on a model and print the resulting IR "
                       "(or write it with -o). The IR is verified before and after every pass.")
    p.add_argument("input", help="model file (.ckir or .onnx)")
    _passes_arg(p, "")
    p.add_argument("-o", "--output", help="write the IR here (big in-memory weights go to OUTPUT.bin)")
    p.add_argument("--print-ir-before-all", action="store_true", help="print the IR before each pass (stderr)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after each pass (stderr)")
    p.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR after each pass that changed it (stderr)")
    p.add_argument("--timing", action="store_true", help="report the time each pass took (stderr)")
    p.add_argument("--stats", action="store_true", help="report pass statistics (stderr)")
    p.add_argument("--no-verify", action="store_true", help="do not verify between passes")
    p.add_argument("--dump-on-failure", metavar="FILE", help="if a pass fails, write the IR it received to FILE")
    _common(p)

    p = sub.add_parser("run", help="run a model on inputs from .npy files",
                       description="Run a model's graph with the given backend and print (or save) "
                       "its outputs. Inputs come from .npy files or, with --random, are generated.")
    p.add_argument("input", help="model file (.ckir or .onnx)")
    p.add_argument("--input", "-i", dest="inputs", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input array (repeatable)")
    p.add_argument("--random", action="store_true",
                   help="generate random values for inputs not given (symbolic dims from --bind, "
                        "else their bound, else 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    p.add_argument("--bind", action="append", metavar="NAME=SIZE", help="size of a symbolic dim for --random")
    _passes_arg(p)
    p.add_argument("--backend", default="interp", help="backend (default: interp)")
    p.add_argument("--graph", help="graph to run (default: the only one, or @main)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save the outputs to an .npz file")
    p.add_argument("--print-ir", action="store_true", help="print the IR that runs (after passes)")
    _common(p)

    p = sub.add_parser("dump", help="summarize a model: signature, ops by kind, weights, FLOPs and bytes",
                       description="Summarize a model from its op declarations: graph signatures, "
                       "ops by kind, weight bytes, and FLOPs and bytes moved estimated from each "
                       "op's declared cost.")
    p.add_argument("input", help="model file (.ckir or .onnx)")
    _passes_arg(p)
    p.add_argument("--bind", action="append", metavar="NAME=SIZE",
                   help="size of a symbolic dim for the estimates")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--arena", action="store_true",
                   help="print the memory plan (after the arena pass): tensor, section, offset, size, live range")
    p.add_argument("--arena-svg", metavar="FILE", help="draw the memory plan as an SVG (time x offset)")
    _common(p)

    p = sub.add_parser("compile", help="emit native code (asm, LLVM IR or an object file) for a target",
                       description="Generate the LLVM backend's code for a model's graph on a target "
                       "(any target, runnable here or not): assembly, optimized LLVM IR, or an "
                       "object file. Ops without a native kernel are listed; they would run in the "
                       "interpreter.")
    p.add_argument("input", help="model file (.ckir or .onnx)")
    p.add_argument("--target", "-t", help="scalar, avx2, avx512, amx or neon (default: $CKIR_TARGET or the host's best)")
    p.add_argument("--emit", choices=["asm", "llvm", "obj"], default="asm", help="what to write (default asm)")
    p.add_argument("-o", "--output", help="file to write (default: stdout for asm/llvm)")
    _passes_arg(p)
    p.add_argument("--graph", help="graph to compile (default: the only one, or @main)")
    _common(p)

    p = sub.add_parser("targets", help="show the CPU targets this machine runs and the kernels ops use",
                       description="Print the host CPU and its features as LLVM and /proc/cpuinfo "
                       "see them, every target with whether it can run here, and the kernel family "
                       "each op with a native kernel uses.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)

    p = sub.add_parser("export-onnx", help="write a model as ONNX (for ops that map back)",
                       description="Run optional passes, then write the module's graph as an ONNX "
                       "model that onnxruntime or Netron can open. Ops without an ONNX mapping are "
                       "reported by name.")
    p.add_argument("input", help="model file (.ckir or .onnx)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    _passes_arg(p)
    p.add_argument("--graph", help="graph to export (default: the only one, or @main)")
    _common(p)

    p = sub.add_parser("train", help="train a language model on a text file",
                       description="Train a model mapping token ids [batch, seq] to logits [batch, seq, "
                       "vocab] (an ONNX model with float initializers, or a .ckir module) on a text file "
                       "read as bytes, with the next-token cross-entropy loss. The whole step (forward, "
                       "backward, optimizer update) is compiled once. Checkpoints are written "
                       "atomically; --resume continues exactly where a run stopped.")
    p.add_argument("input", help="model file (.onnx or .ckir)")
    p.add_argument("--data", required=True, help="training text (read as bytes)")
    p.add_argument("--steps", type=int, required=True, help="train until this many steps in total")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="(default adamw)")
    p.add_argument("--save", metavar="CKPT", help="write a checkpoint (.npz) every 10 steps and at the end")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    p.add_argument("--backend", default="interp", help="backend (default: interp)")
    p.add_argument("--remat", action="store_true",
                   help="recompute cheap activations in the backward pass instead of keeping them")
    p.add_argument("--json", action="store_true", help='one line per step: {"step": .., "loss": ..}')
    _common(p)

    p = sub.add_parser("generate", help="generate text with a GGUF language model",
                       description="Load a GGUF model (llama, qwen2, qwen3, gemma3) and generate up to "
                       "N tokens after the prompt, streaming the text to stdout. temp 0 is greedy; "
                       "sampling applies the repetition penalty, top-k, top-p, min-p, then the "
                       "temperature (llama.cpp's order). Stops at an end-of-generation token.")
    p.add_argument("input", help="model file (.gguf)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("-n", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature (default 0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1: off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the best (default 0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="penalty on the last 64 tokens (default 1: off)")
    p.add_argument("--seed", type=int, help="random seed for sampling (default: fresh entropy)")
    p.add_argument("--threads", type=int, help="threads (llvm backend; default: all CPUs)")
    p.add_argument("--ctx", type=int, help="context length: KV cache positions (default: the "
                   "model's, at most 2048)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--backend", default="interp", help="backend: interp or llvm (default: interp)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"prompt_tokens", "tokens", "text", "prefill_tok_s", '
                        '"decode_tok_s"} instead of streaming')
    _common(p)

    p = sub.add_parser("bench", help="measure prefill and decode speed of a GGUF language model",
                       description="Load a GGUF model, prefill a prompt of --prompt-len tokens, then "
                       "decode --gen tokens greedily; report tokens per second, peak RSS, the "
                       "model file size and the load time.")
    p.add_argument("input", help="model file (.gguf)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--gen", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--threads", type=int, help="threads (llvm backend; default: all CPUs)")
    p.add_argument("--ctx", type=int, help="context length (default: prompt-len + gen)")
    p.add_argument("--backend", default="interp", help="backend: interp or llvm (default: interp)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)

    p = sub.add_parser("passes", help="list registered passes and their options",
                       description="List every registered pass (ours, entry-point plugins and "
                       "--plugin files) with its options, types and defaults.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)
    return ap


def _version() -> str:
    from . import __version__
    return __version__


def _load(path: str, passes: str | None):
    import ckir
    m = ckir.load(path)
    if passes:
        ckir.run_pipeline(m, passes)
    return m


def cmd_opt(a) -> int:
    import ckir
    m = ckir.load(a.input)
    ckir.PassManager(a.passes, verify=not a.no_verify, print_ir_before_all=a.print_ir_before_all,
                     print_ir_after_all=a.print_ir_after_all,
                     print_ir_after_change=a.print_ir_after_change, timing=a.timing, stats=a.stats,
                     dump_on_failure=a.dump_on_failure).run(m)
    if a.output:
        ckir.save(m, a.output)
    else:
        sys.stdout.write(m.print())
        lost = [w.name for w in m.weights.values() if _prints_as_memory(w)]
        if lost:
            print(f"warning: {len(lost)} weight(s) print as 'memory' (their bytes are not in the "
                  f"text, e.g. @{lost[0]}); use -o FILE to save them", file=sys.stderr)
    return 0


def _prints_as_memory(w) -> bool:
    from .printer import fmt_weight
    return fmt_weight(w).endswith("= memory")


def _random_input(t, bind: dict, rng) -> np.ndarray:
    shape = []
    for d in t.shape:
        if type(d) is int:
            shape.append(d)
        elif d.name in bind:
            shape.append(bind[d.name])
        else:
            size = min(d.bound, 4) if d.bound is not None else 1
            if d.name:
                bind[d.name] = size
            shape.append(size)
    dt = t.dtype
    if dt.is_float:
        return rng.standard_normal(shape).astype(dt.np)
    if dt.is_int:
        return rng.integers(0, 4, shape).astype(dt.np)
    if dt.is_bool:
        return rng.random(shape) < 0.5
    raise CkirError(f"cannot generate random {dt} inputs")


def cmd_run(a) -> int:
    import ckir
    m = _load(a.input, a.passes)
    f = ckir.compile(m, backend=a.backend, graph=a.graph)
    given = {}
    for it in a.inputs:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise CkirError(f"--input expects NAME=FILE.npy, got '{it}'")
        if name not in f.input_names:
            raise CkirError(f"graph @{f.graph.name} has no input '{name}' (inputs: {', '.join(f.input_names)})")
        try:
            given[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CkirError(f"--input {name}: cannot read {path}: {e}") from None
    missing = [n for n in f.input_names if n not in given]
    if missing and not a.random:
        raise CkirError(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        "(give --input NAME=FILE.npy, or --random)")
    bind = _bind(a.bind)
    rng = np.random.default_rng(a.seed)
    for n, t in zip(f.input_names, f.input_types):
        if n not in given:
            given[n] = _random_input(t, bind, rng)
    if a.print_ir:
        sys.stdout.write(m.print() + "\n")
    outs = f(**given)
    if a.output:
        np.savez(a.output, **outs)
        print(f"wrote {len(outs)} output{'s' if len(outs) != 1 else ''} to {a.output}")
    else:
        for n, v in outs.items():
            print(f"{n}: {v.dtype}{list(v.shape)}")
            print(np.array2string(v, threshold=64, edgeitems=3, precision=5))
    return 0


def cmd_dump(a) -> int:
    from ckir.passes.arena import placements, section_stats, svg

    from .report import format_summary, summarize
    m = _load(a.input, a.passes)
    s = summarize(m, _bind(a.bind))
    # the memory plan of @main, or of the first graph (a GGUF model has prefill, decode, score)
    g = m.graphs.get("main") or next(iter(m.graphs.values()))
    placed = placements(g)
    if (a.arena or a.arena_svg) and not placed:
        raise CkirError("the module has no memory plan: add arena to --passes (e.g. "
                        "--passes 'specialize{seq=128},arena')")
    if placed:
        s["arena"] = section_stats(g)
    if a.arena_svg:
        from .api import _atomic_write
        text = svg(g)
        _atomic_write(a.arena_svg, lambda f: f.write(text.encode()))
    if a.json:
        if a.arena:
            s["arena_table"] = placed
        print(json.dumps(s, indent=2))
        return 0
    sys.stdout.write(format_summary(s))
    if placed:
        for sec, st in s["arena"].items():
            print(f"arena {sec}: peak {st['peak_bytes']} bytes, lower bound {st['lower_bound_bytes']}, "
                  f"without reuse {st['no_reuse_bytes']} ({st['tensors']} buffers)")
    if a.arena:
        print(f"{'tensor':<40} {'section':<12} {'offset':>12} {'size':>12} {'live':>12}")
        for r in placed:
            print(f"{r['value'][:40]:<40} {r['section']:<12} {r['offset']:>12} {r['size']:>12} "
                  f"{r['first']:>5}-{r['last']:<6}")
    if a.arena_svg:
        print(f"wrote {a.arena_svg}")
    return 0


def cmd_compile(a) -> int:
    from .backends.llvm.plan import emit
    m = _load(a.input, a.passes)
    out = emit(m, a.graph, a.target, a.emit)
    if a.output:
        from .api import _atomic_write
        data = out if isinstance(out, bytes) else out.encode()
        _atomic_write(a.output, lambda f: f.write(data))
        print(f"wrote {a.output} ({len(data)} bytes)")
    elif isinstance(out, bytes):
        raise CkirError("an object file is binary: give -o FILE")
    else:
        sys.stdout.write(out)
    return 0


def cmd_targets(a) -> int:
    from .backends.llvm import target as tg
    from .backends.llvm.codegen import _EMITTERS
    info = {"cpu": tg.host_cpu(), "features": sorted(tg.host_features()), "best": tg.best_host_target(),
            "targets": {}}
    for name in tg.NAMES:
        t = tg.make_target(name)
        info["targets"][name] = {"runnable": tg.runnable(name), "triple": t.triple, "cpu": t.cpu,
                                 "vector_bits": t.vector_bits, "extras": sorted(t.extras)}
    families: dict = {}
    for op, fn in sorted(_EMITTERS.items()):
        families.setdefault(fn.__module__.rsplit(".", 1)[-1], []).append(op)
    info["kernels"] = families
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"host cpu: {info['cpu']}   best target: {info['best']}")
    print(f"features: {' '.join(info['features'])}")
    for name, t in info["targets"].items():
        mark = "runs here" if t["runnable"] else "compile only"
        extras = f" ({', '.join(t['extras'])})" if t["extras"] else ""
        print(f"  {name:<7} {mark:<12} {t['triple']:<28} {t['vector_bits']:>4}-bit vectors{extras}")
    print("kernel families (ops without one run in the interpreter):")
    for fam, ops in families.items():
        print(f"  {fam}: {', '.join(ops)}")
    return 0


def cmd_export_onnx(a) -> int:
    m = _load(a.input, a.passes)
    model = m.to_onnx(a.graph)
    from .api import _atomic_write
    _atomic_write(a.output, lambda f: f.write(model.SerializeToString()))
    print(f"wrote {a.output} (opset {model.opset_import[0].version}, {len(model.graph.node)} nodes)")
    return 0


def cmd_train(a) -> int:
    from .train import train
    if a.steps < 1 or a.batch < 1 or a.seq < 1:
        raise CkirError("--steps, --batch and --seq must be positive")
    train(a.input, a.data, a.steps, batch=a.batch, seq=a.seq, lr=a.lr, optimizer=a.optimizer,
          save=a.save, resume=a.resume, json_lines=a.json, backend=a.backend, remat=a.remat)
    return 0


def cmd_generate(a) -> int:
    from . import llm as llm_mod
    llm = llm_mod.load(a.input, ctx=a.ctx, backend=a.backend, threads=a.threads)

    def stream(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()
    out = llm.generate(a.prompt, a.n, temp=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                       repeat_penalty=a.repeat_penalty, seed=a.seed, chat=a.chat,
                       stream=None if a.json else stream)
    if a.json:
        print(json.dumps(out.as_dict(), ensure_ascii=False))
    else:
        print()
        print(f"[{len(out.prompt_tokens)} prompt tokens at {out.prefill_tok_s:.1f} tok/s, "
              f"{len(out.tokens)} generated at {out.decode_tok_s:.1f} tok/s, backend {a.backend}]",
              file=sys.stderr)
    return 0


def cmd_bench(a) -> int:
    import resource
    from . import llm as llm_mod
    if a.prompt_len < 1 or a.gen < 1:
        raise CkirError("--prompt-len and --gen must be positive")
    llm = llm_mod.load(a.input, ctx=a.ctx or a.prompt_len + a.gen, backend=a.backend, threads=a.threads)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, llm.n_vocab, a.prompt_len).tolist()
    out = llm.generate(prompt, a.gen, ignore_eos=True)
    res = {"prefill_tok_s": out.prefill_tok_s, "decode_tok_s": out.decode_tok_s,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "model_bytes": os.path.getsize(a.input), "load_s": llm.load_s}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"model {a.input} ({res['model_bytes'] / 1e6:.1f} MB), backend {a.backend}, "
              f"loaded in {res['load_s']:.2f} s")
        print(f"prefill {a.prompt_len} tokens: {res['prefill_tok_s']:.2f} tok/s")
        print(f"decode {a.gen} tokens: {res['decode_tok_s']:.2f} tok/s")
        print(f"peak RSS {res['peak_rss_bytes'] / 1e6:.1f} MB")
    return 0


def cmd_passes(a) -> int:
    import dataclasses
    import typing
    from .pipeline import registered_passes
    out = []
    for name, cls in registered_passes().items():
        hints = typing.get_type_hints(cls)
        opts = [{"name": f.name, "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                 "default": None if f.default is dataclasses.MISSING else f.default}
                for f in dataclasses.fields(cls)]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": name, "doc": doc[0] if doc else "", "options": opts,
                    "open_options": cls.open_options, "module": cls.__module__})
    if a.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    for p in out:
        print(f"{p['name']:<16} {p['doc']}")
        for o in p["options"]:
            print(f"    {o['name']}: {o['type']} = {o['default']}")
        if p["open_options"]:
            print("    NAME=int ...  (any symbolic dim name)")
    return 0


COMMANDS = {"opt": cmd_opt, "run": cmd_run, "dump": cmd_dump, "compile": cmd_compile,
            "targets": cmd_targets, "export-onnx": cmd_export_onnx, "train": cmd_train,
            "passes": cmd_passes, "generate": cmd_generate, "bench": cmd_bench}


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.cmd is None:
        ap.print_help()
        return 1
    if a.no_cache:
        os.environ["CKIR_NO_CACHE"] = "1"      # read by the llvm backend's JIT cache
    try:
        from .pipeline import load_plugin
        for path in a.plugin:
            load_plugin(path)
        return COMMANDS[a.cmd](a)
    except CkirError as e:
        if a.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if a.debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback; "
              "this is a bug in ckir)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
