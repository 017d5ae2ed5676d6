import pytest
import torch

from kollm.model import KVCache, build_model, get_preset
from kollm.model.rope import document_positions
from kollm.train.objectives.lm import IGNORE, shifted_targets


def _model(name="tiny", **kw):
    torch.manual_seed(0)
    return build_model(get_preset(name, **kw)).eval()


def test_kv_cache_decoding_equals_full_forward():
    model = _model()
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config, batch=2, max_len=32, device="cpu", dtype=torch.float32)
        steps = [model(ids[:, :10], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(10, 20)]
        steps.append(model(ids[:, 20:], cache=cache).logits)  # multi-token continuation
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich"])
def test_document_mask_isolates_documents(placement):
    """Under `document`, a packed document's logits equal the document run alone (RoPE is relative)."""
    model = _model(norm_placement=placement)
    a, b = torch.randint(0, 512, (1, 11)), torch.randint(0, 512, (1, 13))
    packed = torch.cat([a, b], dim=1)
    doc = torch.tensor([[0] * 11 + [1] * 13])
    with torch.no_grad():
        alone = model(b).logits
        inside = model(packed, doc_ids=doc, mask_policy="document").logits[:, 11:]
        restarted = model(packed, doc_ids=doc, mask_policy="document", restart_positions=True).logits[:, 11:]
        leaked = model(packed, doc_ids=doc, mask_policy="causal").logits[:, 11:]
    torch.testing.assert_close(inside, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(restarted, alone, atol=1e-4, rtol=1e-4)
    assert (leaked - alone).abs().max() > 1e-3


def test_xlda_sees_other_language_not_same_language():
    """[en A][ko B][en C] under xlda: C attends to B and itself, not A. With one layer (deeper
    layers would carry A into C through B) C's logits equal those of C after B alone."""
    model = _model(n_layers=1)
    A, B, C = (torch.randint(0, 512, (1, n)) for n in (9, 7, 8))
    doc = torch.tensor([[0] * 9 + [1] * 7 + [2] * 8])
    lang = torch.tensor([[0] * 9 + [1] * 7 + [0] * 8])
    with torch.no_grad():
        three = model(torch.cat([A, B, C], 1), doc_ids=doc, lang_ids=lang, mask_policy="xlda").logits
        two = model(torch.cat([B, C], 1)).logits
        b_alone = model(B).logits
    torch.testing.assert_close(three[:, 16:], two[:, 7:], atol=1e-4, rtol=1e-4)
    assert (three[:, 9:16] - b_alone).abs().max() > 1e-3  # B (ko) sees the earlier en document A


def test_norm_placements_are_different_functions():
    ids = torch.randint(0, 512, (1, 16))
    outs = {}
    for p in ("pre", "post", "sandwich"):
        m = _model(norm_placement=p)
        with torch.no_grad():
            for mod in m.modules():  # non-unit norm weights so placement matters beyond scale
                if mod.__class__.__name__ == "RMSNorm":
                    mod.weight.uniform_(0.5, 1.5)
            outs[p] = m(ids).logits
    assert (outs["pre"] - outs["post"]).abs().max() > 1e-3
    assert (outs["pre"] - outs["sandwich"]).abs().max() > 1e-3
    sandwich = _model(norm_placement="sandwich").model.layers[0]
    assert {n for n, _ in sandwich.named_children() if "norm" in n} == {
        "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
    }


def test_document_positions_restart():
    doc = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 2]])
    assert document_positions(doc).tolist() == [[0, 1, 0, 1, 2, 0, 1, 0]]


def test_mtp_targets_never_cross_isolated_documents():
    labels = torch.tensor([[10, 11, 12, 20, 21, 22, 23]])
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    t2 = shifted_targets(labels, 2, doc, isolate=True)
    assert t2.tolist() == [[12, IGNORE, IGNORE, 22, 23, IGNORE, IGNORE]]
    assert shifted_targets(labels, 2, doc, isolate=False).tolist() == [[12, 20, 21, 22, 23, IGNORE, IGNORE]]
    assert shifted_targets(labels, 1, doc, isolate=False).tolist() == [[11, 12, 20, 21, 22, 23, IGNORE]]


def test_mtp_head_only_in_training():
    """The MTP head runs in training mode only (its loss: tests/train/objectives/test_lm.py)."""
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    ids = torch.randint(0, 512, (2, 32))
    doc = torch.tensor([[0] * 16 + [1] * 16] * 2)
    assert model(ids, doc_ids=doc, mask_policy="document").mtp_logits is not None
    model.eval()
    assert model(ids).mtp_logits is None


def test_gqa_matches_explicit_head_repetition():
    """GQA through SDPA's enable_gqa equals an MHA model whose KV heads are repeated."""
    gqa = _model("tiny")  # 4 heads, 2 KV heads
    mha = build_model(get_preset("tiny", n_kv_heads=4)).eval()
    sd = gqa.state_dict()
    hd = gqa.config.head_dim
    for k, v in list(sd.items()):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            sd[k] = v.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


def test_post_norm_is_olmo2_without_its_qk_norms():
    """`post` placement: transformers' OLMo 2 decoder with its q/k RMSNorms replaced by identities
    (the one part of OLMo 2 that kollm leaves out) computes the same logits from the same weights."""
    from torch import nn
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    cfg = get_preset("tiny", norm_placement="post")
    hf = Olmo2ForCausalLM(Olmo2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_seq_len, eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})).eval()
    for layer in hf.model.layers:
        layer.self_attn.q_norm, layer.self_attn.k_norm = nn.Identity(), nn.Identity()
    ours = build_model(cfg).eval()
    with torch.no_grad():
        for mod in ours.modules():  # non-unit norm weights: a misplaced norm changes the function
            if mod.__class__.__name__ == "RMSNorm":
                mod.weight.uniform_(0.5, 1.5)
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)
