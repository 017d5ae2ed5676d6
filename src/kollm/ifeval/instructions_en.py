"""The 25 IFEval instruction checkers (Zhou et al. 2023, google-research `instruction_following_eval`),
with the ids, kwargs and verdicts of lm-evaluation-harness's `ifeval` task (v4.0 of its checkers).

Each checker is `fn(response, **kwargs) -> bool`; `prompt` is passed to the one that needs it
(`combination:repeat_prompt` reads `prompt_to_repeat`). Where lm-eval needs a network download or
a heavy dependency we use a small equivalent and say how it agrees:

- words: lm-eval counts `\\w+` runs (nltk's RegexpTokenizer); `re.findall(r"\\w+")` is the same.
- sentences: lm-eval uses nltk's pretrained English Punkt model, which must be downloaded
  (`punkt_tab`) and cannot be at run time here. `count_sentences` is a rule-based splitter that
  follows Punkt's behaviour on what IFEval responses contain: a sentence ends at `.`, `?` or `!`
  (runs of them, and closing quotes/brackets after them) followed by whitespace; a newline alone
  does not end a sentence; common abbreviations, initials and decimals do not end one.
- language: lm-eval uses langdetect; we use py3langid (already a kollm dependency, offline).
- capital words: lm-eval counts upper-case tokens of nltk's word_tokenize; `\\w+|[^\\w\\s]` tokens
  give the same count (word_tokenize's extra splits like "DO|N'T" keep both halves upper case).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable

RELATIONS = ("less than", "at least")
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# --- counting -----------------------------------------------------------------------------------

def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


# Abbreviations Punkt's English model knows; a period after them does not end a sentence.
_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
           "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
           "dec", "u.s", "u.k", "a.m", "p.m", "no", "fig", "approx", "dept", "est", "gen", "gov", "col"}
_END = re.compile(r"""[.?!]+["'”’)\]]*(?=\s|$)""")


def count_sentences(text: str) -> int:
    n, start = 0, 0
    for m in _END.finditer(text):
        token = text[start:m.start()].split()[-1:] or [""]
        word = token[0].lower().lstrip("(\"'")
        if m.group().startswith(".") and len(m.group().rstrip("\"'”’)]")) == 1 and (
                word in _ABBREV or re.fullmatch(r"[a-z]", word)):
            continue  # "Dr. Smith", "J. Doe": not a boundary
        if text[start:m.end()].strip(" \t\n.?!\"'”’)]"):
            n += 1
        start = m.end()
    return n + (1 if text[start:].strip() else 0)


# --- checkers -------------------------------------------------------------------------------------

def keywords_existence(r: str, *, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(r: str, *, keyword: str, frequency: int, relation: str) -> bool:
    return compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation, frequency)


def forbidden_words(r: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    return compare(collections.Counter(r.lower())[letter.strip().lower()], let_relation, let_frequency)


def detect_language(text: str) -> str:
    import py3langid

    return py3langid.classify(text)[0]


def response_language(r: str, *, language: str) -> bool:
    return detect_language(r) == language


def number_sentences(r: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(r), relation, num_sentences)


def number_paragraphs(r: str, *, num_paragraphs: int) -> bool:
    return count_star_paragraphs(r) == num_paragraphs


def count_star_paragraphs(r: str) -> int:
    """Paragraphs separated by a `***` divider; an empty one inside the text counts as -1 (invalid)."""
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return -1
    return n


def number_words(r: str, *, num_words: int, relation: str) -> bool:
    return compare(count_words(r), relation, num_words)


def nth_paragraph_first_word(r: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", r)
    n = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > n or not paragraphs[nth_paragraph - 1].strip():
        return False
    word = paragraphs[nth_paragraph - 1].strip().split()[0].strip().lstrip("'").lstrip('"')
    got = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        got += ch.lower()
    return n == num_paragraphs and got == first_word.lower()


def number_placeholders(r: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def postscript(r: str, *, postscript_marker: str) -> bool:
    r = r.lower()
    if postscript_marker == "P.P.S":
        pat = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pat = r"\s*p\.\s?s\..*$"
    else:
        pat = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pat, r, flags=re.MULTILINE))


def number_bullet_lists(r: str, *, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(r: str, options: tuple[str, ...] = CONSTRAINED_OPTIONS) -> bool:
    r = r.strip()
    return any(o in r for o in options)


def number_highlighted_sections(r: str, *, num_highlights: int) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return n >= num_highlights


def multiple_sections(r: str, *, section_spliter: str, num_sections: int) -> bool:
    # lm-eval puts the splitter into the regex unescaped; IFEval's ("Section", "SECTION", "PARAGRAPH",
    # "Part") need no escaping, so escaping changes nothing there and keeps "Q." from being a regex
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= num_sections


def json_format(r: str) -> bool:
    v = (r.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
         .removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(v)
    except ValueError:
        return False
    return True


def title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def two_responses(r: str, sep: str = "******") -> bool:
    valid = []
    parts = r.split(sep)
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(r: str, *, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(r: str, *, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def capital_word_frequency(r: str, *, capital_frequency: int, capital_relation: str) -> bool:
    words = re.findall(r"\w+|[^\w\s]", r)
    return compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def english_capital(r: str) -> bool:
    return r.isupper() and detect_language(r) == "en"


def english_lowercase(r: str) -> bool:
    return r.islower() and detect_language(r) == "en"


def no_comma(r: str) -> bool:
    return "," not in r


def quotation(r: str) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
    "startend:quotation": quotation,
}
