"""XLDA packer: cross-lingual fraction and language shares over 10,000 sequences, no token lost or
duplicated (every token id in the synthetic corpus is unique, so each packed token says exactly
which document and position it came from), consistent doc ids, rank disjointness, filters."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kollm.data.mixture import language_probs
from kollm.data.shards import LanguageCorpus, ShardWriter, open_shards
from kollm.data.xlda import PackSpec, XLDAPacker

LANGS = {"en": 400, "ko": 150, "ja": 60, "zh": 40}  # documents per language


class Corpus:
    """Synthetic shards whose token ids are 0, 1, 2, ... across the whole corpus, plus the inverse
    map token -> (language, document, position)."""

    def __init__(self, root, seed=0):
        rng = np.random.default_rng(seed)
        self.lang, self.doc, self.pos, self.quality, self.doc_len = [], [], [], {}, {}
        nxt = 0
        for li, (lang, n) in enumerate(sorted(LANGS.items())):
            for part in range(2):  # documents spread over two parts
                with ShardWriter(root / lang / f"part-{part:05d}", lang, "h") as w:
                    for j in range(n // 2):
                        # mostly short, some long (continued across sequences), a few empty
                        length = int(rng.choice([0, rng.integers(1, 40), rng.integers(40, 400)], p=[0.02, 0.6, 0.38]))
                        q = float(rng.random())
                        w.add(np.arange(nxt, nxt + length), q)
                        gdoc = (lang, part * (n // 2) + j)
                        self.quality[gdoc], self.doc_len[gdoc] = q, length
                        self.lang += [li] * length
                        self.doc += [gdoc[1]] * length
                        self.pos += list(range(length))
                        nxt += length
        self.lang, self.doc, self.pos = map(np.asarray, (self.lang, self.doc, self.pos))
        self.root = root
        self.langs = sorted(LANGS)
        self.corpora = {k: LanguageCorpus(v) for k, v in open_shards(root).items()}
        self.sizes = {k: c.num_tokens for k, c in self.corpora.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(tmp_path_factory.mktemp("shards"))


def probs_of(c, alpha=0.5):
    return language_probs(c.sizes, alpha, {"en": 0.4, "ko": 0.4, "ja": 0.1, "zh": 0.1})


def check_packing(c, out, rows_in_order):
    """doc-id and continuation invariants; returns per-language token streams (in reading order)."""
    toks, docs, langs = out["tokens"], out["doc_ids"], out["lang_ids"]
    np.testing.assert_array_equal(c.lang[toks], langs)  # lang_id is the token's true language
    for r in range(len(toks)):
        t, d = toks[r], docs[r]
        assert d[0] == 0 and set(np.diff(d)) <= {0, 1}
        # same doc id <=> same language, same document, next position
        cont = (c.lang[t[1:]] == c.lang[t[:-1]]) & (c.doc[t[1:]] == c.doc[t[:-1]]) & (c.pos[t[1:]] == c.pos[t[:-1]] + 1)
        np.testing.assert_array_equal(d[1:] == d[:-1], cont)
    streams = {}
    for li in range(len(c.langs)):
        s = np.concatenate([toks[r][langs[r] == li] for r in rows_in_order])
        if s.size:
            # a stream reads whole documents in order: each token follows its predecessor in the
            # same document, or the predecessor ended its document and this one starts at 0
            same = (c.doc[s[1:]] == c.doc[s[:-1]]) & (c.pos[s[1:]] == c.pos[s[:-1]] + 1)
            prev_ended = c.pos[s[:-1]] == np.array([c.doc_len[(c.langs[li], d)] for d in c.doc[s[:-1]]]) - 1
            assert np.all(same | (prev_ended & (c.pos[s[1:]] == 0)))
            assert c.pos[s[0]] == 0
        streams[c.langs[li]] = s
    return streams


def test_cross_lingual_fraction_and_shares_over_10k(corpus):
    probs = probs_of(corpus)
    rho = 0.3
    packer = XLDAPacker(corpus.corpora, seed=7, block_size=64)
    packer.configure(PackSpec(probs, seq_len=64, rho=rho))
    out = packer.pack(10_000)
    langs = out["lang_ids"]
    n_langs = np.array([len(np.unique(row)) for row in langs])
    has_en = (langs == corpus.langs.index("en")).any(1)
    cross = n_langs >= 2
    assert abs(cross.mean() - rho) <= 0.01
    assert n_langs.max() == 2 and has_en[cross].all()  # English + one other language
    en_first = langs[cross][:, 0] == corpus.langs.index("en")
    assert 0.45 < en_first.mean() < 0.55  # both directions, English context for the other and back
    splits = (langs[cross] == corpus.langs.index("en")).sum(1)
    assert len(np.unique(splits)) > 20  # varied split points, not one fixed cut
    shares = np.bincount(langs.ravel(), minlength=4) / langs.size
    for i, lang in enumerate(corpus.langs):
        assert abs(shares[i] - probs[lang]) <= 0.01, (lang, shares[i], probs[lang])
    # shares hold per 1,000-sequence window too, not just on average
    for w in range(10):
        part = np.bincount(langs[w * 1000:(w + 1) * 1000].ravel(), minlength=4) / (64 * 1000)
        assert np.abs(part - [probs[k] for k in corpus.langs]).max() <= 0.01
    check_packing(corpus, out, range(len(langs)))


def test_rho_zero_is_plain_packing(corpus):
    probs = probs_of(corpus, alpha=1.0)
    packer = XLDAPacker(corpus.corpora, seed=1)
    packer.configure(PackSpec(probs, seq_len=128, rho=0.0))
    out = packer.pack(2000)
    assert all(len(np.unique(row)) == 1 for row in out["lang_ids"])
    shares = np.bincount(out["lang_ids"].ravel(), minlength=4) / out["lang_ids"].size
    assert np.abs(shares - [probs[k] for k in corpus.langs]).max() <= 0.01
    check_packing(corpus, out, range(2000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), seq_len=st.integers(2, 300), rho=st.sampled_from([0.0, 0.2, 0.5]),
       world=st.integers(1, 3), block=st.sampled_from([1, 7, 64, 4096]), n=st.integers(1, 60))
def test_no_token_lost_or_duplicated(corpus, seed, seq_len, rho, world, block, n):
    probs = probs_of(corpus)
    seen = {lang: [] for lang in corpus.langs}
    wrapped = set()
    for rank in range(world):
        packer = XLDAPacker(corpus.corpora, seed=seed, rank=rank, world_size=world, block_size=block)
        packer.configure(PackSpec(probs, seq_len=seq_len, rho=rho))
        out = packer.pack(n)
        for lang, s in check_packing(corpus, out, range(n)).items():
            seen[lang].append(s)
        wrapped |= {x.corpus.lang for x in packer.streams.values() if x.epoch > 0}
    for lang, per_rank in seen.items():
        if lang in wrapped:
            continue
        # within an epoch no token repeats on a rank, and ranks read disjoint documents
        for s in per_rank:
            assert len(np.unique(s)) == s.size
        docs = [set(corpus.doc[s].tolist()) for s in per_rank]
        assert sum(map(len, docs)) == len(set().union(*docs))


def test_an_epoch_reads_every_document_once_across_ranks(corpus):
    """Single-language stream, two ranks: the ranks take turns over an epoch's documents, so their
    first-epoch shares are disjoint, balanced, and together every non-empty document."""
    probs = {k: float(k == "ko") for k in corpus.langs}
    nonempty = {j for (lang, j), n in corpus.doc_len.items() if lang == "ko" and n > 0}
    firsts = []
    for rank in range(2):
        packer = XLDAPacker(corpus.corpora, seed=3, rank=rank, world_size=2, block_size=16)
        packer.configure(PackSpec(probs, seq_len=50))
        out = packer.pack(corpus.sizes["ko"] // 50 + 20)  # more than a rank's share: it wraps
        s = check_packing(corpus, out, range(len(out["tokens"])))["ko"]
        starts = corpus.doc[s][corpus.pos[s] == 0]  # the stream's document order
        share = (len(nonempty) - rank + 1) // 2  # round-robin: rank 0 takes the odd one out
        firsts.append(set(starts[:share].tolist()))
        assert len(firsts[-1]) == share
    assert firsts[0].isdisjoint(firsts[1]) and firsts[0] | firsts[1] == nonempty


def test_quality_threshold_and_long_short_split(corpus):
    probs = probs_of(corpus)
    packer = XLDAPacker(corpus.corpora, seed=2, block_size=32)
    packer.configure(PackSpec(probs, seq_len=256, rho=0.2, quality_threshold=0.5, long_fraction=0.6,
                              short_max_len=40))
    out = packer.pack(3000)
    toks = out["tokens"]
    lens = np.array([[corpus.doc_len[(corpus.langs[corpus.lang[t]], corpus.doc[t])] for t in row] for row in toks])
    q = np.array([corpus.quality[(corpus.langs[corpus.lang[t]], corpus.doc[t])] for t in toks.ravel()])
    assert q.min() >= 0.5
    long_rows = (lens > 40).all(1)
    assert ((lens <= 40).all(1) | long_rows).all()  # a sequence draws from one pool
    assert abs(long_rows.mean() - 0.6) <= 0.01
    check_packing(corpus, out, np.flatnonzero(long_rows))  # each pool is its own stream
    check_packing(corpus, out, np.flatnonzero(~long_rows))


def test_per_language_quality_top_keeps_that_fraction(corpus):
    """The report's anneal filter: top 50 % of English, top 20 % of every other language."""
    from kollm.data.loader import PhaseData, PretrainLoader

    phase = PhaseData(seq_len=128, batch_size=1000, alpha=1.0, quality_top={"en": 0.5, "*": 0.2})
    loader = PretrainLoader(corpus.root, phase, block_size=32)
    th = loader.thresholds(phase)
    for lang, top in (("en", 0.5), ("ko", 0.2), ("ja", 0.2), ("zh", 0.2)):
        q = np.array([v for (lg, _), v in corpus.quality.items() if lg == lang], np.float32)  # as stored
        assert (q >= th[lang]).sum() == len(q) - int(np.ceil((1 - top) * (len(q) - 1)))
    toks = np.concatenate([loader.next_batch()["input_ids"].numpy().ravel() for _ in range(3)])
    for li, lang in enumerate(corpus.langs):
        seen = {int(d) for d in np.unique(corpus.doc[toks[corpus.lang[toks] == li]])}
        eligible = {d for (lg, d), v in corpus.quality.items()
                    if lg == lang and np.float32(v) >= th[lang] and corpus.doc_len[(lg, d)] > 0}
        assert seen == eligible  # 3000 sequences cover every eligible document, and nothing else
    with pytest.raises(KeyError, match="unknown language"):
        loader.thresholds(PhaseData(quality_top={"de": 0.5}))
    with pytest.raises(ValueError, match="not both"):
        PhaseData(quality_top=0.5, quality_threshold=0.2)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PhaseData(quality_top={"en": 0.0})


