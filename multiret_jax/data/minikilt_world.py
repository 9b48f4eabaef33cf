"""The mini-KILT world: the entity table and the page renderer (``minikilt_vocab`` words).

``World(seed, scale)`` draws entities of 8 kinds (countries, rivers, cities, people,
companies, bands, albums, films) with syllable names and relations (born in, spouse,
director, ...), hard for lexical retrieval yet learnable: many namesakes ("Abrel Tonvik
(sculptor)" / "(footballer)"; an album, a film and a band of the same name; "Tarvo
(Velonia)"), relatives, founders' companies and self-titled albums whose pages repeat a
name, and back-reference lists ("People born in X include ...") that use a question's words.
Pages are pure functions of (seed, entity) (``render``); only where a page states its facts
is kept (``spans``, for provenance): memory is O(pages).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
import string
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from multiret_jax.data import minikilt_vocab as V

PAGES_PER_SCALE = 1800
DEV_MOD = 6  # a fact (entity, relation) is a dev fact when its hash is 0 mod DEV_MOD
NAMESAKE_P, KIN_P = 0.65, 0.2  # a person shares an earlier one's full name / surname
WORK_NAMESAKE_P = 0.4  # an album or film reuses an earlier work's name
PLACE_NAMESAKE_P = 0.25  # a city, company or band takes an earlier one's name (other country)
ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")  # "a engineer" -> "an engineer"
_NUMBERS = {"year": (1900, 2015), "num": (3, 90)}
_WORDS = {"adj": V.ADJ, "noun": V.NOUN, "noun2": V.NOUN, "field": V.FIELDS, "size": V.SIZES,
          "ordinal": V.ORDINALS}
RANDOM_FIELDS = frozenset(_NUMBERS) | frozenset(_WORDS) | {"place", "other", "S"}


def stable_hash(*parts: Any) -> int:
    """A stable 128-bit hash of ``parts`` (Python's ``hash`` is salted per process)."""
    key = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


@functools.lru_cache(maxsize=None)
def fields(template: str) -> frozenset:
    """The ``{field}`` names of a template."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


class Page(NamedTuple):
    json: Dict[str, Any]  # the knowledge-source line
    words: int


class Spans(NamedTuple):
    """What provenance needs of a page: fact spans, sections, lengths of text elements."""

    facts: Dict[str, Tuple[int, int, int]]  # relation -> (paragraph id, start, end)
    sections: List[str]  # section of each text element
    lengths: List[int]


class World:
    """The entity table (kinds, titles, relation values) and the page renderer."""

    hash = staticmethod(stable_hash)

    def __init__(self, seed: int, scale: float):
        """Draws the entity table, kind after kind (later kinds refer to earlier ones),
        from one seeded random stream: the order of the stages below is the data."""
        self.seed = seed
        self._rng = random.Random(stable_hash(seed, "world"))  # the table's draws only
        self._allocate(scale)
        rivers_of = self._add_countries_and_rivers()
        self._add_cities(rivers_of)
        by_occ, people = self._add_people()
        labels = self._add_companies(by_occ, people)
        self._add_bands(by_occ, labels)
        self._add_works(by_occ, people, labels)
        self.by_name: Dict[str, List[int]] = {}  # display name -> entities (namesakes)
        for i in range(self.n):
            self.by_name.setdefault(self.display(i), []).append(i)
        self._add_back_references()

    # ------------------------------------------------------------------ drawing the table
    def _allocate(self, scale: float) -> None:
        """Entity counts per kind, the empty tables, and the language names."""
        total = max(80, round(PAGES_PER_SCALE * scale))
        self._sizes = {k: max(3, round(total * V.KIND_SHARE[k])) for k in V.KINDS}
        self.n = sum(self._sizes.values())
        self.kind: List[str] = []
        self.titles: List[str] = []
        self.range: Dict[str, range] = {}
        self.attr = np.full((self.n, 6), -1, dtype=np.int32)
        self.similar = np.full(self.n, -1, dtype=np.int32)  # a confusable entity
        self.kin = np.full(self.n, -1, dtype=np.int32)  # a relative (same surname)
        self.female = np.zeros(self.n, dtype=bool)
        self.demonym: Dict[int, str] = {}
        self._taken: set = set()  # titles given so far
        self.pools = {"LANGUAGES": tuple(sorted({self._word(1, 2).capitalize() + self._rng.choice(
            V.LANGUAGE_ENDS) for _ in range(max(6, self._sizes["country"] // 2))}))}
        self._spans: Dict[int, Spans] = {}

    def _word(self, lo: int, hi: int) -> str:
        """A made-up word of ``lo`` to ``hi`` syllables."""
        return "".join(self._rng.choice(V.SYLLABLES) for _ in range(self._rng.randint(lo, hi)))

    def _add(self, kind: str, base: str, disamb: Sequence[str], similar: int = -1) -> int:
        """A new entity titled ``base``, or ``"base (d)"`` with the first free ``d`` of
        ``disamb`` (then ``"<kind> 2"``, ...); returns its index."""
        title = base
        for d in itertools.chain(disamb, (f"{kind} {k}" for k in itertools.count(2))):
            if title not in self._taken:
                break
            title = f"{base} ({d})"
        self._taken.add(title)
        self.kind.append(kind)
        self.titles.append(title)
        self.similar[len(self.titles) - 1] = similar
        return len(self.titles) - 1

    def _pick(self, kind: str, skew: bool = False) -> int:
        """A random entity of ``kind`` (``skew``: earlier ones more often)."""
        r = self.range[kind]
        return r[int(len(r) * self._rng.random() ** 2)] if skew else self._rng.choice(r)

    def _begin(self, kind: str) -> None:
        self.range[kind] = range(len(self.titles), len(self.titles) + self._sizes[kind])

    def _namesake(self, kind: str, city: int) -> Optional[int]:
        """Maybe a namesake of an earlier ``kind`` entity from another country."""
        rng, taken = self._rng, self._taken
        if len(self.titles) - self.range[kind].start < 10 or rng.random() >= PLACE_NAMESAKE_P:
            return None
        j = rng.randrange(self.range[kind].start, len(self.titles))
        c = self.get(city, "country")
        if self.similar[j] >= 0 or self.country_of(j) == c or \
                f"{self.display(j)} ({self.titles[c]})" in taken:
            return None
        return self._add(kind, self.display(j), (self.titles[c],), j)

    def _unique_base(self, make: Callable[[], str]) -> str:
        """A name from ``make`` that is no title yet (the last one after 20 tries)."""
        for _ in range(20):
            base = make()
            if base not in self._taken:
                return base
        return base

    def _add_countries_and_rivers(self) -> Dict[int, List[int]]:
        """Countries (demonym, language, continent), then rivers; returns country -> rivers."""
        rng, word = self._rng, self._word
        self._begin("country")
        for _ in self.range["country"]:
            stem = word(1, 2).capitalize()
            i = self._add("country", self._unique_base(
                lambda: stem + rng.choice(V.COUNTRY_ENDS)), ())
            self.demonym[i] = stem + rng.choice(V.DEMONYM_ENDS)
            self.set(i, "language", rng.randrange(len(self.pools["LANGUAGES"])))
            self.set(i, "continent", rng.randrange(len(V.CONTINENTS)))
        self._begin("river")
        rivers_of: Dict[int, List[int]] = {}
        for _ in self.range["river"]:
            i = self._add("river", self._unique_base(
                lambda: word(2, 2).capitalize() + " River"), ())
            c = self._pick("country")
            rivers_of.setdefault(c, []).append(i)
            self.set(i, "country", c)
            self.set(i, "mouth", rng.randrange(len(V.SEAS)))
        return rivers_of

    def _add_cities(self, rivers_of: Dict[int, List[int]]) -> None:
        """Cities (one per country first: its capital), some named after an earlier one."""
        rng, taken = self._rng, self._taken
        self._begin("city")
        plain: List[int] = []
        for k, _ in enumerate(self.range["city"]):
            c = self.range["country"][k] if k < self._sizes["country"] else self._pick(
                "country", True)
            u, j = rng.random(), rng.choice(plain) if plain else -1
            near = f"{rng.choice(V.CITY_PREFIXES)} {self.display(j)}" if plain else ""
            if k > 10 and u < 0.15 and near not in taken:  # "Port Tarvo" next to "Tarvo"
                i = self._add("city", near, (), j)
            elif k > 10 and u < 0.15 + PLACE_NAMESAKE_P and self.get(j, "country") != c \
                    and f"{self.display(j)} ({self.titles[c]})" not in taken:
                i = self._add("city", self.display(j), (self.titles[c],), j)  # "Tarvo (Velonia)"
            else:
                i = self._add("city", self._unique_base(lambda: self._word(1, 2).capitalize()
                                                        + rng.choice(V.CITY_ENDS)), ())
                plain.append(i)
            self.set(i, "country", c)
            self.set(i, "founded_year", rng.randint(900, 1900))
            if rivers_of.get(c) and rng.random() < 0.6:
                self.set(i, "river", rng.choice(rivers_of[c]))
        for i in self.range["country"]:  # the first city of each country is its capital
            self.set(i, "capital", self.range["city"][i - self.range["country"][0]])

    def _add_people(self) -> Tuple[Dict[str, List[int]], List[int]]:
        """People (namesakes with other occupations, relatives), then spouses; returns
        (occupation -> people, all people in a shuffled order)."""
        rng = self._rng
        self._begin("person")
        firsts = [self._word(2, 2).capitalize()
                  for _ in range(max(40, self._sizes["person"] // 10))]
        occ_w = [3 if o in V.MUSICIAN_OCCUPATIONS else 6 if o in ("film director",
                 "entrepreneur") else 2 for o in V.OCCUPATIONS]
        by_occ: Dict[str, List[int]] = {}
        namesakes: Dict[str, List[int]] = {}
        for k, _ in enumerate(self.range["person"]):
            occ = rng.choices(range(len(V.OCCUPATIONS)), weights=occ_w)[0]
            sim, kin, surname = -1, -1, (self._word(1, 2) + rng.choice(V.SURNAME_ENDS)).capitalize()
            base, u = None, rng.random()
            if k > 10 and u < NAMESAKE_P + KIN_P:
                j = rng.randrange(self.range["person"].start, len(self.titles))
                group = namesakes[self.display(j)]
                if u < NAMESAKE_P and len(group) < 5:  # a namesake, with another occupation
                    used = {self.get(p, "occupation") for p in group}
                    base, sim = self.display(j), j
                    occ = rng.choice([o for o in range(len(V.OCCUPATIONS)) if o not in used])
                else:  # a relative
                    kin, surname = j, self.display(j).split(" ", 1)[1]
            base = base or self._unique_base(lambda: f"{rng.choice(firsts)} {surname}")
            i = self._add("person", base, (V.OCCUPATIONS[occ],), sim)
            namesakes.setdefault(base, []).append(i)
            self.kin[i] = kin
            self.female[i] = rng.random() < 0.45
            by_occ.setdefault(V.OCCUPATIONS[occ], []).append(i)
            self.set(i, "occupation", occ)
            self.set(i, "born_in", self._pick("city", True))
            self.set(i, "birth_year", rng.randint(1850, 2000))
        people = list(self.range["person"])
        rng.shuffle(people)
        for a, b in zip(people[0:len(people) // 6 * 2:2], people[1:len(people) // 6 * 2:2]):
            self.set(a, "spouse", b)
            self.set(b, "spouse", a)
        return by_occ, people

    def _add_companies(self, by_occ: Dict[str, List[int]], people: List[int]) -> List[int]:
        """Companies (some named after their founder, some record labels), then a quarter
        of the people's employers; returns the record labels (every company if none)."""
        rng = self._rng
        self._begin("company")
        labels = []
        for _ in self.range["company"]:
            music = rng.random() < 0.15
            founder = rng.choice(by_occ.get("entrepreneur") or people) if rng.random() < 0.6 else -1
            stems = iter(lambda: self._word(2, 3).capitalize(), None)
            if founder >= 0 and rng.random() < 0.5:  # "Tonvik Holdings", set up by Abrel Tonvik
                stems = itertools.chain([self.display(founder).split(" ", 1)[1]] * 3, stems)
            ends = ("Records",) if music else V.COMPANY_ENDS
            hq = self._pick("city", True)
            i = self._namesake("company", hq) or self._add("company", self._unique_base(
                lambda: f"{next(stems)} {rng.choice(ends)}"), ())
            if music:
                labels.append(i)
            self.set(i, "headquarters", hq)
            self.set(i, "founded_year", rng.randint(1800, 2015))
            self.set(i, "industry", V.INDUSTRIES.index("music") if music else
                     rng.randrange(len(V.INDUSTRIES)))
            self.set(i, "founded_by", founder)
        labels = labels or list(self.range["company"])
        for p in people[: len(people) // 4]:
            self.set(p, "employer", self._pick("company"))
        return labels

    def _add_bands(self, by_occ: Dict[str, List[int]], labels: List[int]) -> None:
        """Bands, with musicians as members and record labels."""
        rng, word = self._rng, self._word
        self._begin("band")
        musicians = [p for o in V.MUSICIAN_OCCUPATIONS for p in by_occ.get(o, [])]
        rng.shuffle(musicians)
        for _ in self.range["band"]:
            adj, noun = rng.choice(V.WORD_ADJ), rng.choice(V.WORD_PLURAL)
            origin = self._pick("city", True)
            i = self._namesake("band", origin) or self._add("band", self._unique_base(
                lambda: rng.choice((f"The {adj} {noun}", f"{adj} {noun}",
                                    word(2, 3).capitalize()))), ("band",))
            self.set(i, "origin", origin)
            self.set(i, "genre", rng.randrange(len(V.MUSIC_GENRES)))
            self.set(i, "founded_year", rng.randint(1955, 2015))
            if rng.random() < 0.7:
                self.set(i, "record_label", rng.choice(labels))
            for _ in range(rng.randint(0, 4)):
                if musicians:
                    self.set(musicians.pop(), "member_of", i)

    def _add_works(self, by_occ: Dict[str, List[int]], people: List[int],
                   labels: List[int]) -> None:
        """Albums, then films: self-titled albums, names shared by up to 3 works (of a
        kind, in different years)."""
        rng = self._rng
        phrases: Dict[str, int] = {}  # work name -> times used (at most 3)
        works: set = set()  # (kind, name, year): namesake works of a kind differ in year
        for kind in ("album", "film"):
            self._begin(kind)
            for _ in self.range[kind]:
                band, reuse = self._pick("band"), [p for p, c in phrases.items() if c < 3]
                if kind == "album" and rng.random() < 0.15:  # self-titled
                    base = self.display(band)
                elif reuse and rng.random() < WORK_NAMESAKE_P:  # shares another work's name
                    base = rng.choice(reuse)
                else:
                    noun = rng.choice(V.WORD_NOUN)
                    base = rng.choice((f"{rng.choice(V.WORD_ADJ)} {noun}",
                                       f"The {noun} of {self._word(2, 2).capitalize()}",
                                       self._word(2, 3).capitalize()))
                    phrases.setdefault(base, 0)
                if base in phrases:
                    phrases[base] += 1
                year = rng.randint(1920 if kind == "film" else 1960, 2020)
                while (kind, base, year) in works:
                    year += 1
                works.add((kind, base, year))
                i = self._add(kind, base, (kind, f"{year} {kind}"))
                self.set(i, "release_year", year)
                if kind == "album":
                    self._set_album_facts(i, band, labels)
                else:
                    self.set(i, "director", rng.choice(by_occ.get("film director") or people))
                    self.set(i, "genre", rng.randrange(len(V.FILM_GENRES)))
                    self.set(i, "country", self._pick("country", True))

    def _set_album_facts(self, i: int, band: int, labels: List[int]) -> None:
        """Album ``i``'s performer ``band``, genre (mostly the band's) and maybe a label."""
        rng = self._rng
        self.set(i, "performer", band)
        self.set(i, "genre", self.attr[band, 1] if rng.random() < 0.8
                 else rng.randrange(len(V.MUSIC_GENRES)))
        if rng.random() < 0.6:
            self.set(i, "record_label", rng.choice(labels))

    def _add_back_references(self) -> None:
        """A page names up to 3 entities that point at it ("Notable people from X include
        ..."), a reservoir sample: distractors for retrieval, as in Wikipedia."""
        self.back = np.full((self.n, 3), -1, dtype=np.int32)
        seen = np.zeros(self.n, dtype=np.int64)
        for i in range(self.n):
            for r in self.rels(i):
                if f"{self.kind[i]}.{r}" in V.BACKREFS:
                    o = self.get(i, r)
                    slot = seen[o] if seen[o] < 3 else self._rng.randrange(seen[o] + 1)
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

    def homonyms(self, i: int) -> List[int]:
        """The entities whose display name is that of ``i`` (``i`` included)."""
        return self.by_name[self.display(i)]

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
        return stable_hash(self.seed, "split", i, rel) % DEV_MOD == 0

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
        name, a person's surname or a pronoun / "The band"; always the name if ``by_name``)."""
        d, wanted = dict(base, S=base["name"]), fields(template)
        u = rng.random() if "S" in wanted and not by_name else 0.0
        if u >= 0.5 or (u >= 0.25 and self.kind[i] != "person"):
            d["S"] = rng.choice(V.SUBJECT_REFS.get(self.kind[i], (base["Pron"],)))
        elif u >= 0.25:  # Wikipedia style: the surname after the first mention
            d["S"] = base["name"].split(" ", 1)[1]
        for f in sorted(wanted & RANDOM_FIELDS - {"S"}):
            if f == "other":
                other = int(self.similar[i])
                if other < 0 or rng.random() < 0.3 or self.display(other) == base["name"]:
                    other = rng.choice(self.range[self.kind[i]])
                d[f] = self.display(other)
            elif f == "place":
                d[f] = self.display(rng.choice(self.range["city"]))
            else:
                d[f] = str(rng.randint(*_NUMBERS[f])) if f in _NUMBERS else rng.choice(_WORDS[f])
        return ARTICLE.sub(r"\1n ", template.format(**d))

    # -------------------------------------------------------------------------- pages
    def spans(self, i: int) -> Spans:
        """Where page ``i`` states its facts (kept from its rendering: O(pages) memory)."""
        if i not in self._spans:
            self.render(i)
        return self._spans[i]

    def _extras(self, i: int, base: Dict[str, str],
                rng: random.Random) -> Tuple[List[str], List[str]]:
        """Non-fact sentences naming confusable entities: (for the lead paragraph: the
        relative the subject is named after, several times; for the body: namesakes and
        back-references)."""
        lead, out, refs = [], [], {}
        for j in sorted(int(j) for j in self.back[i] if j >= 0):
            key = next(k for k in (f"{self.kind[j]}.{r}" for r in self.rels(j))
                       if k in V.BACKREFS and self.get(j, k.split(".")[1]) == i)
            refs.setdefault(key, []).append(self.display(j))
        for key, names in refs.items():
            names = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
            out.append(self.fill(rng.choice(V.BACKREFS[key]), dict(base, refs=names), rng, i))
        if self.kin[i] >= 0:
            j = int(self.kin[i])
            kin = V.KIN_WORDS[stable_hash(self.seed, "kin", i) % len(V.KIN_WORDS)]
            d = dict(base, kin=kin[not self.female[i]], kin_name=self.display(j),
                     kin_occ=self.value(j, "occupation"))
            lead += [self.fill(t, d, rng, i) for t in V.KIN_SENTS[:1] + tuple(
                rng.sample(V.KIN_SENTS[1:], 2))]
        others = [self.value(j, "occupation") for j in self.homonyms(i)
                  if j != i and self.kind[j] == "person" == self.kind[i]]
        if others:
            others = ", ".join(others[:-1]) + " and " + others[-1] if len(others) > 1 else others[0]
            out.append(self.fill(rng.choice(V.HATNOTES), dict(base, others=others), rng, i))
        return lead, out

    def render(self, i: int) -> Page:
        rng = random.Random(stable_hash(self.seed, "page", i))
        kind, base, rels = self.kind[i], self.facts_values(i), self.rels(i)
        lead = rng.choice([t for t in V.LEADS[kind] if fields(t) - RANDOM_FIELDS <= set(base)])
        sents = [(self.fill(lead, base, rng, i), [r for r in rels if r in fields(lead)])]
        body = [(self.fill(rng.choice(V.SENTS[f"{kind}.{r}"]), base, rng, i), [r])
                for r in rels if r not in sents[0][1]]
        rng.shuffle(body)
        target = min(385, int(60 + rng.expovariate(1 / (90 if kind in ("person", "city",
                                                                         "country") else 60))))
        lead_extra, extra = self._extras(i, base, rng)
        sents += [(s, []) for s in lead_extra]
        for s in extra:
            body.insert(rng.randint(0, len(body)), (s, []))
        words = sum(len(s.split()) for s, _ in sents + body)
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
        self._spans[i] = Spans(facts, sections, [len(t) for t in text])
        return Page(page, words)
