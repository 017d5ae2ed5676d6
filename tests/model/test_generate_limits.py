"""Generation limits: max_new_tokens past the model's context is capped with a message (1e8 used
to reserve memory for all of them), the KV cache grows with the tokens instead of being
reserved for the whole request, text is cut only at whole characters, and exported files get
the modes the user's umask gives (0644), not safetensors' 0600."""

import pytest
import torch

from kollm.model import KVCache, build_model, get_preset
from kollm.model.generate import GenerationConfig, generate, whole_characters


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(get_preset("tiny"))
    m.config.max_seq_len = 40
    return m.eval()


def test_max_new_tokens_is_capped_at_the_context(model, capsys):
    out = generate(model, [[1, 2, 3, 4, 5, 6, 7, 8]], GenerationConfig(max_new_tokens=10**8))
    assert len(out[0]) == 32  # 40 - 8
    assert "max_new_tokens 100000000 capped at 32: the model's context is 40 tokens" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prompt has 40 tokens: it fills the model's context of 40"):
        generate(model, [list(range(1, 41))], GenerationConfig(max_new_tokens=1))


def test_kv_cache_grows_as_tokens_come(model):
    cache = KVCache(model.config, batch=1, max_len=10**9, device="cpu", dtype=torch.float32)
    assert cache.k[0].numel() == 0  # nothing reserved for a billion tokens
    ids = torch.tensor([[5, 6, 7, 8]])
    full = model(torch.tensor([[5, 6, 7, 8, 9, 10, 11]])).logits
    step = model(ids, cache=cache).logits
    for t in (9, 10, 11):
        step = torch.cat([step, model(torch.tensor([[t]]), cache=cache).logits], 1)
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)  # the copies on growth lose nothing
    assert cache.pos == 7 and 7 <= cache.k[0].shape[2] <= 64


def test_text_ends_at_a_whole_character():
    def decode(ids):  # byte-level: one token per UTF-8 byte
        return bytes(ids).decode("utf-8", "replace")

    ids = list("답은 한국".encode())
    for cut in (1, 2):  # "국" is 3 bytes: a generation stopped after 1 or 2 of them
        assert whole_characters(decode, ids[:-cut]) == "답은 한"
    assert whole_characters(decode, ids) == "답은 한국"


def test_exported_files_get_the_default_modes(tmp_path, model):
    import os
    import stat

    from kollm.model.hf import save_hf

    out = save_hf(model, tmp_path / "hf")
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes  # 0644 under umask 022
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
