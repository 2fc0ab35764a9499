"""The GGUF tokenizer against llama.cpp (llama-cpp-python, vocab_only): token ids, pieces and
detokenized bytes must be identical on a varied corpus, for a SentencePiece-style vocabulary and
byte-level BPE vocabularies with the llama3, qwen2 and other pre-tokenizers. The vocabularies are
built here (pieces and merges learned on a small corpus, plus deliberate edge cases) and written
to GGUF files with gguf.GGUFWriter, so llama.cpp and ckir read the same file."""
import collections
import random
import re

import pytest

from ckir.errors import CkirError
from ckir.frontends.gguf.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")

TRAIN = """\
The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We'll see.
In the beginning the model reads the prompt, then it writes the answer one token at a time.
def tokenize(text):
    return [vocab[word] for word in text.split()]  # simple, isn't it?
for i in range(10):
    print(i, i * i)
Numbers: 1 12 123 1234 2024-05-17 3.14159 100,000
Les élèves étudient à l'école; naïve café crème. Straße über Ängste.
你好，世界。今天天气很好。日本語のテキスト。
She said: "they're here" and "we've done it" -- I'd say you'll like it.
"""

CORPUS = [
    "",
    " ",
    "  ",
    "\n",
    "Hello world",
    " Hello world",
    "Hello  world   again",
    "The quick brown fox jumps over the lazy dog.",
    "\t\ttabs\tand  spaces   ",
    "line1\nline2\r\n\r\nline3\n\n\nend\n",
    "   leading and trailing   ",
    "Unicode: naïve café, Ångström, Straße, ÉCOLE",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧 ok",
    "CJK: 你好，世界！日本語のテキスト 한국어 텍스트",
    "numbers 1234567 3.14159 1,000,000 ١٢٣٤ ½ ²",
    "code: def f(x):\n    return x**2  # comment\n\tif x != 0: pass\n",
    "I'm you're he'll she'd they've it's DON'T I'M We'Ve o'clock",
    "special <s> and </s> and <unk> inside",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "user-defined <tool> and <tool><tool> tokens",
    "a\u00a0b\u2003c\u3000d\u0085e\u2028f",
    "mixed 123abc abc123 _under_score-dash ++i x->y",
    "Ω≈ç√∫˜µ≤≥÷ ©®™ €$£¥",
    "e\u0301 combining marks a\u0300\u0301",
    "\u200b zero width \ufeff bom",
    "\U0001d400\U0001d401 math bold, \U0001fae8 shaking face, \U00031350 ext-h",
    "<0x41> literal byte text and ▁ block char",
    "!!!??? ... ,,, ;;; 'quoted' \"double\"",
    " ' a ' and ' 's test . , ! ?",
    "tricky: 'll 're 've 'S 'T 'x",
    "\r\n \r \n\t \u000b\u000c x",
    "x" * 300 + " " + "ab" * 100,
]


