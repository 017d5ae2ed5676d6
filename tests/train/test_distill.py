"""`kollm distill` (kollm.train.distill): chat rows → response labels, the label alignment of
student generations, DistiLLM's adaptive off-policy schedule and bounded replay, exact resume of
the data source, the vocabulary check, stored teacher top-k, and the command end to end (metrics,
kill + --resume gives the uninterrupted run's numbers, hf/latest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kollm.model.config import get_preset
from kollm.model.hf import save_hf
from kollm.model.transformer import build_model
from kollm.train.distill import distill_config_from_dict
from kollm.train.objectives.lm import IGNORE

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

EN = ["Today the weather in Seoul is sunny.", "Minsu had bibimbap for lunch.", "Two plus three is five.",
      "Jiyoung's favourite subject is music.", "The temperature is twelve degrees."]
KO = ["오늘 서울의 날씨는 맑음입니다.", "민수는 점심으로 비빔밥을 먹었습니다.", "둘 더하기 셋은 다섯입니다."]


def _tokenizer(out: Path, budget: int = 120) -> Path:
    from kollm.tokenizer.train import TokenizerConfig as TokConfig
    from kollm.tokenizer.train import save, train

    tok, summary, _ = train({"en": EN * 40, "ko": KO * 40}, TokConfig(budgets={"en": budget, "ko": 60}))
    save(tok, out, summary)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tokenizer, a random tiny teacher exported with it, and train/validation rows."""
    root = tmp_path_factory.mktemp("distill")
    tok_dir = _tokenizer(root / "tok")
    from kollm.data.chat import load_tokenizer

    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    teacher = build_model(get_preset("tiny", vocab_size=len(tok), dim=48, n_layers=2, ffn_dim=128))
    save_hf(teacher, root / "teacher", tokenizer=tok_dir)
    rows = [{"prompt": a, "completion": b} for a, b in zip(EN + KO, (EN + KO)[1:] + EN[:1])]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows * 3]
    bad = ["{not json", json.dumps({"messages": [{"role": "user", "content": "no answer"}]})]
    (root / "train.jsonl").write_text("\n".join(lines[:2] + bad + lines[2:]) + "\n", encoding="utf-8")
    (root / "val.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:4]) + "\n")
    return root, tok


def _cfg(root: Path, out: Path, **distill) -> dict:
    return {
        "name": "t", "output_dir": str(out), "seed": 0,
        "model": {"preset": "tiny", "tokenizer": str(root / "tok"), "overrides": {"dim": 32, "ffn_dim": 96}},
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "val.jsonl")},
        "teacher": {"model": str(root / "teacher"), "top_k": 8},
        "distill": {"loss": "skl", "alpha": 0.1, "max_new_tokens": 6, "replay_capacity": 6,
                    "off_policy_margin": 0.0, **distill},
        "batch": {"tokens": 4 * 64},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "phases": [{"name": "main", "steps": 8, "data": {"seq_len": 64, "batch_size": 2}}],
        "checkpoint": {"every": 3, "keep": 5, "export_hf": True, "export_dtype": "float32"},
        "logging": {"progress": False},
    }


def test_rows_to_examples_labels_and_bad_rows(world):
    from kollm.train.distill_data import ChatExamples

    root, tok = world
    ex = ChatExamples(root / "train.jsonl", tok, 64)
    assert len(ex.examples) == 24
    assert ex.errors.counts == {"bad_json": 1, "no_assistant_turn": 1}
    assert f"{root / 'train.jsonl'}:3" in ex.errors.summary()
    e = ex.examples[0]
    # labels: the assistant content + end of turn; the prompt (with the generation header) is not trained
    assert e.ids[:len(e.prompt)] == e.prompt
    assert all(x == IGNORE for x in e.labels[:len(e.prompt)])
    assert e.labels[len(e.prompt):] == e.ids[len(e.prompt):]
    assert tok.decode(e.ids[len(e.prompt):]).strip().startswith("Minsu had bibimbap")
    assert e.ids[-1] == tok.convert_tokens_to_ids("<|eot_id|>")


def test_generated_samples_are_labelled_like_the_dataset(world):
    """The alignment DistiLLM's sampler gets one position off: a generated response equal to the
    dataset's response must give exactly the dataset's labels (and so the same targets)."""
    from kollm.train.distill_data import ChatExamples, DistillData, collate

    root, tok = world
    e = ChatExamples(root / "train.jsonl", tok, 64).examples[3]
    gen = DistillData._as_example(e.ids, len(e.prompt))
    assert gen.labels == e.labels
    b = collate([gen])
    first = len(e.prompt)
    # the logits at the last prompt position are trained toward the first response token
    assert int(b["labels"][0, 1:][first - 1]) == e.ids[first]
    assert (b["labels"][0, 1:][: first - 1] == IGNORE).all()


