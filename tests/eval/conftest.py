"""Shared fixtures for the eval tests: a tiny random Llama checkpoint in Hugging Face layout with
a byte-level BPE tokenizer (any Korean or English text encodes), and the shared dev data."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval-dev"
FIXTURES = Path(__file__).parent / "fixtures"
TEXT = [
    "The following are multiple choice questions (with answers) about algebra. Answer: A B C D",
    "한국어와 영어를 함께 배우는 언어 모델입니다. 질문: 답변: 예 아니오 문장: 긍부정: 긍정 부정",
    "Question: How many apples? Answer: 12 #### 12", "서울은 대한민국의 수도이다. 그래서 왜냐하면",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger than HF's init: peaked, varied log-likelihoods
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.15)
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def local_lm(model_dir):
    from kollm.eval.models import LocalLM

    return LocalLM(model_dir, batch_tokens=4096)


@pytest.fixture()
def shared() -> Path:
    """The shared dev data; tests that need it skip cleanly where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared dev data not present at {SHARED}")
    return SHARED


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES
