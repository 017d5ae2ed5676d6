"""`kollm sft` end to end on the tiny model: --set overrides, bad rows counted and skipped, a run
killed mid-way (os._exit, no cleanup) and resumed with --resume logs exactly the uninterrupted run's
losses and validation losses, and the export loads in transformers with the same logits and renders
the same prompt the model was trained on (chat template in tokenizer_config.json, BOS once)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_fixtures import make_model_dir, math_rows, sft_config, write_jsonl  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

BAD = ['{"messages": [{"role": "user", "content": "no answer"}]}', "{not json", "null"]  # null: was a crash


def sft(cfg_path: Path, *args: str, fault: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fault:
        env["KOLLM_FAULT_AT_STEP"] = str(fault)
    return subprocess.run([sys.executable, "-m", "kollm.cli", "sft", str(cfg_path), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("sft-cli")
    model = make_model_dir(work / "model")
    train = write_jsonl(work / "train.jsonl", math_rows(40), BAD)
    val = write_jsonl(work / "val.jsonl", math_rows(8, offset=100))
    # placeholders in the file, the real paths through --set (as a recipe passes them)
    cfg = sft_config(Path("MODEL"), Path("TRAIN"), Path("OUT"), steps=6, seq_len=256, batch_size=2, every=2,
                     val_every=3)
    (work / "sft.yaml").write_text(yaml.safe_dump(cfg))
    sets = ["--set", f"model.init_from={model}", "--set", f"data.train={train}", "--set", f"data.validation={val}"]
    out = {}
    for name in ("full", "killed"):
        out[name] = [*sets, "--set", f"output_dir={work / name}"]
    full = sft(work / "sft.yaml", *out["full"])
    assert full.returncode == 0, full.stderr[-4000:]
    killed = sft(work / "sft.yaml", *out["killed"], fault=5)
    assert killed.returncode == 17, killed.stderr[-4000:]  # died after step 5; last checkpoint step 4
    resumed = sft(work / "sft.yaml", *out["killed"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return work, model, full


def test_kill_resume_is_exact_and_validation_is_logged(runs):
    work, _, full = runs
    assert "3 bad rows skipped" in full.stderr and "train.jsonl:41" in full.stderr and "no_assistant_turn" in full.stderr
    # counted per file and reason in the run directory, and said again when the run ends
    bad = json.loads((work / "full" / "bad_rows.json").read_text())["train"]
    assert bad["files"] == {str(work / "train.jsonl"): {"no_assistant_turn": 1, "bad_json": 1, "not_an_object": 1}}
    assert "sft-test: train data: 3 bad rows skipped: " in full.stderr
    assert f"(per file: {work / 'full' / 'bad_rows.json'})" in full.stderr
    a, b = metrics(work / "full"), metrics(work / "killed")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit for bit
    val_a = {r["step"]: r["val_loss"] for r in a if "val_loss" in r}
    assert set(val_a) == {3, 6} and val_a == {r["step"]: r["val_loss"] for r in b if "val_loss" in r}
    assert val_a[6] < val_a[3]
    assert all(r["trained_tokens"] > 0 for r in a)


def test_export_loads_in_transformers_and_renders_the_training_prompt(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kollm.data import chat
    from kollm.train.export import load_checkpoint_model

    work, model_dir, _ = runs
    hf_dir = work / "full" / "hf" / "latest"
    assert hf_dir.resolve().name == "step-00000006"
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert "{% generation %}" in tok_cfg["chat_template"]
    exported = AutoTokenizer.from_pretrained(hf_dir)
    trained_with = chat.load_tokenizer(model_dir)
    conv = math_rows(1)[0]["messages"]
    prompt = exported.apply_chat_template(conv[:2], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]
    ids, trained = chat.render(trained_with, conv)
    assert prompt == ids[:len(prompt)] and not any(trained[:len(prompt)]) and trained[len(prompt)]
    assert prompt.count(exported.bos_token_id) == 1 and prompt[0] == exported.bos_token_id
    eot = exported.convert_tokens_to_ids("<|eot_id|>")
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert eot in gen["eos_token_id"] and exported.eos_token_id in gen["eos_token_id"]

    ours, _ = load_checkpoint_model(work / "full")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.tensor([prompt])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x).logits, rtol=1e-4, atol=1e-4)


def test_dry_run_and_config_mistakes(runs, tmp_path, capsys):
    from kollm.cli import main

    work, model_dir, _ = runs
    base = ["sft", str(work / "sft.yaml"), "--set", f"model.init_from={model_dir}",
            "--set", f"data.train={work / 'train.jsonl'}", "--set", f"output_dir={tmp_path / 'run'}"]
    assert main(base + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "40 conversations" in out and "3 bad rows skipped" in out and "one epoch =" in out
    assert main(base + ["--set", "data.mask_policy=xlda", "--set", "data.restart_positions=false"]) == 1
    assert "data.pack_conversations needs data.mask_policy: document" in capsys.readouterr().err
    assert main(base + ["--set", "data.train=''"]) == 1
    assert "data.train is required" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_seeds_average_into_a_soup(runs, tmp_path):
    pytest.importorskip("kollm.merge", reason="kollm.merge (the merge stage) is not on this branch yet")
    from safetensors.torch import load_file

    from kollm.cli import main

    work, model_dir, _ = runs
    args = ["sft", str(work / "sft.yaml"), "--seeds", "2", "--set", f"model.init_from={model_dir}",
            "--set", f"data.train={work / 'train.jsonl'}", "--set", "data.validation=''",
            "--set", f"output_dir={tmp_path / 'soup'}", "--set", "phases.0.steps=2"]
    assert main(args) == 0
    seeds = [load_file(tmp_path / "soup" / f"seed-{k}" / "hf" / "latest" / "model.safetensors") for k in (0, 1)]
    soup = load_file(tmp_path / "soup" / "hf" / "latest" / "model.safetensors")
    assert (tmp_path / "soup" / "hf" / "latest").resolve().name == "soup"
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(seeds[0][key], seeds[1][key])  # other data orders
    for name, t in soup.items():
        torch.testing.assert_close(t, (seeds[0][name] + seeds[1][name]) / 2, rtol=1e-6, atol=1e-6)
