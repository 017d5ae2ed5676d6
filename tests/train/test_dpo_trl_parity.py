"""kollm's DPO loss equals TRL DPOTrainer's on the same model, reference, rows and β (to 1e-5), for
the sigmoid, IPO and length-normalised losses; string and conversational rows (implicit prompt
included) tokenize to the same prompt / completion ids. Skips where TRL is not installed."""

import pytest
import torch

from kollm.data.chat import load_tokenizer
from kollm.data.preferences import collate, parse_pair, tokenize_pair
from kollm.model.hf import load_hf
from kollm.train.objectives.dpo import DPOObjective, sequence_logps

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

TEXT = ["The sky is blue.", "하늘은 파랗다.", "Two plus two is four.", "The answer is 7.", "답은 8입니다."] * 20
SPECIALS = ["<pad>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
ROWS = [
    {"prompt": "What colour is the sky?", "chosen": " It is blue.", "rejected": " It is green, I think."},
    {"prompt": "2+2=", "chosen": "4", "rejected": "five"},
    {"prompt": [{"role": "user", "content": "3+4?"}], "chosen": [{"role": "assistant", "content": "The answer is 7."}],
     "rejected": [{"role": "assistant", "content": "답은 8입니다."}]},
    {"chosen": [{"role": "user", "content": "하늘은?"}, {"role": "assistant", "content": "하늘은 파랗다."}],
     "rejected": [{"role": "user", "content": "하늘은?"}, {"role": "assistant", "content": "The sky is green."}]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, write_tiny_llama):
    policy = write_tiny_llama(tmp_path_factory.mktemp("policy"), TEXT, SPECIALS, vocab_size=300, hidden=32,
                              max_positions=128, init_std=0.2)
    ref = tmp_path_factory.mktemp("ref")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(policy)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.add_(torch.randn_like(p) * 0.05)  # a reference near, not equal to, the policy
    m.save_pretrained(ref)
    return policy, ref


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "sigmoid_norm"])
def test_loss_matches_trl(models, tmp_path, loss):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy_dir, ref_dir = models
    tok = load_tokenizer(policy_dir)
    # TRL's rows must be homogeneous per dataset: the string rows and the conversational rows
    for rows in (ROWS[:2], ROWS[2:3], ROWS[3:]):  # implicit-prompt rows alone: TRL extracts per dataset
        args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss], report_to="none",
                         per_device_train_batch_size=len(rows), max_length=128, use_cpu=True, bf16=False,
                         dataset_num_proc=None)
        hf_policy = AutoModelForCausalLM.from_pretrained(policy_dir)
        hf_ref = AutoModelForCausalLM.from_pretrained(ref_dir)
        trainer = DPOTrainer(model=hf_policy, ref_model=hf_ref, args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(rows))
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        pairs = [tokenize_pair(tok, parse_pair(r)) for r in rows]
        for ex, p in zip(examples, pairs):  # same tokenization, implicit prompt included
            assert (p.prompt, p.chosen, p.rejected) == (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"])
        batch = trainer.data_collator(examples)
        hf_policy.eval()
        with torch.no_grad():
            trl_loss = trainer.compute_loss(hf_policy, batch).item()

        ours = collate(pairs, 128, tok.pad_token_id)
        ours["ref_logps"] = sequence_logps(load_hf(ref_dir).eval(), ours)
        obj = DPOObjective(beta=0.1, loss=loss)
        with torch.no_grad():
            out = obj(load_hf(policy_dir).eval(), ours, obj.targets(ours))
        # two float32 implementations (summation order, BLAS kernels differ by CPU): relative, ~80 ulps;
        # IPO's loss is ~25, so an absolute 1e-5 was under 2 ulps there
        assert out.loss.item() == pytest.approx(trl_loss, rel=1e-5)
        assert abs(out.loss.item() - (0.6931471805599453 if loss != "ipo" else 25.0)) > 1e-4  # not trivial


def test_rpo_matches_trl_step_by_step(models, tmp_path):
    """dpo.rpo_alpha = TRL's RPO (`loss_type=["sigmoid", "sft"], loss_weights=[1, α]`, the old
    `rpo_alpha`): the loss of three plain SGD steps taken by each implementation on its own copy of
    the same policy agrees at every step, so the NLL term's gradient (a mean over the batch's chosen
    tokens, the rejected half left out) agrees too."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy_dir, ref_dir = models
    tok = load_tokenizer(policy_dir)
    rows, alpha, lr = ROWS[:2], 0.7, 0.5
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, alpha],
                     report_to="none", per_device_train_batch_size=len(rows), max_length=128, use_cpu=True, bf16=False,
                     dataset_num_proc=None)
    hf_policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    trainer = DPOTrainer(model=hf_policy, ref_model=AutoModelForCausalLM.from_pretrained(ref_dir), args=args,
                         processing_class=tok, train_dataset=datasets.Dataset.from_list(rows))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    ours = collate([tokenize_pair(tok, parse_pair(r)) for r in rows], 128, tok.pad_token_id)
    ours["ref_logps"] = sequence_logps(load_hf(ref_dir).eval(), ours)
    policy = load_hf(policy_dir).eval()
    hf_policy.eval()
    obj, plain = DPOObjective(beta=0.1, rpo_alpha=alpha), DPOObjective(beta=0.1)
    seen = []
    for step in range(3):
        trl_loss = trainer.compute_loss(hf_policy, batch)
        seen.append(trl_loss.item())
        out = obj(policy, ours, obj.targets(ours))
        assert out.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5), step
        with torch.no_grad():  # the NLL is not trivial: RPO's loss is above DPO's alone by α × the chosen NLL
            dpo_only = plain(policy, ours, plain.targets(ours)).loss.item()
        assert out.loss.item() - dpo_only == pytest.approx(alpha * out.metrics["chosen_nll"].item(), rel=1e-5)
        assert out.metrics["chosen_nll"].item() > 1.0
        for loss, model in ((trl_loss, hf_policy), (out.loss, policy)):
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
    assert seen[2] < seen[1] - 0.05 < seen[0] - 0.1, seen  # the steps moved the policy (and the loss went down)


def test_rpo_alpha_range_checked():
    from kollm.train.dpo import DPOSection

    with pytest.raises(ValueError, match="dpo.rpo_alpha"):
        DPOSection(rpo_alpha=-0.1)
    with pytest.raises(ValueError, match="dpo.rpo_alpha"):
        DPOSection(rpo_alpha=float("nan"))
    assert DPOSection().rpo_alpha is None and DPOSection(rpo_alpha=0.5).rpo_alpha == 0.5
