"""English IFEval checkers: each of the 25 instruction types on a passing and a failing response,
verdicts cross-checked against lm-evaluation-harness's own checker classes (imported from the
installed lm_eval when present), strict vs loose scoring, aggregation and the task wrapper."""

import json
import sys
import types

import pytest

from kollm.eval.task import get_task
from kollm.ifeval import REGISTRY, aggregate, check, loose_variants, score_row, validate_row
from kollm.ifeval.instructions_en import count_sentences, count_words

# (id, kwargs, passing response, failing response)
CASES = [
    ("keywords:existence", {"keywords": ["banana", "Rocket"]}, "A rocket ate a BANANA.", "A rocket ate a pear."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat, Cat and CAT.", "cat and cat."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["red", "blue"]}, "Reddish and bluer skies.", "The Red sky."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zany zebras zoom.", "Zany zebras."),
    ("language:response_language", {"language": "ko"}, "오늘은 날씨가 정말 좋아서 공원에 산책을 갔습니다.",
     "The weather was lovely today, so we went for a walk."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith came. He left.", "One. Two. Three."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First part.\n***\n\n***\nSecond part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three-four five",
     "one two three four"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "so"},
     "Intro here.\n\n\"So, the end.", "Intro here.\n\nThus the end."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear [name], at home."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\n\np.p.s. see you", "Body.\nP.S. see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\nP.S. see you", "Body. PS see you"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "I think: My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\nText", "<< >>\nText"),
    ("combination:two_responses", {}, "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...", "A poem: Roses"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "Any other questions?"',
     "Any other questions? Bye."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The USA and the UK.", "The USA and the uk."),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITAL LETTERS IN ENGLISH.", "This Is Not All Capital Letters."),
    ("change_case:english_lowercase", {}, "this is all lowercase english text here.", "this is Not lowercase."),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("startend:quotation", {}, '  "Quoted answer."  ', 'Quoted "answer."'),
]


def test_all_25_ids_are_registered():
    assert len(REGISTRY["en"]) == 25 and {c[0] for c in CASES} == set(REGISTRY["en"])