def test_deterministic_for_a_seed(corpus):
    def run(seed):
        p = XLDAPacker(corpus.corpora, seed=seed, block_size=32)
        p.configure(PackSpec(probs_of(corpus), seq_len=96, rho=0.5))
        return p.pack(200)
    a, b, c = run(5), run(5), run(6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["tokens"], c["tokens"])


@pytest.mark.parametrize(("spec", "match"), [
    (dict(probs={"en": 0.02, "ko": 0.98}, seq_len=64, rho=0.9), "infeasible"),
    (dict(probs={"ko": 1.0}, seq_len=64, rho=0.5), "anchor language 'en'"),
    (dict(probs={"en": 1.0}, seq_len=64, rho=0.5), "other than 'en'"),
    (dict(probs={"en": 0.5, "de": 0.5}, seq_len=64), "unknown language 'de'"),
    (dict(probs={"en": 1.0}, seq_len=1), "seq_len"),
])
def test_invalid_specs(corpus, spec, match):
    with pytest.raises(ValueError, match=match):
        XLDAPacker(corpus.corpora).configure(PackSpec(**spec))


def test_missing_documents_is_a_clear_error(corpus):
    p = XLDAPacker(corpus.corpora)
    p.configure(PackSpec({"en": 1.0}, seq_len=64, quality_threshold=2.0))
    with pytest.raises(ValueError, match="no 'en' documents"):
        p.pack(1)


