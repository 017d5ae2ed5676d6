"""The training loop, in process on the synthetic source: mask policies reach attention, gradient
accumulation is exact, phases change what they should, resume from a checkpoint reproduces the
uninterrupted run bit for bit, a NaN stops the run naming the step and checkpoint, and continual
pretraining extends a Hugging Face model's vocabulary."""

import json

import pytest
import torch
from synthetic import SyntheticLoader

from kollm.model.config import get_preset
from kollm.model.hf import save_hf
from kollm.model.transformer import build_model
from kollm.train.config import config_from_dict
from kollm.train.model_setup import build_run_model
from kollm.train.objectives.lm import LMObjective
from kollm.train.schedules import lr_at
from kollm.train.trainer import Trainer, TrainingDiverged

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def make_cfg(tmp_path, steps=4, micro=2, seqs=8, **extra):
    phases = extra.pop("phases", [{"name": "stable", "steps": steps, "mtp_alpha": 0.2,
                                   "data": {"seq_len": 32, "batch_size": micro}}])
    return config_from_dict({
        "output_dir": str(tmp_path), "batch": {"tokens": seqs * 32}, "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False}, "phases": phases, **extra})


def run(tmp_path, policy="xlda", preset="tiny-sandwich-mtp", resume=False, trainer_hook=None, dtype=torch.float32,
        **kw):
    torch.manual_seed(0)
    model = build_model(get_preset(preset), dtype=dtype)
    t = Trainer(make_cfg(tmp_path, **kw), model, LMObjective(policy), SyntheticLoader())
    if trainer_hook:
        trainer_hook(t)
    return t, [h["loss"] for h in t.fit(resume=resume)]


def test_the_last_step_is_logged_whatever_logging_every_says(tmp_path):
    # 3 steps at logging.every 2: steps 2 and 3 (3 was missing: a 2-step run at every 10 wrote nothing)
    run(tmp_path, steps=3, logging={"progress": False, "every": 2})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 3]


def test_mask_policies_reach_attention(tmp_path):
    losses = {p: run(tmp_path / p, p, steps=1)[1][0] for p in ("causal", "document", "xlda")}
    assert len(set(losses.values())) == 3, losses  # same data and weights, three different losses
    # one document per sequence: the three policies are the same mask, so the same loss
    single = {}
    for p in ("causal", "document", "xlda"):
        torch.manual_seed(0)
        model = build_model(get_preset("tiny"))
        batch = SyntheticLoader().next_batch(2)
        batch["doc_ids"].zero_()
        obj = LMObjective(p)
        single[p] = obj(model, batch, obj.targets(batch)).loss.item()
    assert single["causal"] == single["document"] == single["xlda"]


def test_gradient_accumulation_is_exact(tmp_path):
    # float64 weights (the loss's cross entropy is still fp32, ~1e-7): the split into micro-batches
    # must not change the step, MTP term included, whose target count differs per micro-batch.
    # Weighting MTP by NTP counts instead was off by 2e-6 in the loss and 1e-5 in the gradient norm.
    t1, one = run(tmp_path / "a", micro=8, dtype=torch.float64)  # 1 micro-batch of 8
    t4, four = run(tmp_path / "b", micro=2, dtype=torch.float64)  # 4 micro-batches of 2
    t3, three = run(tmp_path / "c", micro=3, dtype=torch.float64)  # 3, 3, 2: uneven
    assert [t.history[0]["micro_batches"] for t in (t1, t4, t3)] == [1, 4, 3]
    for other, t in ((four, t4), (three, t3)):
        torch.testing.assert_close(torch.tensor(one), torch.tensor(other), rtol=3e-7, atol=0)
        torch.testing.assert_close(torch.tensor([h["grad_norm"] for h in t1.history]),
                                   torch.tensor([h["grad_norm"] for h in t.history]), rtol=3e-7, atol=0)


def test_phases_apply_their_settings(tmp_path):
    phases = [
        {"name": "stable", "steps": 3, "mtp_alpha": 0.2, "data": {"seq_len": 32, "batch_size": 4}},
        {"name": "anneal", "steps": 2, "mtp_alpha": 0.1, "weight_decay": 0.033, "data": {"seq_len": 32, "batch_size": 4}},
        {"name": "long", "steps": 2, "rope_theta": 1e6, "lr": 1e-4, "data": {"seq_len": 64, "batch_size": 2}},
    ]
    seen = []

    def hook(t):
        step = t.train_step

        def spy():
            decay = [g["weight_decay"] for g in t.optimizer.param_groups]
            seen.append((t.cfg.phases[t.phase_idx].name, t.objective.mtp_alpha, decay, t.model_config.rope_theta,
                         t.data.seq_len))
            return step()
        t.train_step = spy

    t, _ = run(tmp_path, phases=phases, trainer_hook=hook)
    assert seen[0] == ("stable", 0.2, [0.1, 0.0], 1e5, 32)
    assert seen[3] == ("anneal", 0.1, [0.033, 0.0], 1e5, 32)
    assert seen[5] == ("long", 0.0, [0.1, 0.0], 1e6, 64)
    assert t.data.phases == ["stable", "anneal", "long"]
    lrs = [h["lr"] for h in t.history]
    assert lrs[:5] == [lr_at(s, 5, 3e-3, t.cfg.schedule) for s in range(5)] and lrs[5:] == [1e-4, 1e-4]
    assert "mtp_loss" in t.history[0] and "mtp_loss" not in t.history[-1]  # α = 0 in the last phase
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert {"loss", "ntp_loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_mb", "phase"} <= set(rows[0])


def test_resume_is_bit_exact(tmp_path):
    _, full = run(tmp_path / "full", steps=6, checkpoint={"every": 3, "export_hf": False})

    def stop_at_3(t):
        t.total_steps = 3
    run(tmp_path / "cut", steps=6, checkpoint={"every": 3, "export_hf": False}, trainer_hook=stop_at_3)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a crash mid-line after the checkpoint
        f.write('{"step": 4, "loss": 1.2')
    t, rest = run(tmp_path / "cut", steps=6, checkpoint={"every": 3, "export_hf": False}, resume=True)
    assert t.history[0]["step"] == 4
    assert rest == full[3:]  # exact float equality
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_nan_stops_the_run(tmp_path):
    class NaNAt3(LMObjective):
        calls = 0

        def __call__(self, model, batch, totals):
            out = super().__call__(model, batch, totals)
            self.calls += 1
            if self.calls > 4:  # step 3's first micro-batch (2 per step)
                out.loss = out.loss * float("nan")
            return out

    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    cfg = make_cfg(tmp_path, steps=5, micro=4, checkpoint={"every": 2, "export_hf": False})
    t = Trainer(cfg, model, NaNAt3("xlda"), SyntheticLoader())
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) at step 3; last good checkpoint: .*step-00000002"):
        t.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied


