"""Reading the mergekit YAML: gradients across depth, filters, scopes, and one-line errors."""

import pytest
import yaml
from merge_helpers import tiny_hf

from kollm.merge.config import evaluate, parse_config, resolve
from kollm.merge.io import Checkpoint
from kollm.merge.plan import Planner

GRAD = [0.0, 0.5, 0.3, 0.7, 1.0]


def test_gradient_interpolates_between_anchors():
    # mergekit: scaled = t·(n−1); linear between the two neighbouring anchors.
    assert evaluate(GRAD, "x", 0.0, float, "t") == 0.0
    assert evaluate(GRAD, "x", 1.0, float, "t") == 1.0
    assert evaluate(GRAD, "x", 0.25, float, "t") == 0.5
    assert evaluate(GRAD, "x", 3 / 8, float, "t") == pytest.approx(0.4)  # halfway between 0.5 and 0.3
    assert evaluate(GRAD, "x", 0.9, float, "t") == pytest.approx(0.7 + 0.6 * 0.3)
    assert evaluate([True, False], "x", 0.6, bool, "normalize") is True  # discrete: index int(t·(n−1))


def test_filters_match_substrings_first_wins_with_fallback():
    cfg = {"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}],
           "parameters": {"t": [{"filter": "self_attn", "value": GRAD}, {"filter": "mlp", "value": 0.9},
                                {"value": 0.2}]}}
    setting = _settings(cfg)["t"]
    assert evaluate(setting, "model.layers.1.self_attn.q_proj.weight", 0.25, float, "t") == 0.5
    assert evaluate(setting, "model.layers.1.mlp.up_proj.weight", 0.25, float, "t") == 0.9
    assert evaluate(setting, "model.norm.weight", 0.25, float, "t") == 0.2
    no_fallback = _settings({**cfg, "parameters": {"t": [{"filter": "mlp", "value": 1}]}})["t"]
    assert evaluate(no_fallback, "lm_head.weight", 0, float, "t") is None
    with pytest.raises(ValueError, match="missing required parameter 't' for lm_head.weight"):
        resolve("t", float, None, [{"t": no_fallback}], "lm_head.weight", 0)


def _settings(raw, tmp=None):
    from kollm.merge.config import _params

    return _params(raw["parameters"], "parameters")


