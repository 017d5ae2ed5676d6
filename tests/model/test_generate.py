"""Generation: greedy tokens equal transformers' `generate` (through the CLI, raw and chat
template), left-padded batches equal one-by-one runs, sampling filters match their definitions."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from kollm.cli import main
from kollm.model.generate import (
    GenerationConfig,
    generate,
    generate_text,
    top_k_filter,
    top_p_filter,
    whole_characters,
)
from kollm.model.hf import load_hf

TEXT = [
    "The quick brown fox jumps over the lazy dog.", "한국어와 영어를 함께 배우는 언어 모델입니다.",
    "Language models predict the next token.", "서울은 대한민국의 수도이다.", "Greedy decoding picks the argmax.",
] * 20
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, write_tiny_llama):
    return write_tiny_llama(tmp_path_factory.mktemp("gen"), TEXT, ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
                            vocab_size=400, hidden=48, max_positions=256, init_std=0.2, chat_template=CHAT,
                            bos_prefix=True)


def hf_greedy(d, prompt_ids, n):
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    x = torch.tensor([prompt_ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("raw", [True, False])
def test_cli_greedy_equals_transformers_generate(model_dir, capsys, raw):
    prompt = "서울은 대한민국의"
    argv = ["generate", "--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", "24", "--greedy", "--json"]
    assert main(argv + (["--raw"] if raw else [])) == 0
    got = json.loads(capsys.readouterr().out)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    if raw:
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert prompt_ids[0] == 1  # BOS from the post-processor
    else:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        assert text == f"<|user|>{prompt}</s><|assistant|>"
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    want = hf_greedy(model_dir, prompt_ids, 24)
    assert got["token_ids"] == want
    # printed up to the last whole character (24 byte-level tokens may end inside one)
    assert got["completion"] == whole_characters(lambda i: tokenizer.decode(i, skip_special_tokens=True), want)


def test_cli_rejects_greedy_with_sampling_flags(model_dir):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(model_dir), "--prompt", "x", "--greedy", "--top-k", "5"])


def test_cli_one_line_errors_for_a_missing_dir_and_an_absent_device(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert "nope: no such model directory" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert "sees no CUDA device" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def model(model_dir):
    return load_hf(model_dir)


PROMPTS = [[1, 50, 60, 70], [1, 9], [1, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209], [1, 33, 34, 35, 36, 37]]


def test_batched_left_padded_equals_one_by_one(model):
    cfg = GenerationConfig(max_new_tokens=16)
    alone = [generate(model, [p], cfg)[0] for p in PROMPTS]
    assert len({tuple(a) for a in alone}) == len(PROMPTS)
    assert generate(model, PROMPTS, cfg) == alone
    # Rows that stop early are dropped from the batch; the others must not notice.
    stop = alone[0][5]
    cfg = GenerationConfig(max_new_tokens=16, stop_token_ids=[stop])
    alone = [generate(model, [p], cfg)[0] for p in PROMPTS]
    assert alone[0][-1] == stop and len(alone[0]) <= 6
    assert any(len(a) == 16 for a in alone)
    assert generate(model, PROMPTS, cfg) == alone


def test_top_k_one_sampling_is_greedy_and_seeds_reproduce(model):
    greedy = generate(model, PROMPTS, GenerationConfig(max_new_tokens=12))
    top1 = generate(model, PROMPTS, GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=1, seed=3))
    assert top1 == greedy
    sample = lambda seed: generate(model, PROMPTS, GenerationConfig(max_new_tokens=12, do_sample=True,  # noqa: E731
                                                                     temperature=2.0, top_p=0.95, seed=seed))
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7) != greedy


def test_top_p_keeps_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([[0.15, 0.05, 0.5, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.4) == {2}
    assert kept(0.7) == {2, 3}
    assert kept(0.9) == {2, 3, 0}
    assert kept(0.99) == {2, 3, 0, 1}
    assert kept(1.0) == {0, 1, 2, 3}
    kept_values = top_p_filter(logits, 0.7)[0, [2, 3]]
    assert torch.equal(kept_values, logits[0, [2, 3]])  # kept logits are untouched


def test_filters_match_transformers_warpers():
    x = torch.randn(6, 97, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.3, 0.8, 0.95):
        torch.testing.assert_close(top_p_filter(x, p), TopPLogitsWarper(p)(None, x.clone()))
    for k in (1, 5, 40):
        torch.testing.assert_close(top_k_filter(x, k), TopKLogitsWarper(k)(None, x.clone()))


def test_sampling_distribution_is_transformers_warper_chain():
    """Temperature, top-k and top-p together, in transformers' order, and the result sampled from."""
    from transformers.generation.logits_process import TemperatureLogitsWarper

    from kollm.model.generate import sampling_logits

    x = torch.randn(4, 97, generator=torch.Generator().manual_seed(1)) * 3
    for t, k, p in ((0.5, 20, 0.9), (1.7, 50, 0.6), (1.0, 97, 1.0)):
        ref = TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, TemperatureLogitsWarper(t)(None, x.clone())))
        ours = sampling_logits(x, GenerationConfig(do_sample=True, temperature=t, top_k=k, top_p=p))
        torch.testing.assert_close(ours.softmax(-1), ref.softmax(-1))


def test_stop_string_cuts_text(model, model_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    full, full_ids = generate_text(model, tokenizer, ["The quick"], GenerationConfig(max_new_tokens=30), chat=False)[0]
    stop = next(full[i:i + 3] for i in range(4, len(full) - 3) if full[i:i + 3].strip())
    text, ids = generate_text(model, tokenizer, ["The quick"], GenerationConfig(max_new_tokens=30, stop_strings=[stop]),
                              chat=False)[0]
    assert text == full[: full.index(stop)]
    assert ids == full_ids[: len(ids)] and len(ids) < len(full_ids)  # stopped as soon as the string appeared
    assert stop in tokenizer.decode(ids) and stop not in tokenizer.decode(ids[:-1])


def test_bad_generation_inputs(model):
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GenerationConfig(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1, 2], []], GenerationConfig())
    with pytest.raises(ValueError, match="prompt 1 has token ids outside"):
        generate(model, [[1, 2], [5, 10**6]], GenerationConfig())
    with pytest.raises(ValueError, match="decode function"):
        generate(model, [[1, 2]], GenerationConfig(stop_strings=["x"]))


def test_sandwich_export_greedy_equals_transformers_gemma2(tmp_path):
    """A Trillion-style (sandwich-norm, MTP) kollm model exported as Gemma 2: kollm's KV-cache
    greedy decoding and transformers' agree token for token."""
    from kollm.model import build_model, get_preset
    from kollm.model.hf import save_hf

    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp", vocab_size=300)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + 1.0 if "norm" in name else torch.randn_like(p) * 0.2)
    d = save_hf(model, tmp_path / "gemma2")
    prompt = [1, 17, 99, 240, 5]
    assert generate(model, [prompt], GenerationConfig(max_new_tokens=20))[0] == hf_greedy(d, prompt, 20)
