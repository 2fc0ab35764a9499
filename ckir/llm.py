"""Running a GGUF language model: tokenize, score, generate.

    llm = ckir.llm.load("model.gguf", ctx=1024)
    ids = llm.tokenize("Once upon a time")
    out = llm.generate(ids, 32, temp=0.8, top_p=0.95, seed=1, stream=print)
    out.text, out.tokens, out.prefill_tok_s, out.decode_tok_s

The model is the Module of ckir.frontends.gguf.models (graphs prefill, decode and score sharing
the weights and the KV cache). Every call checks its input before any graph sees it: token ids
must be in [0, n_vocab), sequences non-empty, and the positions used must fit the context.

Sampling follows llama.cpp's default chain, in its order: repetition penalty over the last
`repeat_last_n` tokens (a positive logit is divided by the penalty, a negative one multiplied),
top-k, top-p (the smallest set of most likely tokens whose probability reaches p), min-p (tokens
at least min_p times as likely as the most likely one), then temperature, and a draw from a
numpy Generator seeded with `seed` (the same seed gives the same tokens). temp <= 0 is greedy:
the most likely token after the penalty (the lowest id among equal logits).
"""
from __future__ import annotations

import codecs
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import CkirError, InputError

BACKENDS = ("interp", "llvm")


@dataclass
class Generation:
    """The result of LLM.generate."""
    prompt_tokens: list
    tokens: list = field(default_factory=list)
    text: str = ""
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    stop: str = "length"            # "length" (n tokens) or "eog" (an end-of-generation token)

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "text": self.text,
                "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


class _Graphs:
    """The module's graphs compiled for one backend, sharing one state store (the KV cache)."""

    def __init__(self, module, backend: str, threads: int | None):
        from ckir.verifier import verify
        verify(module)
        if backend == "interp":
            from ckir.backends.interp import Interpreter
            interp = Interpreter(module)
            self.state = interp.state
            self._run = {name: (lambda g: lambda inputs: interp.run(g, inputs, {}))(g)
                         for name, g in module.graphs.items()}
        elif backend == "llvm":
            from ckir.backends import get_backend
            be = get_backend("llvm")
            runs = {name: be.compile(module, g, threads=threads) for name, g in module.graphs.items()}
            first = next(iter(runs.values()))
            self.state = first.state
            for run in runs.values():
                run.plan.state = self.state
            self._run = {name: (lambda run: lambda inputs: run(inputs, {}))(run)
                         for name, run in runs.items()}
        else:
            raise CkirError(f"unknown backend '{backend}' (available: {', '.join(BACKENDS)})")

    def __call__(self, graph: str, tokens: np.ndarray, pos: int) -> np.ndarray:
        return self._run[graph]([tokens, np.array(pos, np.int64)])[0]


