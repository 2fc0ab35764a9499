"""Training a language model: `Trainer` (behind `ckir train`).

The model is a graph from token ids (an integer input [batch, seq]) to logits ([batch, seq,
vocab]). The trainer appends the next-token loss (log_softmax + nll_loss, mean over positions)
with a `targets` input, then runs `autodiff` and `optimizer`, so the whole step -- forward,
backward and update -- is IR compiled once. Data is a text file read as bytes (byte-level
models, vocab >= 256) in consecutive windows; the position in it is part of a checkpoint.

Checkpoints (.npz) hold every state (parameters, optimizer moments, step), the step count and
the data position, written atomically (temporary file + rename). Resuming from one gives
exactly the losses an uninterrupted run gives.
"""
from __future__ import annotations

import io
import time

import numpy as np

from .api import CompiledModule, _atomic_write
from .api import compile as ckir_compile
from .builder import Builder
from .errors import CkirError
from .ir import Module
from .pipeline import run_pipeline
from .types import Sym, TensorType

FORMAT = 1


class ByteData:
    """Consecutive windows of seq + 1 bytes of a file (inputs and next-byte targets),
    `batch` windows per step, wrapping around at the end."""

    def __init__(self, path: str, batch: int, seq: int):
        try:
            self.data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise CkirError(f"--data {path}: {e.strerror}") from None
        if self.data.size < seq + 1:
            raise CkirError(f"--data {path}: {self.data.size} bytes, need at least seq + 1 = {seq + 1}")
        self.batch, self.seq, self.pos = batch, seq, 0

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        n, t = self.data.size, self.seq
        rows = []
        for _ in range(self.batch):
            if self.pos + t + 1 > n:
                self.pos = 0
            rows.append(self.data[self.pos:self.pos + t + 1])
            self.pos += t
        w = np.stack(rows).astype(np.int64)
        return w[:, :-1], w[:, 1:]


def _find_io(module: Module):
    g = module.main
    ints = [v for v in g.inputs if type(v.type) is TensorType and v.type.dtype.is_int and v.type.rank == 2]
    if len(ints) != 1 or len(g.inputs) != 1:
        raise CkirError(f"graph @{g.name} must take one integer input [batch, seq] (token ids); "
                        f"it takes {', '.join(f'{v.name}: {v.type}' for v in g.inputs)}")
    outs = [(n, v) for n, v in zip(g.output_names, g.outputs)
            if type(v.type) is TensorType and v.type.dtype.is_float and v.type.rank == 3]
    if not outs:
        raise CkirError(f"graph @{g.name} has no float [batch, seq, vocab] output (logits)")
    return ints[0], outs[0]


def add_next_token_loss(module: Module, batch: int, seq: int) -> int:
    """Bind the token input to [batch, seq] and make the graph return the mean next-token
    cross-entropy as `loss`, with a new `targets` input. Returns the vocab size."""
    tokens, (name, logits) = _find_io(module)
    binds = {}
    for d, size in zip(tokens.type.shape, (batch, seq)):
        if type(d) is Sym and d.name:
            binds[d.name] = size
        elif type(d) is int and d != size:
            raise CkirError(f"input {tokens.name} is {tokens.type}; cannot train with [{batch}, {seq}]")
    if binds:
        run_pipeline(module, "specialize{" + ",".join(f"{k}={v}" for k, v in binds.items()) + "}")
    g = module.main
    vocab = logits.type.shape[-1]
    if type(vocab) is not int:
        raise CkirError(f"the vocabulary dim of {name} must be static, it is {logits.type}")
    targets = g.add_arg(TensorType([batch, seq], tokens.type.dtype), "targets")
    b = Builder.before(g.terminator, loc="loss")
    logp = b.nn.log_softmax(b.nn.reshape(logits, shape=[batch * seq, vocab]), axis=-1)
    loss = b.nn.nll_loss(logp, b.nn.reshape(targets, shape=[batch * seq]))
    g.set_outputs([loss], ["loss"])
    return vocab


