"""Curation throughput: datatrove's local executor vs the Ray executor, 2 workers each, same config and
corpus (tests/data/curate_corpus.py's generator, scaled up), in one script run. Reports docs/s of
the whole four-stage pipeline (read → … → write), Ray including its cluster start.

    PYTHONPATH=src python bench/bench_curate_ray.py --docs 4000
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from curate_corpus import LOOSE, WORDS_EN, WORDS_KO, read_rows  # noqa: E402  # noqa: E402

from kollm.data.pipeline import CurateConfig, run_curation  # noqa: E402


def corpus(d: Path, n: int) -> None:
    import random

    for k, words in enumerate((WORDS_EN, WORDS_KO)):
        rng = random.Random(k)
        rows = [{"id": f"{k}-{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(30, 200)))}
                for i in range(n // 2)]
        (d / f"part{k}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4000)
    args = ap.parse_args()
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        corpus(tmp / "in", args.docs)
        base = {"inputs": [str(tmp / "in")], "tasks": 2, "workers": 2, "filters": LOOSE, "dedup": {"num_buckets": 2}}
        t0 = time.perf_counter()
        run_curation(CurateConfig.from_dict({**base, "output": str(tmp / "local")}))
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, log_to_driver=False)
        start_s = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            run_curation(CurateConfig.from_dict({**base, "output": str(tmp / "ray"), "executor": "ray",
                                                 "executor_options": {"mem_per_cpu_gb": 0.25}}))
            ray_s = time.perf_counter() - t1
        finally:
            ray.shutdown()
        same = read_rows(tmp / "local") == read_rows(tmp / "ray")
    n = args.docs
    print(f"docs {n}  local {n / local_s:.1f} docs/s ({local_s:.1f} s)  ray {n / ray_s:.1f} docs/s ({ray_s:.1f} s, "
          f"+{start_s:.1f} s cluster start)  ray/local {local_s / ray_s:.2f}x  same output: {same}")


if __name__ == "__main__":
    main()
