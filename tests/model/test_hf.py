"""HF interop: kollm loads transformers checkpoints (Llama, Qwen2, Gemma 2) with logits parity,
exports checkpoints that transformers reloads with the same logits, and rejects bad input."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

from kollm.model import build_model, get_preset
from kollm.model.config import RopeScaling
from kollm.model.hf import config_from_hf, hf_config, load_hf, parse_size, save_hf

ATOL = 1e-4
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
COMMON = dict(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def hf_config_for(kind: str, tied: bool = False):
    if kind == "llama":
        return LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=tied, rms_norm_eps=1e-5)
    if kind == "qwen2":
        return Qwen2Config(**COMMON, tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    return Gemma2Config(**COMMON, head_dim=12, hidden_activation="silu", query_pre_attn_scalar=12,
                        attn_logit_softcapping=None, final_logit_softcapping=None, sliding_window=256,
                        layer_types=["full_attention"] * 2, tie_word_embeddings=tied, rope_parameters=LLAMA3_ROPE)


def randomize(model, kind: str) -> None:
    """Every weight random (biases and norms too), so a mis-mapped tensor shows up in the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if kind == "gemma2" else 1.0))
            else:
                p.normal_(0, 0.15)


def make_hf(tmp_path, kind="llama", tied=False, dtype=torch.float32, **save_kw):
    model = AutoModelForCausalLM.from_config(hf_config_for(kind, tied), dtype=torch.float32).eval()
    randomize(model, kind)
    model.to(dtype).save_pretrained(tmp_path, safe_serialization=True, **save_kw)
    return model.float()


def ids(n=2, T=19, vocab=211):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(1))


def hf_logits(model, x):
    with torch.no_grad():
        return model(x).logits.float()


def kollm_logits(model, x):
    with torch.no_grad():
        return model(x).logits.float()


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True),
                                       ("gemma2", False), ("gemma2", True)])
def test_load_matches_transformers_logits(tmp_path, kind, tied):
    ref = make_hf(tmp_path, kind, tied)
    model = load_hf(tmp_path)
    cfg = model.config
    assert cfg.norm_placement == ("sandwich" if kind == "gemma2" else "pre")
    assert cfg.qkv_bias == (kind == "qwen2")
    assert (cfg.rope_scaling is not None) == (kind != "qwen2")
    x = ids()
    diff = (kollm_logits(model, x) - hf_logits(ref, x)).abs().max().item()
    assert diff < ATOL, f"{kind} tied={tied}: max abs logits diff {diff}"


def test_config_from_hf_reads_rope_and_legacy_keys():
    new = LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE).to_dict()
    cfg = config_from_hf(new)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 32)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim) == (4, 2, 12, 48)
    # transformers 4.x spelling: rope_theta at top level, rope_scaling without theta.
    legacy = {k: v for k, v in new.items() if k != "rope_parameters"}
    legacy |= {"rope_theta": 500000.0, "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}
    assert config_from_hf(legacy) == cfg
    assert config_from_hf(hf_config(cfg)) == cfg


def test_sharded_bf16_checkpoint_loads(tmp_path):
    ref = make_hf(tmp_path, "llama", dtype=torch.bfloat16, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = load_hf(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # The bf16 values are the file's, bit for bit.
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.down_proj.weight"
    with safe_open(tmp_path / weight_map[name], framework="pt") as f:
        assert torch.equal(model.state_dict()[name], f.get_tensor(name))
    # Upcast to fp32 at load: same function as transformers' model with the same bf16-rounded weights.
    ref_bf16 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = ids()
    diff = (kollm_logits(load_hf(tmp_path, dtype=torch.float32), x) - hf_logits(ref_bf16, x)).abs().max().item()
    assert diff < ATOL
    assert ref is not None


def kollm_model(placement="pre", **kw):
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=211, norm_placement=placement, bos_token_id=1, eos_token_id=2, **kw)
    model = build_model(cfg).eval()
    with torch.no_grad():  # larger than init (logits of order 1), non-trivial norms and biases
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + 1.0 if "norm" in name else torch.randn_like(p) * 0.15)
    return model


@pytest.mark.parametrize("placement,kw,arch", [
    ("pre", dict(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32)), "LlamaForCausalLM"),
    ("pre", dict(tie_embeddings=True), "LlamaForCausalLM"),
    ("pre", dict(qkv_bias=True), "Qwen2ForCausalLM"),
    ("sandwich", dict(mtp=True, rope_theta=100000.0), "Gemma2ForCausalLM"),
    ("sandwich", dict(tie_embeddings=True), "Gemma2ForCausalLM"),
])
def test_export_reloads_in_transformers_with_same_logits(tmp_path, placement, kw, arch):
    model = kollm_model(placement, **kw)
    out = save_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch]
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    names = set(load_file(out / "model.safetensors"))
    assert not any(n.startswith("mtp.") for n in names)  # the MTP head is training-only
    assert ("lm_head.weight" in names) == (not model.config.tie_embeddings)
    assert config["tie_word_embeddings"] == model.config.tie_embeddings
    ref = AutoModelForCausalLM.from_pretrained(out).eval()
    x = ids()
    diff = (hf_logits(ref, x) - kollm_logits(model, x)).abs().max().item()
    assert diff < ATOL, f"{arch}: max abs logits diff {diff}"
    # And back into kollm: the same function (Gemma's transforms undone).
    diff = (kollm_logits(load_hf(out), x) - kollm_logits(model, x)).abs().max().item()
    assert diff < ATOL


