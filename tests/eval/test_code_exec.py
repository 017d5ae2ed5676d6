"""The code-execution sandbox: correct programs pass, wrong ones fail, hostile ones are contained
and reported as failures while this process carries on; HumanEval/MBPP rows in the HF layout."""

import json

import pytest

from kollm.eval.code_exec import (
    SandboxConfig,
    humaneval_program,
    mbpp_program,
    run_many,
    run_program,
    sandbox_kind,
)
from kollm.eval.task import get_task

# these programs are trusted: where no sandbox works (tests/eval/test_code_exec_hostile.py is then
# skipped) they still run, to test scoring
UNSAFE = sandbox_kind() == "none"
CFG = SandboxConfig(timeout_s=3, memory_mb=512, allow_unsafe=UNSAFE)

HUMANEVAL = [
    {"task_id": "HumanEval/0",
     "prompt": "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
               '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
               "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
               '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n',
     "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
                           "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
                           "                if distance < threshold:\n                    return True\n\n    return False\n",
     "test": "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
             "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
             "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n",
     "entry_point": "has_close_elements"},
    {"task_id": "HumanEval/53", "prompt": 'def add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n'
                                          '    5\n    """\n',
     "canonical_solution": "    return x + y\n",
     "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import random\n\n    assert candidate(0, 1) == 1\n"
             "    assert candidate(5, 7) == 12\n    for i in range(100):\n        x, y = random.randint(0, 1000), "
             "random.randint(0, 1000)\n        assert candidate(x, y) == x + y\n",
     "entry_point": "add"},
]
MBPP = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character "
                            "from the string.",
     "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n"
             "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n"
             "        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                   'assert remove_Occ("PHP","P") == "H"'], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 17, "text": "Write a function to find the perimeter of a square.",
     "code": "def square_perimeter(a):\r\n  perimeter=4*a\r\n  return perimeter",
     "test_list": ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20",
                   "assert square_perimeter(4)==16"], "test_setup_code": "", "challenge_test_list": []},
]


def test_canonical_solutions_pass_and_wrong_ones_fail():
    right = [humaneval_program(r, r["canonical_solution"]) for r in HUMANEVAL]
    right += [mbpp_program(r, r["code"]) for r in MBPP]
    wrong = [humaneval_program(HUMANEVAL[0], "    return False\n"), humaneval_program(HUMANEVAL[1], "    return x - y\n"),
             humaneval_program(HUMANEVAL[1], "    return x +\n"),  # syntax error
             mbpp_program(MBPP[0], MBPP[0]["code"].replace("break", "pass")),
             mbpp_program(MBPP[1], "def square_perimeter(a):\n  return 2*a")]
    res = run_many(right + wrong, CFG, workers=2)
    assert [r.passed for r in res] == [True] * 4 + [False] * 5
    assert "AssertionError" in res[4].stderr and "SyntaxError" in res[6].stderr


def test_reading_and_writing_inside_scratch_is_allowed():
    code = ("import os, json\nopen('out.txt', 'w').write('ok')\nos.mkdir('d'); os.remove('out.txt')\n"
            "print(json.dumps({'cwd_files': sorted(os.listdir('.')), 'etc': sorted(os.listdir('/etc')),"
            " 'env': sorted(os.environ), 'uid': os.getuid()}))")
    r = run_program(code, CFG)
    assert r.passed, r.stderr
    got = json.loads(r.stdout)
    assert "d" in got["cwd_files"] and "program.py" in got["cwd_files"]
    assert set(got["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE", "PWD"}  # stripped environment
    if r.sandbox == "bwrap":  # the host's /etc (passwd, ssh keys, ...) is not in the sandbox
        assert got["etc"] == ["ld.so.cache"] and got["uid"] == 65534


def test_network_namespace():
    if sandbox_kind() != "bwrap":
        pytest.skip("no bubblewrap here")
    # /proc/self/net lists the program's own network namespace: a loopback interface, nothing else
    r = run_program("print([ln.split(':')[0].strip() for ln in open('/proc/self/net/dev').readlines()[2:]])", CFG)
    assert r.passed and r.stdout.strip() == "['lo']", r


def test_humaneval_and_mbpp_tasks_load_hf_layout_and_score(tmp_path):
    (tmp_path / "openai_humaneval").mkdir()
    (tmp_path / "openai_humaneval" / "test.jsonl").write_text(
        "\n".join(json.dumps(r) for r in HUMANEVAL) + "\n{not json\n")
    (tmp_path / "mbpp" / "full").mkdir(parents=True)
    (tmp_path / "mbpp" / "full" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in MBPP) + "\n")
    he = get_task("humaneval", allow_unsafe_code=UNSAFE)
    items = he.load(tmp_path)
    assert len(items) == 2 and len(he.bad_rows) == 1 and "test.jsonl:3" in he.bad_rows[0]
    req = he.requests(items[0])[0]
    assert req.args == (HUMANEVAL[0]["prompt"],) and "\ndef" in req.stop
    assert he.score_batch(items, [r["canonical_solution"] for r in HUMANEVAL]) == [1.0, 1.0]
    assert he.process(items[1], ["    return x * y\n"]) == {"pass@1": 0.0}
    mb = get_task("mbpp", allow_unsafe_code=UNSAFE)
    items = mb.load(tmp_path)
    shots = mb.select_fewshot(items[0], mb.few_shot_items(tmp_path), 3, None)
    prompt = mb.requests(items[1], shots)[0].args[0]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: Write a function to find "
                             "the similar elements")
    assert prompt.count("[DONE]\n\n") == 3 and prompt.endswith("assert square_perimeter(4)==16\n[BEGIN]\n")
    assert mb.score_batch(items, [r["code"] for r in MBPP]) == [1.0, 1.0]