def test_continual_pretraining_extends_the_vocabulary(tmp_path):
    torch.manual_seed(1)
    base = build_model(get_preset("tiny"))
    save_hf(base, tmp_path / "hf")
    cfg = make_cfg(tmp_path, model={"preset": None, "init_from": str(tmp_path / "hf"), "vocab_size": 600})
    model = build_run_model(cfg, torch.device("cpu"))
    emb, old = model.model.embed_tokens.weight, base.model.embed_tokens.weight
    assert emb.shape == (600, 64) and model.lm_head.weight.shape == (600, 64) and model.config.vocab_size == 600
    torch.testing.assert_close(emb[:512], old)
    torch.testing.assert_close(emb[512:], old.mean(0).expand(88, 64))
    ids = torch.randint(0, 512, (2, 16))
    torch.testing.assert_close(model(ids).logits[..., :512], base(ids).logits, rtol=1e-5, atol=1e-5)
    t = Trainer(cfg, model, LMObjective("document"), SyntheticLoader(vocab=600))
    assert t.fit()[-1]["step"] == 4


def test_phase_weight_decay_applies_even_from_zero():
    from kollm.model.config import get_preset
    from kollm.model.transformer import build_model
    from kollm.train.config import OptimSection
    from kollm.train.parallel import build_optimizer, set_weight_decay

    opt = build_optimizer(build_model(get_preset("tiny")), "single", OptimSection(weight_decay=0.0))
    set_weight_decay(opt, 0.033)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.033, 0.0]  # norms and biases never decay


