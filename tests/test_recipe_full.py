"""The full-size recipes (recipes/trillion-7b-full.yaml, recipes/dna-8b-full.yaml) and the tiny
demo (recipes/tiny-demo.yaml) planned by `kollm run --dry-run` with no data and no models present,
every number against a hand calculation; recipe variables (`vars:`, `--set vars.NAME=...`); the stop before the first stage
whose named input is missing."""

import json
import math
from pathlib import Path

import pytest
import yaml

from kollm.recipe import MissingInput, StageFailed, dry_run, format_dry_run, load_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
H100 = 989e12
V, D = 128256, 4096  # Llama 3 / Trillion vocabulary and width

# Parameters (kollm.model.config presets, checked against the reports' counts in tests/model):
TRILLION = 7_729_602_560  # with the MTP block (pretraining)
TRILLION_NOMTP = 7_527_206_912  # as exported: post-training
LLAMA_8B = 8_030_261_248
LLAMA_405B = 405_853_388_800


def flops_per_token(n_params: int, vocab: int, dim: int, layers: int, seq: int) -> int:
    """6·N' + 12·L·d·T, N' = the parameters that enter a matmul (all but the input embedding)."""
    return 6 * (n_params - vocab * dim) + 12 * layers * dim * seq


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = {}
    for name in ("trillion-7b-full", "dna-8b-full"):
        recipe = load_recipe(RECIPES / f"{name}.yaml", [f"workdir={tmp_path_factory.mktemp(name)}"])
        out[name] = dry_run(recipe, defaults={"mfu": 0.4, "gen_mfu": 0.1})
    return out


def _stage(d: dict, name: str) -> dict:
    s = next(s for s in d["stages"] if s["name"] == name)
    assert s["plan"] is not None and "error" not in s["plan"], s["plan"]
    return s["plan"]


def _hours(flops: float, mfu: float) -> float:
    return flops / (mfu * H100) / 3600


