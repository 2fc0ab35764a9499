"""Tokenizers from GGUF metadata, token-for-token identical to llama.cpp (src/llama-vocab.cpp).

Two vocabulary types are supported (`tokenizer.ggml.model`):

- "llama": SentencePiece-style BPE (llama 2, mistral, gemma). The text, with a leading space when
  `add_space_prefix` is on and every space escaped to U+2581, is split into characters; the
  adjacent pair whose concatenation is the highest-scoring token is merged until no pair is a
  token (ties: leftmost pair first). Characters that are not tokens become byte tokens <0xNN>.
- "gpt2": byte-level BPE (llama 3, qwen2, smollm, ...). A pre-tokenizer regex splits the text into
  words; each word's UTF-8 bytes are mapped to GPT-2's printable byte alphabet and merged by merge
  rank (lowest rank first, ties leftmost). `tokenizer.ggml.pre` names the regex set.

Special tokens (types CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text before that, longest
first: USER_DEFINED always, CONTROL and UNKNOWN only with `parse_special=True`. Decoding follows
llama_detokenize: control tokens render as nothing unless `special=True`, byte tokens as their byte,
U+2581 as a space (SentencePiece) or GPT-2 characters as their bytes; the first token loses one
leading space when `add_space_prefix` is on, and BPE vocabularies whose pre-tokenizer asks for it
get llama.cpp's clean-up of spaces before punctuation and contractions.

The pre-tokenizer regexes are run over a copy of the text where each non-ASCII character is
replaced by a stand-in for its class (letter, number, punctuation, whitespace, other) from
llama.cpp's own Unicode tables (_unicode_data.py), so character classes follow llama.cpp's Unicode
version rather than Python's."""
from __future__ import annotations

import bisect
import heapq
import re

import numpy as np

from ckir.errors import CkirError

from . import _unicode_data

# GGUF tokenizer.ggml.token_type values and llama.cpp's token attribute bits (llama.h).
# types NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE; anything else is UNDEFINED (0)
_TYPE_ATTR = {1: 4, 2: 1, 3: 8, 4: 16, 5: 2, 6: 32}
A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 1, 2, 4, 8, 16, 32
A_LSTRIP, A_RSTRIP = 128, 256
_SPECIAL = A_CONTROL | A_USER_DEFINED | A_UNKNOWN

# ---------------------------------------------------------------------------------------------
# Character classes

_STARTS, _FLAGS = [], []
for _item in _unicode_data.RANGES.split():
    _s, _f = _item.split(":")
    _STARTS.append(int(_s, 16))
    _FLAGS.append(int(_f, 16))

# Stand-ins for non-ASCII characters: they are below 0x100, so never a real character of the
# collapsed text, and no pattern below names them except through these classes.
_C_LETTER, _C_NUMBER, _C_PUNCT, _C_OTHER, _C_SPACE = "\x81", "\x82", "\x83", "\x84", "\x0b"


def _stand_in(cpt: int) -> str:
    if cpt in _unicode_data.WHITESPACE:
        return _C_SPACE
    flags = _FLAGS[bisect.bisect_right(_STARTS, cpt) - 1]
    return {4: _C_LETTER, 2: _C_NUMBER, 0x20: _C_PUNCT}.get(flags, _C_OTHER)


class _Collapse(dict):
    """str.translate table: ASCII maps to itself, other characters to their class stand-in."""

    def __missing__(self, cpt):
        c = self[cpt] = _stand_in(cpt)
        return c


_COLLAPSE = _Collapse((i, chr(i)) for i in range(128))

# llama.cpp's \s, \p{L}, \p{N} over the collapsed text (ASCII whitespace is \t\n\v\f\r and space).
_WS, _L, _N = r"\t\n\x0b\x0c\r ", r"A-Za-z\x81", r"0-9\x82"
_CONTRACTIONS_I = r"'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"


def _llama3_like(numbers: str) -> re.Pattern:
    # llama.cpp's unicode_regex_split_custom_llama3 / _qwen2; equivalent to their regex because
    # every character has a non-empty class in llama.cpp's table.
    return re.compile(
        rf"{_CONTRACTIONS_I}|[^\r\n{_L}{_N}]?[{_L}]+|{numbers}| ?[^{_WS}{_L}{_N}]+[\r\n]*"
        rf"|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+")


