"""llama.cpp's BPE pre-tokenizers (tokenizer.ggml.pre): the regexes that cut text into the
fragments BPE merges within, and the per-name settings that go with them.

Written for HF tokenizers' Oniguruma. `\\s` is spelled out as llama.cpp's whitespace set
(Unicode White_Space), which Oniguruma's `\\s` need not be, and \\p{L}/\\p{N} as
llama.cpp's letter and number tables, which predate Unicode 16.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from numallm.engine.tokenizer_vocab import KEY

_WS = r"\t-\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
# Letters and digits new in Unicode 16. llama.cpp's tables (unicode-data.cpp) predate them
# and leave them uncategorised, so here they must count as neither \p{L} nor \p{N}. (Found
# by tokenizing every code point with both; no other code point differs.)
_UNICODE16 = (r"\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}"
              r"\x{10D40}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{11380}-\x{11389}"
              r"\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{116D0}-\x{116E3}"
              r"\x{11BC0}-\x{11BE0}\x{11BF0}-\x{11BF9}\x{13460}-\x{143FA}\x{16100}-\x{1611D}"
              r"\x{16130}-\x{16139}\x{16D40}-\x{16D6C}\x{16D70}-\x{16D79}\x{18CFF}\x{1CCF0}-\x{1CCF9}"
              r"\x{1E5D0}-\x{1E5ED}\x{1E5F0}-\x{1E5FA}")
_L = rf"[\p{{L}}&&[^{_UNICODE16}]]"
_N = rf"[\p{{N}}&&[^{_UNICODE16}]]"
_OTHER = rf"[[^{_WS}\p{{L}}\p{{N}}][{_UNICODE16}]]"  # [^\s\p{L}\p{N}] with the above
# llama.cpp's GPT-2 regex (its custom splitter adds the final \s+ the original lacks).
_GPT2 = rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_L}+| ?{_N}+| ?{_OTHER}+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
_DIGIT = _N

# How llama.cpp's regex texts (llama-vocab.cpp) read in Oniguruma. llama.cpp runs them either
# through a hand-written splitter (GPT-2, llama3, qwen2, qwen35: the regex with its own
# categories) or through std::regex on "collapsed" text where each non-ASCII code point
# stands for its category: there \p{Lu}, \p{Ll}, ... all mean any letter (A-Z and a-z
# included), and non-ASCII whitespace is one stand-in that \s matches. Both come down to
# these classes.
_CATEGORIES = {"L": _L, "Lu": _L, "Ll": _L, "Lt": _L, "Lm": _L, "Lo": _L, "N": _N,
               "P": r"\p{P}", "S": r"\p{S}", "M": r"\p{M}"}
_TRANSLATE = re.compile(r"\\p\{(\w+)\}|\\s|\\S")


def _onig(llama_regex: str) -> str:
    """One of llama.cpp's pre-tokenizer regexes, as Oniguruma (HF tokenizers) must spell it."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return _CATEGORIES[m.group(1)]
        return f"[{_WS}]" if m.group(0) == r"\s" else f"[^{_WS}]"
    return _TRANSLATE.sub(sub, llama_regex)


# The regexes of llama-vocab.cpp's llm_tokenizer_bpe, verbatim (C++ escapes undone).
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_DEEPSEEK3 = (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
              r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS
          + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS
          + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])"
           r"([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BAILING = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
_SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
_UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_EXAONE_MOE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
_JAIS2 = _LLAMA3.replace(r"|\s+(?!\S)|\s+", "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4))
                         + r"|\s{1,2}(?!\S)|\s{1}")
# llama.cpp runs regexes without categories on the code points, but with non-ASCII whitespace
# replaced by one stand-in that only \s matches: a literal class such as U+0800-U+4E00 never
# matches U+3000 or U+2002 there, hence the && [^whitespace].
_CJK = f"[[一-龥ࠀ-一가-퟿]&&[^{_WS}]]+"
_DEEPSEEK_CODER = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")
_DEEPSEEK_LLM = ("[\r\n]", r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                 rf"\s?[[!-/:-~！-／：-～‘-‟　-。]&&[^{_WS}]]+", r"\s+\z", _CJK, r"\p{N}+")
_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", "GPT-2", "[0-9][0-9][0-9]")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_NEWLINES = "[^\n]+|[\n]+"
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", "GPT-2", r"\p{N}+", "[0-9][0-9][0-9]")  # its default
_CHAMELEON = ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )", r"\p{N}",
              r"[\p{P}!-/:-@\[-`{-~]", "GPT-2")
