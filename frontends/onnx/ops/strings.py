"""String ops: StringNormalizer, StringConcat, StringSplit, RegexFullMatch. (Equal on strings
is math.py's Equal; string LabelEncoders are in signal.py.)"""
from __future__ import annotations

import re

from ckir.dialects.nn.strings import strings

from ..registry import converter

# Unicode's default case mapping (Python's str.lower/upper) is wrong only for these languages
# (dotted/dotless i in Turkish and Azeri, the combining dot of Lithuanian)
_SPECIAL_CASING = re.compile(r"(tr|az|lt)([-_.@]|\Z)", re.IGNORECASE)


@converter("StringNormalizer", since=10)
def string_normalizer(ctx):
    action = ctx.attr("case_change_action", "NONE")
    if action not in ("NONE", "LOWER", "UPPER"):
        raise ctx.fail(f"case_change_action must be NONE, LOWER or UPPER, got {action!r}")
    locale = ctx.attr("locale", "")
    if action != "NONE" and _SPECIAL_CASING.match(locale):
        raise ctx.fail(f"locale {locale!r} has its own case rules; ckir changes case with the "
                       "Unicode default mapping only")
    stop = ctx.attr("stopwords", None)
    return ctx.b.nn.string_normalizer(ctx.x(0), case_change=action,
                                      case_sensitive=bool(ctx.attr("is_case_sensitive", 0)),
                                      stopwords=strings(*stop) if stop else None)


@converter("StringConcat", since=20)
def string_concat(ctx):
    return ctx.b.nn.string_concat(ctx.x(0), ctx.x(1))


@converter("StringSplit", since=20)
def string_split(ctx):
    return list(ctx.b.nn.string_split(ctx.x(0), delimiter=ctx.attr("delimiter", None),
                                      maxsplit=ctx.attr("maxsplit", None)))


@converter("RegexFullMatch", since=20)
def regex_full_match(ctx):
    return ctx.b.nn.regex_full_match(ctx.x(0), pattern=ctx.attr("pattern"))
