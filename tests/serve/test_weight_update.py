"""`POST /update_weights_from_disk` (SGLang's API) on a real `kollm serve --allow-weight-updates`
process: absent without the flag, refused at start without --weights-root, behind the API key,
a bad path / another architecture / a mis-shaped tensor / a NaN tensor / a directory or file
outside the weights root (absolute, `..`, symlinks) refused with a 400 naming the problem while the
old weights keep serving, a good checkpoint served at once (greedy tokens and logprobs equal
kollm's generation with those weights in process), and a request already running finishes with
the weights it started with (the server's own record: the reply's system_fingerprint and the
update's count of the sequences it waited for)."""

import json
import shutil
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from kollm.model.generate import GenerationConfig, generate
from kollm.model.hf import load_hf, save_hf
from kollm.serve.testing import running_server

from .conftest import API_KEY
from .test_api import post

EOS = 2
PROMPT = [1, 50, 60, 70]
ROUTE = "/update_weights_from_disk"
LONG = 600  # tokens: the request still runs when the update arrives


def greedy(server, prompt=PROMPT, n=16, **kw) -> tuple[list[int], list[float]]:
    body = {"model": server.model, "prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": True, "return_token_ids": True, **kw}
    status, r = post(server, "/v1/completions", body)
    assert status == 200, r
    lp = r["choices"][0]["logprobs"]
    ids = [int(t.split(":")[1]) for t in lp["tokens"]]
    assert r["choices"][0]["token_ids"] == ids  # vLLM's return_token_ids (GRPO's ServerRollout asks for it)
    return ids, lp["token_logprobs"]


def in_process(model, prompt=PROMPT, n=16) -> list[int]:
    return generate(model, [prompt], GenerationConfig(max_new_tokens=n, stop_token_ids=[EOS]))[0]