# -- literal mode: every sequence cross-lingual, ρ = P(next span switches language) ---------------

REPORT_MIX = {"en": 0.85, "ko": 0.10, "ja": 0.025, "zh": 0.025}  # the report's 8.5 : 1 : 0.5


def blocks(row):
    """Language runs of one packed row: [(lang, length), ...]."""
    cuts = np.flatnonzero(np.diff(row)) + 1
    return [(int(part[0]), len(part)) for part in np.split(row, cuts)]


def test_literal_every_sequence_cross_lingual_and_shares_within_1e3_over_10k(corpus):
    packer = XLDAPacker(corpus.corpora, seed=4, block_size=64)
    packer.configure(PackSpec(REPORT_MIX, seq_len=64, rho=0.5, mode="literal"))
    out = packer.pack(10_000)
    langs = out["lang_ids"]
    en = corpus.langs.index("en")
    assert ((langs == en).any(1) & (langs != en).any(1)).all()  # an English and a non-English span, always
    assert max(len(np.unique(row)) for row in langs) == 2  # English + one partner per sequence
    shares = np.bincount(langs.ravel(), minlength=4) / langs.size
    for i, lang in enumerate(corpus.langs):
        assert abs(shares[i] - REPORT_MIX[lang]) <= 1e-3, (lang, shares[i])
    # the split points vary (not one fixed cut), and both orders occur
    assert len(np.unique((langs == en).sum(1))) > 10
    assert 0.45 < (langs[:, 0] == en).mean() < 0.55
    assert packer.n_cross == packer.n_seq == 10_000
    check_packing(corpus, out, range(len(langs)))  # documents cut into contiguous spans, none lost


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_literal_rho_is_the_switch_probability(corpus, rho):
    packer = XLDAPacker(corpus.corpora, seed=9, block_size=64)
    packer.configure(PackSpec({"en": 0.6, "ko": 0.4, "ja": 0.0, "zh": 0.0}, seq_len=256, rho=rho, mode="literal"))
    out = packer.pack(1500)
    runs = [blocks(row) for row in out["lang_ids"]]
    if rho == 0.0:
        assert all(len(r) == 2 for r in runs)  # [en][ko] or [ko][en]: the one forced switch
    n, k = packer.n_choices, packer.n_switches
    assert n > 1000
    # each free decision switches with probability ρ: binomial, 4σ
    assert abs(k / n - rho) <= 4 * np.sqrt(rho * (1 - rho) / n) + 1e-12
    # blocks per sequence = 1 + free switches + forced switches (at most one per budget spent)
    assert sum(len(r) for r in runs) - len(runs) >= k
    check_packing(corpus, out, range(len(runs)))


