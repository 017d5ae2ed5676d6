"""The static KV cache and the compiled decode step (kollm.model.generate, issue 16): on a tiny
random Llama that transformers writes, greedy tokens are the same for the dynamic cache, the static
cache eager and compiled, and transformers' `generate` one prompt at a time; a left-padded batch
gives what each prompt gives alone; seeded sampling reproduces; the compiled step compiles one
graph for 20+ decode steps and for a second request of another prompt length in the same 64-column
bucket; a request past the static cache's bound is one clear error.

CPU tests compile with the aot_eager backend (dynamo's capture and guards, no inductor code
generation: minutes on a shared 2-core box), as tests/train/test_compile.py does;
KOLLM_COMPILE_BACKEND=inductor runs them with inductor (bench/bench_generate.py measures it)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from kollm.cli import main
from kollm.model.generate import GenerationConfig, decode_graphs, generate
from kollm.model.hf import load_hf

TEXT = ["The quick brown fox jumps over the lazy dog.", "한국어와 영어를 함께 배우는 언어 모델입니다.",
        "Language models predict the next token.", "서울은 대한민국의 수도이다."] * 20
# Lengths 4, 2, 11, 6: left padding of 7, 9, 0 and 5 columns in one batch.
PROMPTS = [[1, 50, 60, 70], [1, 9], [1, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209], [1, 33, 34, 35, 36, 37]]
NEW = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, write_tiny_llama):
    return write_tiny_llama(tmp_path_factory.mktemp("static"), TEXT, ["<pad>", "<s>", "</s>"], vocab_size=300,
                            hidden=48, max_positions=128, init_std=0.2, bos_prefix=True)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_hf(model_dir)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv("KOLLM_COMPILE_BACKEND", os.environ.get("KOLLM_COMPILE_BACKEND", "aot_eager"))


@pytest.fixture(scope="module")
def hf_tokens(model_dir):
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for p in PROMPTS:  # one at a time: no padding on transformers' side
        x = torch.tensor([p])
        out.append(hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, min_new_tokens=NEW,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist())
    return out


def test_greedy_equals_transformers_for_every_cache_and_compiled(model, hf_tokens, aot_eager):
    assert len({tuple(t) for t in hf_tokens}) == len(PROMPTS)  # the prompts lead to different answers
    for cfg in (GenerationConfig(max_new_tokens=NEW, cache="dynamic"), GenerationConfig(max_new_tokens=NEW),
                GenerationConfig(max_new_tokens=NEW, compile=True)):
        assert generate(model, PROMPTS, cfg) == hf_tokens, cfg  # batched, left-padded
        assert [generate(model, [p], cfg)[0] for p in PROMPTS] == hf_tokens, cfg  # one by one


def test_rows_that_stop_early_leave_the_others_alone(model, hf_tokens, aot_eager):
    stop = hf_tokens[0][5]
    want = [t[:t.index(stop) + 1] if stop in t else t for t in hf_tokens]
    assert len(want[0]) == 6 and any(len(w) == NEW for w in want)
    for compile_ in (False, True):
        assert generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW, stop_token_ids=[stop],
                                                         compile=compile_)) == want


def test_seeded_sampling_reproduces_static_and_compiled(model, aot_eager):
    def sample(seed, compile_=False, **kw):
        cfg = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=2.0, top_p=0.95, seed=seed,
                               compile=compile_, **kw)
        return generate(model, PROMPTS, cfg)

    assert sample(7) == sample(7) != sample(8)
    assert sample(7, True) == sample(7, True) != sample(8, True)
    greedy = generate(model, PROMPTS, GenerationConfig(max_new_tokens=16))
    assert sample(3, True, top_k=1) == greedy != sample(7)


def test_compiled_step_compiles_once_across_steps_and_prompt_lengths(model, aot_eager):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    before = decode_graphs()
    cfg = GenerationConfig(max_new_tokens=30, compile=True)  # 29 decode steps per request
    a = generate(model, [PROMPTS[2]], cfg)  # 11 + 30 columns -> a 64-column cache
    b = generate(model, [PROMPTS[1]], cfg)  # 2 + 30 columns -> the same 64 columns
    assert len(a[0]) == len(b[0]) == 30
    assert decode_graphs() - before == 1
    assert counters["stats"]["unique_graphs"] == 1  # nothing else was compiled behind the helper's back
    generate(model, [PROMPTS[0]], GenerationConfig(max_new_tokens=70, compile=True))  # 128 columns: a new shape
    assert decode_graphs() - before == 2


def test_request_past_the_bound_and_bad_settings_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"needs 19 cache columns \(longest prompt 11 \+ max_new_tokens 8\), "
                                         r"more than cache_len 16"):
        generate(model, PROMPTS, GenerationConfig(max_new_tokens=8, cache_len=16))
    assert len(generate(model, PROMPTS, GenerationConfig(max_new_tokens=5, cache_len=16))[2]) == 5  # 11 + 5 fits
    with pytest.raises(ValueError, match="compile needs cache='static'"):
        GenerationConfig(cache="dynamic", compile=True)
    with pytest.raises(ValueError, match="cache must be static or dynamic, got 'paged'"):
        GenerationConfig(cache="paged")


def test_cli_compile_flag_equals_transformers(model_dir, hf_tokens, capsys, aot_eager):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    prompt = "서울은 대한민국의"
    argv = ["generate", "--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(NEW), "--greedy",
            "--json", "--raw", "--compile"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)["token_ids"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    x = torch.tensor([tokenizer(prompt)["input_ids"]])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, do_sample=False)[0, x.shape[1]:]
    assert got == want.tolist()


def test_eval_generation_takes_the_compiled_step(model_dir, model, aot_eager):
    """Evaluation's generation tasks run the same generator: LocalLM(compile=True) answers as eager does."""
    from kollm.eval.models import LocalLM
    from kollm.eval.task import Request

    reqs = [Request("generate", (p,), max_new_tokens=12) for p in ("The quick", "서울은 대한민국의", "Language")]
    before = decode_graphs()
    compiled = LocalLM(model_dir, model=model, compile=True).generate(reqs)
    assert decode_graphs() > before
    assert compiled == LocalLM(model_dir, model=model, compile=False).generate(reqs)
    assert all(compiled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu_check.sh runs this)")