class Trainer:
    """Compile a training step for `module` (token ids -> logits) and run it.

        t = Trainer(ckir.load("lm.onnx"), batch=8, seq=64, lr=1e-3)
        loss = t.step(tokens, targets)
    """

    def __init__(self, module: Module, *, batch: int = 8, seq: int = 64, optimizer: str = "adamw",
                 lr: float = 1e-3, weight_decay: float = 0.0, backend: str = "interp",
                 remat: bool = False, **options):
        self.vocab = add_next_token_loss(module, batch, seq)
        opts = ",".join([f"kind={optimizer}", f"lr={lr!r}", f"weight_decay={weight_decay!r}"] +
                        [f"{k}={v}" for k, v in options.items()])
        run_pipeline(module, f"autodiff{{loss=loss,remat={str(remat).lower()}}},optimizer{{{opts}}},"
                     "canonicalize,cse,dce")
        self.module = module
        self.batch, self.seq = batch, seq
        self.compiled: CompiledModule = ckir_compile(module, backend=backend)
        self.steps = 0

    def step(self, tokens: np.ndarray, targets: np.ndarray) -> float:
        if tokens.max(initial=0) >= self.vocab:
            raise CkirError(f"token id {int(tokens.max())} is outside the vocabulary ({self.vocab})")
        loss = float(self.compiled(tokens, targets)["loss"])
        self.steps += 1
        return loss

    def save(self, path: str, data_pos: int = 0) -> None:
        arrays = {f"state/{k}": np.asarray(v) for k, v in self.compiled.state.items()}
        arrays.update(format=np.int64(FORMAT), steps=np.int64(self.steps), data_pos=np.int64(data_pos))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _atomic_write(path, lambda f: f.write(buf.getvalue()))

    def load(self, path: str) -> int:
        """Restore a checkpoint; returns the data position saved with it."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != FORMAT:
                    raise CkirError(f"checkpoint {path}: format {int(z['format'])}, expected {FORMAT}")
                states = {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}
                steps, pos = int(z["steps"]), int(z["data_pos"])
        except (OSError, KeyError, ValueError) as e:
            raise CkirError(f"checkpoint {path}: cannot read it ({e})") from None
        store = self.compiled._run.state
        missing = set(self.module.state) - set(states)
        if missing:
            raise CkirError(f"checkpoint {path} lacks state {', '.join(sorted(missing))}")
        for k, v in states.items():
            st = self.module.state.get(k)
            if st is None or v.shape != st.type.shape or v.dtype != st.type.dtype.np:
                raise CkirError(f"checkpoint {path}: state {k} does not match this model")
            a = np.array(v)
            a.flags.writeable = False
            store.values[k] = a
        self.steps = steps
        return pos


def train(model_path: str, data_path: str, steps: int, *, batch: int, seq: int, lr: float,
          optimizer: str, save: str | None = None, resume: str | None = None, json_lines: bool = False,
          backend: str = "interp", remat: bool = False, out=None, progress: bool = True) -> list[float]:
    """The `ckir train` loop; returns the losses of the steps it ran."""
    import json
    import sys
    from . import load
    out = out or sys.stdout
    t = Trainer(load(model_path), batch=batch, seq=seq, optimizer=optimizer, lr=lr, backend=backend,
                remat=remat)
    data = ByteData(data_path, batch, seq)
    if resume:
        data.pos = t.load(resume)
    losses = []
    bar = None
    if progress and not json_lines:
        try:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=t.steps, desc="train", file=sys.stderr, disable=not sys.stderr.isatty())
        except ImportError:
            bar = None
    t0 = time.perf_counter()
    while t.steps < steps:
        tok, tgt = data.next()
        loss = t.step(tok, tgt)
        losses.append(loss)
        rate = batch * seq * len(losses) / max(time.perf_counter() - t0, 1e-9)
        if json_lines:
            out.write(json.dumps({"step": t.steps, "loss": loss, "tokens_per_s": round(rate, 1)}) + "\n")
            out.flush()
        elif bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
            bar.update(1)
        if save and (t.steps % 10 == 0 or t.steps == steps):
            t.save(save, data.pos)
    if bar is not None:
        bar.close()
    if not json_lines:
        out.write(f"trained {len(losses)} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}\n" if losses
                  else "nothing to do: the checkpoint is already at --steps\n")
    if save:
        t.save(save, data.pos)
        if not json_lines:
            out.write(f"saved {save}\n")
    return losses


