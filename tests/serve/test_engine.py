"""The batching engine in-process (no HTTP): requests that join a running batch at staggered steps
get exactly `generate`'s tokens, also when prompts are prefilled in chunks and when the decode step
is compiled; the KV and batch
budgets hold admission back; CLI errors are one line."""

import asyncio

import pytest

from kollm.cli import main
from kollm.model.generate import GenerationConfig, generate
from kollm.model.hf import load_hf
from kollm.serve.engine import Engine, Request, SamplingParams

PROMPTS = [[1, 50, 60, 70], [1, 9], [1, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209], [1, 33, 34, 35, 36, 37]]
MAX_TOKENS = [30, 5, 20, 12]


@pytest.fixture(scope="module")
def model(serve_model_dir):
    return load_hf(serve_model_dir)


@pytest.fixture(scope="module")
def tokenizer(serve_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(serve_model_dir)


def serve_all(engine: Engine, stagger: int) -> list[list[int]]:
    """Submit PROMPTS greedily, each `stagger` decode steps after the previous one."""

    async def consume(req: Request) -> list[int]:
        ids = []
        while True:
            for out in await req.queue.get():
                ids += out.token_ids
                if out.finish_reason:
                    return ids

    async def run() -> list[list[int]]:
        loop, tasks = asyncio.get_running_loop(), []
        for p, m in zip(PROMPTS, MAX_TOKENS):
            req = Request([p], SamplingParams(max_tokens=m, temperature=0, ignore_eos=True), 1, loop)
            engine.submit(req)
            tasks.append(asyncio.create_task(consume(req)))
            target = engine.stats["steps"] + stagger
            while stagger and engine.stats["steps"] < target and (engine.stats["running"] or engine.waiting):
                await asyncio.sleep(0.01)  # a tight poll would fight the model thread for the GIL
        return await asyncio.gather(*tasks)

    engine.start()
    try:
        return asyncio.run(run())
    finally:
        engine.stop()


def want(model) -> list[list[int]]:
    return [generate(model, [p], GenerationConfig(max_new_tokens=m))[0] for p, m in zip(PROMPTS, MAX_TOKENS)]


def test_requests_joining_a_running_batch_get_what_generate_gives(model, tokenizer):
    engine = Engine(model, tokenizer, [2], grow=4)  # small growth: the cache is re-laid out often
    assert serve_all(engine, stagger=3) == want(model)
    assert engine.stats["prefills"] == 4 and engine.stats["peak_running"] >= 3
    assert engine.stats["running"] == 0 and engine.batch is None


def test_compiled_engine_gets_what_generate_gives_with_few_graphs(model, tokenizer, monkeypatch):
    """The engine's compiled step (generate.decode_step, aot_eager here as in tests/train/test_compile.py):
    the same tokens; rebuilds to new (rows, width) shapes make dynamo mark them dynamic instead of
    compiling a graph per shape: at most 3 graphs (the first shape, the dynamic one, and batch 1,
    which dynamo specialises) for 29 steps through rebuilds every 4 steps."""
    import os

    from kollm.model.generate import decode_graphs

    monkeypatch.setenv("KOLLM_COMPILE_BACKEND", os.environ.get("KOLLM_COMPILE_BACKEND", "aot_eager"))
    before = decode_graphs()
    engine = Engine(model, tokenizer, [2], grow=4, compile=True)
    assert serve_all(engine, stagger=3) == want(model)
    graphs = decode_graphs() - before
    assert engine.stats["steps"] >= 25 and 1 <= graphs <= 3, graphs


def test_kv_and_batch_budgets_hold_admission_back(model, tokenizer):
    bound = max(len(p) + m for p, m in zip(PROMPTS, MAX_TOKENS))
    one_at_a_time = Engine(model, tokenizer, [2], kv_budget_tokens=bound + 1)
    assert serve_all(one_at_a_time, stagger=0) == want(model)
    assert one_at_a_time.stats["peak_running"] == 1
    two = Engine(model, tokenizer, [2], max_batch=2)
    assert serve_all(two, stagger=0) == want(model)
    assert two.stats["peak_running"] == 2


def test_chunked_prefill_gives_what_generate_gives(model, tokenizer):
    chunked = Engine(model, tokenizer, [2], max_prefill_tokens=3)  # prompts of up to 11 tokens: 1-4 chunks
    assert serve_all(chunked, stagger=2) == want(model)
    assert chunked.stats["prefills"] == len(PROMPTS)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "nope: no such model directory" in err and "Traceback" not in err