def _random_texts(n, seed):
    rng = random.Random(seed)
    alphabet = (list("abcdefghij XYZ0123456789.,'!?-_\n\t") + list("éüßñ你好世界テキ한😀👍\u00a0\u2003")
                + ["<s>", "</s>", "<|im_end|>", "<tool>", "'s", "  ", "\r\n"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


CORPUS += _random_texts(40, 1)


# ---------------------------------------------------------------------------------------------
# Building vocabularies and GGUF files

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _learn_merges(words: collections.Counter, n_merges: int):
    """Plain BPE training: the most frequent adjacent pair (ties: smallest) merges first."""
    words = {tuple(w): c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


def spm_vocab(seed=0, tied=False, extra=()):
    """A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, characters and
    pieces learned on TRAIN (score = -rank), random extra pieces (some unreachable, some with
    tied scores) and special tokens of every type. `tied`: every piece scores 0, so only the
    leftmost-pair rule orders merges."""
    rng = random.Random(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    text = TRAIN.replace(" ", "\u2581")
    words = collections.Counter(re.findall("\u2581?[^\u2581\n]+|\u2581+|\n+", "\u2581" + text))
    chars = sorted({c for w in words for c in w} - set("你好世界今天气很日本語のテキスト\n"))
    pieces = chars + ["".join(m) for m in _learn_merges(words, 250)]
    pieces += ["\u2581unreachable_piece", "ab", "abab", "\u2581\u2581", "\u2581\u2581\u2581\u2581",
               "xx", "xxx", "xxxx", "<0x41>x"]
    seen = set(tokens)
    for i, p in enumerate(pieces):
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(NORMAL)
        r = rng.random()
        scores.append(0.0 if tied else -float(i) if r < 0.7 else -float(rng.randint(0, 20))
                      if r < 0.9 else 5.0)
    for t, ty in [("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL), ("<unused0>", CONTROL),
                  ("<tool>", USER_DEFINED), ("<|im_start|>", CONTROL), ("<|im_end|>", NORMAL),
                  ("<unused_type>", UNUSED), ("<undefined_type>", 0), *extra]:
        tokens.append(t)
        types.append(ty)
        scores.append(0.0)
    return tokens, scores, types


def bpe_vocab(drop=(), unmerged=True):
    """A GPT-2 byte-level vocabulary: the 256 byte characters, merges learned on TRAIN, special
    tokens. `drop` removes tokens (llama.cpp then drops those bytes); `unmerged` adds a merge whose
    result is not a token and a token no merge sequence reaches."""
    byte_chars = gguf_byte_chars()
    enc = lambda s: "".join(byte_chars[b] for b in s.encode("utf-8"))  # noqa: E731
    words = collections.Counter(enc(w) for w in re.findall(
        r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+", TRAIN))
    merges = _learn_merges(words, 300)
    tokens = list(byte_chars) + ["".join(m) for m in merges]
    if unmerged:
        merges.append(("q", "z"))  # "qz" is not a token: falls back to "q", "z"
        tokens.append(enc(" unreachableword"))
    tokens = [t for t in dict.fromkeys(tokens) if t not in drop]
    types = [NORMAL] * len(tokens)
    for t, ty in [("<|begin_of_text|>", CONTROL), ("<|end_of_text|>", CONTROL),
                  ("<|start_header_id|>", CONTROL), ("<|end_header_id|>", CONTROL),
                  ("<|eot_id|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
                  ("<|endoftext|>", NORMAL), ("<tool>", USER_DEFINED), ("<s>", USER_DEFINED),
                  ("<byte_typed>", BYTE)]:
        tokens.append(t)
        types.append(ty)
    return tokens, types, [f"{a} {b}" for a, b in merges]


def gguf_byte_chars():
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def write_gguf(path, kv):
    """A vocab-only llama GGUF file with the given tokenizer keys."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    for key, value in kv.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif key == "tokenizer.ggml.scores":
            w.add_array(key, [float(v) for v in value])
        elif key == "tokenizer.ggml.token_type":
            w.add_array(key, [int(v) for v in value])
        else:
            w.add_array(key, list(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_meta(path):
    reader = gguf.GGUFReader(str(path))
    return {name: f.contents() for name, f in reader.fields.items()}


def spm_kv(vocab=(), **extra):
    tokens, scores, types = spm_vocab(*vocab)
    kv = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
          "tokenizer.ggml.unknown_token_id": 0}
    kv.update(extra)
    return kv


def bpe_kv(pre, drop=(), **extra):
    tokens, types, merges = bpe_vocab(drop)
    kv = {"tokenizer.ggml.model": "gpt2", **({"tokenizer.ggml.pre": pre} if pre else {}),
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.merges": merges,
          "tokenizer.ggml.bos_token_id": tokens.index("<|begin_of_text|>"),
          "tokenizer.ggml.eos_token_id": tokens.index("<|end_of_text|>")}
    kv.update(extra)
    return kv


VOCABS = {
    "spm": lambda: spm_kv(),
    "spm-gemma": lambda: spm_kv(**{"tokenizer.ggml.add_space_prefix": False,
                                   "tokenizer.ggml.add_eos_token": True}),
    "spm-ties": lambda: spm_kv((1, True)),
    # llama.cpp gives every special token of a model named phi-3 the RSTRIP attribute
    "spm-phi3": lambda: spm_kv((2, False, [("<|endoftext|>", CONTROL), ("<|end|>", USER_DEFINED)]),
                               **{"general.name": "Phi-3-mini-test"}),
    "llama-bpe": lambda: bpe_kv("llama-bpe"),
    "dbrx": lambda: bpe_kv("dbrx"),
    "qwen2": lambda: bpe_kv("qwen2", **{"tokenizer.ggml.add_bos_token": False}),
    "default": lambda: bpe_kv("default", drop=("Q",)),
    "gpt-2": lambda: bpe_kv("gpt-2", **{"tokenizer.ggml.add_bos_token": True}),
    "smollm": lambda: bpe_kv("smollm", **{"tokenizer.ggml.add_space_prefix": True}),
    "starcoder": lambda: bpe_kv("starcoder"),
    "no-pre": lambda: bpe_kv(None),  # a gpt2 vocabulary without tokenizer.ggml.pre: "default"
}


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocabs")
    return {name: write_gguf(d / f"{name}.gguf", make()) for name, make in VOCABS.items()}


@pytest.fixture(scope="module")
def pair(vocab_files):
    """name -> (our Tokenizer, llama.cpp Llama with vocab_only) for the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cache = {}

    def get(name):
        if name not in cache:
            path = str(vocab_files[name])
            ref = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            cache[name] = (Tokenizer.from_metadata(read_meta(path)), ref)
        return cache[name]
    return get


def ref_piece(ref, token, special):
    import ctypes

    import llama_cpp
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(ref._model.vocab, token, buf, 256, 0, special)
    assert 0 <= n <= 256
    return buf.raw[:n]


def ref_detokenize(ref, ids, special):
    import ctypes

    import llama_cpp
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(ref._model.vocab, arr, len(ids), buf, size, False, special)
    assert 0 <= n <= size
    return buf.raw[:n]


# ---------------------------------------------------------------------------------------------
# Oracle comparisons


@pytest.mark.parametrize("name", list(VOCABS))
@pytest.mark.parametrize("add_special,parse_special",
                         [(True, False), (False, False), (True, True), (False, True)])
def test_encode_matches_llama_cpp(pair, name, add_special, parse_special):
    tok, ref = pair(name)
    for text in CORPUS:
        want = ref.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
        got = tok.encode(text, add_special=add_special, parse_special=parse_special)
        assert got == want, (name, text)


def _fuzz_texts(n, seed):
    """Random text over characters of many Unicode classes: letters and marks of several scripts,
    digits and other numbers, punctuation and symbols, every kind of whitespace, controls,
    private-use, unassigned and Unicode 15 characters, and pieces of special tokens."""
    rng = random.Random(seed)
    pool = (list("aAzZsStTmMdDrReEvVlL0123456789'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`")
            + list(" \t\n\r\x0b\x0c\x00\x1c\x7f\x85\xa0\xad\u1680\u2000\u200a\u2028\u2029\u202f"
                   "\u205f\u3000\u200b\u200d\ufeff")
            + list("éÉßÆœıİǅΩπЖжאבعربيहिन्दीกขไทย你好世界日本語テキストかな한국어")
            + list("\u0301\u0300\u0308\u20dd١٢३४½²⅓Ⅻ①€£¥©®™∑√∞≤≥←→")
            + list("😀🎉👍🏽👨\u200d👩🇫🇷\U0001d400\U0001fae8\U00031350\u1c89\u0378\ue000\U0010fffd")
            + ["<s>", "</s>", "<unk>", "<tool>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<0x41>",
               "\u2581", "'ll", "'RE", "   ", "\r\n", "\n\n"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("name", list(VOCABS))
def test_encode_fuzz_matches_llama_cpp(pair, name):
    tok, ref = pair(name)
    for text in _fuzz_texts(300, hash(name) % 1000):
        for parse_special in (False, True):
            want = ref.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)
            got = tok.encode(text, parse_special=parse_special)
            assert got == want, (name, text)
            assert tok.decode_bytes(got, parse_special) == ref_detokenize(ref, want, parse_special)


@pytest.mark.parametrize("name", list(VOCABS))
def test_pieces_match_llama_cpp(pair, name):
    tok, ref = pair(name)
    for t in range(tok.n_vocab):
        for special in (False, True):
            assert tok.token_to_piece(t, special) == ref_piece(ref, t, special), (t, special)


@pytest.mark.parametrize("name", list(VOCABS))
def test_decode_matches_llama_cpp(pair, name):
    tok, ref = pair(name)
    rng = random.Random(0)
    seqs = [tok.encode(text, add_special=True, parse_special=True) for text in CORPUS]
    seqs += [[rng.randrange(tok.n_vocab) for _ in range(rng.randint(1, 30))] for _ in range(50)]
    seqs.append([])
    for ids in seqs:
        for special in (False, True):
            assert tok.decode_bytes(ids, special) == ref_detokenize(ref, ids, special), ids


@pytest.mark.parametrize("name", list(VOCABS))
@pytest.mark.parametrize("parse_special", [False, True])
def test_round_trip_like_llama_cpp(pair, name, parse_special):
    """decode(encode(x)) gives what llama.cpp's own round trip gives. That is x itself for
    vocabularies that keep every byte and do not clean up spaces, except that SentencePiece
    vocabularies with add_space_prefix put a space after every special token they cut out
    (user-defined ones always) and decode a literal U+2581 as a space."""
    tok, ref = pair(name)
    exact = name in ("qwen2", "spm-gemma") or (name == "spm" and not parse_special)
    for text in CORPUS:
        exact_here = exact and not (name.startswith("spm") and ("\u2581" in text
                                                                or "<tool>" in text))
        back = tok.decode_bytes(tok.encode(text, False, parse_special), parse_special)
        ref_ids = ref.tokenize(text.encode(), add_bos=False, special=parse_special)
        assert back == ref_detokenize(ref, ref_ids, parse_special), text
        if exact_here:
            assert back.decode("utf-8") == text


def test_llama3_ignore_merges_and_fallbacks(pair):
    """llama-bpe takes a word that is itself a token whole, qwen2 merges it; a merge whose result
    is not a token falls back to its characters; a character with no token is dropped."""
    llama3, _ = pair("llama-bpe")
    qwen2, _ = pair("qwen2")
    whole = llama3.token_id("\u0120unreachableword")
    assert llama3.encode(" unreachableword", add_special=False) == [whole]
    assert whole not in qwen2.encode(" unreachableword", add_special=False)
    assert qwen2.encode("qz", add_special=False) == [qwen2.token_id("q"), qwen2.token_id("z")]
    default, _ = pair("default")
    assert default.decode(default.encode("QaQ", add_special=False)) == "a"


@pytest.mark.parametrize("name", list(VOCABS))
def test_token_roles_match_llama_cpp(pair, name):
    """Token attributes (with the types llama.cpp forces on tokens by their text), BOS/EOS, the
    end-of-generation set and add_bos/add_eos are llama.cpp's."""
    import llama_cpp
    tok, ref = pair(name)
    v = ref._model.vocab
    assert tok._attr == [llama_cpp.llama_vocab_get_attr(v, i) for i in range(tok.n_vocab)]
    assert tok.eog_ids == {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(v, i)}
    assert (tok.bos_id, tok.eos_id) == (llama_cpp.llama_vocab_bos(v), llama_cpp.llama_vocab_eos(v))
    assert (tok.add_bos, tok.add_eos) == (llama_cpp.llama_vocab_get_add_bos(v),
                                          llama_cpp.llama_vocab_get_add_eos(v))
    # With several EOT-looking tokens llama.cpp's choice follows its hash map: any of them.
    assert tok.tokens[llama_cpp.llama_vocab_eot(v)] in _EOT_CANDIDATES
    assert tok.tokens[tok.eot_id] in _EOT_CANDIDATES


_EOT_CANDIDATES = {"<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"}


def test_special_token_roles(pair):
    spm, _ = pair("spm")
    assert (spm.bos_id, spm.eos_id, spm.unk_id) == (1, 2, 0)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    # "<|im_end|>" is typed NORMAL in the file; llama.cpp makes it a control token.
    assert spm.is_control(spm.token_id("<|im_end|>")) and spm.is_eog(spm.token_id("<|im_end|>"))
    llama3, _ = pair("llama-bpe")
    assert llama3.add_bos and llama3.encode("hi")[0] == llama3.bos_id
    assert llama3.eot_id == llama3.token_id("<|eot_id|>")
    assert llama3.is_eog(llama3.token_id("<|endoftext|>"))


# ---------------------------------------------------------------------------------------------
# Errors (no oracle needed)


def _meta(kv):
    return dict(kv)


def test_unknown_pre_tokenizer_is_refused():
    with pytest.raises(CkirError, match="unsupported tokenizer.ggml.pre 'tekken'"):
        Tokenizer.from_metadata(_meta(bpe_kv("tekken")))


def test_unknown_model_is_refused():
    with pytest.raises(CkirError, match="unsupported tokenizer.ggml.model 'bert'"):
        Tokenizer.from_metadata(_meta(spm_kv(**{"tokenizer.ggml.model": "bert"})))


def test_missing_keys_are_refused():
    kv = spm_kv()
    del kv["tokenizer.ggml.tokens"]
    with pytest.raises(CkirError, match="no tokenizer.ggml.tokens"):
        Tokenizer.from_metadata(kv)
    kv = bpe_kv("qwen2")
    del kv["tokenizer.ggml.merges"]
    with pytest.raises(CkirError, match="tokenizer.ggml.merges is missing"):
        Tokenizer.from_metadata(kv)
    with pytest.raises(CkirError, match="no tokenizer.ggml.model"):
        Tokenizer.from_metadata({})


def test_short_arrays_and_duplicates_are_refused():
    kv = spm_kv()
    kv["tokenizer.ggml.scores"] = kv["tokenizer.ggml.scores"][:10]
    with pytest.raises(CkirError, match="tokenizer.ggml.scores has 10 entries"):
        Tokenizer.from_metadata(kv)
    kv = spm_kv()
    kv["tokenizer.ggml.tokens"] = kv["tokenizer.ggml.tokens"][:-1] + ["<s>"]
    with pytest.raises(CkirError, match="repeats token 1"):
        Tokenizer.from_metadata(kv)


def test_bad_ids_and_inputs():
    tok = Tokenizer.from_metadata(spm_kv())
    for bad in (-1, tok.n_vocab, 10 ** 9, "3"):
        with pytest.raises(CkirError, match="out of range"):
            tok.decode([1, bad])
    with pytest.raises(CkirError, match="must be str"):
        tok.encode(b"bytes")
    with pytest.raises(CkirError, match="UTF-8"):
        tok.encode("lone \ud800 surrogate")


def test_missing_byte_fallback_token():
    kv = spm_kv()
    kv["tokenizer.ggml.tokens"] = [t if not t.startswith("<0x") else f"<b{i}>"
                                   for i, t in enumerate(kv["tokenizer.ggml.tokens"])]
    tok = Tokenizer.from_metadata(kv)
    with pytest.raises(CkirError, match="no token for byte 0xE4"):
        tok.encode("你")


def test_bos_required_but_undefined():
    kv = bpe_kv("llama-bpe")
    kv["tokenizer.ggml.tokens"] = kv["tokenizer.ggml.tokens"][:11]
    kv["tokenizer.ggml.token_type"] = kv["tokenizer.ggml.token_type"][:11]
    del kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]
    tok = Tokenizer.from_metadata(kv)
    with pytest.raises(CkirError, match="BOS"):
        tok.encode("hi")
    assert tok.encode("\n", add_special=False) == [10]  # the 11 tokens are bytes 0x00..0x0A


def test_chat_template_is_kept():
    tok = Tokenizer.from_metadata(spm_kv(**{"tokenizer.chat_template": "{{ messages }}"}))
    assert tok.chat_template == "{{ messages }}"