class LLM:
    """A GGUF language model ready to run; see the module doc."""

    def __init__(self, path, ctx: int | None = None, backend: str = "interp", threads: int | None = None,
                 act: str = "q8"):
        from ckir.frontends.gguf import Reader
        from ckir.frontends.gguf.models import build, config
        t0 = time.perf_counter()
        self.path = os.fspath(path)
        if backend not in BACKENDS:
            raise CkirError(f"unknown backend '{backend}' (available: {', '.join(BACKENDS)})")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise CkirError(f"threads must be a positive int, got {threads!r}")
        self.reader = Reader(self.path)
        self.config = config(self.reader)
        self.module = build(self.reader, ctx, act)
        self.ctx = self.module.graph("prefill").inputs[0].type.shape[0].bound
        self.backend, self.threads = backend, threads
        self._graphs = _Graphs(self.module, backend, threads)
        self._tok = None
        self.n_past = 0          # positions filled in the KV cache
        self.load_s = time.perf_counter() - t0

    # --- tokens -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tok is None:
            from ckir.frontends.gguf.tokenizer import Tokenizer
            self._tok = Tokenizer.from_metadata(self.reader.metadata)
        return self._tok

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list:
        """Token ids of `text` (as llama.cpp's llama_tokenize)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids, special: bool = False) -> str:
        """The text of token ids (as llama.cpp's llama_detokenize)."""
        return self.tokenizer.decode(self._ids(ids, allow_empty=True), special=special)

    def _ids(self, tokens, allow_empty: bool = False) -> np.ndarray:
        try:
            a = np.asarray(tokens)
        except (TypeError, ValueError) as e:
            raise InputError(f"token ids must be a list of ints: {e}") from None
        if a.ndim != 1 or not (a.dtype.kind in "iu" or a.size == 0):
            raise InputError(f"token ids must be a 1-D list of ints, got {a.dtype} of shape {list(a.shape)}")
        if a.size == 0 and not allow_empty:
            raise InputError("empty token sequence: give at least one token")
        bad = (a < 0) | (a >= self.n_vocab)
        if bad.any():
            raise InputError(f"token id {int(a[bad][0])} is out of range for a vocabulary of "
                             f"{self.n_vocab} tokens")
        return a.astype(np.int64)

    def _prompt(self, prompt, chat: bool) -> np.ndarray:
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("empty prompt")
            if chat:
                text = self.chat_prompt([{"role": "user", "content": prompt}])
                bos = self.tokenizer.bos_id
                bos_text = self.tokenizer.tokens[bos] if bos is not None else None
                ids = self.tokenize(text, add_special=not (bos_text and text.startswith(bos_text)),
                                    parse_special=True)
            else:
                ids = self.tokenize(prompt)
            return self._ids(ids)
        if chat:
            raise CkirError("chat needs the prompt as text (the template renders text)")
        return self._ids(prompt)

    def chat_prompt(self, messages: list, add_generation_prompt: bool = True) -> str:
        """`messages` ([{"role": ..., "content": ...}]) rendered with the model's chat template
        (tokenizer.chat_template, a Jinja2 template, rendered as transformers renders it)."""
        template = self.tokenizer.chat_template
        if not template:
            raise CkirError(f"{self.path}: the model has no chat template (tokenizer.chat_template)")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise CkirError(f"chat template: {msg}")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        tok = self.tokenizer

        def text(i):
            return tok.tokens[i] if i is not None else ""
        try:
            return env.from_string(template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=text(tok.bos_id), eos_token=text(tok.eos_id))
        except jinja2.TemplateError as e:
            raise CkirError(f"{self.path}: chat template: {e}") from None

    # --- running ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache."""
        self._graphs.state.reset()
        self.n_past = 0

    def _need(self, n: int) -> None:
        if self.n_past + n > self.ctx:
            raise InputError(f"context overflow: {self.n_past} positions used + {n} new tokens > "
                             f"ctx {self.ctx}")

    def eval(self, tokens) -> np.ndarray:
        """Append `tokens` to the cache; the logits [n_vocab] after the last one."""
        ids = self._ids(tokens)
        self._need(len(ids))
        y = self._graphs("decode" if len(ids) == 1 else "prefill", ids, self.n_past)
        self.n_past += len(ids)
        return y

    def logits(self, tokens) -> np.ndarray:
        """Logits [len(tokens), n_vocab] at every position of `tokens`, from an empty cache
        (which then holds `tokens`)."""
        ids = self._ids(tokens)
        self.reset()
        self._need(len(ids))
        y = self._graphs("score", ids, 0)
        self.n_past = len(ids)
        return y

    def generate(self, prompt, n: int, *, temp: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int | None = None, stream=None, chat: bool = False,
                 ignore_eos: bool = False) -> Generation:
        """Generate up to `n` tokens after `prompt` (text, or token ids), from an empty cache.
        `stream(text)` is called with each new piece of text as it is produced (whole UTF-8
        characters only). Generation stops after n tokens or at an end-of-generation token (kept
        in `tokens`; its text is empty) unless `ignore_eos`."""
        if type(n) is not int or n <= 0:
            raise InputError(f"n must be a positive number of tokens, got {n!r}")
        sampler = Sampler(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        ids = self._prompt(prompt, chat)
        if len(ids) + n - 1 > self.ctx:
            raise InputError(f"context overflow: a prompt of {len(ids)} tokens and {n} new tokens "
                             f"need {len(ids) + n - 1} positions, ctx is {self.ctx}")
        out = Generation(prompt_tokens=ids.tolist())
        self.reset()
        t0 = time.perf_counter()
        logits = self.eval(ids)
        out.prefill_tok_s = len(ids) / max(time.perf_counter() - t0, 1e-9)
        history = ids.tolist()
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        pieces = []
        decode_time, steps = 0.0, 0
        while True:
            tok = sampler(logits, history)
            out.tokens.append(tok)
            history.append(tok)
            piece = utf8.decode(self.tokenizer.token_to_piece(tok)) if self._has_vocab() else ""
            if piece:
                pieces.append(piece)
                if stream is not None:
                    stream(piece)
            if not ignore_eos and self._has_vocab() and self.tokenizer.is_eog(tok):
                out.stop = "eog"
                break
            if len(out.tokens) == n:
                break
            t1 = time.perf_counter()
            logits = self.eval([tok])
            decode_time += time.perf_counter() - t1
            steps += 1
        tail = utf8.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if stream is not None:
                stream(tail)
        out.text = "".join(pieces)
        out.decode_tok_s = steps / decode_time if steps else 0.0
        return out

    def _has_vocab(self) -> bool:
        return "tokenizer.ggml.tokens" in self.reader.metadata


class Sampler:
    """Picks the next token from logits (see the module doc for the chain and its order)."""

    def __init__(self, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                 repeat_last_n=64, seed=None):
        checks = [(isinstance(temp, (int, float)) and np.isfinite(temp), "temp must be a finite number"),
                  (type(top_k) is int and top_k >= 0, "top_k must be an int >= 0 (0: off)"),
                  (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0, "top_p must be in (0, 1]"),
                  (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0, "min_p must be in [0, 1]"),
                  (isinstance(repeat_penalty, (int, float)) and repeat_penalty > 0,
                   "repeat_penalty must be > 0 (1: off)"),
                  (type(repeat_last_n) is int and repeat_last_n >= 0, "repeat_last_n must be an int >= 0"),
                  (seed is None or type(seed) is int, "seed must be an int")]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        self.temp, self.top_k, self.top_p, self.min_p = float(temp), top_k, float(top_p), float(min_p)
        self.penalty, self.last_n = float(repeat_penalty), repeat_last_n
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: list) -> int:
        z = np.asarray(logits, np.float64).copy()
        if self.penalty != 1.0 and self.last_n:
            seen = np.unique(np.asarray(history[-self.last_n:], np.int64))
            v = z[seen]
            z[seen] = np.where(v > 0, v / self.penalty, v * self.penalty)
        if self.temp <= 0:
            return int(np.argmax(z))
        order = np.argsort(-z, kind="stable")
        if self.top_k:
            order = order[:self.top_k]
        p = _softmax(z[order])
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p)) + 1
            order, p = order[:keep], p[:keep]
        if self.min_p > 0.0:
            keep = p >= self.min_p * p[0]
            order = order[keep]
        p = _softmax(z[order] / self.temp)
        return int(order[self.rng.choice(len(order), p=p)])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def load(path, ctx: int | None = None, backend: str = "interp", threads: int | None = None,
         act: str = "q8") -> LLM:
    """Load a GGUF language model (see LLM; `act` as in frontends.gguf.models.build)."""
    return LLM(path, ctx=ctx, backend=backend, threads=threads, act=act)