class _Source:
    """DistillData around a tiny student with generation counted."""

    def __init__(self, world, **distill):
        from kollm.data.chat import stop_token_ids
        from kollm.train.distill_data import ChatExamples, DistillData

        root, tok = world
        cfg = distill_config_from_dict(_cfg(root, root / "unused", **distill))
        torch.manual_seed(0)
        self.model = build_model(get_preset("tiny", vocab_size=len(tok), dim=32, ffn_dim=96))
        ex = ChatExamples(root / "train.jsonl", tok, 64)
        self.data = DistillData(ex, cfg, self.model, stop_token_ids(tok), seed=0)
        self.calls = 0
        real = self.data._generate

        def counted(prompts):
            self.calls += 1
            return real(prompts)

        self.data._generate = counted


def test_distillm_schedule_on_scripted_validation_losses(world):
    """DistiLLM's finetune.py: the dev cross-entropy at step 0 is the reference; P rises by 0.1 only
    when a validation is ≥ reference + loss_eps (0.1), and only then does the reference move.
    val_loss (the divergence) is ignored: it would raise P under kollm's rule at 2.5 → 3.05."""
    src = _Source(world, off_policy_margin=0.1).data  # DistiLLM: init 0, step 0.1, loss_eps 0.1 (rule distillm)
    seen = []
    for ce in (3.0, 2.5, 3.05, 3.2, 3.25, 3.4, 2.0, 3.6):
        src.on_validation({"val_ce": ce, "val_loss": 10.0 - ce})
        seen.append(round(src.prob, 6))
    assert seen == [0.0, 0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3]
    assert src.last_val == 3.6
    src.prob = 0.95
    src.on_validation({"val_ce": 9.0})
    assert src.prob == 1.0  # capped
    assert src.validate_at_start  # the step-0 reference comes from a validation before the first step


def test_distillm_draw_fresh_replay_or_dataset(world):
    """One draw r per micro-batch: r < φ·(1 − step/total) or (r < φ, buffer filling) generates,
    r < φ replays, else the dataset; φ = 0.6 at step 5 of 10 (DistiLLM's global_step 5): φ·s = 0.3."""
    s = _Source(world, off_policy_init=0.6)
    d = s.data
    draws = iter([0.5, 0.5, 0.5, 0.29, 0.31, 0.59, 0.61])
    d.draw = type("Scripted", (), {"random": lambda _: next(draws)})()  # the off-policy draw
    d.on_step(4, 10)
    assert d.fresh_share() == pytest.approx(0.5)
    for _ in range(3):  # the buffer (6) fills: r = 0.5 < φ generates
        d.next_batch(2)
    assert s.calls == 3 and len(d.buffer) == 6
    kinds = []
    for _ in range(4):
        before = s.calls
        b = d.next_batch(2)
        kinds.append("fresh" if s.calls > before else "dataset" if bool((b["off_policy_prob"] == 0.6).all())
                     and _is_dataset(d, b) else "replay")
    assert kinds == ["fresh", "replay", "replay", "dataset"]
    d.on_step(9, 10)  # the last step: s = 0, every off-policy batch replays
    assert d.fresh_share() == 0.0


def _is_dataset(d, b) -> bool:
    ids = [row[row != 0].tolist() for row in b["input_ids"]]
    return all(any(e.ids == x for e in d.examples) for x in ids)


def test_kollm_rule_rises_when_validation_stalls(world):
    src = _Source(world, off_policy_rule="kollm", off_policy_step=0.1, off_policy_margin=0.05).data
    seen = []
    for v in (2.0, 1.5, 1.48, 1.6, 1.0, 0.99):
        src.on_validation({"val_loss": v})
        seen.append(round(src.prob, 6))
    # 2.0 sets the reference; 1.5 improves by > 0.05; 1.48 and 1.6 do not; 1.0 does; 0.99 does not
    assert seen == [0.0, 0.0, 0.1, 0.2, 0.2, 0.3]


def test_off_policy_batches_generate_then_replay(world):
    s = _Source(world, off_policy_init=1.0, replay_ratio="constant", fresh_prob=0.0)
    for _ in range(3):  # capacity 6, 2 per batch: three generations fill the buffer
        b = s.data.next_batch(2)
        assert float(b["off_policy_prob"][0]) == 1.0
    assert s.calls == 3 and len(s.data.buffer) == 6
    for _ in range(4):  # full, fresh_prob 0: replayed, never generated
        b = s.data.next_batch(2)
    assert s.calls == 3 and float(b["replay_size"][0]) == 6
    # every replayed sample carries a response target after its prompt
    assert ((b["labels"][:, 1:] != IGNORE).sum(1) >= 1).all()
    off = _Source(world, off_policy_init=0.0)
    assert "teacher_ids" not in off.data.next_batch(2) and off.calls == 0  # p = 0: the dataset's responses