def test_literal_resume_is_bit_identical(corpus):
    spec = PackSpec(REPORT_MIX, seq_len=48, rho=0.4, mode="literal", quality_threshold={"en": 0.1})

    def fresh():
        p = XLDAPacker(corpus.corpora, seed=21, rank=1, world_size=2, block_size=16)
        p.configure(spec)
        return p

    a = fresh()
    a.pack(300)
    import json

    state = json.loads(json.dumps(a.state_dict()))
    rest = a.pack(400)
    b = fresh()
    b.load_state_dict(state)
    again = b.pack(400)
    for key in rest:
        np.testing.assert_array_equal(rest[key], again[key])
    assert (b.n_choices, b.n_switches) == (a.n_choices, a.n_switches)


@pytest.mark.parametrize(("probs", "match"), [({"en": 1.0}, r"0 < P\(en\) < 1"), ({"ko": 1.0}, r"0 < P\(en\) < 1")])
def test_literal_needs_both_sides(corpus, probs, match):
    with pytest.raises(ValueError, match=match):
        XLDAPacker(corpus.corpora).configure(PackSpec(probs, seq_len=64, rho=0.5, mode="literal"))
    with pytest.raises(ValueError, match="mode 'sometimes'"):
        XLDAPacker(corpus.corpora).configure(PackSpec({"en": 1.0}, seq_len=64, mode="sometimes"))
