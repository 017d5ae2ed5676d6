"""Korean IFEval checkers: the 22 instruction types of the Trillion 7B report's KoIFEval (Table 15;
IFEval's 25 without the three `change_case:*` ones, which have no meaning for Hangul), with the
same ids and kwargs as IFEval and Korean-correct counting:

- words are 어절 (eojeol, whitespace-separated units): "사과를 먹었다." is 2 words. `\\w+` would agree
  here but splits "AI-기반" or "3.5%" into pieces a Korean reader counts as one word.
- sentences end at terminal punctuation (. ? ! … and full-width forms) followed by whitespace, and
  at a line break: Korean list-style answers often end lines with "-다"/"-요" and no period.
- keywords and forbidden words: Korean attaches particles (조사) to nouns, so "사과" occurs in
  "사과를" — a Hangul word matches at the start of an eojeol (IFEval's `\\b` word boundary would
  never match there); Latin words keep IFEval's `\\b...\\b`.
- letters: a Hangul syllable counts itself; a compatibility jamo (ㄱ, ㅏ, ...) counts its
  occurrences inside syllables (initial, medial or final), as a Korean reader counts letters.
- first word of a paragraph: the first eojeol must start with the word (particles may follow).
- paragraphs: Table 15 asks for the markdown divider written "* * *"; both it and IFEval's "***" split.
- titles may be wrapped in <<...>>, «...» (the report's example) or 《...》 (Korean book-title marks);
  quotation accepts "..." and “...”; no_comma also forbids the full-width comma.
- constrained response: `options` kwarg (the report's "{options}"); with none, the options the
  prompt itself spells out (public Korean IFEval data words them "제 답변은 …", "내 대답은 …" or
  "제 대답은 …"; `options_from_prompt`), else "제 대답은 예/아니요/아마도입니다." in those three
  phrasings plus IFEval's English options.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable

from kollm.ifeval import instructions_en as en
from kollm.ifeval.instructions_en import compare

_KO_PREFIXES = ("제 대답은", "제 답변은", "내 대답은")  # the phrasings of released Korean IFEval prompts
KO_OPTIONS = tuple(f"{p} {a}" for p in _KO_PREFIXES for a in ("예입니다.", "아니요입니다.", "아마도입니다."))
# a quoted option in the prompt ('제 답변은 예입니다.', “내 대답은 아니요.”, "My answer is yes."), or,
# unquoted, the phrase up to its sentence end
_QUOTED_OPTION = re.compile(r"[\"'“‘「『]((?:제|내)\s*(?:대답|답변)은[^\"'”’」』\n]*|My answer is[^\"'”’\n]*)[\"'”’」』]")
_BARE_OPTION = re.compile(r"((?:제|내)\s*(?:대답|답변)은\s*[^\s,、.\"'”’]+(?:\.)?)")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Korean relation words a translated dataset may put in `relation` kwargs
_RELATION_KO = {"미만": "less than", "이상": "at least"}


def _rel(relation: str) -> str:
    return _RELATION_KO.get(relation.strip(), relation)


def count_words(text: str) -> int:
    return sum(1 for tok in text.split() if re.search(r"\w", tok))


_END = re.compile(r"""[.?!…。？！]+["'”’)\]」』]*(?=\s|$)""")


def count_sentences(text: str) -> int:
    n = 0
    for line in text.splitlines():
        start = 0
        for m in _END.finditer(line):
            piece = line[start:m.end()]
            word = (line[start:m.start()].split()[-1:] or [""])[0].lower()
            if m.group() == "." and not _HANGUL.search(word) and (word in en._ABBREV or re.fullmatch(r"[a-z]", word)):
                continue
            if re.search(r"\w", piece):
                n += 1
            start = m.end()
        if re.search(r"\w", line[start:]):
            n += 1
    return n


def _word_pattern(word: str) -> str:
    w = re.escape(word.strip())
    return r"(?<!\w)" + w if _HANGUL.search(word) else r"\b" + w + r"\b"


