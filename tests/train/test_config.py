"""Training config: YAML → dataclasses; unknown keys and bad values are errors naming their path;
counts read the way the reports write them; every shipped recipe loads."""

import re
from pathlib import Path

import pytest

from kollm.argtypes import parse_count
from kollm.train.config import config_from_dict, load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PHASE = {"name": "stable", "steps": 2}


def test_counts():
    assert parse_count("1.8T", "x") == 1_800_000_000_000
    assert parse_count("60B", "x") == 60_000_000_000
    assert parse_count("2M", "x") == 2_000_000
    assert parse_count("4096", "x") == 4096
    assert parse_count(1.0e12, "x") == 10**12
    with pytest.raises(ValueError, match="phases\\[0\\].tokens"):
        config_from_dict({"phases": [{"name": "a", "tokens": "lots"}]})


@pytest.mark.parametrize("raw, path", [
    ({"optimizer": {"lrr": 1.0}}, "optimizer.lrr"),
    ({"phases": [{**PHASE, "weight_decayy": 0.1}]}, "phases[0].weight_decayy"),
    ({"modell": {}}, "modell"),
])
def test_unknown_key_names_its_path(raw, path):
    with pytest.raises(KeyError, match=path.replace("[", "\\[").replace("]", "\\]")):
        config_from_dict({"phases": [PHASE], **raw})


@pytest.mark.parametrize("raw, what", [
    ({"phases": [{"name": "a"}]}, "exactly one of tokens / steps"),
    ({"phases": [{"name": "a", "steps": 1, "tokens": 5}]}, "exactly one of tokens / steps"),
    ({"phases": [{"name": "a", "steps": 1, "lr": 1e-5}, {"name": "b", "steps": 1}]}, "cannot follow a fixed-lr"),
    ({"phases": [PHASE], "parallel": {"mode": "tp"}}, "parallel.mode"),
    ({"phases": [PHASE], "schedule": {"kind": "step"}}, "schedule.kind"),
    ({"phases": [PHASE], "optimizer": {"lr": "fast"}}, "optimizer.lr: expected a number"),
    ({"phases": [PHASE], "seed": "zero"}, "seed: expected int"),
    ({"phases": [{"steps": 1}]}, "missing required key 'name'"),
    ({"phases": []}, "at least one phase"),
    ({"phases": [PHASE], "data": {"restart_positions": True}}, "restart_positions needs mask_policy 'document'"),
    ({"phases": [PHASE], "schedule": {"kind": "cosine", "decay_start": "a"}}, "decay_start"),
])
def test_bad_values(raw, what):
    with pytest.raises(ValueError, match=what):
        config_from_dict(raw)


def test_yaml_numbers_and_file_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer: {lr: 2e-4, betas: [0.9, 0.95]}\nphases: [{name: s, tokens: 1.8T}]\n")
    cfg = load_config(f)
    assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.betas == (0.9, 0.95)  # YAML reads 2e-4 as a string
    assert cfg.phases[0].tokens == 1_800_000_000_000
    f.write_text("phases: [{name: s, steps: 1, dat: {}}]\n")
    with pytest.raises(KeyError, match=f"{f}: phases\\[0\\].dat"):
        load_config(f)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["tiny-pretrain", "trillion-7b", "dna-8b-cpt", "tiny-demo-pretrain"])