_YOUTU = ("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
          + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
          + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# unicode_cpt_is_han's ranges. Kimi K2's splitter (unicode_regex_split_custom_kimi_k2) is this
# regex: Han runs first, then words of non-Han letters (its \p{Lu}.. classes come down to that).
_HAN = r"\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2EBEF}\x{2F800}-\x{2FA1F}"
_KIMI_K2 = (rf"[{_HAN}]+|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_HAN}]]+{_CONTRACTIONS}?|\p{{N}}{{1,3}}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _Pre:
    regexes: tuple[str, ...]
    clean_spaces: bool  # llama.cpp's clean_up_tokenization_spaces on detokenize
    ignore_merges: bool = False  # a fragment that is a token as a whole is taken whole
    add_bos: bool = False  # llama.cpp's default when the GGUF has no add_bos_token


def _pre(regexes: tuple[str, ...], clean_spaces: bool = False, **flags: bool) -> _Pre:
    """From llama.cpp's regex texts; "GPT-2" stands for its hand-written GPT-2 splitter."""
    return _Pre(tuple(_GPT2 if r == "GPT-2" else _onig(r) for r in regexes), clean_spaces, **flags)


_LLAMA3_PRE = _pre((_LLAMA3,), clean_spaces=True, ignore_merges=True, add_bos=True)
_QWEN2_PRE = _pre((_QWEN2,))
_DEEPSEEK3_PRE = _pre(_DEEPSEEK3)
_GPT4O_PRE = _pre((_GPT4O,))
_BAILING_PRE = _pre((_BAILING,))
_GLM_PRE = _pre((_LLAMA3,), clean_spaces=True, ignore_merges=True)

# tokenizer.ggml.pre values -> how llama.cpp splits (llama-vocab.cpp's llama_vocab::impl::load
# and llm_tokenizer_bpe). Only those a regex describes: afmoe's and tiny_aya's digit code,
# gemma4's, sarvam-moe's and whitespace's BPE on raw UTF-8 and superbpe's empty matches
# are left out and rejected. A GGUF without tokenizer.ggml.pre gets "default", as in llama.cpp.
PRE_TOKENIZERS: dict[str, _Pre] = {
    "smollm": _Pre((_DIGIT, _GPT2), clean_spaces=False),
    "command-r": _Pre((_DIGIT, _GPT2), clean_spaces=False),
    "starcoder": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "refact": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "codeshell": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "exaone": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "minerva-7b": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "mellum2": _Pre((_DIGIT, _GPT2), clean_spaces=True),
    "gpt-2": _Pre((_GPT2,), clean_spaces=True),
    "phi-2": _Pre((_GPT2,), clean_spaces=True),
    "mpt": _Pre((_GPT2,), clean_spaces=True),
    "olmo": _Pre((_GPT2,), clean_spaces=True),
    "jais": _Pre((_GPT2,), clean_spaces=True),
    "exaone4": _Pre((_GPT2,), clean_spaces=True),
    "trillion": _Pre((_GPT2,), clean_spaces=False),
    "granite-docling": _Pre((_GPT2,), clean_spaces=False),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), _LLAMA3_PRE),
    "dbrx": _pre((_LLAMA3,), clean_spaces=True),
    "smaug-bpe": _pre((_LLAMA3,), clean_spaces=True),
    "chatglm-bpe": _pre((_LLAMA3,), clean_spaces=True),
    "glm4": _GLM_PRE,
    "glm5": _GLM_PRE,
    "jais-2": _pre((_JAIS2,), clean_spaces=True),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
                    _QWEN2_PRE),
    "stablelm2": _pre((_QWEN2,), clean_spaces=True),
    "megrez": _pre((_QWEN2,), clean_spaces=True),
    "qwen35": _pre((_QWEN35,)),
    "laguna": _pre((_NEWLINES, _QWEN2)),
    "ufakzeka": _pre((_UFAKZEKA,)),
    "seed-coder": _pre((_SEED_CODER,)),
    "exaone-moe": _pre((_EXAONE_MOE,), clean_spaces=True),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), _BAILING_PRE),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), _DEEPSEEK3_PRE),
    "deepseek-coder": _pre(_DEEPSEEK_CODER),
    "deepseek-llm": _pre(_DEEPSEEK_LLM),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_PRE),
    "kimi-k2": _pre((_KIMI_K2,)),
    "tekken": _pre((_TEKKEN,), ignore_merges=True, add_bos=True),
    "minicpm5": _pre((r"\p{N}{1,3}", _QWEN2.replace(r"|\p{N}|", r"|\p{N}+|")), clean_spaces=True,
                     ignore_merges=True),
    "falcon": _pre(_FALCON, clean_spaces=True),
    "default": _pre(_DEFAULT, clean_spaces=True),
    "chameleon": _pre(_CHAMELEON, add_bos=True),
    "youtu": _pre(_YOUTU, ignore_merges=True),
    **dict.fromkeys(("bloom", "gpt3-finnish"), _pre((_BLOOM,), clean_spaces=True)),
    "poro-chat": _pre((_BLOOM,)),
    "viking": _pre((_BLOOM, r"\p{N}")),
}


def default_add_bos(md: Mapping[str, Any]) -> bool:
    """Whether llama.cpp adds BOS for this GPT-2 BPE vocabulary when the GGUF does not say."""
    pre = PRE_TOKENIZERS.get(md.get(KEY + "pre") or "default")
    return pre.add_bos if pre else False
