r"""`kollm tokenizer train | extend | stats`.

  kollm tokenizer train --input en=EN.txt --input ko=KO.jsonl --budget en=100000 --budget ko=24552 \
      --series ko=1500,5000,13000 --vocab-size 128256 --out tok/
  kollm tokenizer extend --base llama3/ --input ko=KO.jsonl --add 24552 --out tok-ko/
  kollm tokenizer stats tok/ llama3/ --input ko=KO.jsonl --input en=EN.txt [--json]

Each subcommand imports its modules when it runs, so one never loads another's dependencies.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from kollm.argtypes import positive_int


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} must look like LANG=VALUE, got {item!r}")
        if key in out:
            raise ValueError(f"{what} given twice for {key!r}")
        out[key] = value
    return out


def _int(value: str, what: str) -> int:
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{what}: expected an integer, got {value!r}") from None


def _report_bad(bad) -> None:
    if bad:
        print(f"malformed rows skipped: {dict(bad)}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        from kollm.plan import emit, input_plan

        budgets = ", ".join(args.budget)
        return emit(input_plan("tokenizer train", [i.partition("=")[2] if "=" in i else i for i in args.input],
                               f"budgets {budgets}; the text is read into memory"), args)
    from kollm.tokenizer.train import TokenizerConfig, read_texts, save, train

    budgets = {k: _int(v, f"--budget {k}") for k, v in _pairs(args.budget, "--budget").items()}
    series = {k: [_int(x, f"--series {k}") for x in v.split(",")] for k, v in _pairs(args.series, "--series").items()}
    cfg = TokenizerConfig(budgets=budgets, series=series, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    texts, bad = read_texts(args.input)
    _report_bad(bad)
    tok, summary, nested = train(texts, cfg)
    out = save(tok, args.out, summary)
    for name, sub in nested.items():
        save(sub, out / name, {"nested_in": str(out), "budget": name})
    for lang in summary["languages"]:
        short = "" if lang["added"] == lang["budget"] else f"  (SHORT: text ran out after {lang['added']})"
        print(f"{lang['lang']}: {lang['added']} tokens, ids {lang['ids'][0]}..{lang['ids'][1] - 1}{short}")
    print(f"wrote {out} (vocab {summary['vocab_size']})" + (f" and nested {', '.join(nested)}" if nested else ""))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from kollm.tokenizer.extend import extend_tokenizer, load_tokenizer_json
    from kollm.tokenizer.train import read_texts, save

    base = load_tokenizer_json(args.base)
    texts, bad = read_texts(args.input)
    _report_bad(bad)
    if args.lang not in texts:
        raise ValueError(f"no text for --lang {args.lang!r}; inputs have {sorted(texts)}")
    old_n = base.get_vocab_size()
    tok, added = extend_tokenizer(base, texts[args.lang], args.add, args.min_frequency)
    out = save(tok, args.out, {"extended_from": str(args.base), "lang": args.lang, "added": len(added),
                               "ids": [old_n, old_n + len(added)]})
    base_dir = Path(args.base) if Path(args.base).is_dir() else Path(args.base).parent
    # Keep the base's specials and chat template (transformers 5 writes the template to its own file).
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"):
        if (base_dir / name).is_file():
            shutil.copy(base_dir / name, out / name)
    print(f"added {len(added)} {args.lang} tokens (ids {old_n}..{tok.get_vocab_size() - 1}); wrote {out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from kollm.tokenizer.extend import load_tokenizer_json
    from kollm.tokenizer.stats import measure, table
    from kollm.tokenizer.train import read_texts

    texts, bad = read_texts(args.input)
    _report_bad(bad)
    rows = []
    for path in args.tokenizers:
        tok = load_tokenizer_json(path)
        for lang in sorted(texts):
            rows.append((path, measure(tok, texts[lang][: args.limit] if args.limit else texts[lang], lang)))
    if args.json:
        print(json.dumps([{"tokenizer": name, **s.to_dict()} for name, s in rows], indent=2))
    else:
        print(table(rows))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    inp = dict(action="append", required=True, metavar="[LANG=]PATH",
               help="text: LANG=PATH (plain text: one document per line) or PATH (JSONL/Parquet with lang)")

    t = sub.add_parser("train", help="byte-level BPE with per-language budgets")
    t.add_argument("--input", **inp)
    t.add_argument("--budget", action="append", required=True, metavar="LANG=N",
                   help="new tokens for LANG; order = priority (first is trained on bytes)")
    t.add_argument("--series", action="append", default=[], metavar="LANG=N,N,...",
                   help="also write nested tokenizers with these smaller budgets (LANG must be last)")
    t.add_argument("--vocab-size", type=int, help="pad with reserved special tokens to this size")
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--dry-run", action="store_true", help="print the input bytes and exit")
    t.add_argument("--plan-json", action="store_true", help="dry run: print the plan as one JSON object")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("extend", help="add target-language tokens to an existing tokenizer.json")
    e.add_argument("--base", required=True, help="tokenizer.json or a directory holding one")
    e.add_argument("--input", **inp)
    e.add_argument("--lang", default="ko", help="language of the added tokens")
    e.add_argument("--add", type=int, required=True, help="number of tokens to add")
    e.add_argument("--min-frequency", type=int, default=2)
    e.add_argument("--out", required=True)
    e.set_defaults(fn=cmd_extend)

    s = sub.add_parser("stats", help="tokens/char, tokens/word, bytes/token, throughput per language")
    s.add_argument("tokenizers", nargs="+", help="tokenizer.json files or directories")
    s.add_argument("--input", **inp)
    s.add_argument("--limit", type=positive_int, help="at most this many documents per language")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)

    args = p.parse_args(argv)
    return args.fn(args)