def test_trillion_cot_code_tasks_prompt_extract_and_score(tmp_path):
    """Figures 8 and 9 of the Trillion report: 0-shot chat prompts; the last ```python``` block of
    the answer is the program (a whole function for HumanEval, replacing the prompt's stub)."""
    (tmp_path / "openai_humaneval").mkdir()
    (tmp_path / "openai_humaneval" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in HUMANEVAL))
    (tmp_path / "mbpp" / "full").mkdir(parents=True)
    (tmp_path / "mbpp" / "full" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in MBPP))
    mb = get_task("mbpp_cot", allow_unsafe_code=UNSAFE)
    items = mb.load(tmp_path)
    req = mb.requests(items[1])[0]
    assert req.chat and req.stop == () and mb.few_shot_items(tmp_path) == []
    assert req.args[0] == ("You are an expert Python programmer, and here is your task: Write a function to find the "
                           "perimeter of a square.\nYour code should pass these tests:\n\n```\n"
                           "assert square_perimeter(10)==40\nassert square_perimeter(5)==20\n"
                           "assert square_perimeter(4)==16\n```\n\nWrap your code in ```python```. "
                           "Let's reason step by step.")
    draft, final = "def square_perimeter(a):\n    return 2 * a\n", "def square_perimeter(a):\n    return 4 * a\n"
    answer = f"First try:\n```python\n{draft}```\nFixed:\n```python\n{final}```\nDone."
    assert mb.score_batch(items[1:], [answer]) == [1.0]  # the last block is the answer
    assert mb.score_batch(items[1:], [f"```python\n{draft}```"]) == [0.0]
    he = get_task("humaneval_cot", allow_unsafe_code=UNSAFE)
    items = he.load(tmp_path)
    prompt = he.requests(items[1])[0].args[0]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: def add(x: int, y: int):")
    assert prompt.endswith('"""\n\n\nWrap your code in ```python```. Let\'s reason step by step.')
    whole = "Sure.\n```python\ndef add(x: int, y: int):\n    return x + y\n```"
    body_only = "```python\n    return x + y\n```"
    wrong = "```python\ndef add(x, y):\n    return x - y\n```"
    assert he.score_batch([items[1]] * 3, [whole, body_only, wrong]) == [1.0, 1.0, 0.0]
    # HumanEval/0 needs the prompt's `from typing import List`: kept ahead of the model's function
    sol = "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + \
          HUMANEVAL[0]["canonical_solution"] + "```"
    assert he.score_batch(items[:1], [sol]) == [1.0]


# A completion that returns an object equal to everything: it passed every test of the reference
# harnesses (pass@1 1.0). Results are now compared as plain values.
FORGE = ("    class Anything:\n        def __eq__(self, other):\n            return True\n"
         "        def __ne__(self, other):\n            return False\n        __hash__ = object.__hash__\n"
         "    return Anything()\n")
FORGE_SUBCLASS = "    class Int(int):\n        def __eq__(self, other):\n            return True\n    return Int(0)\n"


def test_an_object_equal_to_everything_does_not_pass(tmp_path):
    forged = [humaneval_program(r, FORGE) for r in HUMANEVAL] + [humaneval_program(HUMANEVAL[1], FORGE_SUBCLASS)]
    forged += [mbpp_program(MBPP[0], "def remove_Occ(s, ch):\n" + FORGE),
               mbpp_program(MBPP[1], "def square_perimeter(a):\n" + FORGE)]
    # plain results in containers, a generator and None still compare as before
    plain = {"prompt": "def f(n):\n", "entry_point": "f",
             "test": "def check(candidate):\n    r = candidate(2)\n"
                     "    assert r[:2] == ([1, (2, {'a': {3}})], None) and sum(r[2]) == 3\n"}
    ok = humaneval_program(plain, "    return [1, (n, {'a': {3}})], None, (i for i in (1, 2))\n")
    res = run_many(forged + [ok], CFG, workers=2)
    assert [r.passed for r in res] == [False] * (len(forged)) + [True], [r.stderr[-300:] for r in res]
    assert "not a plain value" in res[0].stderr and "not a plain value" in res[2].stderr
    he = get_task("humaneval_cot", allow_unsafe_code=UNSAFE)
    whole = "```python\ndef add(x: int, y: int):\n" + FORGE + "```"
    assert he.score_batch([HUMANEVAL[1]], [whole]) == [0.0]
