"""A tiny random Llama (HF layout, byte-level BPE, a chat template) and one real `kollm serve`
process on 127.0.0.1 shared by the serve tests (starting Python + torch is the slow part)."""

import pytest

from kollm.serve.testing import running_server

TEXT = [
    "The quick brown fox jumps over the lazy dog.", "한국어와 영어를 함께 배우는 언어 모델입니다.",
    "Language models predict the next token.", "서울은 대한민국의 수도이다.", "Greedy decoding picks the argmax.",
    "Educational score: 3. Rating: [[5]] 점수: 7",
] * 20
CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
API_KEY = "test-key"
MAX_N, MAX_TOKENS, MAX_BODY = 4, 3000, 200_000
HEADER_TIMEOUT = 3.0  # seconds: stalled clients are closed after it (test_robust.py)
MAX_CONNECTIONS = 100


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory, write_tiny_llama):
    return write_tiny_llama(tmp_path_factory.mktemp("serve_tiny"), TEXT,
                            ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"], vocab_size=400,
                            hidden=48, max_positions=8192, init_std=0.2, chat_template=CHAT, bos_prefix=True)


@pytest.fixture(scope="session")
def server(serve_model_dir):
    args = ["--max-n", str(MAX_N), "--max-tokens", str(MAX_TOKENS), "--max-body-bytes", str(MAX_BODY),
            "--max-batch", "32", "--seed", "0", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", "5",
            "--max-connections", str(MAX_CONNECTIONS)]
    with running_server(serve_model_dir, *args, api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process model work on one thread, as the server process runs (testing.py sets
    OMP_NUM_THREADS=1): OpenMP threads spinning on a shared 2-core machine cost 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