def test_export_sharded_bf16_round_trip(tmp_path):
    model = kollm_model()
    out = save_hf(model, tmp_path / "hf", dtype=torch.bfloat16, max_shard_size="30KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:  # full shards, none over the limit unless it holds one tensor
        sizes = [t.numel() * 2 for t in load_file(out / shard).values()]
        assert sum(sizes) <= 30_000 or len(sizes) == 1
    assert index["metadata"]["total_size"] == 2 * model.num_params()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    back = load_hf(out)
    for name, p in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], p.to(torch.bfloat16)), name


def test_export_refuses_post_norm_and_sandwich_bias(tmp_path):
    with pytest.raises(ValueError, match="norm_placement='post'.*q and k"):
        save_hf(kollm_model("post"), tmp_path / "a")
    with pytest.raises(ValueError, match="norm_placement='sandwich' with qkv_bias"):
        save_hf(kollm_model("sandwich", qkv_bias=True), tmp_path / "b")
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_is_atomic_and_never_overwrites(tmp_path):
    model = kollm_model()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        save_hf(model, tmp_path / "full")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        save_hf(model, tmp_path / "out", tokenizer=tmp_path / "full")  # fails after the weights are written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no partial dir, no temp dir left
    (tmp_path / "empty").mkdir()
    assert (save_hf(model, tmp_path / "empty") / "model.safetensors").is_file()


def test_export_tokenizer_object_and_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    vocab = {"<unk>": 0, "hello": 1, "world": 2, "안녕": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    a = save_hf(kollm_model(), tmp_path / "a", tokenizer=tok)
    assert AutoTokenizer.from_pretrained(a)("hello 안녕 world", add_special_tokens=False)["input_ids"] == [1, 3, 2]
    b = save_hf(kollm_model(), tmp_path / "b", tokenizer=a)  # copied from a directory
    assert (b / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size(1234) == parse_size("1234") == 1234
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")


# ---- bad input -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    make_hf(d, "llama")
    return d


def edited(good_dir, tmp_path, edit_tensors=None, edit_config=None):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    if edit_tensors:
        tensors = load_file(d / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_bad_inputs_have_one_line_errors(good_dir, tmp_path):
    cases = [
        (dict(edit_config=lambda c: c.update(architectures=["MistralForCausalLM"])),
         ValueError, "unsupported architectures \\['MistralForCausalLM'\\]"),
        (dict(edit_tensors=lambda t: t.pop("model.layers.1.self_attn.k_proj.weight")),
         ValueError, "missing tensors: model.layers.1.self_attn.k_proj.weight"),
        (dict(edit_tensors=lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(96, 47)})),
         ValueError, r"model.layers.0.mlp.up_proj.weight: expected \(96, 48\), got \(96, 47\)"),
        (dict(edit_tensors=lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(12)})),
         ValueError, "unexpected tensors .*model.layers.0.self_attn.q_norm.weight"),
        (dict(edit_config=lambda c: c["rope_parameters"].update(rope_type="yarn")),
         ValueError, "unsupported rope_type 'yarn'"),
        (dict(edit_config=lambda c: c.update(hidden_act="gelu")), ValueError, "activation 'gelu'"),
        (dict(edit_config=lambda c: c.pop("hidden_size")), ValueError, "lacks required key 'hidden_size'"),
    ]
    for i, (edit, exc, pattern) in enumerate(cases):
        d = edited(good_dir, tmp_path / str(i), **edit)
        with pytest.raises(exc, match=pattern) as e:
            load_hf(d)
        assert "\n" not in str(e.value)


def test_missing_config_pickle_only_and_corrupt_file(good_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(tmp_path)
    d = edited(good_dir, tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")  # content irrelevant: never unpickled
    with pytest.raises(ValueError, match="safetensors only"):
        load_hf(d)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_hf(d)


def test_cli_export_reexports_in_bf16_shards(good_dir, tmp_path, capsys):
    from kollm.cli import main

    out = tmp_path / "bf16"
    assert main(["export", "--model", str(good_dir), "--out", str(out), "--dtype", "bf16",
                 "--max-shard-size", "40KB"]) == 0
    assert "exported" in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").is_file()
    ref = AutoModelForCausalLM.from_pretrained(good_dir).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = ids()
    # bf16 rounding of the weights only: close to, not equal to, the fp32 source.
    diff = (hf_logits(reloaded, x) - hf_logits(ref, x)).abs().max().item()
    assert 0 < diff < 0.1
    from kollm.model import export_cli

    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_cli.main(["--model", str(tmp_path), "--out", str(tmp_path / "x")])