def test_trillion_full_dry_run(plans):
    d = plans["trillion-7b-full"]
    assert [s["name"] for s in d["stages"]] == ["curate", "tokenizer", "shards", "pretrain", "sft-seed0", "sft-seed1",
                                              "sft-seed2", "soup", "dpo", "grpo-filter", "grpo", "eval", "report"]
    assert all(s["status"] == "would run" for s in d["stages"])
    assert d["stops_at"] == "curate"  # vars.corpus is not there
    assert {i["var"]: i["present"] for i in d["stages"][0]["inputs"]} == {"corpus": False}

    # pretraining: per phase 6·N·D (N without MTP) and kollm's 6N' + 12·L·d·T with the MTP block (L = 33)
    pre = _stage(d, "pretrain")
    assert pre["world"] == 256 and pre["mfu"] == 0.425  # the stage's plan: overrides the run's defaults
    for part, tokens, seq in zip(pre["parts"], (1.8e12, 0.2e12, 60e9), (4096, 4096, 32768)):
        assert 0 <= part["tokens"] - tokens < 2**21  # whole steps of the 2M-token batch: at most one over
        assert part["flops_6nd"] == 6 * TRILLION_NOMTP * part["tokens"]
        assert part["flops"] == pytest.approx(part["tokens"] * flops_per_token(TRILLION, V, D, 33, seq), rel=1e-12)
        assert part["gpu_hours"] == pytest.approx(_hours(part["flops"], 0.425))
    # the report's 59.4K H100-hours are 6·N·D over stable + anneal at 42.5 % MFU
    assert _hours(sum(p["flops_6nd"] for p in pre["parts"][:2]), 0.425) == pytest.approx(59_400, rel=0.02)

    # each SFT seed: steps from the data, ⌈160,000 planned rows × 2 epochs ÷ 128⌉ = 2,500 steps × 128 × 4,096
    # tokens on the exported (no MTP) model
    sft_tokens = 2500 * 128 * 4096
    for k in range(3):
        sft = _stage(d, f"sft-seed{k}")
        assert [p["tokens"] for p in sft["parts"]] == [sft_tokens]
        assert sft["flops"] == sft_tokens * flops_per_token(TRILLION_NOMTP, V, D, 32, 4096)
    # the soup reads three bf16 models and writes one
    soup = _stage(d, "soup")
    assert soup["bytes_read"] == 3 * 2 * TRILLION_NOMTP and soup["bytes_written"] == 2 * TRILLION_NOMTP

    # DPO: 200K pairs (dpo.planned_pairs), chosen + rejected at ≤ 2,048 tokens; the reference forward once
    # (a third of the training FLOPs per token), the policy ⌈200,000 / 128⌉ = 1,563 steps forward + backward
    dpo = _stage(d, "dpo")
    f = flops_per_token(TRILLION_NOMTP, V, D, 32, 2048)
    ref, policy = dpo["parts"]
    assert ref["kind"] == "forward" and ref["tokens"] == 200_000 * 2 * 2048
    assert ref["flops"] == pytest.approx(200_000 * 2 * 2048 * f / 3)
    assert policy["steps"] == 1563 and policy["tokens"] == 1563 * 128 * 2 * 2048
    assert policy["flops"] == pytest.approx(1563 * 128 * 2 * 2048 * f)

    # GRPO: 312 steps × 64 prompts × G 16 rollouts of 512 + 1,024 tokens: sampling (at the sampling MFU),
    # the reference pass (β 0.04 > 0), then training
    grpo = _stage(d, "grpo")
    T = 512 + 1024
    f = flops_per_token(TRILLION_NOMTP, V, D, 32, T)
    gen, refp, train = grpo["parts"]
    assert [p["kind"] for p in grpo["parts"]] == ["generate", "forward", "train"]
    assert gen["tokens"] == refp["tokens"] == train["tokens"] == 312 * 64 * 16 * T
    assert gen["flops"] == pytest.approx(312 * 64 * 16 * T * f / 3) and train["flops"] == pytest.approx(312 * 64 * 16 * T * f)
    assert gen["gpu_hours"] == pytest.approx(_hours(gen["flops"], 0.1))
    assert grpo["fits"]  # fsdp with a rollout server (its GPUs extra): ≤ 72 GB per rank

    # the difficulty filter: 10,000 planned prompts × G 16 samples of ≤ 1,536 tokens, at the sampling MFU
    (filt,) = _stage(d, "grpo-filter")["parts"]
    assert filt["kind"] == "generate" and filt["tokens"] == 10_000 * 16 * T
    assert filt["gpu_hours"] == pytest.approx(_hours(10_000 * 16 * T * f / 3, 0.1))

    # post-training beside Table 1's 0.36K H100-hours: the sum of those stages' plans
    (budget,) = d["budgets"]
    post = ["sft-seed0", "sft-seed1", "sft-seed2", "soup", "dpo", "grpo-filter", "grpo"]
    assert budget["stages"] == post and budget["report_gpu_hours"] == 360 and not budget["unplanned"]
    assert budget["planned_gpu_hours"] == pytest.approx(sum(_stage(d, n)["gpu_hours"] for n in post))
    assert budget["ratio"] == pytest.approx(budget["planned_gpu_hours"] / 360)

    ev = _stage(d, "eval")
    assert ev["requests"] > 500_000  # 27 benchmarks; MMLU-style tasks ask one request per choice

    t = d["total"]
    planned = [s["plan"] for s in d["stages"] if s["plan"]]
    assert t["flops"] == pytest.approx(sum(p["flops"] for p in planned))
    assert t["gpu_hours"] == pytest.approx(sum(p["gpu_hours"] for p in planned))
    text = format_dry_run(d)
    for i, s in enumerate(d["stages"], 1):
        assert f"[{i}/13] {s['name']}: would run" in text
    assert "input vars.corpus = data/trillion/raw: MISSING" in text and "total: " in text
    assert (f"post-training: {budget['planned_gpu_hours']:,.0f} GPU-hours planned ({', '.join(post)}) beside the "
            "report's 360 H100-hours (Trillion 7B Table 1: 0.36K)") in text