@pytest.fixture(scope="module")
def checkpoints(serve_model_dir, tmp_path_factory):
    """The weights root d: the served model (d/orig), a perturbed copy (same architecture), the
    copy with another intermediate_size in config.json, the copy with one tensor cut short, the
    copy with a NaN in one tensor; a link out of d, and a copy whose weights file links out."""
    d = tmp_path_factory.mktemp("updates")
    shutil.copytree(serve_model_dir, d / "orig")
    old = load_hf(serve_model_dir)
    new = load_hf(serve_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    save_hf(new, d / "new", tokenizer=serve_model_dir)
    shutil.copytree(d / "new", d / "wide")
    cfg = json.loads((d / "wide" / "config.json").read_text())
    (d / "wide" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 2 * cfg["intermediate_size"]}))
    shutil.copytree(d / "new", d / "short")
    tensors = load_file(d / "short" / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()
    save_file(tensors, d / "short" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(d / "new", d / "nan")
    tensors = load_file(d / "nan" / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(tensors, d / "nan" / "model.safetensors", metadata={"format": "pt"})
    (d / "link").symlink_to(serve_model_dir, target_is_directory=True)
    shutil.copytree(d / "new", d / "filelink")
    (d / "filelink" / "model.safetensors").unlink()
    (d / "filelink" / "model.safetensors").symlink_to(serve_model_dir / "model.safetensors")
    return old, new, d


@pytest.fixture(scope="module")
def updatable(serve_model_dir, checkpoints):
    with running_server(serve_model_dir, "--allow-weight-updates", "--weights-root", str(checkpoints[2]), "--seed",
                        "0", api_key=API_KEY) as s:
        yield s


def test_updates_need_a_weights_root(serve_model_dir, capsys):
    from kollm.serve.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(serve_model_dir), "--allow-weight-updates"])
    assert e.value.code == 2 and "--allow-weight-updates needs --weights-root DIR" in capsys.readouterr().err


def test_off_by_default(server, checkpoints):
    # the shared server of the serve tests was started without --allow-weight-updates
    status, r = post(server, ROUTE, {"model_path": str(checkpoints[2] / "new")})
    assert status == 404


def test_refusals_keep_the_old_weights(updatable, checkpoints, serve_model_dir):
    old, _, d = checkpoints
    before = greedy(updatable)
    updates = updatable.health()["weight_updates"]  # the module's other tests may have run first
    assert before[0] == in_process(old)
    status, _ = post(updatable, ROUTE, {"model_path": str(d / "new")}, key=None)
    assert status == 401  # the API key guards the route as it guards /v1
    status, _ = post(updatable, ROUTE, {"model_path": str(d / "new")}, key="wrong")
    assert status == 401
    root = d.resolve()
    cases = {str(d / "nowhere"): "no such model directory",
             str(d / "wide"): "intermediate_size (ffn_dim) is 192, the served model has 96",
             str(d / "short"): "model.norm.weight: expected (48,), got (47,)",
             "nan": "tensor model.layers.1.mlp.up_proj.weight holds NaN or infinite values",
             str(serve_model_dir): f"is outside the weights root {root}",
             f"../{serve_model_dir.name}": f"is outside the weights root {root}",
             str(d / "orig" / ".." / ".." / serve_model_dir.name): "is outside the weights root",
             str(d / "link"): f"({serve_model_dir.resolve()}) is outside the weights root",
             "filelink": f"({d.resolve() / 'filelink' / 'model.safetensors'}) is outside the weights root"}
    for path, why in cases.items():
        status, r = post(updatable, ROUTE, {"model_path": path})
        assert status == 400 and r["success"] is False and why in r["message"], r
        assert greedy(updatable) == before  # still the old weights, to the logprob
    for body, why in (({}, "'model_path'"), ({"model_path": str(d / "new"), "abort_all_requests": True},
                                             "abort_all_requests")):
        status, r = post(updatable, ROUTE, body)
        assert status == 400 and why in r["message"]
    assert updatable.health()["weight_updates"] == updates


def test_update_serves_the_new_weights_and_running_requests_finish_on_the_old(updatable, checkpoints,
                                                                             serve_model_dir):
    old, new, d = checkpoints
    want_new = in_process(new)
    updates = updatable.health()["weight_updates"]
    assert want_new != in_process(old)  # the perturbation changes the greedy tokens
    # a long request is running when the update arrives: it completes with the old weights, and
    # the update is answered only after it
    done: dict = {}

    def long_request():
        done["reply"] = post(updatable, "/v1/completions", {
            "prompt": PROMPT, "max_tokens": LONG, "temperature": 0, "ignore_eos": True, "return_token_ids": True})

    t = threading.Thread(target=long_request)
    t.start()
    while updatable.health()["running"] == 0 and t.is_alive():
        time.sleep(0.005)
    status, r = post(updatable, ROUTE, {"model_path": str(d / "new")})
    t.join()
    assert (status, r["success"]) == (200, True) and r["num_paused_requests"] == 0, r
    # The order is the server's record, not the two client threads': the update waited for one
    # running sequence to finish (the long one, the only one), and the long one was admitted
    # under the weights version before the update and never saw another
    assert "(after 1 running sequences finished)" in r["message"], r
    status, long = done["reply"]
    assert status == 200 and long["system_fingerprint"] == f"kollm-weights-{updates}"
    assert long["choices"][0]["token_ids"] == generate(
        old, [PROMPT], GenerationConfig(max_new_tokens=LONG, stop_token_ids=[]))[0]
    tokens, logprobs = greedy(updatable)
    assert tokens == want_new
    with torch.no_grad():  # the logprobs are the new model's own
        x = torch.tensor([PROMPT + tokens])
        lp = new(x).logits[0, len(PROMPT) - 1:-1].float().log_softmax(-1)
    assert logprobs == pytest.approx(lp.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist(), abs=1e-4)
    # and back: the original checkpoint again
    status, r = post(updatable, ROUTE, {"model_path": "orig"})  # relative: under the root
    assert status == 200 and greedy(updatable)[0] == in_process(old)
    assert updatable.health()["weight_updates"] == updates + 2


def test_a_read_failing_half_way_rolls_back(serve_model_dir, checkpoints, monkeypatch):
    # In process: the copy fails after overwriting one tensor (a file replaced under the server);
    # the engine reloads the checkpoint it served before, answers 500 and serves the old weights.
    from kollm.model import hf
    from kollm.serve import engine as engine_module
    from kollm.serve.engine import Engine

    old, _, d = checkpoints
    model = load_hf(serve_model_dir)
    engine = Engine(model, None, [EOS], weights_path=str(serve_model_dir))
    real = hf.load_weights_into
    calls = []

    def flaky(m, update):
        calls.append(update.path)
        if len(calls) == 1:
            with torch.no_grad():
                m.model.norm.weight.zero_()
            raise OSError("Input/output error")
        real(m, update)

    monkeypatch.setattr(engine_module, "load_weights_into", flaky)  # the name the engine calls
    engine.start()
    try:
        status, message = engine.update_weights(str(d / "new")).result(timeout=60)
    finally:
        engine.stop()
    assert status == 500 and "Input/output error" in message and "served again" in message, message
    assert calls == [d / "new", serve_model_dir]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), old.parameters()))
    assert engine.weights_path == str(serve_model_dir) and engine.stats["weight_updates"] == 0