@pytest.mark.parametrize("iid,kw,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_positive_and_negative(iid, kw, good, bad):
    assert check("en", iid, good, kw) is True
    assert check("en", iid, bad, kw) is False


def test_empty_response_never_follows():
    assert not check("en", "punctuation:no_comma", "   ", {})


def test_word_and_sentence_counts():
    # words: \w+ runs, as nltk's RegexpTokenizer(r"\w+") in lm-eval
    assert count_words("Hello, world! It's 3.5 o'clock.") == 8
    try:
        from nltk.tokenize import RegexpTokenizer
    except ImportError:
        pass
    else:
        for t in [c[2] for c in CASES] + [c[3] for c in CASES] + ["안녕하세요, 세계! AI-기반 3.5%"]:
            assert count_words(t) == len(RegexpTokenizer(r"\w+").tokenize(t)), t
    # sentences: what nltk's English Punkt model gives on these (abbreviations, decimals, "!!",
    # "...", quotes, and newlines that are not boundaries)
    assert count_sentences("Hello world. This is Dr. Smith.") == 2
    assert count_sentences("Pi is 3.14 today. It is warm.") == 2
    assert count_sentences("Hi!! How are you? Fine...") == 3
    assert count_sentences('He said "go." Then he left.') == 2
    assert count_sentences("A list\n- one\n- two") == 1
    assert count_sentences("") == 0


def test_kwargs_are_validated():
    with pytest.raises(ValueError, match="unknown kwarg.*'num_word'"):
        check("en", "length_constraints:number_words", "a b", {"num_word": 3, "relation": "at least"})
    with pytest.raises(ValueError, match="missing kwarg.*'relation'"):
        check("en", "length_constraints:number_words", "a b", {"num_words": 3})
    with pytest.raises(KeyError, match="no_such"):
        check("en", "no_such:id", "a", {})
    # HF rows carry unused keys as null: ignored
    assert check("en", "punctuation:no_comma", "a b", {"num_words": None, "keywords": None})
    # a 0 is a value, not a missing kwarg (lm-eval would replace it with a random one)
    assert check("en", "detectable_format:number_highlighted_sections", "plain", {"num_highlights": 0})


def test_strict_and_loose_and_aggregate():
    row = validate_row({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
                        "kwargs": [{}, {}]}, "en")
    resp = 'Sure, here it is:\n**"An answer without commas"**'
    s = score_row(row, resp)
    # strict: the preamble has a comma and the quotes are wrapped in ** -> both fail;
    # loose: dropping the first line and the asterisks passes both
    assert s["inst_level_strict_acc"] == [False, False] and s["inst_level_loose_acc"] == [True, True]
    assert s["prompt_level_loose_acc"] is True
    assert len(loose_variants("a\nb\nc")) == 8 and "b" in loose_variants("a\nb\nc")
    s2 = score_row(row, '"Yes, fine"')
    agg = aggregate([s, s2])
    assert agg["inst_level_strict_acc"] == 1 / 4 and agg["prompt_level_strict_acc"] == 0.0
    assert agg["inst_level_loose_acc"] == 3 / 4 and agg["prompt_level_loose_acc"] == 0.5
    assert agg["strict_average"] == 1 / 8


def test_harness_run(tmp_path):
    from kollm.eval.harness import EvalConfig, evaluate

    d = tmp_path / "IFEval"
    d.mkdir()
    rows = [{"key": 1, "prompt": "Answer in lowercase without commas.",
             "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
             "kwargs": [{"num_words": None}, {"num_words": 3, "relation": "at least"}]},
            {"key": 2, "prompt": "Wrap it in JSON.", "instruction_id_list": ["detectable_format:json_format"],
             "kwargs": [{}]}]
    (d / "ifeval_input_data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    class Model:
        def generate(self, requests):
            assert all(r.chat and r.max_new_tokens == 1280 and r.stop == () for r in requests)
            return ["one two, three four", "```json\n{\"a\": 1}\n```"]

    res = evaluate(Model(), ["ifeval"], EvalConfig(data_dir=str(tmp_path), bootstrap_iters=20), log=lambda m: None)
    m = res["results"]["ifeval"]["metrics"]
    assert m["prompt_level_strict_acc"]["value"] == 0.5 and m["inst_level_strict_acc"]["value"] == 2 / 3
    assert m["strict_average"]["value"] == pytest.approx((0.5 + 2 / 3) / 2)


def _lm_eval_registry():
    """lm-eval's IFEval checkers, importable offline: its module needs langdetect and immutabledict
    (not kollm dependencies) and downloads nltk's punkt at import; the checkers compared here use
    none of them, so stand-ins are enough."""
    pytest.importorskip("lm_eval")
    nltk = pytest.importorskip("nltk")
    stubs = {}
    if "langdetect" not in sys.modules:
        m = types.ModuleType("langdetect")
        m.LangDetectException = Exception
        stubs["langdetect"] = m
    if "immutabledict" not in sys.modules:
        m = types.ModuleType("immutabledict")
        m.immutabledict = dict
        stubs["immutabledict"] = m
    saved = nltk.download
    sys.modules.update(stubs)
    nltk.download = lambda *a, **k: False
    try:
        from lm_eval.tasks.ifeval import instructions_registry
    finally:
        nltk.download = saved
        for k in stubs:
            sys.modules.pop(k, None)
    return instructions_registry.INSTRUCTION_DICT


# ids whose lm-eval checker needs langdetect or nltk's downloadable punkt model
NEEDS_DOWNLOAD = {"language:response_language", "length_constraints:number_sentences",
                  "change_case:capital_word_frequency", "change_case:english_capital",
                  "change_case:english_lowercase"}
EXTRA_RESPONSES = [
    "", "Section 1 intro\nSECTION 2 x", "*a* **b** *** c", "p.p.s done", "\"quoted\"", "<<t>> <<>>",
    "```\n[1, 2]\n```", "- a\n  * b\n*c*", "Yes.\n******\n\n******\nNo.", "[x] [y] [z]", "my answer is yes.",
    "Para one.\n\n\n\nPara two, sure.", "***\nOne\n***\nTwo\n***", "The cat and the catalog.",
]


def test_verdicts_agree_with_lm_eval():
    reg = _lm_eval_registry()
    responses = [c[2] for c in CASES] + [c[3] for c in CASES] + EXTRA_RESPONSES
    n = 0
    for iid, kw, _, _ in CASES:
        if iid in NEEDS_DOWNLOAD:
            continue
        ref = reg[iid](iid)
        ref.build_description(**kw)
        for r in responses:
            want = bool(r.strip()) and bool(ref.check_following(r))
            assert check("en", iid, r, kw) == want, (iid, kw, r)
            n += 1
    assert n > 600


def test_task_scores_like_lm_eval_process_results(tmp_path):
    pytest.importorskip("lm_eval")
    _lm_eval_registry()
    rows = [{"key": 1, "prompt": "Write without commas.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{"num_words": None}]},
            {"key": 2, "prompt": "Title and bullets.",
             "instruction_id_list": ["detectable_format:title", "detectable_format:number_bullet_lists"],
             "kwargs": [{}, {"num_bullets": 2}]}]
    d = tmp_path / "IFEval"
    d.mkdir()
    (d / "ifeval_input_data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n"
                                               + json.dumps({"key": 3, "prompt": "x", "instruction_id_list": ["a:b"],
                                                             "kwargs": [{}]}) + "\n")
    task = get_task("ifeval")
    items = task.load(tmp_path)
    assert len(items) == 2 and len(task.bad_rows) == 1 and "a:b" in task.bad_rows[0]
    assert task.requests(items[0])[0].max_new_tokens == 1280
    responses = ["Fine, thanks", "*<<Plan>>*\n* one\n* two"]
    from lm_eval.tasks.ifeval import utils as lm_utils  # imported after the stand-ins above

    per_item = [task.process(it, [r]) for it, r in zip(items, responses)]
    for it, r, ours in zip(items, responses, per_item):
        ref = lm_utils.process_results(it, [r])
        assert {k: (v if isinstance(v, list) else float(v)) for k, v in ref.items()} == ours
    agg = task.aggregate(per_item, bootstrap_iters=10)
    assert agg["inst_level_strict_acc"]["value"] == lm_utils.agg_inst_level_acc([p["inst_level_strict_acc"]
                                                                               for p in per_item])