def test_dna_full_dry_run(plans):
    d = plans["dna-8b-full"]
    assert [s["name"] for s in d["stages"]] == ["shards", "cpt", "sft", "slerp", "dpo-offline", "dpo-online",
                                              "distill-topk", "distill", "eval", "report"]
    f4k = flops_per_token(LLAMA_8B, V, D, 32, 4096)
    f8k = flops_per_token(LLAMA_8B, V, D, 32, 8192)
    cpt = _stage(d, "cpt")
    (part,) = cpt["parts"]
    assert part["tokens"] == math.ceil(4.7e9 / 2**20) * 2**20  # whole 1M-token steps
    assert part["flops_6nd"] == 6 * LLAMA_8B * part["tokens"] and part["flops"] == part["tokens"] * f8k
    sft = _stage(d, "sft")
    assert sft["flops"] == math.ceil(1.9e9 / 2**20) * 2**20 * f8k
    slerp = _stage(d, "slerp")  # the SFT model and Llama 3.1 8B Instruct in, one bf16 model out
    assert slerp["bytes_read"] == 2 * 2 * LLAMA_8B and slerp["bytes_written"] == 2 * LLAMA_8B

    f = flops_per_token(LLAMA_8B, V, D, 32, 2048)
    ref, policy = _stage(d, "dpo-offline")["parts"]  # 2 epochs of 80K pairs: 1,250 steps of 128
    assert ref["flops"] == pytest.approx(80_000 * 2 * 2048 * f / 3)
    assert policy["steps"] == 1250 and policy["flops"] == pytest.approx(1250 * 128 * 2 * 2048 * f)
    online = _stage(d, "dpo-online")  # 3 rounds: 20K prompts × 4 samples, ≤ 20K pairs, 157 steps each
    assert online["requests"] == 3 * 20_000 * 4
    assert len(online["parts"]) == 9
    sample, oref, otrain = online["parts"][:3]
    assert sample["kind"] == "generate" and sample["flops"] == pytest.approx(20_000 * 4 * 2048 * f / 3)
    assert oref["flops"] == pytest.approx(20_000 * 2 * 2048 * f / 3)
    assert otrain["flops"] == pytest.approx(157 * 128 * 2 * 2048 * f)

    # distillation: 2,000 steps × 262,144 tokens; the 405B teacher's forward in the precompute stage,
    # the student's forward + backward in the training stage (teacher.stored: no teacher there)
    tokens = 2000 * 262_144
    topk = _stage(d, "distill-topk")
    ((tpart),) = topk["parts"]
    ft = flops_per_token(LLAMA_405B, V, 16384, 126, 4096)
    assert tpart["tokens"] == tokens and tpart["flops"] == pytest.approx(tokens * ft / 3)
    assert topk["memory_per_rank"] == 2 * LLAMA_405B and not topk["fits"]  # bf16 405B on one GPU: reported
    student = _stage(d, "distill")
    assert [p["kind"] for p in student["parts"]] == ["train"]
    assert student["flops"] == tokens * f4k and student["fits"]

    text = format_dry_run(d)
    assert "[7/10] distill-topk: would run" in text and "input vars.teacher = models/Llama-3.1-405B-Instruct: MISSING" in text


def test_sft_seeds_multiply_the_plan(capsys):
    from kollm.cli import main

    base = ["sft", str(RECIPES / "trillion-7b-sft.yaml"), "--dry-run", "--plan-json", "--world-size", "8"]
    assert main(base) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(base + ["--seeds", "3"]) == 0
    three = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert three["flops"] == 3 * one["flops"] and three["gpu_hours"] == pytest.approx(3 * one["gpu_hours"])


def test_eval_plan_from_published_sizes(capsys):
    """Without the data: items × choices requests, (shots + 1) × 256 tokens each (the stated assumption)."""
    from kollm.cli import main

    assert main(["eval", "--model", "nowhere", "--tasks", "mmlu:5,gsm8k:0", "--preset", "llama3.1-8b",
                 "--dry-run", "--plan-json"]) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert p["requests"] == 14042 * 4 + 1319
    prompt, gen = p["parts"]
    assert prompt["tokens"] == 14042 * 4 * 6 * 256 + 1319 * 256 and gen["tokens"] == 1319 * 256
    assert prompt["flops"] == pytest.approx(prompt["tokens"] * flops_per_token(LLAMA_8B, V, D, 32, 256) / 3)