def test_state_dict_resumes_exactly(world):
    from types import SimpleNamespace

    # a budget of 24 new tokens fits seq_len 64 after the longest prompt, not after the longest
    # example: the phase's length must come back with the state
    a = _Source(world, off_policy_init=0.5, replay_ratio="constant", fresh_prob=0.5, max_new_tokens=24)
    a.data.set_phase(SimpleNamespace(seq_len=64))
    for _ in range(5):
        a.data.next_batch(2)
    state = json.loads(json.dumps(a.data.state_dict()))  # as the checkpoint stores it
    want = [a.data.next_batch(2) for _ in range(12)]
    b = _Source(world, off_policy_init=0.0, replay_ratio="constant", fresh_prob=0.5, max_new_tokens=24)
    b.model.load_state_dict(a.model.state_dict())
    b.data.load_state_dict(state)
    got = [b.data.next_batch(2) for _ in range(12)]
    for x, y in zip(want, got):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_teacher_with_another_vocabulary_is_an_error(world, tmp_path):
    from kollm.data.chat import load_tokenizer
    from kollm.train.distill_teacher import check_same_vocabulary

    root, tok = world
    other = load_tokenizer(_tokenizer(tmp_path / "other", budget=90))
    with pytest.raises(ValueError, match=r"teacher.model T: its vocabulary \(\d+ tokens\) differs from the student's S"):
        check_same_vocabulary(tok, other, "S", "T")
    check_same_vocabulary(tok, load_tokenizer(root / "tok"), "S", "T")


def test_precompute_and_stored_topk_match_the_live_teacher(world, tmp_path):
    """Stored top-k with k = V − 1 is exact: the offline loss equals the online one on the same batch."""
    from kollm.data.chat import load_tokenizer
    from kollm.model.hf import load_hf
    from kollm.train.distill_data import ChatExamples, StoredTopK, collate
    from kollm.train.distill_teacher import precompute
    from kollm.train.objectives.distill import DistillObjective

    root, tok = world
    raw = _cfg(root, tmp_path / "run")
    raw["teacher"]["top_k"] = len(tok) - 1
    cfg = distill_config_from_dict(raw)
    out = precompute(cfg, tmp_path / "topk", torch.device("cpu"), batch_size=5)
    assert [p.name for p in out] == ["train", "validation"]
    ex = ChatExamples(root / "train.jsonl", tok, 64)
    stored = StoredTopK(tmp_path / "topk" / "train", root / "train.jsonl", tok, 64, len(ex.examples))
    idx = [0, 7, 11]
    plain = collate([ex.examples[i] for i in idx])
    offline = collate([ex.examples[i] for i in idx], stored, idx)
    teacher = load_hf(root / "teacher")
    torch.manual_seed(1)
    student = build_model(get_preset("tiny", vocab_size=len(tok), dim=32, ffn_dim=96))
    obj = DistillObjective(teacher, "srkl")
    totals = obj.targets(plain)
    live = float(obj(student, plain, totals).loss.detach())
    assert float(DistillObjective(None, "srkl")(student, offline, totals).loss.detach()) == pytest.approx(live, rel=1e-4)
    # a changed data file is caught before training
    with pytest.raises(ValueError, match="data_sha256"):
        StoredTopK(tmp_path / "topk" / "train", root / "val.jsonl", load_tokenizer(root / "tok"), 64, 4)