def test_continual_pretraining_with_an_extended_tokenizer(tmp_path):
    """`kollm tokenizer extend` output as model.tokenizer: rows grow to it, each new row the mean of
    the base rows of the tokens that spelled it (not the mean of all rows)."""
    from kollm.tokenizer.extend import extend_tokenizer
    from kollm.tokenizer.train import TokenizerConfig as TokConfig
    from kollm.tokenizer.train import save as save_tok
    from kollm.tokenizer.train import train as train_tok

    en = ["The quick brown fox jumps over the lazy dog.", "Language models predict the next token."] * 50
    ko = ["한국어 문장을 더 짧은 토큰으로 나눕니다.", "서울은 대한민국의 수도입니다."] * 50
    base_tok, _, _ = train_tok({"en": en}, TokConfig(budgets={"en": 100}))
    ext_tok, added = extend_tokenizer(base_tok, ko, 40)
    save_tok(ext_tok, tmp_path / "ext")
    torch.manual_seed(1)
    base = build_model(get_preset("tiny", vocab_size=base_tok.get_vocab_size()))
    save_hf(base, tmp_path / "hf", tokenizer=base_tok)
    cfg = make_cfg(tmp_path, model={"init_from": str(tmp_path / "hf"), "tokenizer": str(tmp_path / "ext")})
    model = build_run_model(cfg, torch.device("cpu"))
    old = base.model.embed_tokens.weight
    emb = model.model.embed_tokens.weight
    assert emb.shape[0] == ext_tok.get_vocab_size() == base_tok.get_vocab_size() + len(added)
    torch.testing.assert_close(emb[: old.shape[0]], old)
    for token in added:
        parts = [t.id for t in base_tok.model.tokenize(token)]
        assert len(parts) > 1
        torch.testing.assert_close(emb[ext_tok.token_to_id(token)], old[parts].mean(0))
    from kollm.train.model_setup import model_config

    assert model_config(cfg).vocab_size == emb.shape[0]  # the dry run plans the grown model


def test_checkpoint_records_the_tokenizer_absolutely(tmp_path, monkeypatch):
    """`kollm export` reads the run's tokenizer from the checkpoint, possibly from another directory."""
    from kollm.train import checkpoint

    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    t, _ = run(tmp_path / "run", steps=1, model={"preset": "tiny-sandwich-mtp", "tokenizer": "tok"})
    assert checkpoint.read_trainer_state(t.last_checkpoint)["tokenizer"] == str(tmp_path / "tok")


def test_trainer_decays_from_the_named_phase(tmp_path):
    phases = [{"name": "stable", "steps": 4, "data": {"seq_len": 32, "batch_size": 4}},
              {"name": "anneal", "steps": 3, "data": {"seq_len": 32, "batch_size": 4}}]
    t, _ = run(tmp_path, phases=phases, schedule={"warmup_steps": 2, "decay_start": "anneal"})
    lrs = [h["lr"] for h in t.history]
    assert lrs[:4] == [1.5e-3, 3e-3, 3e-3, 3e-3]  # no decay before the anneal phase (steps-based: step 6)
    assert lrs[4:] == [lr_at(s, 7, 3e-3, t.cfg.schedule, 4) for s in (4, 5, 6)] and lrs[-1] == pytest.approx(3e-4)


def test_batch_ramp_reaches_the_trainer(tmp_path):
    """Global batch 128 → 256 tokens over the first 768 (sequences of 32): each step takes
    round((128 + 128 · seen / 768) / 32) sequences, rounded half to even."""
    t, _ = run(tmp_path, steps=6, micro=2, batch={"tokens": 256, "ramp_from": 128, "ramp_tokens": 768})
    tokens = [h["tokens"] for h in t.history]
    assert [b - a for a, b in zip([0] + tokens, tokens)] == [128, 160, 192, 192, 256, 256]
    assert [h["micro_batches"] for h in t.history] == [2, 3, 3, 3, 4, 4]  # at most 2 sequences each


