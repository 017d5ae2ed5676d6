"""IFEval instruction registry: instruction id → checker, per language, and the kwargs each takes.

English has IFEval's 25 ids (lm-eval's `INSTRUCTION_DICT`), Korean the 22 of the Trillion report's
KoIFEval. A checker's keyword-only parameters are its kwargs: those without a default are
required; anything else in a row's kwargs is an error naming the key.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from kollm.ifeval import instructions_en, instructions_ko

REGISTRY: dict[str, dict[str, Callable[..., bool]]] = {"en": instructions_en.CHECKERS, "ko": instructions_ko.CHECKERS}


def checker(lang: str, instruction_id: str) -> Callable[..., bool]:
    if lang not in REGISTRY:
        raise ValueError(f"IFEval language {lang!r}: one of {sorted(REGISTRY)}")
    fn = REGISTRY[lang].get(instruction_id)
    if fn is None:
        raise KeyError(f"unknown {lang} IFEval instruction id {instruction_id!r}")
    return fn


@functools.cache
def _params(lang: str, instruction_id: str) -> dict[str, inspect.Parameter]:
    fn = checker(lang, instruction_id)
    return {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def clean_kwargs(lang: str, instruction_id: str, kwargs: dict | None) -> dict:
    """The row's kwargs for this instruction: null/empty values dropped (HF rows carry every key of
    every instruction, null where unused), then checked against the checker's parameters. lm-eval
    drops every falsy value, 0 included, and then draws a random one; we keep 0."""
    params = _params(lang, instruction_id)
    kw = {k: v for k, v in (kwargs or {}).items() if v is not None and v != "" and v != []}
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ValueError(f"{instruction_id}: unknown kwarg(s) {unknown}; takes {sorted(params)}")
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in kw)
    if missing:
        raise ValueError(f"{instruction_id}: missing kwarg(s) {missing}")
    return kw


def check(lang: str, instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    """Does `response` follow the instruction? An empty response never does (as lm-eval)."""
    return follows(lang, instruction_id, response, clean_kwargs(lang, instruction_id, kwargs))


def follows(lang: str, instruction_id: str, response: str, clean_kw: dict) -> bool:
    """`check` with kwargs already cleaned (the loose score asks eight variants of one response)."""
    return bool(response.strip()) and REGISTRY[lang][instruction_id](response, **clean_kw)