def _distill(cfg_path: Path, *args: str, fault: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("KOLLM_FAULT_AT_STEP", None)
    if fault:
        env["KOLLM_FAULT_AT_STEP"] = str(fault)
    return subprocess.run([sys.executable, "-m", "kollm.cli", "distill", str(cfg_path), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_command_end_to_end_with_kill_and_resume(world, tmp_path, capsys):
    from kollm.train.distill import main

    root, tok = world
    paths = {}
    for name in ("full", "killed"):
        raw = _cfg(root, tmp_path / name, off_policy_rule="kollm", off_policy_init=0.5, off_policy_step=0.5,
                   off_policy_margin=10.0)
        raw["validation"] = {"every": 2}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        paths[name] = tmp_path / f"{name}.yaml"
    assert main([str(paths["full"])]) == 0  # in this process: one interpreter start fewer
    err = capsys.readouterr().err
    assert "2 bad rows skipped" in err and "bad_json" in err
    killed = _distill(paths["killed"], fault=5)
    assert killed.returncode == 17, killed.stderr[-3000:]
    resumed = _distill(paths["killed"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "killed")
    for key in ("loss", "kl", "val_loss", "off_policy_prob", "replay_size"):
        assert any(key in r for r in a), key
    # step 0: the untrained student's validation (the schedule's reference), before the first step
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(0, 9))
    for x, y in zip(a, b):
        assert ("val_loss" in x) == ("val_loss" in y) == (x["step"] % 2 == 0)
        for key in ("loss", "kl", "off_policy_prob", "replay_size", "val_loss", "val_kl"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)
    # margin 10: every validation after the first raises P(off-policy) by 0.5, capped at 1
    probs = [r["off_policy_prob"] for r in a if "off_policy_prob" in r]
    assert probs[0] == pytest.approx(0.5) and probs[-1] == pytest.approx(1.0)
    assert max(r.get("replay_size", 0) for r in a) == 6  # bounded by replay_capacity
    hf = tmp_path / "full" / "hf" / "latest"
    assert (hf / "model.safetensors").is_file() and (hf / "tokenizer.json").is_file()


def test_bad_settings_are_one_line_errors(world, tmp_path):
    from kollm.train.distill import train

    root, _ = world
    cases = [({"distill": {"fresh_prob": 2.0}}, "distill.fresh_prob"),
             ({"teacher": {"model": None, "stored": str(tmp_path)}}, "distill.off_policy: student generations"),
             ({"teacher": {"model": None}}, "teacher.model"),
             ({"data": {"train": ""}}, "data.train is required")]
    for change, message in cases:
        raw = _cfg(root, tmp_path / "run")
        for section, values in change.items():
            raw[section] |= values
        with pytest.raises(ValueError, match=message):
            train(distill_config_from_dict(raw))


def test_server_topk_of_generated_samples_match_the_teacher(world, openai_stub):
    """teacher.server (DNA's 405B teacher beside stored top-k): a generated sample's top-k come from
    vLLM's prompt_logprobs; they equal the live teacher's top-k, and the loss on them equals the
    loss with top-k taken from the teacher's own logits."""
    from kollm.data.chat import stop_token_ids
    from kollm.model.hf import load_hf
    from kollm.train.distill_data import ChatExamples, DistillData, ServerTopK, collate
    from kollm.train.objectives.distill import DistillObjective, target_mask, teacher_topk

    root, tok = world
    teacher = load_hf(root / "teacher")
    k = 8

    def vllm(call):  # vLLM's prompt_logprobs: entry j is the distribution of token j, top-k + the token itself
        ids = call.body["prompt"]
        with torch.no_grad():
            logp = torch.log_softmax(teacher(torch.tensor([ids])).logits[0].double(), -1)
        out = [None]
        for j in range(1, len(ids)):
            top = logp[j - 1].topk(call.body["prompt_logprobs"]).indices.tolist()
            out.append({str(t): {"logprob": float(logp[j - 1, t]), "rank": r + 1}
                        for r, t in enumerate(dict.fromkeys(top + [ids[j]]))})
        return {"choices": [{"text": "x", "prompt_logprobs": out}]}

    stub = openai_stub(vllm)
    cfg = distill_config_from_dict(_cfg(root, root / "unused", off_policy_init=1.0))
    torch.manual_seed(0)
    student = build_model(get_preset("tiny", vocab_size=len(tok), dim=32, ffn_dim=96))
    ex = ChatExamples(root / "train.jsonl", tok, 64)
    server = ServerTopK(stub.url, k)
    data = DistillData(ex, cfg, student, stop_token_ids(tok), stored=object(), server=server)
    assert data.off_policy  # stored top-k no longer rule out generations
    b = data.next_batch(2)  # φ = 1: generated, scored by the server
    assert len(stub.calls) == 2 and stub.calls[0].path == "/v1/completions"
    mask = target_mask(b["labels"])
    with torch.no_grad():
        ids, logp, tail = teacher_topk(teacher(b["input_ids"]).logits[:, :-1][mask], k)
    assert torch.equal(b["teacher_ids"][:, :-1][mask], ids)
    assert torch.allclose(b["teacher_logp"][:, :-1][mask], logp, atol=1e-5)
    assert torch.allclose(b["teacher_tail"][:, :-1][mask], tail, atol=1e-4)
    live = {kk: v.clone() for kk, v in b.items()}
    for key, val in zip(("teacher_ids", "teacher_logp", "teacher_tail"), (ids, logp, tail)):
        live[key][:, :-1][mask] = val.to(live[key].dtype)
    obj = DistillObjective(None, "skl")
    totals = obj.targets(b)
    got, want = (float(obj(student, x, totals).loss.detach()) for x in (b, live))
    assert got == pytest.approx(want, rel=1e-4)
    assert "teacher_ids" not in collate([ex.examples[0]])
