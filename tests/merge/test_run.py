"""End to end: streamed shards + index that transformers loads, vocabulary handling, the files
beside the weights (config, tokenizer with chat template, card, YAML), atomicity, soup, CLI."""

import json
import re

import pytest
import torch
import yaml
from merge_helpers import read_all, tiny_hf

from kollm.cli import main as cli_main
from kollm.merge import merge, soup


@pytest.mark.parametrize("kind,tie", [("llama", False), ("qwen2", True)])
def test_soup_streams_shards_that_transformers_loads(tmp_path, kind, tie):
    from transformers import AutoModelForCausalLM

    dirs = [tiny_hf(tmp_path / f"m{i}", kind, seed=i, tie=tie, max_shard_size="20KB") for i in range(3)]
    assert (dirs[0] / "model.safetensors.index.json").is_file()  # sharded inputs
    out = soup(dirs, tmp_path / "soup", max_shard_size="8KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    ins = [read_all(d) for d in dirs]
    got = read_all(out)
    assert set(got) == set(ins[0]) and ("lm_head.weight" in got) == (not tie)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    for name, t in got.items():  # uniform soup: the mean, accumulated in fp32
        assert torch.allclose(t, (ins[0][name] + ins[1][name] + ins[2][name]) / 3, atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[kind]
    sd = model.state_dict()
    for name, t in got.items():
        assert torch.equal(sd[name], t), name
    x = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.isfinite(model(x).logits).all()


def test_bf16_inputs_weights_and_dtype_cast(tmp_path):
    a = tiny_hf(tmp_path / "a", seed=1, dtype=torch.bfloat16)
    b = tiny_hf(tmp_path / "b", seed=2, dtype=torch.bfloat16)
    out = soup([a, b], tmp_path / "o", weights=[3.0, 1.0])
    A, B, M = read_all(a), read_all(b), read_all(out)
    name = "model.layers.0.mlp.up_proj.weight"
    assert M[name].dtype == torch.bfloat16
    assert torch.equal(M[name], ((3 * A[name].float() + B[name].float()) / 4).bfloat16())
    cfg = {"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(a), "parameters": {"weight": 1.0}}, {"model": str(b), "parameters": {"weight": 1.0}}]}
    o32 = merge(cfg, tmp_path / "o32")
    assert read_all(o32)[name].dtype == torch.float32
    assert json.loads((o32 / "config.json").read_text())["dtype"] == "float32"


def test_vocab_mismatch_names_both_sizes_and_files(tmp_path):
    a, b = tiny_hf(tmp_path / "a", vocab=32), tiny_hf(tmp_path / "b", vocab=40, seed=1)
    with pytest.raises(ValueError) as e:
        soup([a, b], tmp_path / "o")
    msg = str(e.value)
    assert "vocabulary sizes differ: 32" in msg and "40" in msg
    assert str(a / "model.safetensors") in msg and str(b / "model.safetensors") in msg and "tokenizer_source" in msg
    assert not (tmp_path / "o").exists()


def test_output_files_card_and_atomicity(tmp_path, write_tiny_llama):
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    texts = ["hello world", "안녕하세요 세계"] * 20
    a = write_tiny_llama(tmp_path / "a", texts, ["<pad>", "<s>", "</s>"], 300, 16, 64, 0.5, chat_template=template)
    b = tmp_path / "b"
    b.mkdir()
    for f in a.iterdir():  # same tokenizer and config, other weights
        (b / f.name).write_bytes(f.read_bytes())
    w = read_all(a)
    from safetensors.torch import save_file

    save_file({k: v + 0.01 for k, v in w.items()}, b / "model.safetensors", metadata={"format": "pt"})
    cfg_text = (f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                "parameters:\n  t: 0.25\n")
    f = tmp_path / "slerp.yaml"
    f.write_text(cfg_text)
    out = merge(f, tmp_path / "out")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    msgs = [{"role": "user", "content": "안녕"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == AutoTokenizer.from_pretrained(a).apply_chat_template(
        msgs, tokenize=False)
    assert (out / "mergekit_config.yml").read_text() == cfg_text
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    card = (out / "README.md").read_text()
    assert str(a) in card and str(b) in card and "`slerp`" in card and "t: 0.25" in card
    assert yaml.safe_load(card.split("---")[1])["base_model"] == [str(a), str(b)]
    # Never over an existing non-empty directory; a failed merge leaves no directory and no temp dir.
    with pytest.raises(ValueError, match="already exists"):
        merge(f, out)
    bad = yaml.safe_load(cfg_text) | {"parameters": {"t": [{"filter": "mlp", "value": 0.5}]}}  # no t for norms
    with pytest.raises(ValueError, match="missing required parameter 't'"):
        merge(bad, tmp_path / "out2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out", "slerp.yaml"]


def test_tokenizer_source_base_and_union_rows(tmp_path, write_tiny_llama):
    specials = ["<pad>", "<s>", "</s>"]
    a = write_tiny_llama(tmp_path / "a", ["the cat sat on the mat"] * 20, specials, 280, 16, 64, 0.5)
    b = write_tiny_llama(tmp_path / "b", ["the dog ran to the park"] * 20, specials, 285, 16, 64, 0.5)
    from transformers import AutoTokenizer

    va, vb = AutoTokenizer.from_pretrained(a).get_vocab(), AutoTokenizer.from_pretrained(b).get_vocab()
    A, B = read_all(a), read_all(b)
    both = next(t for t in va if t in vb and va[t] != vb[t])
    only_b = next(t for t in vb if t not in va)
    only_a = next(t for t in va if t not in vb)
    models = [{"model": str(a), "parameters": {"weight": 0.75}}, {"model": str(b), "parameters": {"weight": 0.25}}]
    E = "model.embed_tokens.weight"
    for source in ("base", "union"):
        out = merge({"merge_method": "linear", "base_model": str(a), "models": models, "tokenizer_source": source},
                    tmp_path / source)
        vo = AutoTokenizer.from_pretrained(out).get_vocab()
        M = read_all(out)
        assert M[E].shape[0] == len(vo) == json.loads((out / "config.json").read_text())["vocab_size"]
        # A token both have: the weighted mean of each model's own row.
        assert torch.allclose(M[E][vo[both]], 0.75 * A[E][va[both]] + 0.25 * B[E][vb[both]], atol=1e-6)
        # A token only the base has: b takes the base's row, so the merge is that row.
        assert torch.allclose(M[E][vo[only_a]], A[E][va[only_a]], atol=1e-6)
        assert torch.allclose(M["lm_head.weight"][vo[only_a]], A["lm_head.weight"][va[only_a]], atol=1e-6)
    assert only_b not in AutoTokenizer.from_pretrained(tmp_path / "base").get_vocab()
    vu = AutoTokenizer.from_pretrained(tmp_path / "union").get_vocab()
    assert set(va) | set(vb) <= set(vu)
    # A token only b has: a takes b's row (the one donor), so the merge is b's row.
    assert torch.allclose(read_all(tmp_path / "union")[E][vu[only_b]], B[E][vb[only_b]], atol=1e-6)


def test_kollm_sandwich_exports_merge_by_name(tmp_path):
    from kollm.model.config import get_preset
    from kollm.model.hf import load_hf, save_hf
    from kollm.model.transformer import build_model

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = get_preset("tiny", vocab_size=64, dim=32, ffn_dim=64, norm_placement="sandwich", tie_embeddings=True)
        m = build_model(cfg).eval()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
        save_hf(m, tmp_path / f"k{seed}")
        models.append(m)
    out = soup([tmp_path / "k0", tmp_path / "k1"], tmp_path / "soup")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Gemma2ForCausalLM"]
    merged = dict(load_hf(out).named_parameters())
    p0, p1 = dict(models[0].named_parameters()), dict(models[1].named_parameters())
    assert any("pre_feedforward_layernorm" in n for n in merged)
    for name, t in merged.items():  # Gemma's stored (w − 1) and E/√d are affine: the soup commutes
        assert torch.allclose(t, (p0[name] + p1[name]) / 2, atol=1e-5), name


def test_cli(tmp_path, capsys):
    a, b = tiny_hf(tmp_path / "a", seed=1), tiny_hf(tmp_path / "b", seed=2)
    f = tmp_path / "ta.yaml"
    f.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(a),
                                 "models": [{"model": str(b), "parameters": {"weight": 0.5}}]}))
    assert cli_main(["merge", str(f), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    A, B, M = read_all(a), read_all(b), read_all(tmp_path / "o")
    assert all(torch.allclose(M[n], A[n] + 0.5 * (B[n] - A[n]), atol=1e-6) for n in M)
    # --set points the same YAML at other models (what a recipe does with its stages' outputs)
    assert cli_main(["merge", str(f), "--out", str(tmp_path / "o3"), "--quiet", "--set", f"base_model={b}",
                     "--set", f"models.0.model={a}", "--set", "models.0.parameters.weight=0.25"]) == 0
    M3 = read_all(tmp_path / "o3")
    assert all(torch.allclose(M3[n], B[n] + 0.25 * (A[n] - B[n]), atol=1e-6) for n in M3)
    f.write_text("merge_method: ties\nmodels: []\n")
    capsys.readouterr()
    assert cli_main(["merge", str(f), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kollm merge: error: ") and str(f) in err and len(err.strip().splitlines()) == 1


def test_bad_checkpoints_have_one_line_errors(tmp_path):
    a = tiny_hf(tmp_path / "a", seed=1, max_shard_size="20KB")
    b = tiny_hf(tmp_path / "b", seed=2)
    shard = sorted(a.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])  # truncated
    with pytest.raises(ValueError, match=f"{shard}: tensor .* does not fit its shape or the file"):
        soup([a, b], tmp_path / "o")
    shard.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match=f"{shard}: not a readable safetensors file"):
        soup([a, b], tmp_path / "o")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"names shard {shard.name}, which is missing"):
        soup([a, b], tmp_path / "o")
    (b / "model.safetensors").rename(b / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights"):
        soup([b, b], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_non_finite_parameters_and_zero_weight_sums_fail_before_anything_is_written(tmp_path, capsys):
    # `t: .nan` and a normalised linear merge whose weights sum to 0 used to exit 0 with an all-NaN model
    a, b = tiny_hf(tmp_path / "a", seed=1), tiny_hf(tmp_path / "b", seed=2)
    f = tmp_path / "m.yaml"
    cases = [("merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\nparameters: {{t: .nan}}\n",
              r"parameters.t: nan is not a finite number"),
             ("merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n"
              "parameters: {{t: [0, .inf]}}\n", r"parameters.t\[1\]: inf is not a finite number"),
             ("merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 0}}}}, "
              "{{model: {b}, parameters: {{weight: 0.0}}}}]\n", "parameter 'weight' for .* sum to 0"),
             ("merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}, "
              "{{model: {b}, parameters: {{weight: 'nan'}}}}]\n", "parameter 'weight'.*not a finite number")]
    for text, msg in cases:
        f.write_text(text.format(a=a, b=b))
        capsys.readouterr()
        assert cli_main(["merge", str(f), "--out", str(tmp_path / "o"), "--quiet"]) == 1
        assert re.search(msg, capsys.readouterr().err)
        assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
    # linear without normalisation may sum to 0 (a difference of models): finite, so it is written
    f.write_text(f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}, "
                 f"{{model: {b}, parameters: {{weight: -1}}}}]\nparameters: {{normalize: false}}\n")
    assert cli_main(["merge", str(f), "--out", str(tmp_path / "d"), "--quiet"]) == 0


def test_a_non_finite_merged_tensor_is_never_published(tmp_path):
    a, b = tiny_hf(tmp_path / "a", seed=1), tiny_hf(tmp_path / "b", seed=2)
    from safetensors.torch import load_file, save_file

    w = load_file(b / "model.safetensors")
    w["model.norm.weight"][3] = float("nan")  # a broken input: its NaN survives any weighting
    save_file(w, b / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"merged tensor model.norm.weight has 1 non-finite value"):
        soup([a, b], tmp_path / "o")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
