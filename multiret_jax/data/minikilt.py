"""mini-KILT: a seeded generator of a fictional encyclopedia and KILT-format task files.

The project's embedded default benchmark. ``generate(out_dir, scale=1.0, seed=0)`` writes

* ``knowledge_source.jsonl``: one page a line, ``{"_id", "wikipedia_id", "wikipedia_title",
  "text": [title, paragraph, ...]}`` (occasional ``Section::::History.``-style paragraphs);
* ``<task>-<split>-kilt.jsonl`` for the train and dev splits of the 8 KILT tasks of
  ``tasks.KILT_TASKS`` (fever, aidayago2, trex, structured_zeroshot, nq, hotpotqa, triviaqa,
  wow), shaped like the real files, with provenance pointing at the exact character span of
  the sentence that states the fact (paragraph ids index ``text``);
* ``minikilt_manifest.json``: seed, scale, counts, file sizes and the generator version.

The world: entities of 8 kinds (countries, rivers, cities, people, companies, bands, albums,
films) with syllable names (some confusable: shared surnames, an album and a film of the same
name) and relations between them (born in, spouse, director, record label, ...). Pages are a
pure function of (seed, entity), so records re-render the pages they cite instead of keeping
them: memory is O(pages) for the entity table and O(1) in records; files stream to disk.
Output is byte-identical for a given (seed, scale); a second call with a matching manifest
returns at once. At scale 1: ~1,800 pages, 60 (AIDA) to 600 (T-REx) train records per task
and 40-70 dev records; everything scales linearly with ``scale``.

CLI: ``python -m multiret_jax.data.minikilt --out_dir=data/minikilt --scale=1 --seed=0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import string
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np

from multiret_jax.data import minikilt_vocab as V
from multiret_jax.data.tasks import KILT_TASKS

GENERATOR_VERSION = "minikilt-1"


def _source_digest() -> str:
    """Digest of the generator's code: a manifest from other code is stale."""
    h = hashlib.sha256()
    for path in (__file__, V.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


MANIFEST = "minikilt_manifest.json"
KNOWLEDGE_SOURCE = "knowledge_source.jsonl"
SPLITS = ("train", "dev")
PAGES_PER_SCALE = 1800
# (train, dev) records per task at scale 1, imbalanced like KILT.
RECORDS_PER_SCALE: Dict[str, Tuple[int, int]] = {
    "fever": (400, 60), "aidayago2": (60, 40), "trex": (600, 60),
    "structured_zeroshot": (550, 50), "nq": (450, 70), "hotpotqa": (300, 60),
    "triviaqa": (250, 50), "wow": (200, 40)}
LOW_BLEU_FRACTION = 0.06  # train records whose provenance gets bleu_score < 0.5
DEV_MOD = 6  # a fact (entity, relation) is a dev fact when its hash is 0 mod DEV_MOD
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")  # "a engineer" -> "an engineer"
_NUMBERS = {"year": (1900, 2015), "num": (3, 90)}
_WORDS = {"adj": V.ADJ, "noun": V.NOUN, "noun2": V.NOUN, "field": V.FIELDS, "size": V.SIZES,
          "ordinal": V.ORDINALS}
_RANDOM_FIELDS = frozenset(_NUMBERS) | frozenset(_WORDS) | {"place", "other", "S"}


@dataclasses.dataclass(frozen=True)
class GeneratedBenchmark:
    """Paths and counts of a generated mini-KILT (``task_files[task][split]`` is a path)."""

    out_dir: str
    knowledge_source: str
    task_files: Dict[str, Dict[str, str]]
    counts: Dict[str, Any]
    seed: int
    scale: float
    reused: bool = False


def _h(*parts: Any) -> int:
    """A stable 128-bit hash of ``parts`` (Python's ``hash`` is salted per process)."""
    key = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


def _uuid(*parts: Any) -> str:
    x = f"{_h(*parts):032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _tmp(path: str) -> str:
    """Per-process temporary name: files appear atomically (tmp + rename)."""
    return f"{path}.tmp{os.getpid()}"


@functools.lru_cache(maxsize=None)
def _fields(template: str) -> frozenset:
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


@dataclasses.dataclass
class _Page:
    json: Dict[str, Any]
    facts: Dict[str, Tuple[int, int, int]]  # relation -> (paragraph id, start, end)
    sections: List[str]  # section of each text element
    words: int


class _World:
    """The entity table (kinds, titles, relation values) and the page renderer."""

    def __init__(self, seed: int, scale: float):
        self.seed = seed
        rng = random.Random(_h(seed, "world"))
        total = max(80, round(PAGES_PER_SCALE * scale))
        sizes = {k: max(3, round(total * V.KIND_SHARE[k])) for k in V.KINDS}
        self.n = sum(sizes.values())
        self.kind: List[str] = []
        self.titles: List[str] = []
        self.range: Dict[str, range] = {}
        self.attr = np.full((self.n, 6), -1, dtype=np.int32)
        self.similar = np.full(self.n, -1, dtype=np.int32)
        self.female = np.zeros(self.n, dtype=bool)
        self.demonym: Dict[int, str] = {}
        taken: set = set()
        word = lambda lo, hi: "".join(rng.choice(V.SYLLABLES) for _ in range(rng.randint(lo, hi)))
        self.pools = {"LANGUAGES": tuple(sorted({word(1, 2).capitalize() + rng.choice(
            V.LANGUAGE_ENDS) for _ in range(max(6, sizes["country"] // 2))}))}
        self._cache: Dict[int, _Page] = {}

        def add(kind: str, base: str, disamb: Sequence[str], similar: int = -1) -> int:
            title = base
            for d in itertools.chain(disamb, (f"{kind} {k}" for k in itertools.count(2))):
                if title not in taken:
                    break
                title = f"{base} ({d})"
            taken.add(title)
            self.kind.append(kind)
            self.titles.append(title)
            self.similar[len(self.titles) - 1] = similar
            return len(self.titles) - 1

        def pick(kind: str, skew: bool = False) -> int:
            r = self.range[kind]
            return r[int(len(r) * rng.random() ** 2)] if skew else rng.choice(r)

        def begin(kind: str) -> None:
            self.range[kind] = range(len(self.titles), len(self.titles) + sizes[kind])

        def unique_base(make: Callable[[], str]) -> str:
            for _ in range(20):
                base = make()
                if base not in taken:
                    return base
            return base

        begin("country")
        for _ in self.range["country"]:
            stem = word(1, 2).capitalize()
            i = add("country", unique_base(lambda: stem + rng.choice(V.COUNTRY_ENDS)), ())
            self.demonym[i] = stem + rng.choice(V.DEMONYM_ENDS)
            self.set(i, "language", rng.randrange(len(self.pools["LANGUAGES"])))
            self.set(i, "continent", rng.randrange(len(V.CONTINENTS)))
        begin("river")
        rivers_of: Dict[int, List[int]] = {}
        for _ in self.range["river"]:
            i = add("river", unique_base(lambda: word(2, 2).capitalize() + " River"), ())
            c = pick("country")
            rivers_of.setdefault(c, []).append(i)
            self.set(i, "country", c)
            self.set(i, "mouth", rng.randrange(len(V.SEAS)))
        begin("city")
        for k, _ in enumerate(self.range["city"]):
            if k > 10 and rng.random() < 0.1:  # "Port Tarvo" next to "Tarvo"
                j = rng.randrange(self.range["city"].start, len(self.titles))
                i = add("city", f"{rng.choice(V.CITY_PREFIXES)} {self.display(j)}", (), j)
            else:
                i = add("city", unique_base(lambda: word(1, 2).capitalize() + rng.choice(
                    V.CITY_ENDS)), ())
            c = self.range["country"][k] if k < sizes["country"] else pick("country", True)
            self.set(i, "country", c)
            self.set(i, "founded_year", rng.randint(900, 1900))
            if rivers_of.get(c) and rng.random() < 0.6:
                self.set(i, "river", rng.choice(rivers_of[c]))
        for i in self.range["country"]:  # the first city of each country is its capital
            self.set(i, "capital", self.range["city"][i - self.range["country"][0]])
        begin("person")
        firsts = [word(2, 2).capitalize() for _ in range(max(40, sizes["person"] // 10))]
        occ_w = [3 if o in V.MUSICIAN_OCCUPATIONS else 6 if o in ("film director",
                 "entrepreneur") else 2 for o in V.OCCUPATIONS]
        by_occ: Dict[str, List[int]] = {}
        for k, _ in enumerate(self.range["person"]):
            occ = rng.choices(range(len(V.OCCUPATIONS)), weights=occ_w)[0]
            sim, surname = -1, (word(1, 2) + rng.choice(V.SURNAME_ENDS)).capitalize()
            base, u = None, rng.random()
            if k > 10 and u < 0.38:  # a namesake (disambiguated title) or a relative
                sim = rng.randrange(self.range["person"].start, len(self.titles))
                base = self.display(sim) if u < 0.08 else None
                surname = self.display(sim).split(" ", 1)[1]
            base = base or unique_base(lambda: f"{rng.choice(firsts)} {surname}")
            i = add("person", base, (V.OCCUPATIONS[occ],), sim)
            self.female[i] = rng.random() < 0.45
            by_occ.setdefault(V.OCCUPATIONS[occ], []).append(i)
            self.set(i, "occupation", occ)
            self.set(i, "born_in", pick("city", True))
            self.set(i, "birth_year", rng.randint(1850, 2000))
        people = list(self.range["person"])
        rng.shuffle(people)
        for a, b in zip(people[0:len(people) // 6 * 2:2], people[1:len(people) // 6 * 2:2]):
            self.set(a, "spouse", b)
            self.set(b, "spouse", a)
        begin("company")
        labels = []
        for _ in self.range["company"]:
            stem = word(2, 3).capitalize()
            music = rng.random() < 0.15
            i = add("company", f"{stem} {'Records' if music else rng.choice(V.COMPANY_ENDS)}", ())
            if music:
                labels.append(i)
            self.set(i, "headquarters", pick("city", True))
            self.set(i, "founded_year", rng.randint(1800, 2015))
            self.set(i, "industry", V.INDUSTRIES.index("music") if music else
                     rng.randrange(len(V.INDUSTRIES)))
            if rng.random() < 0.6:
                self.set(i, "founded_by", rng.choice(by_occ.get("entrepreneur") or people))
        labels = labels or list(self.range["company"])
        for p in people[: len(people) // 4]:
            self.set(p, "employer", pick("company"))
        begin("band")
        musicians = [p for o in V.MUSICIAN_OCCUPATIONS for p in by_occ.get(o, [])]
        rng.shuffle(musicians)
        for _ in self.range["band"]:
            adj, noun = rng.choice(V.WORD_ADJ), rng.choice(V.WORD_PLURAL)
            i = add("band", unique_base(lambda: rng.choice((
                f"The {adj} {noun}", f"{adj} {noun}", word(2, 3).capitalize()))), ("band",))
            self.set(i, "origin", pick("city", True))
            self.set(i, "genre", rng.randrange(len(V.MUSIC_GENRES)))
            self.set(i, "founded_year", rng.randint(1955, 2015))
            if rng.random() < 0.7:
                self.set(i, "record_label", rng.choice(labels))
            for _ in range(rng.randint(0, 4)):
                if musicians:
                    self.set(musicians.pop(), "member_of", i)
        phrases: List[str] = []
        for kind in ("album", "film"):
            begin(kind)
            for _ in self.range[kind]:
                if phrases and rng.random() < 0.12:  # shares its name with another work
                    base = rng.choice(phrases)
                else:
                    noun = rng.choice(V.WORD_NOUN)
                    base = rng.choice((f"{rng.choice(V.WORD_ADJ)} {noun}",
                                       f"The {noun} of {word(2, 2).capitalize()}",
                                       word(2, 3).capitalize()))
                    phrases.append(base)
                year = rng.randint(1920 if kind == "film" else 1960, 2020)
                i = add(kind, base, (kind, f"{year} {kind}"))
                self.set(i, "release_year", year)
                if kind == "album":
                    band = pick("band")
                    self.set(i, "performer", band)
                    self.set(i, "genre", self.attr[band, 1] if rng.random() < 0.8
                             else rng.randrange(len(V.MUSIC_GENRES)))
                    if rng.random() < 0.6:
                        self.set(i, "record_label", rng.choice(labels))
                else:
                    self.set(i, "director", rng.choice(by_occ.get("film director") or people))
                    self.set(i, "genre", rng.randrange(len(V.FILM_GENRES)))
                    self.set(i, "country", pick("country", True))
        # Back-references: a page names up to 3 entities that point at it ("Notable people
        # from X include ..."), a reservoir sample: distractors for retrieval, as in Wikipedia.
        self.back = np.full((self.n, 3), -1, dtype=np.int32)
        seen = np.zeros(self.n, dtype=np.int64)
        for i in range(self.n):
            for r in self.rels(i):
                if f"{self.kind[i]}.{r}" in V.BACKREFS:
                    o = self.get(i, r)
                    slot = seen[o] if seen[o] < 3 else rng.randrange(seen[o] + 1)
                    seen[o] += 1
                    if slot < 3:
                        self.back[o, slot] = i

    # -------------------------------------------------------------------- entity accessors
    def set(self, i: int, rel: str, value: int) -> None:
        self.attr[i, V.KIND_RELS[self.kind[i]].index(rel)] = value

    def get(self, i: int, rel: str) -> int:
        rels = V.KIND_RELS[self.kind[i]]
        return int(self.attr[i, rels.index(rel)]) if rel in rels else -1

    def rels(self, i: int) -> List[str]:
        return [r for c, r in enumerate(V.KIND_RELS[self.kind[i]]) if self.attr[i, c] >= 0]

    def display(self, i: int) -> str:
        """The title without its disambiguation: ``"Quiet Harbor (film)"`` -> ``"Quiet Harbor"``."""
        t = self.titles[i]
        return t.split(" (")[0] if t.endswith(")") else t

    def wid(self, i: int) -> str:
        return str(100000 + 7 * i + (i * i * 31 + self.seed) % 7)

    def value(self, i: int, rel: str, v: Optional[int] = None) -> Optional[str]:
        """The object of (entity, relation) as text (``v`` overrides the stored value)."""
        v = self.get(i, rel) if v is None else v
        if v < 0:
            return None
        t = V.REL_TYPE[f"{self.kind[i]}.{rel}"]
        if t == "year":
            return str(v)
        if t in self.range:
            return self.display(v)
        return (self.pools.get(t) or V.vocab(t))[v]

    def country_of(self, i: int) -> int:
        k = self.kind[i]
        nxt = {"person": "born_in", "city": "country", "river": "country", "band": "origin",
               "album": "performer", "film": "country", "company": "headquarters"}.get(k)
        return i if nxt is None else self.country_of(self.get(i, nxt))

    def is_dev(self, i: int, rel: str) -> bool:
        return _h(self.seed, "split", i, rel) % DEV_MOD == 0

    def facts_values(self, i: int) -> Dict[str, str]:
        """Template fields of entity ``i`` that do not vary between sentences."""
        d = {r: self.value(i, r) for r in self.rels(i)}
        female = bool(self.female[i]) if self.kind[i] == "person" else None
        d.update(name=self.display(i), dem=self.demonym[self.country_of(i)],
                 pron={True: "she", False: "he"}.get(female, "it"),
                 poss={True: "her", False: "his"}.get(female, "its"))
        d.update(Pron=d["pron"].capitalize(), Poss=d["poss"].capitalize())
        year = self.get(i, "birth_year") + 30 if self.kind[i] == "person" else max(
            self.get(i, "founded_year"), self.get(i, "release_year"))
        d["decade"] = f"{year // 10 * 10}s"
        return d

    def fill(self, template: str, base: Dict[str, str], rng: random.Random, i: int,
             by_name: bool = False) -> str:
        """Formats ``template`` with ``base`` plus fresh random helper fields (``{S}`` is the
        name or a pronoun / "The band"; always the name if ``by_name``)."""
        d, wanted = dict(base, S=base["name"]), _fields(template)
        if "S" in wanted and not by_name and rng.random() >= 0.45:
            d["S"] = rng.choice(V.SUBJECT_REFS.get(self.kind[i], (base["Pron"],)))
        for f in sorted(wanted & _RANDOM_FIELDS - {"S"}):
            if f == "other":
                other = int(self.similar[i])
                if other < 0 or rng.random() < 0.3:
                    other = rng.choice(self.range[self.kind[i]])
                d[f] = self.display(other)
            elif f == "place":
                d[f] = self.display(rng.choice(self.range["city"]))
            else:
                d[f] = str(rng.randint(*_NUMBERS[f])) if f in _NUMBERS else rng.choice(_WORDS[f])
        return _ARTICLE.sub(r"\1n ", template.format(**d))

    # -------------------------------------------------------------------------- pages
    def page(self, i: int) -> _Page:
        """Page ``i`` (a pure function of seed and ``i``; small cache for record writing)."""
        if i not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[i] = self.render(i)
        return self._cache[i]

    def render(self, i: int) -> _Page:
        rng = random.Random(_h(self.seed, "page", i))
        kind, base, rels = self.kind[i], self.facts_values(i), self.rels(i)
        lead = rng.choice([t for t in V.LEADS[kind] if _fields(t) - _RANDOM_FIELDS <= set(base)])
        sents = [(self.fill(lead, base, rng, i), [r for r in rels if r in _fields(lead)])]
        body = [(self.fill(rng.choice(V.SENTS[f"{kind}.{r}"]), base, rng, i), [r])
                for r in rels if r not in sents[0][1]]
        rng.shuffle(body)
        words = sum(len(s.split()) for s, _ in sents + body)
        target = min(385, int(60 + rng.expovariate(1 / (90 if kind in ("person", "city",
                                                                         "country") else 60))))
        refs: Dict[str, List[str]] = {}
        for j in sorted(int(j) for j in self.back[i] if j >= 0):
            key = next(k for k in (f"{self.kind[j]}.{r}" for r in self.rels(j))
                       if k in V.BACKREFS and self.get(j, k.split(".")[1]) == i)
            refs.setdefault(key, []).append(self.display(j))
        for key, names in refs.items():
            names = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
            sent = self.fill(V.BACKREFS[key], dict(base, refs=names), rng, i)
            body.insert(rng.randint(0, len(body)), (sent, []))
            words += len(sent.split())
        fillers = V.FILLER + V.KIND_FILLER[kind]
        while words < target:
            s = self.fill(rng.choice(fillers), base, rng, i)
            words += len(s.split())
            body.insert(rng.randint(0, len(body)), (s, []))
        first = rng.randint(1, 3)
        paras, rest = [sents + body[:first]], body[first:]
        while rest:
            k = rng.randint(2, 5)
            paras.append(rest[:k])
            rest = rest[k:]
        text, sections, facts = [self.titles[i]], [""], {}
        section = "Section::::Abstract."
        for n, para in enumerate(paras):
            if n and rng.random() < 0.15:
                section = f"Section::::{rng.choice(V.SECTIONS[kind])}."
                text.append(section)
                sections.append(section)
            pos, pid = 0, len(text)
            for s, srels in para:
                for r in srels:
                    facts[r] = (pid, pos, pos + len(s))
                pos += len(s) + 1
            text.append(" ".join(s for s, _ in para))
            sections.append(section)
        wid = self.wid(i)
        page = {"_id": wid, "wikipedia_id": wid, "wikipedia_title": self.titles[i], "text": text}
        return _Page(page, facts, sections, words)

    def prov(self, i: int, rel: str) -> Dict[str, Any]:
        """KILT provenance for the sentence of page ``i`` that states ``rel``."""
        page = self.page(i)
        pid, s, e = page.facts[rel]
        return {"wikipedia_id": self.wid(i), "title": self.titles[i], "start_paragraph_id": pid,
                "start_character": s, "end_paragraph_id": pid, "end_character": e,
                "bleu_score": 1.0, "section": page.sections[pid]}

    def claim(self, i: int, rel: str, rng: random.Random, value: Optional[str] = None,
              by_name: bool = True) -> str:
        """A statement of (i, rel), with ``value`` swapped in if given (self-contained if
        ``by_name``, else ``{S}`` may be a pronoun)."""
        key = f"{self.kind[i]}.{rel}"
        opts = [t for t in V.SENTS[key] if _fields(t) & {"name", "S"}
                and not _fields(t) & (_RANDOM_FIELDS - {"S"})]
        base = self.facts_values(i)
        if value is not None:
            base[rel] = value
        return self.fill(rng.choice(opts), base, rng, i, by_name=by_name)


# ------------------------------------------------------------------------------ records
def _pick(w: _World, i: int, split: str, rng: random.Random,
          allowed: Callable[[str], bool], by_hash: bool = True) -> Optional[str]:
    """A random relation of entity ``i`` that ``allowed`` and belongs to ``split``."""
    kind = w.kind[i]
    rels = [r for r in w.rels(i) if allowed(f"{kind}.{r}")
            and (not by_hash or w.is_dev(i, r) == (split == "dev"))]
    return rng.choice(rels) if rels else None


def _swap(w: _World, i: int, rel: str, rng: random.Random) -> str:
    """A wrong value for (i, rel), of the same type (for REFUTES claims)."""
    t, true = V.REL_TYPE[f"{w.kind[i]}.{rel}"], w.value(i, rel)
    while True:
        if t == "year":
            v = w.get(i, rel) + rng.choice((-1, 1)) * rng.randint(1, 15)
        elif t in w.range:
            v = rng.choice(w.range[t])
        else:
            v = rng.randrange(len(w.pools.get(t) or V.vocab(t)))
        if w.value(i, rel, v) != true:
            return w.value(i, rel, v)


def _qa(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    table = V.TQA if task == "triviaqa" else V.NQ
    rel = _pick(w, i, split, rng, table.__contains__)
    if rel is None:
        return None
    key, base, ans = f"{w.kind[i]}.{rel}", w.facts_values(i), w.value(i, rel)
    if w.kind[i] in ("person", "company") and rel != "occupation" and rng.random() < 0.25:
        base["name"] = base["name"].split(" ", 1)[w.kind[i] == "person"]  # "Tonvik", "Tarvo"
    q = rng.choice(table[key]).format(**base)
    out: List[dict] = [{"answer": ans, "provenance": [w.prov(i, rel)]}]
    d = split == "dev"
    if task == "triviaqa":
        rid = f"{V.TQA_ID_PREFIXES[k % len(V.TQA_ID_PREFIXES)]}_{2 * k + d + 1}"
        out += [{"answer": a} for a in dict.fromkeys((ans.lower(), ans.upper())) if a != ans]
    else:
        q, rid = q.lower(), str(_h(w.seed, task, split, k) % (1 << 63) - (1 << 62))
        if rng.random() < 0.3:  # an NQ long answer: the whole paragraph, no short answer
            p = dict(w.prov(i, rel), start_character=0, bleu_score=round(rng.uniform(.55, .95), 4))
            p["end_character"] = len(w.page(i).json["text"][p["end_paragraph_id"]])
            out.append({"provenance": [p]})
    return {"id": rid, "input": q, "output": out, "meta": {"relation": V.REL_LABEL[key]}}


def _slot(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    zsre = task == "structured_zeroshot"
    dev_rel = lambda key: (V.REL_LABEL[key] in V.ZSRE_DEV_LABELS) == (split == "dev")
    rel = _pick(w, i, split, rng, dev_rel if zsre else V.REL_LABEL.__contains__, not zsre)
    if rel is None:
        return None
    key, base, ans = f"{w.kind[i]}.{rel}", w.facts_values(i), w.value(i, rel)
    rec = {"id": _uuid(w.seed, task, split, k), "input": f"{base['name']} [SEP] {V.REL_LABEL[key]}",
           "output": [{"answer": ans, "provenance": [w.prov(i, rel)]}]}
    if zsre:
        qs = [q.format(**base) for q in V.NQ[key] if q.split()[0] in ("what", "where", "when",
                                                                     "who", "which")]
        rec["meta"] = {"template_questions": [q[0].upper() + q[1:] + "?" for q in qs]}
    else:
        rec["meta"] = {"subj_aliases": [], "sub_surface": [base["name"]], "obj_surface": [ans]}
    return rec


def _fever(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    rel = _pick(w, i, split, rng, lambda key: True)
    if rel is None:
        return None
    label = "SUPPORTS" if rng.random() < 0.55 else "REFUTES"
    claim = w.claim(i, rel, rng, None if label == "SUPPORTS" else _swap(w, i, rel, rng))
    return {"id": str(100000 + 2 * k + (split == "dev")), "input": claim,
            "output": [{"answer": label, "provenance": [w.prov(i, rel)]}],
            "meta": {"relation": V.REL_LABEL[f"{w.kind[i]}.{rel}"]}}


def _hotpot(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    kind, dev = w.kind[i], split == "dev"
    hops = [(r1, r2, ts) for r1, r2, ts in V.HOPS if r1.startswith(kind + ".")
            and w.get(i, r1.split(".")[1]) >= 0 and w.is_dev(i, r1.split(".")[1]) == dev
            and w.get(w.get(i, r1.split(".")[1]), r2.split(".")[1]) >= 0]
    if not hops:
        return None
    r1, r2, ts = rng.choice(hops)
    r1, r2 = r1.split(".")[1], r2.split(".")[1]
    j = w.get(i, r1)
    return {"id": f"{_h(w.seed, task, split, k):032x}"[:24],
            "input": rng.choice(ts).format(name=w.display(i)),
            "output": [{"answer": w.value(j, r2), "provenance": [w.prov(i, r1), w.prov(j, r2)]}],
            "meta": {"type": "bridge", "bridge_entity": w.titles[j]}}


def _aida(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    if w.is_dev(i, "el") != (split == "dev"):
        return None
    kind, name = w.kind[i], w.display(i)
    if kind == "person":
        first, last = name.split(" ", 1)
        m = rng.choice((name, name, last, last, f"{first[0]}. {last}"))
    elif kind == "country":
        m = rng.choice((name, w.demonym[i]))
    elif kind == "company":
        m = rng.choice((name, name.split()[0]))
    else:
        m = name
    hint = {"person": "occupation", "city": "country", "country": "continent", "river": "country",
            "band": "genre", "album": "performer", "film": "director", "company": "industry"}[kind]
    d = dict(hint=w.value(i, hint), day=rng.choice(V.DAYS), noun=rng.choice(V.NOUN).lower(),
             adj=rng.choice(V.ADJ), num=str(rng.randint(2, 40)), m="\x00",
             place=w.display(rng.choice(w.range["city"])))
    left_s, right_s = rng.choice(V.NEWS[kind]).format(**d).split("\x00")
    others = [t.format(**d, x=w.display(rng.choice(w.range[rng.choice(("person", "company"))])))
              for t in rng.sample(V.NEWS_FILLER, rng.randint(2, 4))]
    cut = rng.randint(0, len(others))
    head = f"{rng.choice(V.HEADLINE_WORDS)} - {d['place'].upper()} {rng.choice(V.HEADLINE_WORDS)} ."
    date = f"{d['place'].upper()} 1996-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    left = "  ".join([head, date] + others[:cut] + [left_s.strip()]).strip()
    right = "  ".join([right_s.strip()] + others[cut:]).strip()
    return {"id": f"{_uuid(w.seed, task, split, k)}_{k}{'testa' if split == 'dev' else ''} "
                  f"{head.split()[0]}:0",
            "input": f"{left} [START_ENT] {m} [END_ENT] {right}",
            "output": [{"answer": w.titles[i],
                        "provenance": [{"wikipedia_id": w.wid(i), "title": w.titles[i]}]}],
            "meta": {"left_context": left, "mention": m, "right_context": right}}


def _wow(w: _World, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
    rel = _pick(w, i, split, rng, lambda key: True)
    if rel is None:
        return None
    base, n = w.facts_values(i), rng.randint(3, 7)
    others = [r for r in w.rels(i) if r != rel]
    rng.shuffle(others)
    lines = []
    for t in range(n):
        if (n - 1 - t) % 2 and others:  # the knowledgeable partner ("wizard") states a fact
            fact = w.claim(i, others.pop(), rng, by_name=t == 0)
            lines.append(rng.choice(V.WOW_WIZARD).format(fact=fact))
        elif (n - 1 - t) % 2:
            lines.append(rng.choice(V.WOW_WIZARD_CHAT).format(**base))
        elif t == n - 1:
            q = V.WOW_Q[f"{w.kind[i]}.{rel}"].format(**base)
            lines.append(rng.choice(V.WOW_ASK).format(q=q))
        else:
            other = w.display(rng.choice(w.range[w.kind[i]]))
            lines.append(rng.choice(V.WOW_OPENERS if t == 0 else V.WOW_CHAT).format(
                **base, other=other))
    answer = w.claim(i, rel, rng) + rng.choice(V.WOW_TAILS)
    return {"id": f"{_uuid(w.seed, task, split, k)}_{n // 2}", "input": "\n".join(lines),
            "output": [{"answer": answer, "provenance": [w.prov(i, rel)]}],
            "meta": {"topic": w.titles[i]}}


_BUILDERS: Dict[str, Callable[..., Optional[dict]]] = {
    "fever": _fever, "aidayago2": _aida, "trex": _slot, "structured_zeroshot": _slot,
    "nq": _qa, "hotpotqa": _hotpot, "triviaqa": _qa, "wow": _wow}


def _write_task(w: _World, task: str, split: str, n: int, path: str) -> int:
    """Streams up to ``n`` records to ``path``, visiting entities in a seeded permutation
    (each entity at most once per file); returns the number written."""
    rng = random.Random(_h(w.seed, "records", task, split))
    a = next(x for x in iter(lambda: rng.randrange(1, max(2, w.n)), None) if math.gcd(x, w.n) == 1)
    b, written = rng.randrange(w.n), 0
    with open(_tmp(path), "w", encoding="utf-8") as f:
        for t in range(w.n):
            if written >= n:
                break
            rec = _BUILDERS[task](w, (a * t + b) % w.n, split, rng, written, task)
            if rec is None:
                continue
            if split == "train" and task != "aidayago2" and rng.random() < LOW_BLEU_FRACTION:
                rec["output"][0]["provenance"][0]["bleu_score"] = round(rng.uniform(.1, .49), 4)
            f.write(json.dumps(rec) + "\n")
            written += 1
    os.replace(_tmp(path), path)
    return written


def _from_manifest(out_dir: str, seed: int, scale: float) -> Optional[GeneratedBenchmark]:
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            man = json.load(f)
        if (man["version"], man["source"], man["seed"], man["scale"]) != (
                GENERATOR_VERSION, _source_digest(), seed, scale):
            return None
        if any(os.path.getsize(os.path.join(out_dir, p)) != s for p, s in man["sizes"].items()):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return _benchmark(out_dir, man["counts"], seed, scale, reused=True)


def _benchmark(out_dir: str, counts: Dict[str, Any], seed: int, scale: float,
               reused: bool = False) -> GeneratedBenchmark:
    files = {t.name: {s: os.path.join(out_dir, t.filename(s)) for s in SPLITS} for t in KILT_TASKS}
    return GeneratedBenchmark(out_dir, os.path.join(out_dir, KNOWLEDGE_SOURCE), files, counts,
                              seed, scale, reused)


@gin.configurable
def generate(out_dir: str, *, scale: float = 1.0, seed: int = 0,
             force: bool = False) -> GeneratedBenchmark:
    """Generates mini-KILT into ``out_dir`` (or reuses it if its manifest matches).

    Args:
      out_dir: output directory (created).
      scale: size multiplier; pages and records grow linearly (1.0: ~1,800 pages).
      seed: the world and records are a deterministic function of (seed, scale).
      force: regenerate even if a matching manifest exists.
    Returns:
      A ``GeneratedBenchmark`` with the paths and counts.
    """
    scale, seed = float(scale), int(seed)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not force and (done := _from_manifest(out_dir, seed, scale)) is not None:
        return done
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))
    w = _World(seed, scale)
    ks = os.path.join(out_dir, KNOWLEDGE_SOURCE)
    words = passages = 0
    with open(_tmp(ks), "w", encoding="utf-8") as f:
        for i in range(w.n):
            page = w.render(i)
            words += page.words
            passages += max(1, math.ceil(page.words / 100))
            f.write(json.dumps(page.json) + "\n")
    os.replace(_tmp(ks), ks)
    records: Dict[str, Dict[str, int]] = {}
    for task in KILT_TASKS:
        records[task.name] = {}
        for s, base in zip(SPLITS, RECORDS_PER_SCALE[task.name]):
            path = os.path.join(out_dir, task.filename(s))
            records[task.name][s] = _write_task(w, task.name, s, max(1, round(base * scale)), path)
    counts = {"pages": w.n, "words": words, "approx_passages_100w": passages, "records": records}
    names = [KNOWLEDGE_SOURCE] + [t.filename(s) for t in KILT_TASKS for s in SPLITS]
    man = {"generator": "multiret_jax.data.minikilt", "version": GENERATOR_VERSION,
           "source": _source_digest(), "seed": seed,
           "scale": scale, "counts": counts,
           "sizes": {p: os.path.getsize(os.path.join(out_dir, p)) for p in names}}
    with open(_tmp(os.path.join(out_dir, MANIFEST)), "w", encoding="utf-8") as f:
        json.dump(man, f, indent=1)
    os.replace(_tmp(os.path.join(out_dir, MANIFEST)), os.path.join(out_dir, MANIFEST))
    return _benchmark(out_dir, counts, seed, scale)


def main(argv: Optional[Sequence[str]] = None) -> GeneratedBenchmark:
    """CLI: generate mini-KILT and print its counts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out_dir", default="data/minikilt")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = generate(args.out_dir, scale=args.scale, seed=args.seed, force=args.force)
    c = bench.counts
    print(f"mini-KILT seed={bench.seed} scale={bench.scale} in {bench.out_dir} "
          f"({'reused' if bench.reused else 'generated'} in {time.perf_counter() - t0:.1f}s)")
    print(f"pages {c['pages']}  words {c['words']}  ~100-word passages {c['approx_passages_100w']}")
    for task, n in c["records"].items():
        print(f"  {task:<20} train {n['train']:>7}  dev {n['dev']:>6}")
    return bench


if __name__ == "__main__":
    main()