def test_gradients_are_clipped_to_the_configured_norm(tmp_path):
    """With a tiny clip the update is the clipped gradient: the first AdamW step moves every
    weight by about lr regardless, so compare the gradient norm the optimizer saw instead."""
    seen = []

    def hook(t):
        step = t.optimizer.step

        def spy(*a, **k):
            grads = [p.grad for g in t.optimizer.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            return step(*a, **k)
        t.optimizer.step = spy

    t, _ = run(tmp_path, steps=2, trainer_hook=hook, optimizer={"lr": 3e-3, "grad_clip": 1e-3})
    assert [h["grad_norm"] > 1e-2 for h in t.history] == [True, True]  # the pre-clip norm is logged
    assert seen == [pytest.approx(1e-3, rel=1e-4)] * 2


def test_weight_decay_groups_hold_matrices_only():
    from kollm.train.config import OptimSection
    from kollm.train.parallel import build_optimizer

    model = build_model(get_preset("qwen2.5-7b", n_layers=1, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   vocab_size=300))
    decay, no_decay = build_optimizer(model, "single", OptimSection()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith("norm.weight") or n.endswith(".bias")}
    assert "model.embed_tokens.weight" in {names[id(p)] for p in decay["params"]}
    assert all(p.ndim == 2 for p in decay["params"]) and len(decay["params"]) + len(no_decay["params"]) == len(names)


class HeldOut:
    def __init__(self, n=3):
        src = SyntheticLoader(seed=7)
        self._b = [src.next_batch(2) for _ in range(n)]

    def batches(self):
        return self._b


def test_validation_is_the_token_mean_over_all_held_out_batches_and_calls_the_hooks(tmp_path):
    import torch.nn.functional as F

    seen = []

    class Obj(LMObjective):
        def on_validation(self, metrics):
            seen.append(metrics)

    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    val = HeldOut()
    t = Trainer(make_cfg(tmp_path, steps=5, validation={"every": 2}), model, Obj("document"), SyntheticLoader(),
                val_data=val)
    hist = t.fit()
    assert [("val_loss" in h) for h in hist] == [False, True, False, True, True]  # every 2 steps and at the end
    assert len(seen) == 3 and seen[-1]["val_loss"] == hist[-1]["val_loss"]
    # by hand: eval mode (MTP idle), cross entropy summed over every target of every batch / their count
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in val.batches():
            logits = model(b["input_ids"], doc_ids=b["doc_ids"], mask_policy="document").logits
            total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                                     reduction="sum").item()
            n += b["labels"][:, 1:].numel()
    assert hist[-1]["val_loss"] == pytest.approx(total / n, rel=1e-5)
    assert "val_mtp_loss" not in hist[-1]


def test_per_language_losses_average_to_the_next_token_loss(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    obj = LMObjective("xlda", langs=["en", "ko"])
    batch = SyntheticLoader().next_batch(4)
    totals = obj.targets(batch)
    out = obj(model, batch, totals)
    m = {k: float(v) for k, v in out.metrics.items()}
    n_en, n_ko = float(totals[2]), float(totals[3])
    assert n_en > 0 and n_ko > 0 and n_en + n_ko == float(totals[0])
    assert (m["loss_en"] * n_en + m["loss_ko"] * n_ko) / (n_en + n_ko) == pytest.approx(m["ntp_loss"], rel=1e-6)
    # the language of a target is the language of the token predicted, not of the one predicting
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(batch["input_ids"], doc_ids=batch["doc_ids"], lang_ids=batch["lang_ids"],
                       mask_policy="xlda").logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="none")
    ko = (batch["lang_ids"][:, 1:] == 1).reshape(-1)
    assert m["loss_ko"] == pytest.approx(float(ce[ko].mean()), rel=1e-5)
    assert m["mix_en"] == pytest.approx(n_en / (n_en + n_ko)) and m["mix_en"] + m["mix_ko"] == pytest.approx(1)
    batch["lang_ids"][0] = 0  # one monolingual sequence of four
    assert float(obj(model, batch, obj.targets(batch)).metrics["xlingual_seqs"]) == 0.75
    assert not any(k.startswith("loss_") for k in obj(model, batch, totals[:2]).metrics)  # no counts, no keys


