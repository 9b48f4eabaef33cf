"""mini-KILT task records: the builders of the 8 KILT tasks over a ``World``.

``Queries(world).records(task, split, n)`` yields KILT records. Their text uses the
query-side vocabulary (``minikilt_queries``), never a page's phrasing of a relation. An
entity is referred to (``Queries.ref``) by its name; by its name with a paraphrased
descriptor ("the stone carver Abrel Tonvik" for the page "Abrel Tonvik (sculptor)", "the
movie Quiet Harbor"), always when the name is shared; or by a unique description naming
other entities ("the stone carver married to Mira Tonvik"). Lexical matching is misled by
namesakes and by the pages of the entities a description or a dialogue names; a retriever
trained on the train split can learn the conventions, which are the same in every split.
Provenance points at the exact sentence stating the fact (``Queries.prov``).
"""

from __future__ import annotations

import collections
import math
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from multiret_jax.data import minikilt_queries as Q
from multiret_jax.data import minikilt_vocab as V
from multiret_jax.data.minikilt_world import ARTICLE, RANDOM_FIELDS, World, fields

LOW_BLEU_FRACTION = 0.06  # train records whose provenance gets bleu_score < 0.5


def _fix(s: str) -> str:
    return ARTICLE.sub(r"\1n ", s)  # "a indie pop record" -> "an indie pop record"


def _cap(s: str) -> str:
    return _fix(s[:1].upper() + s[1:])