def _write(tmp_path, doc: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_vars_substitute_and_set_overrides(tmp_path):
    doc = {"workdir": str(tmp_path / "w"),
           "vars": {"seq": {"value": "64", "path": False}, "data": "{workdir}/in.txt"},
           "stages": [{"name": "a", "run": "model info", "args": ["tiny", "--seq-len", "{vars.seq}"]}]}
    path = _write(tmp_path, doc)
    r = load_recipe(path)
    assert run_recipe(r, log=lambda *_: None) == [("a", "ran")]
    assert json.loads((tmp_path / "w" / "a" / "run.json").read_text())["argv"][-1] == "64"
    r = load_recipe(path, ["vars.seq=128"])  # --set vars.seq=128: a new argument, so the stage re-runs
    assert run_recipe(r, log=lambda *_: None) == [("a", "ran")]
    assert json.loads((tmp_path / "w" / "a" / "run.json").read_text())["argv"][-1] == "128"
    with pytest.raises(KeyError, match="no variable 'sq'"):
        load_recipe(path, ["vars.sq=1"])
    with pytest.raises(ValueError, match="vars.NAME=VALUE or workdir=VALUE"):
        load_recipe(path, ["seq=1"])
    doc["stages"][0]["args"] = ["tiny", "{vars.nope}"]
    with pytest.raises(ValueError, match=r"names \{vars.nope\}"):
        load_recipe(_write(tmp_path, doc))


def test_stops_before_the_first_stage_whose_input_is_missing(tmp_path, capsys):
    from kollm.cli import main

    model = tmp_path / "my-model"
    doc = {"workdir": str(tmp_path / "w"),
           "vars": {"model": {"value": str(model), "help": "a Hugging Face directory"}},
           "stages": [{"name": "a", "run": "model info", "args": ["tiny", "--json"]},
                      {"name": "b", "run": "generate", "args": ["--model", "{vars.model}", "--prompt", "x"]}]}
    path = _write(tmp_path, doc)
    with pytest.raises(MissingInput) as e:
        run_recipe(load_recipe(path), log=lambda *_: None)
    msg = str(e.value)
    assert "stage 'b'" in msg and f"vars.model = {model}: no such file or directory (a Hugging Face directory)" in msg
    assert f"kollm run {path} --set vars.model=PATH" in msg
    assert (tmp_path / "w" / "a" / "run.json").is_file() and not (tmp_path / "w" / "b").exists()
    # the dry run says the same: a done, b would run and stop there
    d = dry_run(load_recipe(path))
    assert [s["status"] for s in d["stages"]] == ["up to date", "would run"] and d["stops_at"] == "b"
    assert "a run would stop before stage 'b'" in format_dry_run(d)
    assert d["stages"][1]["inputs"] == [{"var": "model", "value": str(model), "present": False}]
    assert main(["run", str(path)]) == 1
    assert "kollm run: stage 'b' needs input(s) that are not there" in capsys.readouterr().err
    # once it is there, a is skipped as up to date and b starts (and fails here: not a model)
    model.mkdir()
    log = []
    with pytest.raises(StageFailed, match="stage 'b' failed"):
        run_recipe(load_recipe(path, [f"vars.model={model}"]), log=log.append)
    assert log[0] == "[a] up to date, skipped"


def test_eval_plan_counts_the_data_when_it_is_there(capsys):
    """With --data-dir holding the tasks: the harness's own requests (6 COPA items × 2 choices, 5 GSM8K
    questions), characters / 4 as tokens without a tokenizer, each generation's max_new_tokens."""
    from kollm.cli import main
    from kollm.eval.task import get_task

    data = Path(__file__).parent / "eval" / "fixtures"
    assert main(["eval", "--model", "nowhere", "--tasks", "kobest_copa:0,gsm8k:0", "--data-dir", str(data),
                 "--preset", "tiny", "--dry-run", "--plan-json"]) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    copa, gsm = (get_task(t).load(data) for t in ("kobest_copa", "gsm8k"))
    assert p["requests"] == 2 * len(copa) + len(gsm) == 17
    chars = sum(max(1, len(a) // 4) for item in copa for q in get_task("kobest_copa").requests(item, []) for a in q.args)
    chars += sum(max(1, len(q.args[0]) // 4) for item in gsm for q in get_task("gsm8k").requests(item, []))
    prompt, gen = p["parts"]
    assert prompt["tokens"] == chars and gen["tokens"] == 256 * len(gsm)


def test_input_bytes_of_curation_and_tokenizer(tmp_path, capsys):
    from kollm.cli import main

    corpus = tmp_path / "raw"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "안녕하세요"}\n' * 10, encoding="utf-8")
    (corpus / "b.jsonl").write_text('{"text": "hello"}\n' * 3, encoding="utf-8")
    size = sum(f.stat().st_size for f in corpus.iterdir())
    for argv in (["data", "curate", "--input", str(corpus), "--output", str(tmp_path / "c")],
                 ["tokenizer", "train", "--input", str(corpus), "--budget", "ko=10", "--out", str(tmp_path / "t")],
                 ["data", "tokenize", str(corpus), "--tokenizer", "x", "--out", str(tmp_path / "s")]):
        assert main(argv + ["--dry-run", "--plan-json"]) == 0
        p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert p["bytes_read"] == size and p["inputs_missing"] == [], argv
    assert not (tmp_path / "c").exists() and not (tmp_path / "t").exists()  # nothing ran


def test_online_teacher_is_planned_in_the_distill_stage(capsys):
    from kollm.cli import main

    assert main(["distill", str(RECIPES / "dna-8b-distill.yaml"), "--set", "teacher.stored=null", "--dry-run",
                 "--plan-json", "--world-size", "8", "--teacher-preset", "llama3.1-405b"]) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    student, teacher = p["parts"]
    tokens = 2000 * 262_144
    assert (student["kind"], teacher["kind"]) == ("train", "forward") and teacher["tokens"] == tokens
    assert teacher["flops"] == pytest.approx(tokens * flops_per_token(LLAMA_405B, V, 16384, 126, 4096) / 3)
    assert p["memory_per_rank"] > 2 * LLAMA_405B and not p["fits"]  # the whole bf16 teacher on every rank


def test_tiny_demo_dry_run_plans_every_compute_stage(tmp_path):
    """`kollm run recipes/tiny-demo.yaml --dry-run` before `kollm demo` has written anything: every
    compute stage is planned, the post-training checkpoints by preset tiny-demo-nomtp (the pretrained
    model as exported: no MTP block, the demo tokenizer's 910 tokens) and DPO's pairs by
    dpo.planned_pairs (the 1,200 that kollm.demo_corpus writes)."""
    from kollm.model.config import get_preset
    from kollm.recipe import COMPUTE

    recipe = load_recipe(RECIPES / "tiny-demo.yaml", [f"workdir={tmp_path}"])
    d = dry_run(recipe, defaults={"mfu": 0.4, "gen_mfu": 0.1})
    compute = [s.name for s in recipe.stages if s.run in COMPUTE]
    assert compute == ["pretrain", "sft", "dpo", "grpo", "eval"]
    for name in compute:
        assert _stage(d, name)["flops"] > 0, name
    assert "not planned" not in format_dry_run(d)

    # the preset is the pretraining config's model (tiny-sandwich-mtp + overrides) without MTP, with the
    # tokenizer's vocabulary and BOS/EOS: 2·910·128 embeddings + 4 sandwich blocks + the final norm
    pre = yaml.safe_load((RECIPES / "tiny-demo-pretrain.yaml").read_text())["model"]
    nomtp = get_preset("tiny-demo-nomtp")
    assert nomtp == get_preset(pre["preset"], **pre["overrides"]).replace(
        mtp=False, vocab_size=910, bos_token_id=904, eos_token_id=905)
    block = 128 * 16 * (4 + 2 * 2) + 4 * 16 * 128 + 3 * 128 * 352 + 4 * 128  # q,k,v; o; SwiGLU; 4 norms
    n = 2 * 910 * 128 + 4 * block + 128
    assert nomtp.num_params() == n == 874_112

    def f(seq: int) -> int:  # 6·N' + 12·L·(heads·head_dim)·T
        return 6 * (n - 910 * 128) + 12 * 4 * (4 * 16) * seq

    (sft,) = _stage(d, "sft")["parts"]  # 120 steps × 2,048 tokens at 256
    assert sft["tokens"] == 120 * 2048 and sft["flops"] == 120 * 2048 * f(256)
    dpo = _stage(d, "dpo")  # 1,200 pairs: the reference forward once, ⌈1,200 / 16⌉ = 75 policy steps
    ref, policy = dpo["parts"]
    assert dpo["pairs"] == 1200 and ref["tokens"] == 1200 * 2 * 256
    assert ref["flops"] == pytest.approx(1200 * 2 * 256 * f(256) / 3)
    assert policy["steps"] == 75 and policy["flops"] == pytest.approx(75 * 16 * 2 * 256 * f(256))
    merge = _stage(d, "merge")  # the SFT and DPO models in, one model out, float32
    assert merge["bytes_read"] == 2 * 4 * n and merge["bytes_written"] == 4 * n
    # GRPO: 20 steps of 8 prompts × G 8 at ≤ 64 + 24 tokens; 2 iterations per rollout batch → 10 batches
    gen, old, refp, train = _stage(d, "grpo")["parts"]
    assert gen["tokens"] == old["tokens"] == refp["tokens"] == 10 * 64 * 88
    assert gen["flops"] == pytest.approx(10 * 64 * 88 * f(88) / 3)
    assert train["tokens"] == 20 * 64 * 88 and train["flops"] == pytest.approx(20 * 64 * 88 * f(88))
    ev = _stage(d, "eval")  # --limit 50 per task, 0-shot: 100 requests of 256 tokens, 256 generated each
    prompt, generated = ev["parts"]
    assert ev["requests"] == 100 and prompt["tokens"] == generated["tokens"] == 100 * 256
    assert prompt["flops"] == pytest.approx(100 * 256 * f(256) / 3)