def test_cuda_graph_step_equals_eager_and_keeps_its_cache(model_dir):
    """On CUDA the default compiles (mode reduce-overhead: CUDA graphs); the cache buffers are kept
    and reused for a request of the same shape, so the graph is neither compiled nor recorded again."""
    from kollm.model.generate import _KEPT

    model = load_hf(model_dir, device="cuda")
    eager = generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW, compile=False))
    before = decode_graphs()
    first = generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW))
    cache = _KEPT[model]
    again = generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW))
    assert first == again == eager
    assert _KEPT[model] is cache and decode_graphs() - before == 1


def test_grpo_rollout_of_a_checkpointed_policy_takes_the_compiled_step(aot_eager):
    """GRPO's in-process rollouts (LocalRollout) go through the same generator, also for a policy the
    trainer has wrapped (activation checkpointing): the same tokens as the plain model, one decode
    graph. (Checked by hand with the blocks also compiled in place, `parallel.compile`: the same; 20 s
    more of compiling, so not in CI.)"""
    from kollm.model import build_model, get_preset
    from kollm.rl.rollout import LocalRollout
    from kollm.train.parallel import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = build_model(get_preset("tiny"))
    policy = build_model(get_preset("tiny"))
    policy.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(policy)
    policy.train()
    want = LocalRollout(plain, GenerationConfig(max_new_tokens=10, compile=False)).sample(PROMPTS[:2], 2, seed=None)
    before = decode_graphs()
    got = LocalRollout(policy, GenerationConfig(max_new_tokens=10, compile=True)).sample(PROMPTS[:2], 2, seed=None)
    assert got == want and decode_graphs() - before == 1
    assert policy.training  # generate restores the mode it found


def test_static_cache_under_autocast_as_distillation_samples(model, aot_eager):
    """On-policy distillation samples under bf16 autocast (CUDA; CPU autocast here): the cache keeps
    the weights' dtype and takes the bf16 keys (index_copy_ does not cast: this used to raise)."""
    with torch.autocast("cpu", torch.bfloat16):
        outs = [generate(model, PROMPTS, GenerationConfig(max_new_tokens=8, cache=c, compile=k))
                for c, k in (("dynamic", None), ("static", False), ("static", True))]
    dynamic, static, compiled = outs
    assert static == compiled and all(len(o) == 8 for o in static)
    # bf16 rounds differently over the static cache's masked columns: rows may part after a few
    # tokens (here one row, at its 5th token)
    assert [o[:4] for o in static] == [o[:4] for o in dynamic]


def test_batch1_linears_become_reductions_on_cpu_and_answer_the_same(model, hf_tokens, aot_eager):
    """The CPU step writes a Linear of <= 4 rows as multiply-and-sum (one inductor reduction: 1.9x
    MKL's sgemv at batch 1); every Linear of the batch-1 graph is rewritten, a batch of 8 keeps
    its matmuls, and the tokens are transformers' either way."""
    from kollm.model import generate as gen

    torch._dynamo.reset()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    before = gen._GRAPHS["linears_as_reductions"]
    cfg = GenerationConfig(max_new_tokens=NEW, compile=True)
    assert generate(model, [PROMPTS[3]], cfg)[0] == hf_tokens[3]
    assert gen._GRAPHS["linears_as_reductions"] - before == linears
    assert generate(model, PROMPTS * 2, cfg) == hf_tokens * 2  # batch 8: a new graph, no rewrite
    assert gen._GRAPHS["linears_as_reductions"] - before == linears


def test_linear_as_reduction_rounds_once_like_a_bf16_matmul():
    """bf16 weights: products, sum and bias in fp32 and one rounding at the end (a bf16 matmul
    accumulates in fp32): every output within half a bf16 ulp of the fp32 result, as F.linear's."""
    from kollm.model.generate import _linear_as_reduction

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).bfloat16() for s in ((2, 1, 384), (1024, 384), (1024,)))
    exact = x.float() @ w.float().t() + b.float()
    half_ulp = exact.abs() * 2.0 ** -8 + 1e-6
    for y in (_linear_as_reduction(x, w, b), torch.nn.functional.linear(x, w, b)):
        assert y.dtype == torch.bfloat16 and ((y.float() - exact).abs() <= half_ulp).all()
    xf, wf = x.float(), w.float()
    # fp32: two summation orders of 384 products differ by at most 384 * eps * sum|x_i w_i| (the
    # forward-error bound of a dot product), whatever the CPU's kernels; an error in the
    # reduction itself would be of the size of a term (~1)
    bound = 384 * torch.finfo(torch.float32).eps * (xf.abs() @ wf.abs().t())
    assert ((_linear_as_reduction(xf, wf) - xf @ wf.t()).abs() <= bound).all()
