"""Shared fixtures for the eval tests: a tiny random Llama checkpoint in Hugging Face layout with
a byte-level BPE tokenizer (any Korean or English text encodes), and the shared dev data."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval-dev"
FIXTURES = Path(__file__).parent / "fixtures"
TEXT = [
    "The following are multiple choice questions (with answers) about algebra. Answer: A B C D",
    "한국어와 영어를 함께 배우는 언어 모델입니다. 질문: 답변: 예 아니오 문장: 긍부정: 긍정 부정",
    "Question: How many apples? Answer: 12 #### 12", "서울은 대한민국의 수도이다. 그래서 왜냐하면",
] * 20


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, write_tiny_llama) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), TEXT, ["<pad>", "<s>", "</s>"], vocab_size=420,
                            hidden=32, max_positions=4096, init_std=0.15)


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