_RX_LLAMA3 = _llama3_like(rf"[{_N}]{{1,3}}")
_RX_QWEN2 = _llama3_like(rf"[{_N}]")
_RX_GPT2 = re.compile(  # unicode_regex_split_custom_gpt2 (it adds the final \s+)
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{_L}]+| ?[{_N}]+| ?[^{_WS}{_L}{_N}]+"
    rf"|[{_WS}]+(?![^{_WS}])|[{_WS}]+")
_RX_DIGIT = re.compile(rf"[{_N}]")
# The "default" set: [\p{P}\$\+<=>\^~\|]+ (ASCII punctuation minus the backquote), gpt2,
# \p{N}+, [0-9][0-9][0-9].
_RX_DEFAULT = (re.compile(r"[!-/:-@\[-_{-~\x83]+"), _RX_GPT2, re.compile(rf"[{_N}]+"),
               re.compile(r"[0-9]{3}"))

# tokenizer.ggml.pre -> (regexes, ignore_merges, add_bos, clean_spaces), as llama_vocab::load
# sets them. ignore_merges: a word that is itself a token is not merged.
_PRE = {}
for _names, _cfg in [
    (("", "default"), (_RX_DEFAULT, False, False, True)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
      "jina-v5-nano"), ((_RX_LLAMA3,), True, True, True)),
    (("dbrx", "smaug-bpe"), ((_RX_LLAMA3,), False, False, True)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
     ((_RX_QWEN2,), False, False, False)),
    (("megrez", "stablelm2"), ((_RX_QWEN2,), False, False, True)),
    (("gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo", "jais", "exaone4"),
     ((_RX_GPT2,), False, False, True)),
    (("trillion", "granite-docling"), ((_RX_GPT2,), False, False, False)),
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"),
     ((_RX_DIGIT, _RX_GPT2), False, False, True)),
    (("command-r", "smollm"), ((_RX_DIGIT, _RX_GPT2), False, False, False)),
]:
    for _name in _names:
        _PRE[_name] = _cfg


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to 256+n."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


_BYTE_CHARS = _gpt2_byte_chars()
_BYTE_ENCODE = {i: c for i, c in enumerate(_BYTE_CHARS)}  # latin-1 code point -> GPT-2 char
_CHAR_BYTE = {c: i for i, c in enumerate(_BYTE_CHARS)}
# GPT-2 char -> the latin-1 char of its byte; other latin-1 chars -> a char latin-1 cannot encode
_BYTE_DECODE = {**{i: "\uffff" for i in range(256)},
                **{ord(c): chr(i) for c, i in _CHAR_BYTE.items()}}

# Token texts llama_vocab::load marks CONTROL and end-of-generation whatever their type.
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["))
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
              "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")
# FIM tokens found by text when their id key is absent: (metadata keys, candidate texts, is EOG).
_FIM = (
    (("fim_pre", "prefix"), ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                             "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
                             "<|code_prefix|>", "<|prefix|>"), False),
    (("fim_suf", "suffix"), ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                             "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
                             "<|code_suffix|>", "<|suffix|>"), False),
    (("fim_mid", "middle"), ("<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                             "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
                             "<|code_middle|>", "<|middle|>"), False),
    (("fim_pad",), ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"), True),
    (("fim_rep",), ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"), True),
    (("fim_sep",), ("<|file_sep|>",), True),
)
_CSPACE = b" \t\n\x0b\x0c\r"  # C isspace()


def _text(v) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)


def _utf8_len(lead: int) -> int:
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


def _strtol_hex(s: str) -> int:
    """strtol(s, NULL, 16) as llama.cpp applies it to a byte token's two hex digits."""
    n = 0
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            break
        n = n * 16 + int(c, 16)
    return n


class Tokenizer:
    """A llama.cpp-compatible tokenizer; build it with `Tokenizer.from_metadata(meta)`."""

    def __init__(self, meta: dict):
        """Build from GGUF metadata (key -> value; strings as str or bytes, arrays as sequences)."""
        self._load(meta)

    @classmethod
    def from_metadata(cls, meta: dict) -> "Tokenizer":
        return cls(meta)

    def _load(self, meta: dict):
        def get(key, default=None):
            return meta.get(key, default)

        if "tokenizer.ggml.model" not in meta:
            raise CkirError("GGUF metadata has no tokenizer.ggml.model")
        model = _text(get("tokenizer.ggml.model"))
        pre = _text(get("tokenizer.ggml.pre", ""))
        if model == "llama":
            self.type = "spm"
            bos, eos, unk = 1, 2, 0
            self.add_space_prefix, self.add_bos, self.add_eos = True, True, False
            self.clean_spaces, self.ignore_merges, self._pre_rx = False, False, ()
        elif model == "gpt2":
            self.type = "bpe"
            if pre not in _PRE:
                raise CkirError(f"unsupported tokenizer.ggml.pre '{pre}' (supported: "
                                f"{', '.join(sorted(p for p in _PRE if p))})")
            bos, eos, unk = 11, 11, None
            self._pre_rx, self.ignore_merges, self.add_bos, self.clean_spaces = _PRE[pre]
            self.add_space_prefix, self.add_eos = False, False
        else:
            raise CkirError(f"unsupported tokenizer.ggml.model '{model}' (supported: llama, gpt2)")
        self.model, self.pre = model, pre if model == "gpt2" else None
        if "tokenizer.ggml.add_space_prefix" in meta:
            self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix"))

        if "tokenizer.ggml.tokens" not in meta:
            raise CkirError("GGUF metadata has no tokenizer.ggml.tokens")
        texts = [_text(t) for t in get("tokenizer.ggml.tokens")]
        n = len(texts)
        texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(texts)]
        self.tokens = texts
        self._id = {}
        for i, t in enumerate(texts):
            if t in self._id:
                raise CkirError(f"tokenizer.ggml.tokens: token {i} {t!r} repeats token "
                                f"{self._id[t]} (llama.cpp refuses duplicate tokens)")
            self._id[t] = i

        scores = get("tokenizer.ggml.scores")
        if scores is None:
            self.scores = [0.0] * n
        else:
            if len(scores) < n:
                raise CkirError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
            # llama.cpp keeps scores as float32; ties and order must be decided on those values.
            self.scores = np.asarray(scores[:n], dtype=np.float32).tolist()
        types = get("tokenizer.ggml.token_type")
        if types is None:
            attr = [A_NORMAL] * n
        else:
            if len(types) < n:
                raise CkirError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} "
                                "tokens")
            attr = [_TYPE_ATTR.get(int(t), 0) for t in types[:n]]
        self._attr = attr

        if model == "gpt2":
            if "tokenizer.ggml.merges" not in meta:
                raise CkirError("tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)")
            self._ranks = {}
            for i, m in enumerate(get("tokenizer.ggml.merges")):
                m = _text(m)
                pos = m.find(" ", 1)
                pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
                self._ranks.setdefault(pair, i)

        def special(key, default):
            if default is not None and default >= n:
                default = None
            v = get(f"tokenizer.ggml.{key}_token_id")
            if v is None:
                return default
            v = int(v)
            return v if 0 <= v < n else default

        self.bos_id, self.eos_id, self.unk_id = special("bos", bos), special("eos", eos), \
            special("unknown", unk)
        self.eot_id, self.eom_id = special("eot", None), special("eom", None)
        self.pad_id = special("padding", None)
        if "tokenizer.ggml.add_bos_token" in meta:
            self.add_bos = bool(get("tokenizer.ggml.add_bos_token"))
        if "tokenizer.ggml.add_eos_token" in meta:
            self.add_eos = bool(get("tokenizer.ggml.add_eos_token"))
        template = get("tokenizer.chat_template")
        self.chat_template = None if template is None else _text(template)

        # Tokens llama.cpp recognises by their text (see llama_vocab::impl::load). With several
        # candidates for one role llama.cpp takes whichever its hash map yields first; we take the
        # first in its list.
        if self.eot_id is None:
            self.eot_id = next((self._id[t] for t in _EOT_TEXTS if t in self._id), None)
        if self.eom_id is None and "<|eom_id|>" in self._id:
            self.eom_id = self._id["<|eom_id|>"]
        eog = set()
        for keys, candidates, is_eog in _FIM:
            fid = None
            for k in keys:  # the deprecated key (prefix/suffix/middle) wins, as in llama.cpp
                fid = special(k, fid)
            if fid is None:
                fid = next((self._id[t] for t in candidates if t in self._id), None)
                if fid is not None:
                    attr[fid] |= A_CONTROL
            if fid is not None and is_eog:
                eog.add(fid)
        for i, t in enumerate(texts):
            if attr[i] & A_CONTROL and "unused" in t:
                attr[i] |= A_UNUSED
        for t in _EOG_TEXTS:
            if t in self._id:
                eog.add(self._id[t])
                attr[self._id[t]] |= A_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            if t in self._id:
                attr[self._id[t]] = A_USER_DEFINED
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        eog_texts = {texts[i] for i in eog}
        if "<|end|>" in eog_texts and ({"<|return|>", "<|call|>"} <= eog_texts
                                       or {"<|calls|>", "<|flush|>"} <= eog_texts):
            eog.discard(self._id["<|end|>"])
            attr[self._id["<|end|>"]] = A_USER_DEFINED
        if "</s>" in eog_texts and eog_texts & {"<|tool_response>", "<|plamo:eos|>"}:
            eog.discard(self._id["</s>"])
            attr[self._id["</s>"]] = A_NORMAL
        self.eog_ids = frozenset(eog)

        # Longest first; llama.cpp's std::sort leaves equal lengths in an unspecified order.
        self._special = sorted((i for i in range(n) if attr[i] & _SPECIAL),
                               key=lambda i: -len(texts[i].encode("utf-8", "surrogateescape")))
        self._pieces = [self._piece(i) for i in range(n)]

        name = _text(get("general.name", "")).lower()
        arch = _text(get("general.architecture", ""))
        if any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in self._id:
                attr[self._id["<mask>"]] |= A_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self._special:
                attr[i] |= A_RSTRIP
            for t, on in (("</s>", True), ("<unk>", False), ("<s>", False),
                          ("<|endoftext|>", False)):
                if t not in self._id:
                    raise CkirError(f"phi-3 vocabulary without the token {t!r} "
                                    "(llama.cpp refuses it)")
                attr[self._id[t]] = attr[self._id[t]] | A_RSTRIP if on else \
                    attr[self._id[t]] & ~A_RSTRIP
        elif "modern-bert" in name and "[MASK]" in self._id:
            attr[self._id["[MASK]"]] |= A_LSTRIP
        self._cache = {}

    def _piece(self, i: int) -> bytes:
        """llama.cpp's token_to_piece(special=true), which it caches for every token."""
        a, text = self._attr[i], self.tokens[i]
        if a & _SPECIAL:
            return text.encode("utf-8", "surrogateescape")
        if a & A_NORMAL:
            if self.type == "spm":
                return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
            try:
                return text.translate(_BYTE_DECODE).encode("latin-1")
            except UnicodeEncodeError:
                pass  # some character is not a GPT-2 byte character
            out = bytearray()
            for c in text:
                b = _CHAR_BYTE.get(c)
                if b is None:  # llama.cpp reads an invalid UTF-8 byte as U+FFFD
                    cpt = "\ufffd" if "\udc80" <= c <= "\udcff" else c
                    out += b"[UNK_BYTE_0x" + cpt.encode("utf-8").hex().encode() \
                        + text.encode("utf-8", "surrogateescape") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if a & A_BYTE:
            return bytes([_strtol_hex(text[3:5])])
        return b""

    # -- properties ---------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_eog(self, token: int) -> bool:
        """True for tokens that end generation (EOS, EOT, EOM, llama.cpp's end-looking tokens)."""
        return token in self.eog_ids

    def is_control(self, token: int) -> bool:
        self._check(token)
        return bool(self._attr[token] & A_CONTROL)

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, or None."""
        return self._id.get(text)

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS where the vocabulary asks for them (add_bos_token /
        add_eos_token); parse_special turns the text of CONTROL tokens (e.g. "<|im_start|>")
        into those tokens instead of spelling it out."""
        if not isinstance(text, str):
            raise CkirError(f"tokenizer input must be str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CkirError(f"tokenizer input is not encodable as UTF-8: {e}") from None
        out = []
        if add_special and self.add_bos:
            out.append(self._need(self.bos_id, "BOS"))
        is_prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                is_prev_special = True
            elif self.type == "spm":
                if self.add_space_prefix and is_prev_special:
                    frag = " " + frag
                self._spm(frag.replace(" ", "\u2581"), out)
                is_prev_special = False
            else:
                for word in self._split(frag):
                    out += self._bpe(word)
        if add_special and self.add_eos:
            out.append(self._need(self.eos_id, "EOS"))
        return out

    def _need(self, token, what):
        if token is None:
            raise CkirError(f"the vocabulary asks for a {what} token but defines none")
        return token

    def _partition(self, text: str, parse_special: bool) -> list:
        """Cut special tokens out of the text (llama.cpp's tokenizer_st_partition): a list of
        str fragments and int token ids."""
        frags = [text] if text else []
        for tid in self._special:
            a = self._attr[tid]
            if not parse_special and a & (A_CONTROL | A_UNKNOWN):
                continue
            needle = self.tokens[tid]
            out = []
            for f in frags:
                if isinstance(f, int) or needle not in f:
                    out.append(f)
                    continue
                pos = 0
                while pos < len(f):
                    m = f.find(needle, pos)
                    if m < 0:
                        break
                    left = f[pos:m]
                    if a & A_LSTRIP:
                        left = left.rstrip(" \t\n\x0b\x0c\r")
                    if left:
                        out.append(left)
                    out.append(tid)
                    pos = m + len(needle)
                    if a & A_RSTRIP:
                        while pos < len(f) and f[pos] in " \t\n\x0b\x0c\r":
                            pos += 1
                if pos < len(f):
                    out.append(f[pos:])
            frags = out
        return frags

    def _byte_token(self, b: int) -> int:
        t = self._id.get(f"<0x{b:02X}>")
        if t is None:
            t = self._id.get(bytes([b]).decode("utf-8", "surrogateescape"))
        if t is None:
            raise CkirError(f"the vocabulary has no token for byte 0x{b:02X} (no <0x{b:02X}> "
                            "byte-fallback token)")
        return t

    def _spm(self, text: str, out: list):
        """llm_tokenizer_spm_session: merge the best-scoring adjacent pair until none is a token."""
        if not text:
            return
        sym = list(text)  # UTF-8 characters; a merged symbol's text, "" once merged away
        nxt = list(range(1, len(sym))) + [-1]
        prv = list(range(-1, len(sym) - 1))
        ids, scores = self._id, self.scores
        heap = []

        def add(left, right):
            if left < 0 or right < 0:
                return
            t = ids.get(sym[left] + sym[right])
            if t is not None:
                # highest score first, then leftmost; size tells a stale entry from a live one
                heapq.heappush(heap, (-scores[t], left, right, len(sym[left]) + len(sym[right])))

        for i in range(1, len(sym)):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])
        # A merged symbol is always a token; llama.cpp's rev_merge re-segmentation only ever
        # applies to single characters, which fall back to bytes.
        i = 0
        while i != -1:
            t = ids.get(sym[i])
            if t is not None:
                out.append(t)
            else:
                out += [self._byte_token(b) for b in sym[i].encode("utf-8")]
            i = nxt[i]

    def _split(self, text: str) -> list[str]:
        """The pre-tokenizer: llama.cpp's unicode_regex_split, each regex splitting every piece
        the previous ones left into its matches and the text between them."""
        collapsed = text.translate(_COLLAPSE)
        bounds = [(0, len(text))]
        for rx in self._pre_rx:
            out = []
            for s, e in bounds:
                p = s
                for m in rx.finditer(collapsed, s, e):
                    if m.start() > p:
                        out.append((p, m.start()))
                    out.append(m.span())
                    p = m.end()
                if p < e:
                    out.append((p, e))
            bounds = out
        return [text[s:e] for s, e in bounds]

    def _bpe(self, word: str) -> list[int]:
        """llm_tokenizer_bpe_session on one pre-tokenized word."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        enc = word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE)
        ids = self._id
        if self.ignore_merges and enc in ids:
            res = [ids[enc]]
        else:
            sym = list(enc)
            nxt = list(range(1, len(sym))) + [-1]
            prv = list(range(-1, len(sym) - 1))
            ranks = self._ranks
            heap = []

            def add(left, right):
                if left < 0 or right < 0:
                    return
                r = ranks.get((sym[left], sym[right]))
                if r is not None:
                    heapq.heappush(heap, (r, left, right, sym[left] + sym[right]))

            for i in range(1, len(sym)):
                add(i - 1, i)
            while heap:
                _, left, right, text = heapq.heappop(heap)
                if not sym[left] or not sym[right] or sym[left] + sym[right] != text:
                    continue
                sym[left] = text
                sym[right] = ""
                nxt[left] = nxt[right]
                if nxt[right] >= 0:
                    prv[nxt[right]] = left
                add(prv[left], left)
                add(left, nxt[left])
            res = []
            for s in sym:
                if not s:
                    continue
                t = ids.get(s)
                if t is not None:
                    res.append(t)
                    continue
                # llama.cpp looks each byte of the symbol's UTF-8 text up as a one-byte token and
                # silently drops the bytes that are not tokens.
                for b in s.encode("utf-8"):
                    t = ids.get(bytes([b]).decode("utf-8", "surrogateescape"))
                    if t is not None:
                        res.append(t)
        if len(self._cache) > 1 << 16:
            self._cache.clear()
        self._cache[word] = res
        return res

    # -- decoding -----------------------------------------------------------------------------

    def _check(self, token):
        if not isinstance(token, (int, np.integer)) or not 0 <= token < len(self.tokens):
            raise CkirError(f"token id {token!r} is out of range for a vocabulary of "
                            f"{len(self.tokens)} tokens")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (llama_token_to_piece with lstrip 0): control and unknown
        tokens are empty unless `special`."""
        self._check(token)
        if not special and self._attr[token] & (A_CONTROL | A_UNKNOWN):
            return b""
        return self._pieces[token]

    def decode_bytes(self, ids, special: bool = False) -> bytes:
        """The bytes of a token sequence, as llama_detokenize(remove_special=False,
        unparse_special=special)."""
        for t in ids:
            self._check(t)
        out = bytearray()
        remove_space = self.add_space_prefix
        for t in ids:
            piece = self.token_to_piece(t, special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            out += piece
        if self.clean_spaces:
            out = _clean_spaces(out)
        return bytes(out)

    def decode(self, ids, special: bool = False) -> str:
        """The text of a token sequence; bytes that do not form UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, special).decode("utf-8", "replace")


def _clean_spaces(t: bytearray) -> bytearray:
    """The three in-place passes of llama_detokenize's clean_spaces, kept literally (each pass
    reads the buffer the previous iterations rewrote)."""
    sp, ap = 0x20, 0x27
    # drop the space before ? ! . ,
    n1, n = len(t), 1 if t else 0
    for i in range(1, n1):
        x = t[i]
        if t[i - 1] == sp and x in b"?!.,":
            n -= 1
        t[n] = x
        n += 1
    # " ' " -> "'"
    n2, n = n, 1 if n else 0
    i = 1
    while i < n2:
        x = t[i]
        if x == ap and i + 1 < n2 and t[i - 1] == sp and t[i + 1] == sp:
            n -= 1
            i += 1
            t[i] = 0
        t[n] = x
        n += 1
        i += 1
    # " 's", " 'm", " 're", " 've" -> without the space
    n3, n = n, 1 if n else 0
    for i in range(1, n3):
        x = t[i]
        if t[i - 1] == sp and x == ap and i + 1 < n3:
            x1 = t[i + 1]
            if x1 in b"sm" or (x1 in b"rv" and i + 2 < n3 and t[i + 2] == ord("e")):
                n -= 1
        t[n] = x
        n += 1
    return t[:n]