@pytest.fixture(scope="module")
def five_layers(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    return str(tiny_hf(d / "a", layers=5, seed=1)), str(tiny_hf(d / "b", layers=5, seed=2))


def test_plan_t_per_layer_and_scopes(five_layers):
    a, b = five_layers
    raw = {"merge_method": "slerp", "base_model": a,
           "slices": [{"sources": [{"model": a, "layer_range": [0, 5]}, {"model": b, "layer_range": [0, 5]}]}],
           "parameters": {"t": [{"filter": "self_attn", "value": GRAD}, {"filter": "mlp", "value": GRAD[::-1]},
                                {"value": 0.5}]}}
    plans = Planner(parse_config(raw), {m: Checkpoint(m) for m in (a, b)}).plan()
    t = {p.out: p.params["t"] for p in plans}
    for i in range(5):  # 5 layers, 5 anchors: layer i sits exactly on anchor i
        assert t[f"model.layers.{i}.self_attn.q_proj.weight"] == GRAD[i]
        assert t[f"model.layers.{i}.mlp.down_proj.weight"] == GRAD[::-1][i]
        assert t[f"model.layers.{i}.input_layernorm.weight"] == 0.5
    assert t["model.embed_tokens.weight"] == 0.5 and t["lm_head.weight"] == 0.5  # t = 0, fallback value


def test_slices_remap_layers_and_restart_depth(five_layers):
    a, b = five_layers
    raw = {"merge_method": "linear",
           "slices": [{"sources": [{"model": a, "layer_range": [0, 2], "parameters": {"weight": [1.0, 3.0]}},
                                   {"model": b, "layer_range": [3, 5]}]},
                      {"sources": [{"model": a, "layer_range": [2, 5]}, {"model": b, "layer_range": [0, 3]}],
                       "parameters": {"weight": 2.0}}],
           "parameters": {"weight": 1.0}}
    plans = {p.out: p for p in Planner(parse_config(raw), {m: Checkpoint(m) for m in (a, b)}).plan()}
    assert len([n for n in plans if n.endswith("q_proj.weight")]) == 5
    p = plans["model.layers.1.mlp.up_proj.weight"]  # slice 0, offset 1 of 2 → t = 1
    assert p.inputs == [(a, "model.layers.1.mlp.up_proj.weight"), (b, "model.layers.4.mlp.up_proj.weight")]
    assert p.params["weight"] == [3.0, 1.0]  # a's own gradient at t = 1; b falls back to the top level
    p = plans["model.layers.2.mlp.up_proj.weight"]  # slice 1, offset 0
    assert p.inputs == [(a, "model.layers.2.mlp.up_proj.weight"), (b, "model.layers.0.mlp.up_proj.weight")]
    assert p.params["weight"] == [2.0, 2.0]  # the slice's setting beats the top level
    assert plans["model.embed_tokens.weight"].params["weight"] == [1.0, 1.0]  # t = 0 on the first slice


def test_config_errors_name_the_key(tmp_path, five_layers):
    a, b = five_layers
    good = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}}, {"model": b}]}
    f = tmp_path / "c.yaml"
    cases = [
        ({**good, "merge_method": "dare"}, "merge_method.*'dare' is not one of"),
        ({**good, "paramters": {}}, "unknown key 'paramters'"),
        ({**good, "slices": []} | {"models": None}, "exactly one of 'models' or 'slices'"),
        ({**good, "models": [{"model": str(tmp_path / "nope")}]}, r"models\[0\].model.*not a local directory"),
        ({**good, "parameters": {"t": [{"filtr": "mlp", "value": 1}]}}, r"parameters.t\[0\].*unknown key 'filtr'"),
        ({**good, "dtype": "float8"}, "dtype.*'float8'"),
        ({"merge_method": "slerp", "slices": [{"sources": [{"model": a, "layer_range": [0, 2]},
                                                           {"model": b, "layer_range": [0, 3]}]}]},
         "same number of layers"),
        ({**good, "models": [{"model": a + "+lora"}]}, "LoRA"),
    ]
    for raw, msg in cases:
        f.write_text(yaml.safe_dump(raw))
        with pytest.raises(ValueError, match=msg) as e:
            parse_config(f)
        assert str(f) in str(e.value)
    f.write_text("merge_method: [linear\n")
    with pytest.raises(ValueError, match=f"{f}: invalid YAML at line"):
        parse_config(f)


def test_plan_errors(five_layers, tmp_path):
    a, b = five_layers
    ck = {m: Checkpoint(m) for m in (a, b)}
    with pytest.raises(ValueError, match="missing required parameter 'weight' for .*model.embed_tokens.weight"):
        Planner(parse_config({"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}},
                                                                   {"model": b}]}), ck).plan()
    with pytest.raises(ValueError, match="requires a base_model"):
        Planner(parse_config({"merge_method": "slerp", "models": [{"model": a}, {"model": b}],
                              "parameters": {"t": 0.5}}), ck).plan()
    c = str(tiny_hf(tmp_path / "c", layers=5, seed=3))
    ck[c] = Checkpoint(c)
    with pytest.raises(ValueError, match="exactly 2 models, got 3"):
        Planner(parse_config({"merge_method": "slerp", "base_model": a, "models": [{"model": a}, {"model": b},
                                                                                    {"model": c}],
                              "parameters": {"t": 0.5}}), ck).plan()
    with pytest.raises(ValueError, match="beyond the 5 layers"):
        Planner(parse_config({"merge_method": "linear", "slices": [{"sources": [
            {"model": a, "layer_range": [0, 6]}, {"model": b, "layer_range": [0, 6]}]}],
            "parameters": {"weight": 1}}), ck)