def test_recipes_load(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    assert cfg.name == name and cfg.phases


def test_trillion_recipe_is_the_report():
    cfg = load_config(RECIPES / "trillion-7b.yaml")
    o, s = cfg.optimizer, cfg.schedule
    assert (o.lr, o.betas, o.weight_decay, s.warmup_steps) == (2e-4, (0.9, 0.95), 0.1, 2000)
    assert (s.kind, s.decay_start, s.final_lr_ratio) == ("wsd", "anneal", 0.1)
    stable, anneal, long = cfg.phases
    assert stable.tokens + anneal.tokens == 2 * 10**12 and anneal.tokens / 2e12 == 0.1  # the last 10 %
    # §1/§8 budgets over the 2T tokens, and the anneal's tripled multilingual share (§3.2)
    total = {lang: stable.tokens * stable.data.beta[lang] + anneal.tokens * anneal.data.beta[lang]
             for lang in stable.data.beta}
    assert total["ko"] < 180e9 and total["ko"] + total["ja"] + total["zh"] < 220e9
    assert total["code"] + total["math"] < 0.02 * 2e12
    for lang in ("ko", "ja", "zh"):
        assert anneal.data.beta[lang] == pytest.approx(3 * stable.data.beta[lang])
    assert sum(stable.data.beta.values()) == pytest.approx(1) and sum(anneal.data.beta.values()) == pytest.approx(1)
    assert (stable.mtp_alpha, anneal.mtp_alpha, anneal.weight_decay) == (0.2, 0.1, 0.033)
    assert stable.data.seq_len == anneal.data.seq_len == 4096
    assert (long.tokens, long.data.seq_len, long.rope_theta, long.data.long_fraction) == (60e9, 32768, 1e6, 0.6)
    assert (cfg.batch.ramp_from, cfg.batch.tokens, cfg.batch.ramp_tokens) == (2**20, 2**21, 10**12)
    # the report's ZeRO-1; block checkpointing makes its 4K phases fit (recipe header)
    assert (cfg.parallel.mode, cfg.parallel.activation_checkpointing) == ("zero1", True)


def test_model_source(tmp_path):
    from kollm.train.model_setup import model_config

    with pytest.raises(ValueError, match="give a preset or init_from"):
        model_config(config_from_dict({"phases": [PHASE]}))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_config(config_from_dict({"phases": [PHASE], "model": {"init_from": str(tmp_path)}}))
    cpt = config_from_dict({"phases": [PHASE], "model": {"init_from": str(tmp_path), "preset": "tiny",
                                                           "vocab_size": 600}})
    assert model_config(cpt).vocab_size == 600  # dry run without the checkpoint: the preset's shapes
    with pytest.raises(ValueError, match="smaller than the model's"):
        model_config(config_from_dict({"phases": [PHASE], "model": {"preset": "tiny", "vocab_size": 100}}))


def test_set_overrides_reach_nested_keys_and_list_items(tmp_path):
    from kollm.train.config import load_config

    cfg = load_config(RECIPES / "tiny-pretrain.yaml", [
        "data.shards=/x/shards", "phases.1.steps=7", "model.overrides={dim: 96}", "optimizer.lr=1e-3"])
    assert cfg.data.shards == "/x/shards" and cfg.phases[1].steps == 7
    assert cfg.model.overrides == {"dim": 96} and cfg.optimizer.lr == 1e-3
    with pytest.raises(KeyError, match="phases.9.steps: .9. is not an index of a 3-item list"):
        load_config(RECIPES / "tiny-pretrain.yaml", ["phases.9.steps=1"])  # 3 phases
    with pytest.raises(ValueError, match="KEY.PATH=VALUE"):
        load_config(RECIPES / "tiny-pretrain.yaml", ["data.shards"])
    with pytest.raises(KeyError, match="data.nope"):
        load_config(RECIPES / "tiny-pretrain.yaml", ["data.nope=1"])


@pytest.mark.parametrize("raw, what", [
    ({"phases": [{**PHASE, "lr": 0.0}]}, "phases[0].lr must be a finite number > 0, got 0.0"),
    ({"validation": {"batch_size": 0}}, "validation.batch_size must be positive, got 0"),
    ({"teacher": {"top_k": 0}}, "teacher.top_k must be positive, got 0"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha must be in [0, 1], got 1.5"),
    ({"distill": {"ce_weight": -0.1}}, "distill.ce_weight must be in [0, 1]"),
    ({"distill": {"fresh_prob": float("nan")}}, "distill.fresh_prob must be in [0, 1], got nan"),
    ({"distill": {"off_policy_margin": float("inf")}}, "distill.off_policy_margin must be a finite number"),
    ({"distill": {"max_new_tokens": 0}}, "distill.max_new_tokens must be positive, got 0"),
    ({"distill": {"replay_capacity": -1}}, "distill.replay_capacity must be >= 0"),
    ({"distill": {"temperature": 0.0}}, "distill.temperature must be a finite number > 0, got 0.0"),
    ({"distill": {"top_p": 0.0}}, "distill.top_p must be in (0, 1], got 0.0"),
    ({"distill": {"top_k": -5}}, "distill.top_k must be >= 0"),
])
def test_values_that_would_train_nothing_or_fail_later_name_their_key(raw, what):
    """A zero or negative value that makes a key meaningless is refused when the config loads (not at
    the first generation minutes later, nor accepted in silence), naming the key and the value."""
    from kollm.train.distill import distill_config_from_dict

    build = distill_config_from_dict if {"teacher", "distill"} & set(raw) else config_from_dict  # distill's sections
    with pytest.raises(ValueError, match=re.escape(what)):
        build({"phases": [PHASE], **raw})


def test_null_turns_an_optional_input_off():
    # `--set data.validation=null` once answered "data.validation: expected str, got None"
    cfg = load_config(RECIPES / "tiny-sft.yaml", ["data.validation=null", "model.overrides=null"])
    assert cfg.data.validation == "" and cfg.model.overrides == {}
    with pytest.raises(ValueError, match="optimizer.lr: expected a number, got None|optimizer.lr"):
        load_config(RECIPES / "tiny-sft.yaml", ["optimizer.lr=null"])  # a required value stays required
    from kollm.train.dpo import load_dpo_config
    from kollm.train.grpo import load_grpo_config

    assert load_dpo_config(RECIPES / "tiny-dpo.yaml", ["data.validation=null"])[3] is None
    assert load_grpo_config(RECIPES / "tiny-grpo.yaml", ["data.validation=null"]).data.validation is None


def test_init_from_with_a_recipes_overrides_names_the_set_that_clears_them(tmp_path):
    from kollm.train.distill import SPEC
    from kollm.train.model_setup import model_config

    # tiny-distill.yaml sizes its default student with overrides; a user's init_from meets them
    cfg = SPEC.load(RECIPES / "tiny-distill.yaml", [f"model.init_from={tmp_path}"]).train
    with pytest.raises(ValueError, match=r"--set model.overrides=null"):
        model_config(cfg)
    cleared = SPEC.load(RECIPES / "tiny-distill.yaml", [f"model.init_from={tmp_path}", "model.overrides=null"]).train
    assert cleared.model.overrides == {} and model_config(cleared)  # past the check


def _yaml_with_comments(path: Path) -> tuple[str, dict]:
    import yaml

    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True)[:40] if line.startswith("#"))
    return header, yaml.safe_load(text)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_shows_progress(path):
    """Long work shows progress: no recipe turns the bar off (tests pass --set logging.progress=false)."""
    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("logging"), dict):
                assert node["logging"].get("progress", True) is True, f"{path.name}: logging.progress"
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(_yaml_with_comments(path)[1])


@pytest.mark.parametrize("name", ["tiny-dpo", "tiny-grpo", "tiny-sft", "tiny-pretrain", "tiny-distill"])
def test_tiny_recipe_inputs_come_from_a_command_in_its_header(name):
    """Every `runs/...` input a tiny recipe names by default lies under a directory that a command
    in its header writes (`kollm demo --workdir runs/tiny-demo`, `--out runs/...`): a fresh clone
    gets there by running the header."""
    import re

    header, raw = _yaml_with_comments(RECIPES / f"{name}.yaml")
    commands = [line for line in header.splitlines() if re.match(r"#\s+(kollm|python|PYTHONPATH)", line)]
    written = {m.group(1) for c in commands for m in re.finditer(r"(?:--workdir|--out)[ =](runs/\S+)", c)}
    inputs = [raw.get("model", {}).get("init_from"), raw.get("data", {}).get("train"),
              raw.get("data", {}).get("validation"), raw.get("data", {}).get("shards"),
              raw.get("teacher", {}).get("model")]
    for path in [p for p in inputs if isinstance(p, str) and p.startswith("runs/")]:
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in written), (name, path, written)
