"""`kollm grpo filter` (kollm.train.grpo_filter over kollm.rl.difficulty): prompts whose measured
pass rate lies strictly inside the bounds are kept — exactly those —, the rates are written,
nothing kept is an error with the counts; and `data.system_prompt` reaches the prompt through the
chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kollm.rl.difficulty import keep
from kollm.train.grpo import grpo_config_from_dict
from kollm.train.grpo_filter import run

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# prompt i: "i+0=" with answer i; the engine answers correctly in CORRECT[i] of G = 4 samples
CORRECT = [0, 1, 2, 4, 3, 0, 4, 2]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, write_tiny_llama) -> Path:
    texts = [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 3
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "m", texts, ["<pad>", "<s>", "</s>"], 96, 32, 128, 0.5,
                            chat_template=TEMPLATE)


class Scripted:
    """A rollout engine whose i-th prompt gets CORRECT[i] right answers out of G."""

    def __init__(self, tok):
        self.tok, self.seen = tok, []

    def sample(self, prompts, n, seed):
        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            self.seen.append(text)
            i = int(text.split("+")[0][-1])
            answers = [str(i)] * CORRECT[i] + [str(i + 1)] * (n - CORRECT[i])
            out.append([self.tok(a, add_special_tokens=False)["input_ids"] for a in answers])
        return out


def _cfg(tok_dir: Path, train: Path, out: Path, **data) -> object:
    return grpo_config_from_dict({
        "name": "f", "output_dir": str(out), "seed": 0, "model": {"init_from": str(tok_dir)},
        "data": {"train": str(train), "max_prompt_len": 512, **data},
        "grpo": {"group_size": 4, "prompts_per_step": 2, "rewards": [{"name": "math"}]},
        "phases": [{"name": "rl", "steps": 1}]})


def _rows(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+0=", "answer": str(i)}) + "\n"
                            for i in range(len(CORRECT))) + "{bad\n")
    return path


def test_keeps_exactly_the_prompts_inside_the_bounds(tok_dir, tmp_path):
    from kollm.data.chat import load_tokenizer

    tok = load_tokenizer(tok_dir)
    cfg = _cfg(tok_dir, _rows(tmp_path), tmp_path / "run", system_prompt="Solve it. Answer with a number.")
    engine = Scripted(tok)
    out = tmp_path / "kept.jsonl"
    assert run(cfg, out, engine=engine) == (4, 8)  # rates 0, .25, .5, 1, .75, 0, 1, .5: four in (0, 1)
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == [
        f"{i}+0=" for i in range(8) if 0 < CORRECT[i] < 4]
    rates = [json.loads(x) for x in (tmp_path / "kept.jsonl.rates.jsonl").read_text().splitlines()]
    assert [r["pass_rate"] for r in rates] == [c / 4 for c in CORRECT]
    assert [r["kept"] for r in rates] == [0 < c < 4 for c in CORRECT]
    # the system prompt went through the chat template, before the user turn
    assert engine.seen[0] == "<|system|>Solve it. Answer with a number.</s><|user|>0+0=</s><|assistant|>"
    # other bounds: strictly inside (0.25, 1) keeps .5, .75, .5 — not .25
    assert run(cfg, out, low=0.25, high=1.0, engine=Scripted(tok)) == (3, 8)
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["2+0=", "4+0=", "7+0="]


def test_nothing_kept_stops_with_the_counts(tok_dir, tmp_path):
    from kollm.data.chat import load_tokenizer

    cfg = _cfg(tok_dir, _rows(tmp_path), tmp_path / "run")
    out = tmp_path / "kept.jsonl"
    with pytest.raises(ValueError, match=r"0 of 8 prompts have a pass rate in \(0.8, 0.9\) over 4 samples "
                                         r"\(2 all pass, 2 none pass\).*not written"):
        run(cfg, out, low=0.8, high=0.9, engine=Scripted(load_tokenizer(tok_dir)))
    assert not out.exists() and (tmp_path / "kept.jsonl.rates.jsonl").is_file()


def test_keep_is_strict_and_skips_unscored():
    assert keep([(0, 4), (1, 4), (4, 4), (0, 0), (3, 4)]) == [1, 4]
    assert keep([(1, 4), (2, 4)], low=0.25, high=0.75) == [1]


def test_system_prompt_needs_the_chat_template(tok_dir, tmp_path):
    from kollm.data.chat import encode_prompt, load_tokenizer

    tok = load_tokenizer(tok_dir)
    with pytest.raises(ValueError, match="data.system_prompt .* needs data.chat_template: true"):
        encode_prompt(tok, "1+1=", False, "Be brief.")
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "1+1="}]
    assert tok.decode(encode_prompt(tok, own, True, "Be brief.")) == "<|system|>Mine.</s><|user|>1+1=</s><|assistant|>"