def test_tensorboard_scalars_equal_the_metrics_lines(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, steps=3, logging={"progress": False, "tensorboard": True})
    Trainer(cfg, build_model(get_preset("tiny")), LMObjective("xlda", langs=["en", "ko"]), SyntheticLoader()).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    for key in ("loss", "ntp_loss", "loss_ko", "mix_en", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_padding_micro_batch_adds_nothing_and_ranks_sum_to_the_global_mean():
    """More ranks than sequences (32K context on 256 ranks): the spare rank runs a target-less pad
    row; summed over ranks, the loss shares equal one process's loss on the same sequences."""
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    obj = LMObjective("xlda", mtp_alpha=0.2, langs=("en", "ko"))  # per-language metrics too
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (3, 16), generator=g)
    full = {"input_ids": ids, "labels": ids.clone(), "doc_ids": torch.zeros(3, 16, dtype=torch.long),
            "lang_ids": torch.zeros(3, 16, dtype=torch.long)}
    pad = {"input_ids": torch.zeros(1, 16, dtype=torch.long), "labels": torch.full((1, 16), -100),
           "doc_ids": torch.full((1, 16), -1), "lang_ids": torch.full((1, 16), -1)}  # as next_batch(0)
    ranks = [{k: v[i:i + 1] for k, v in full.items()} for i in range(3)] + [pad]  # 3 sequences, 4 ranks
    totals = torch.stack([obj.targets(b) for b in ranks]).sum(0)
    assert torch.equal(totals, obj.targets(full))
    shares = [obj(model, b, totals) for b in ranks]
    assert float(shares[3].loss.detach()) == 0.0 and set(shares[3].metrics) == set(shares[0].metrics)
    model.zero_grad()
    shares[3].loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)
    whole = obj(model, full, totals)
    torch.testing.assert_close(sum(s.loss for s in shares), whole.loss, rtol=1e-5, atol=1e-6)


def test_tokens_per_s_counts_real_tokens_not_padding(tmp_path, monkeypatch):
    from kollm.data.preferences import collate
    from kollm.rl.rollout import pad_rollouts
    from kollm.train import trainer as trainer_mod
    from kollm.train.trainer import real_tokens

    # the three padded layouts the post-training stages feed the trainer, counted by hand
    packed = {"doc_ids": torch.tensor([[0, 0, 1, -1, -1], [0, 0, 0, 0, 0]])}
    assert real_tokens(packed) == 8
    ids, mask = pad_rollouts([[5, 6, 7], [5]], [[1, 2], [3]], pad_id=0)  # GRPO: prompt + completion, right-padded
    assert ids.shape == (2, 5) and real_tokens({"input_ids": ids, "completion_mask": mask}) == 5 + 2
    pair = type("P", (), {"prompt": [4, 4, 4], "chosen": [9], "rejected": [8, 8, 8, 8]})()
    assert real_tokens(collate([pair], max_length=16, pad_id=0)) == 4 + 7  # DPO: chosen and rejected rows

    # in the run: half of every sequence is padding, and a step that takes 1 s logs half its tokens
    class HalfPadded(SyntheticLoader):
        def next_batch(self, batch_size=None):
            b = super().next_batch(batch_size)
            b["doc_ids"][:, b["doc_ids"].shape[1] // 2:] = -1
            b["labels"][:, b["labels"].shape[1] // 2:] = -100
            return b
    clock = iter(range(0, 1000, 1))
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: float(next(clock)))
    t = Trainer(make_cfg(tmp_path, steps=2, micro=2, seqs=4), build_model(get_preset("tiny")), LMObjective("document"),
                HalfPadded())
    t.fit()
    assert [h["tokens_per_s"] for h in t.history] == [4 * 32 / 2] * 2  # not 4 × 32, the nominal step