class Queries:
    """Builds the records of every task over a ``World``."""

    def __init__(self, w: World):
        self.w = w
        self.desc_count: Dict[tuple, int] = collections.Counter(
            k for i in range(w.n) for t, rels in Q.DESCRIBE.get(w.kind[i], ())
            if (k := self._desc_key(i, t, rels)) is not None)

    def _desc_key(self, i: int, t: str, rels: Tuple[str, ...]) -> Optional[tuple]:
        values = tuple(self.w.value(i, r) for r in rels)
        return None if None in values else (self.w.kind[i], t, values)

    # ----------------------------------------------------------------- entity references
    def describe(self, i: int, rel: str, rng: random.Random) -> Optional[str]:
        """A description of ``i`` that fits no other entity and does not use ``rel``."""
        opts = [(t, rels) for t, rels in Q.DESCRIBE[self.w.kind[i]] if rel not in rels
                and self.desc_count.get(self._desc_key(i, t, rels)) == 1]
        if not opts:
            return None
        t, rels = rng.choice(opts)
        d = {r: self.w.value(i, r) for r in rels}
        if "occupation" in d:
            d["occupation"] = rng.choice(Q.OCC_DESC[d["occupation"]])
        return t.format(**d)

    def descriptor(self, i: int, rel: str, rng: random.Random) -> Tuple[str, str]:
        """(noun, qualifier) telling ``i`` from its namesakes without the page's words:
        ("stone carver", "") for a sculptor, ("", "from Tarvo") when asking an occupation,
        ("movie", "by Abrel Tonvik") for one of two films of the same name."""
        w, kind = self.w, self.w.kind[i]
        same = [j for j in w.homonyms(i) if j != i and w.kind[j] == kind]
        if kind == "person":
            if rel != "occupation":
                return rng.choice(Q.OCC_DESC[w.value(i, "occupation")]), ""
            if any(w.get(j, "born_in") == w.get(i, "born_in") for j in same):
                return "", f"born in {w.value(i, 'birth_year')}"
            return "", f"from {w.value(i, 'born_in')}"
        noun = rng.choice(Q.KIND_DESC[kind]) if kind in Q.KIND_DESC else ""
        by = {"film": "director", "album": "performer"}.get(kind)
        if same and kind in ("city", "company", "band"):  # "the Velonian town of X"
            if kind != "city" or rel != "country":
                return f"{w.demonym[w.country_of(i)]} {noun}", ""
            river = w.value(i, "river")
            if river and all(w.value(j, "river") != river for j in same):
                return noun, f"on the {river}"
            return noun, f"founded in {w.value(i, 'founded_year')}"
        if same and by:  # "by <director>" if that tells them apart, else the year
            unique = all(w.get(j, by) != w.get(i, by) for j in same)
            return noun, (f"by {w.value(i, by)}" if rel != by and unique else
                          f"from {w.value(i, 'release_year')}")
        return noun, ""

    def ref(self, i: int, rel: str, rng: random.Random, p_desc: float = 0.5,
            p_describe: float = 0.0) -> str:
        """How a query names entity ``i`` when asking for ``rel``."""
        if p_describe and rng.random() < p_describe and (d := self.describe(i, rel, rng)):
            return d
        name, kind = self.w.display(i), self.w.kind[i]
        if len(self.w.homonyms(i)) == 1 and rng.random() >= p_desc:
            return f"the {name}" if kind == "river" else name
        noun, qual = self.descriptor(i, rel, rng)
        head = f"the {noun} of {name}" if kind in ("city", "country") else (
            f"the {noun} {name}" if noun else f"the {name}" if kind == "river" else name)
        return f"{head} {qual}".strip()

    def surface(self, i: int, rel: str, rng: random.Random) -> str:
        """A slot-filling subject: the name, qualified when shared ("X (stone carver)")."""
        name = self.w.display(i)
        words = " ".join(filter(None, self.descriptor(i, rel, rng)))
        return f"{name} ({words})" if len(self.w.homonyms(i)) > 1 and words else name

    # ------------------------------------------------------------------------- records
    def prov(self, i: int, rel: str) -> Dict[str, Any]:
        """KILT provenance for the sentence of page ``i`` that states ``rel``."""
        page = self.w.spans(i)
        pid, s, e = page.facts[rel]
        return {"wikipedia_id": self.w.wid(i), "title": self.w.titles[i], "start_paragraph_id": pid,
                "start_character": s, "end_paragraph_id": pid, "end_character": e,
                "bleu_score": 1.0, "section": page.sections[pid]}

    def claim(self, i: int, rel: str, rng: random.Random) -> str:
        """A page-style, self-contained statement of (i, rel) (a WoW wizard's answer)."""
        opts = [t for t in V.SENTS[f"{self.w.kind[i]}.{rel}"] if fields(t) & {"name", "S"}
                and not fields(t) & (RANDOM_FIELDS - {"S"})]
        return self.w.fill(rng.choice(opts), self.w.facts_values(i), rng, i, by_name=True)

    def pick(self, i: int, split: str, rng: random.Random, allowed: Callable[[str], bool],
             by_hash: bool = True) -> Optional[str]:
        """A random relation of entity ``i`` that ``allowed`` and belongs to ``split``."""
        kind = self.w.kind[i]
        rels = [r for r in self.w.rels(i) if allowed(f"{kind}.{r}")
                and (not by_hash or self.w.is_dev(i, r) == (split == "dev"))]
        return rng.choice(rels) if rels else None

    def swap(self, i: int, rel: str, rng: random.Random) -> str:
        """A wrong value for (i, rel), of the same type (for REFUTES claims)."""
        w = self.w
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

    def _id(self, *parts: Any) -> str:
        x = f"{self.w.hash(self.w.seed, *parts):032x}"
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"

    def qa(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        w, tqa = self.w, task == "triviaqa"
        rel = self.pick(i, split, rng, (Q.TQA if tqa else Q.NQ).__contains__)
        if rel is None:
            return None
        key, ans = f"{w.kind[i]}.{rel}", w.value(i, rel)
        r = self.ref(i, rel, rng, p_describe=0.6 if tqa else 0.4)
        q = rng.choice((Q.TQA if tqa else Q.NQ)[key]).format(R=r)
        out: List[dict] = [{"answer": ans, "provenance": [self.prov(i, rel)]}]
        if tqa:
            q, d = _cap(q), split == "dev"
            rid = f"{Q.TQA_ID_PREFIXES[k % len(Q.TQA_ID_PREFIXES)]}_{2 * k + d + 1}"
            out += [{"answer": a} for a in dict.fromkeys((ans.lower(), ans.upper())) if a != ans]
        else:
            q, rid = _cap(q).lower(), str(w.hash(w.seed, task, split, k) % (1 << 63) - (1 << 62))
            if rng.random() < 0.3:  # an NQ long answer: the whole paragraph, no short answer
                p = dict(self.prov(i, rel), start_character=0,
                         bleu_score=round(rng.uniform(.55, .95), 4))
                p["end_character"] = w.spans(i).lengths[p["end_paragraph_id"]]
                out.append({"provenance": [p]})
        return {"id": rid, "input": q, "output": out, "meta": {"relation": V.REL_LABEL[key]}}

    def slot(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        w, zsre = self.w, task == "structured_zeroshot"
        dev_rel = lambda key: (V.REL_LABEL[key] in V.ZSRE_DEV_LABELS) == (split == "dev")
        rel = self.pick(i, split, rng, dev_rel if zsre else V.REL_LABEL.__contains__, not zsre)
        if rel is None:
            return None
        key, ans, subj = f"{w.kind[i]}.{rel}", w.value(i, rel), self.surface(i, rel, rng)
        rec = {"id": self._id(task, split, k), "input": f"{subj} [SEP] {V.REL_LABEL[key]}",
               "output": [{"answer": ans, "provenance": [self.prov(i, rel)]}]}
        if zsre:
            r = self.ref(i, rel, rng, p_desc=0.0)
            rec["meta"] = {"template_questions": [_cap(q.format(R=r)) + "?" for q in Q.NQ[key]
                                                  if q.split()[0] in ("what", "where", "when",
                                                                      "who", "which")]}
        else:
            rec["meta"] = {"subj_aliases": [], "sub_surface": [subj], "obj_surface": [ans]}
        return rec

    def fever(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        rel = self.pick(i, split, rng, lambda key: True)
        if rel is None:
            return None
        w, label = self.w, "SUPPORTS" if rng.random() < 0.55 else "REFUTES"
        v = w.value(i, rel) if label == "SUPPORTS" else self.swap(i, rel, rng)
        r = self.ref(i, rel, rng, p_describe=0.35)
        claim = _cap(rng.choice(Q.CLAIMS[f"{w.kind[i]}.{rel}"]).format(R=r, v=v))
        return {"id": str(100000 + 2 * k + (split == "dev")), "input": claim,
                "output": [{"answer": label, "provenance": [self.prov(i, rel)]}],
                "meta": {"relation": V.REL_LABEL[f"{w.kind[i]}.{rel}"]}}

    def hotpot(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        w, dev = self.w, split == "dev"
        hops = [(r1.split(".")[1], r2.split(".")[1], ts) for r1, r2, ts in Q.HOPS
                if r1.startswith(w.kind[i] + ".")]
        hops = [(r1, r2, ts) for r1, r2, ts in hops if w.get(i, r1) >= 0
                and w.is_dev(i, r1) == dev and w.get(w.get(i, r1), r2) >= 0]
        if not hops:
            return None
        r1, r2, ts = rng.choice(hops)
        j = w.get(i, r1)
        return {"id": f"{w.hash(w.seed, task, split, k):032x}"[:24],
                "input": _cap(rng.choice(ts).format(R=self.ref(i, r1, rng))),
                "output": [{"answer": w.value(j, r2),
                            "provenance": [self.prov(i, r1), self.prov(j, r2)]}],
                "meta": {"type": "bridge", "bridge_entity": w.titles[j]}}

    def aida(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        w = self.w
        if w.is_dev(i, "el") != (split == "dev"):
            return None
        kind, name = w.kind[i], w.display(i)
        if kind == "person":
            first, last = name.split(" ", 1)
            m = rng.choice((name, name, name, last, f"{first[0]}. {last}"))
        elif kind == "country":
            m = rng.choice((name, w.demonym[i]))
        elif kind == "company":
            m = rng.choice((name, name.split()[0]))
        else:
            m = name
        hint = {"person": "occupation", "city": "country", "country": "continent",
                "river": "country", "band": "genre", "album": "performer", "film": "director",
                "company": "industry"}[kind]
        d = dict(hint=w.value(i, hint), day=rng.choice(Q.DAYS), noun=rng.choice(V.NOUN).lower(),
                 adj=rng.choice(V.ADJ), num=str(rng.randint(2, 40)), m="\x00",
                 place=w.display(rng.choice(w.range["city"])))
        left_s, right_s = rng.choice(Q.NEWS[kind]).format(**d).split("\x00")
        others = [t.format(**d, x=w.display(rng.choice(w.range[rng.choice(("person", "company"))])))
                  for t in rng.sample(Q.NEWS_FILLER, rng.randint(2, 4))]
        cut = rng.randint(0, len(others))
        head = f"{rng.choice(Q.HEADLINE_WORDS)} - {rng.choice(Q.HEADLINE_WORDS)} ."
        dateline = w.display(rng.choice(w.range["city"])).upper()
        if rng.random() < 0.3:
            head = f"{head.split()[0]} - {dateline} {rng.choice(Q.HEADLINE_WORDS)} ."
        date = f"{dateline} 1996-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        left = "  ".join([head, date] + others[:cut] + [left_s.strip()]).strip()
        right = "  ".join([right_s.strip()] + others[cut:]).strip()
        return {"id": f"{self._id(task, split, k)}_{k}{'testa' if split == 'dev' else ''} "
                      f"{head.split()[0]}:0",
                "input": f"{left} [START_ENT] {m} [END_ENT] {right}",
                "output": [{"answer": w.titles[i],
                            "provenance": [{"wikipedia_id": w.wid(i), "title": w.titles[i]}]}],
                "meta": {"left_context": left, "mention": m, "right_context": right}}

    def wow(self, i: int, split: str, rng: random.Random, k: int, task: str) -> Optional[dict]:
        rel = self.pick(i, split, rng, lambda key: True)
        if rel is None:
            return None
        w, kind = self.w, self.w.kind[i]
        base, n = w.facts_values(i), rng.randint(3, 7)
        subj = Q.WOW_SUBJECT.get(kind, base["pron"])
        others = [r for r in w.rels(i) if r != rel and w.value(i, r) != w.display(i)]
        rng.shuffle(others)
        near = [w.get(i, r) for r in others if V.REL_TYPE[f"{kind}.{r}"] in w.range]
        # other kinds and names: pronouns stay clear and the topic is named once
        near = [j for j in near if w.kind[j] != kind and j not in w.homonyms(i)]
        other_kind = "band" if kind == "film" else "film"
        lines = []
        for t in range(n):
            wizard = (n - 1 - t) % 2
            if t == 0:  # the only turn that names the topic
                r = self.ref(i, rel, rng)
                opener = Q.WOW_WIZARD_OPENERS if wizard else Q.WOW_OPENERS
                lines.append(_cap(rng.choice(opener).format(R=r)))
            elif wizard and near and rng.random() < 0.5:  # drifts to a related entity
                j = near.pop()
                o = rng.choice([o for o in w.rels(j) if w.value(j, o) != w.display(i)])
                fact = rng.choice(Q.CLAIMS[f"{w.kind[j]}.{o}"]).format(R=self.ref(j, o, rng),
                                                                     v=w.value(j, o))
                lines.append(rng.choice(Q.WOW_WIZARD).format(fact=_fix(fact), Fact=_cap(fact)))
            elif wizard and others:  # the knowledgeable partner ("wizard") states a fact
                o = others.pop()
                fact = rng.choice([c for c in Q.CLAIMS[f"{kind}.{o}"] if c.startswith("{R}")]
                                  ).format(R=subj, v=w.value(i, o))
                lines.append(rng.choice(Q.WOW_WIZARD).format(fact=_fix(fact), Fact=_cap(fact)))
            elif wizard:
                lines.append(rng.choice(Q.WOW_WIZARD_CHAT))
            elif t == n - 1:
                q = Q.WOW_Q[f"{kind}.{rel}"].format(s=subj)
                lines.append(rng.choice(Q.WOW_ASK).format(q=q))
            else:
                other = w.display(rng.choice(w.range[other_kind]))
                while other == w.display(i):
                    other = w.display(rng.choice(w.range[other_kind]))
                lines.append(rng.choice(Q.WOW_CHAT).format(other=other))
        answer = self.claim(i, rel, rng) + rng.choice(Q.WOW_TAILS)
        return {"id": f"{self._id(task, split, k)}_{n // 2}", "input": "\n".join(lines),
                "output": [{"answer": answer, "provenance": [self.prov(i, rel)]}],
                "meta": {"topic": w.titles[i]}}

    def records(self, task: str, split: str, n: int) -> Iterator[dict]:
        """Up to ``n`` records of ``task``/``split``, visiting entities in a seeded
        permutation (each entity at most once per file)."""
        w = self.w
        build = {"fever": self.fever, "aidayago2": self.aida, "trex": self.slot,
                 "structured_zeroshot": self.slot, "nq": self.qa, "hotpotqa": self.hotpot,
                 "triviaqa": self.qa, "wow": self.wow}[task]
        rng = random.Random(w.hash(w.seed, "records", task, split))
        a = next(x for x in iter(lambda: rng.randrange(1, max(2, w.n)), None)
                 if math.gcd(x, w.n) == 1)
        b, written = rng.randrange(w.n), 0
        for t in range(w.n):
            if written >= n:
                break
            rec = build((a * t + b) % w.n, split, rng, written, task)
            if rec is None:
                continue
            if split == "train" and task != "aidayago2" and rng.random() < LOW_BLEU_FRACTION:
                rec["output"][0]["provenance"][0]["bleu_score"] = round(rng.uniform(.1, .49), 4)
            written += 1
            yield rec