def forbidden_words(r: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(_word_pattern(w), r, flags=re.IGNORECASE) for w in forbidden_words)


# compatibility jamo of the 19 initials, 21 medials and 27 finals of a precomposed syllable
_L = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_V = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_T = ["", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ", "ㅂ",
      "ㅄ", "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ"]


def jamo(text: str) -> list[str]:
    out = []
    for ch in text:
        s = ord(ch) - 0xAC00
        if 0 <= s < 11172:
            out += [_L[s // 588], _V[(s % 588) // 28]] + ([_T[s % 28]] if s % 28 else [])
        else:
            out.append(ch)
    return out


def count_letter(text: str, letter: str) -> int:
    letter = letter.strip().lower()
    if len(letter) == 1 and "\u3131" <= letter <= "\u318e":
        return collections.Counter(jamo(text))[letter]
    return collections.Counter(text.lower())[letter]


def keywords_frequency(r: str, *, keyword: str, frequency: int, relation: str) -> bool:
    return compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), _rel(relation), frequency)


def letter_frequency(r: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    return compare(count_letter(r, letter), _rel(let_relation), let_frequency)


def number_sentences(r: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(r), _rel(relation), num_sentences)


def number_words(r: str, *, num_words: int, relation: str) -> bool:
    return compare(count_words(r), _rel(relation), num_words)


def number_paragraphs(r: str, *, num_paragraphs: int) -> bool:
    parts = re.split(r"\s?\*\s?\*\s?\*\s?", r)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
            n -= 1
    return n == num_paragraphs


def nth_paragraph_first_word(r: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", r)
    n = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > n or not paragraphs[nth_paragraph - 1].strip():
        return False
    word = paragraphs[nth_paragraph - 1].strip().split()[0].strip("'\"“”‘’.,?!«»《》()[]*#")
    want = first_word.strip().lower()
    ok = word.lower().startswith(want) if _HANGUL.search(want) else re.split(r"[.,?!'\"]", word.lower())[0] == want
    return n == num_paragraphs and ok


def options_from_prompt(prompt: str) -> list[str]:
    """The answer phrases a constrained-response prompt offers, as written in it (order kept,
    duplicates dropped); [] when it spells out none."""
    found = [m.strip() for m in _QUOTED_OPTION.findall(prompt)] or [m.strip() for m in _BARE_OPTION.findall(prompt)]
    return list(dict.fromkeys(o for o in found if o))


def constrained_response(r: str, *, options: list[str] | None = None) -> bool:
    return en.constrained_response(r, tuple(options) if options else KO_OPTIONS + en.CONSTRAINED_OPTIONS)


def title(r: str) -> bool:
    found = re.findall(r"<<([^\n]+?)>>|«([^\n]+?)»|《([^\n]+?)》", r)
    return any("".join(t).strip() for t in found)


def end_checker(r: str, *, end_phrase: str) -> bool:
    return r.strip().strip('"“”').lower().endswith(end_phrase.strip().lower())


def no_comma(r: str) -> bool:
    return "," not in r and "，" not in r


def quotation(r: str) -> bool:
    r = r.strip()
    return len(r) > 1 and ((r[0] == '"' and r[-1] == '"') or (r[0] == "“" and r[-1] == "”"))


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": en.keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": en.response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": en.number_placeholders,
    "detectable_content:postscript": en.postscript,
    "detectable_format:number_bullet_lists": en.number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": en.number_highlighted_sections,
    "detectable_format:multiple_sections": en.multiple_sections,
    "detectable_format:json_format": en.json_format,
    "detectable_format:title": title,
    "combination:two_responses": en.two_responses,
    "combination:repeat_prompt": en.repeat_prompt,
    "startend:end_checker": end_checker,
    "punctuation:no_comma": no_comma,
    "startend:quotation": quotation,
}
