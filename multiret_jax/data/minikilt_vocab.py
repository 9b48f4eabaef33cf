"""World and page vocabulary of the mini-KILT generator (``multiret_jax.data.minikilt``).

Everything here is fictional and page-side: the words pages use. The query side (questions,
claims, dialogue, descriptors) lives in ``minikilt_records`` and deliberately phrases the
same relations with other words (a page says "X hails from Y", a question asks "where was
X born"), so that lexical matching alone cannot bridge them while the mapping stays
learnable: the same phrasings occur in every split.

Templates are ``str.format`` strings whose fields are either a relation name of the
subject's kind (``{born_in}``: the fact the sentence states) or one of the helper fields the
generator fills in: ``{name}`` (the subject's display name), ``{S}`` (a capitalised subject
reference: the name or a pronoun such as "She" / "The band"), ``{pron}``, ``{Pron}``,
``{poss}``, ``{Poss}``, ``{dem}`` (demonym of the subject's home country), ``{decade}``,
``{year}``, ``{adj}``, ``{noun}``, ``{noun2}``, ``{field}``, ``{num}``, ``{place}`` (a random
city), ``{other}`` (a similar, confusable entity). Keys of per-relation tables are
``"<kind>.<relation>"``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

SYLLABLES: Tuple[str, ...] = (
    "ab", "rel", "ton", "vik", "mar", "sel", "dor", "ka", "lin", "ves", "tor", "ri", "an",
    "mo", "bel", "gar", "thi", "on", "ur", "sa", "len", "dro", "mi", "ker", "pa", "los", "ne",
    "vi", "ra", "sto", "gen", "hal", "bri", "cen", "fa", "du", "ol", "ven", "ash", "mer", "ta",
    "ro", "nis", "el", "wyn", "kor", "ba", "ze", "lu", "fen", "dar", "is", "cor", "ma", "go",
    "ral", "tu", "sor", "vel", "ha", "rik", "ost", "em", "ja", "pe", "cal", "mun", "dri", "bo",
    "ler", "qui", "tan", "hol", "ni", "ger", "wen", "zar", "lo", "kin", "ste", "ly", "var")
SURNAME_ENDS = ("", "", "vik", "sen", "ez", "ova", "ini", "ard", "ton", "berg", "ley", "ski")
CITY_ENDS = ("burg", "holm", "ford", "vale", "port", "ton", "mouth", "grad", "stad", "by", "a")
CITY_PREFIXES = ("Port", "New", "San", "Upper", "East", "Fort")
COUNTRY_ENDS = ("ia", "land", "stan", "ora", "ar", "esh", "ovia", "ica")
DEMONYM_ENDS = ("ian", "ese", "ish", "i", "an")
LANGUAGE_ENDS = ("ic", "ese", "ish", "ian", "ar")
COMPANY_ENDS = ("Industries", "Group", "Holdings", "Systems", "Works", "Company", "Partners")
WORD_ADJ = ("Silver", "Quiet", "Broken", "Golden", "Hollow", "Crimson", "Distant", "Electric",
            "Paper", "Velvet", "Iron", "Northern", "Wild", "Glass", "Burning", "Lonely",
            "Hidden", "Bright", "Last", "Silent")
WORD_NOUN = ("Harbor", "Garden", "Engine", "River", "Tower", "Mirror", "Orchard", "Lantern",
             "Horizon", "Winter", "Signal", "Anchor", "Meadow", "Compass", "Valley", "Echo",
             "Season", "Harvest", "Machine", "Crown")
WORD_PLURAL = ("Foxes", "Wolves", "Sparrows", "Engines", "Ghosts", "Kings", "Rivers",
               "Lanterns", "Pilots", "Saints", "Comets", "Tides")

OCCUPATIONS = ("painter", "novelist", "poet", "politician", "physicist", "chemist",
               "architect", "footballer", "journalist", "sculptor", "historian", "engineer",
               "economist", "diplomat", "photographer", "actor", "mathematician", "lawyer",
               "singer", "guitarist", "drummer", "composer", "bassist",
               "film director", "entrepreneur")
MUSICIAN_OCCUPATIONS = ("singer", "guitarist", "drummer", "composer", "bassist")
MUSIC_GENRES = ("jazz", "folk rock", "synth-pop", "heavy metal", "post-punk", "bluegrass",
                "drum and bass", "shoegaze", "soul", "indie pop", "progressive rock",
                "dream pop", "ska", "hip hop", "chamber pop", "new wave")
FILM_GENRES = ("drama", "comedy", "thriller", "science fiction", "documentary", "western",
               "horror", "romance", "crime", "war", "animated", "musical")
CONTINENTS = ("Averon", "Sundral", "Kethmark", "Oloria", "the Marrow Isles", "Tessaly",
              "Brundtmoor")
SEAS = ("Gray Sea", "Sea of Ostra", "Vellum Bay", "Northern Ocean", "Bay of Karsh",
        "Amber Sea", "Gulf of Tiro", "Salt Sound", "Eastern Ocean", "Sea of Lorn")
INDUSTRIES = ("shipbuilding", "software", "mining", "textiles", "pharmaceuticals",
              "publishing", "aviation", "banking", "brewing", "telecommunications", "music",
              "film production", "railway transport", "agriculture", "retail")
FIELDS = ("law", "medicine", "philosophy", "mathematics", "music", "architecture", "painting",
          "economics", "botany", "astronomy")
ADJ = ("notable", "regional", "modest", "lasting", "early", "significant", "broad", "quiet",
       "influential", "uneven", "gradual", "considerable", "informal", "distinctive", "brief")
NOUN = ("trade", "reform", "archive", "festival", "collection", "survey", "tradition",
        "exhibition", "restoration", "dispute", "census", "network", "workshop", "manuscript",
        "monument", "charter", "expedition", "campaign", "programme", "treaty")
SIZES = ("small", "large", "historic", "coastal", "prosperous", "mountainous", "densely populated")
ORDINALS = ("debut", "second", "third", "fourth", "fifth", "sixth")
# Family ties between people sharing a surname: (female, male) words.
KIN_WORDS = (("daughter", "son"), ("sister", "brother"), ("granddaughter", "grandson"),
             ("niece", "nephew"), ("cousin", "cousin"))

# The relations (fact slots) of each kind, in column order; the first ones are mandatory.
KINDS: Tuple[str, ...] = ("country", "river", "city", "person", "company", "band", "album",
                          "film")
KIND_SHARE: Dict[str, float] = {"country": 0.02, "river": 0.05, "city": 0.13, "person": 0.38,
                                "company": 0.11, "band": 0.08, "album": 0.11, "film": 0.12}
KIND_RELS: Dict[str, Tuple[str, ...]] = {
    "country": ("capital", "language", "continent"),
    "river": ("country", "mouth"),
    "city": ("country", "founded_year", "river"),
    "person": ("occupation", "born_in", "birth_year", "spouse", "member_of", "employer"),
    "company": ("headquarters", "founded_year", "industry", "founded_by"),
    "band": ("origin", "genre", "founded_year", "record_label"),
    "album": ("performer", "release_year", "genre", "record_label"),
    "film": ("director", "release_year", "genre", "country"),
}
# Value type of each relation: an entity kind, "year", or the name of a vocabulary tuple.
REL_TYPE: Dict[str, str] = {
    "country.capital": "city", "country.language": "LANGUAGES", "country.continent": "CONTINENTS",
    "river.country": "country", "river.mouth": "SEAS",
    "city.country": "country", "city.founded_year": "year", "city.river": "river",
    "person.occupation": "OCCUPATIONS", "person.born_in": "city", "person.birth_year": "year",
    "person.spouse": "person", "person.member_of": "band", "person.employer": "company",
    "company.headquarters": "city", "company.founded_year": "year",
    "company.industry": "INDUSTRIES", "company.founded_by": "person",
    "band.origin": "city", "band.genre": "MUSIC_GENRES", "band.founded_year": "year",
    "band.record_label": "company",
    "album.performer": "band", "album.release_year": "year", "album.genre": "MUSIC_GENRES",
    "album.record_label": "company",
    "film.director": "person", "film.release_year": "year", "film.genre": "FILM_GENRES",
    "film.country": "country",
}
# Wikidata-style property labels (T-REx / zsRE inputs are "subject [SEP] label").
REL_LABEL: Dict[str, str] = {
    "country.capital": "capital", "country.language": "official language",
    "country.continent": "continent", "river.country": "country",
    "river.mouth": "mouth of the watercourse", "city.country": "country",
    "city.founded_year": "inception", "city.river": "located in or next to body of water",
    "person.occupation": "occupation", "person.born_in": "place of birth",
    "person.birth_year": "date of birth", "person.spouse": "spouse",
    "person.member_of": "member of", "person.employer": "employer",
    "company.headquarters": "headquarters location", "company.founded_year": "inception",
    "company.industry": "industry", "company.founded_by": "founded by",
    "band.origin": "location of formation", "band.genre": "genre",
    "band.founded_year": "inception", "band.record_label": "record label",
    "album.performer": "performer", "album.release_year": "publication date",
    "album.genre": "genre", "album.record_label": "record label",
    "film.director": "director", "film.release_year": "publication date",
    "film.genre": "genre", "film.country": "country of origin",
}
# zsRE is zero-shot: its dev relations never occur in its train split (as in KILT).
ZSRE_DEV_LABELS = ("spouse", "employer", "mouth of the watercourse", "record label", "industry",
                   "location of formation", "official language", "capital")

SUBJECT_REFS: Dict[str, Tuple[str, ...]] = {
    "country": ("It",), "river": ("It",), "city": ("The city", "It"),
    "company": ("The company", "It"), "band": ("The band",), "album": ("The album",),
    "film": ("The film", "It")}
SECTIONS: Dict[str, Tuple[str, ...]] = {
    "country": ("History", "Politics", "Geography"), "river": ("Course", "History"),
    "city": ("History", "Geography", "Economy"),
    "person": ("Early life", "Career", "Personal life"),
    "company": ("History", "Operations"), "band": ("History", "Musical style"),
    "album": ("Background", "Reception"), "film": ("Plot", "Production", "Reception")}

# Lead sentences: the relation fields they contain become facts stated by the lead.
LEADS: Dict[str, Tuple[str, ...]] = {
    "country": ("{name} is a sovereign state in {continent} whose people are called {dem}.",
                "{name}, officially the Republic of {name}, is a sovereign state in {continent}; "
                "its people are called {dem}.",
                "{name} is a {size} sovereign state whose people are called {dem}."),
    "river": ("The {name} is a {size} stream crossing {country}.",
              "The {name} is a {size} stream."),
    "city": ("{name} is a city in {country}.", "{name} is a {size} city in {country}.",
             "{name} is a city and municipality dating from {founded_year}."),
    "person": ("{name} (b. {birth_year}) is a {dem} {occupation}.",
               "{name} is a {dem} {occupation}.",
               "{name} was a {dem} {occupation} active in the {decade}."),
    "company": ("{name} is a {industry} company that began trading in {founded_year}.",
                "{name} is a company with its head office in {headquarters}.",
                "{name} is a {industry} company."),
    "band": ("{name} are a {genre} band active since {founded_year}.",
             "{name} is a {genre} band out of {origin}.",
             "{name} were a popular ensemble of the {decade}."),
    "album": ("{name} is the {ordinal} studio album by {performer}.",
              "{name} is an album by the band {performer}, issued in {release_year}.",
              "{name} is a {genre} album."),
    "film": ("{name} is a {release_year} {dem} {genre} film by {director}.",
             "{name} is a {genre} film helmed by {director}.", "{name} is a {dem} film."),
}

# Fact sentences (page phrasing: no content word shared with the query phrasing).
SENTS: Dict[str, Tuple[str, ...]] = {
    "country.capital": ("{capital} is the seat of government of {name}.",
                        "{name} is governed from {capital}."),
    "country.language": ("The everyday tongue of {name} is {language}.",
                         "Public affairs in {name} are conducted in {language}."),
    "country.continent": ("{S} lies in {continent}.", "{name} belongs to {continent}."),
    "river.country": ("{S} crosses {country}.",
                      "The {name} runs for most of its length across {country}."),
    "river.mouth": ("{S} discharges into the {mouth}.",
                    "The {name} meets the {mouth} near its delta."),
    "city.country": ("{S} is situated in {country}.", "{name} lies in the north of {country}."),
    "city.founded_year": ("{S} dates from {founded_year}.",
                          "The first houses of {name} were built in {founded_year}."),
    "city.river": ("{S} sits on the banks of the {river}.", "The {river} passes {name}."),
    "person.occupation": ("{S} pursued a career as a {occupation}.",
                          "By trade, {name} was a {occupation}."),
    "person.born_in": ("{S} hails from {born_in}.", "{Poss} hometown is {born_in}.",
                       "A native of {born_in}, {name} showed an early interest in {field}."),
    "person.birth_year": ("{S} entered the world in {birth_year}.",
                          "{name}'s life began in {birth_year}, in a family of {noun} clerks."),
    "person.spouse": ("{S} shared {poss} life with {spouse}.", "{Poss} life partner was {spouse}.",
                      "{S} and {spouse} exchanged vows in {place}."),
    "person.member_of": ("{S} performs with {member_of}.",
                         "{name} joined the lineup of {member_of} early on."),
    "person.employer": ("{S} spent several years on the staff of {employer}.",
                        "{name} held a post at {employer}."),
    "company.headquarters": ("{S} has its head office in {headquarters}.",
                             "The main offices of {name} are in {headquarters}."),
    "company.founded_year": ("{S} began trading in {founded_year}.",
                             "{name} first opened its doors in {founded_year}."),
    "company.industry": ("{S} is active in {industry}.",
                         "{name} earns its income from {industry}."),
    "company.founded_by": ("{S} was set up by {founded_by}.", "{founded_by} launched {name}."),
    "band.origin": ("{S} got together in {origin}.",
                    "{name} started out in {origin} in the {decade}."),
    "band.genre": ("Critics file {name} under {genre}.",
                   "The sound of {name} is rooted in {genre}."),
    "band.founded_year": ("{S} has been active since {founded_year}.",
                          "{name} first rehearsed together in {founded_year}."),
    "band.record_label": ("{S} has a deal with {record_label}.",
                          "{name} issues its songs via {record_label}."),
    "album.performer": ("{S} is credited to {performer}.", "{performer} cut {name} in the studio."),
    "album.release_year": ("{S} reached the shops in {release_year}.",
                           "{name} hit the shelves in {release_year}."),
    "album.genre": ("{S} is rooted in {genre}.", "The sound of {name} draws on {genre}."),
    "album.record_label": ("{S} was issued by {record_label}.",
                           "{name} appeared on {record_label}."),
    "film.director": ("{S} was helmed by {director}.",
                      "{director} was behind the camera for {name}."),
    "film.release_year": ("{S} premiered in {release_year}.",
                          "{name} opened in cinemas in {release_year}."),
    "film.genre": ("{S} is an example of {genre} cinema.", "{name} belongs to {genre} cinema."),
    "film.country": ("{S} was shot in {country}.", "{name} is a production of {country}."),
}

FILLER: Tuple[str, ...] = (
    "{S} has been the subject of a {adj} {noun} published in {year}.",
    "A {adj} {noun} associated with {name} took place in {year}.",
    "Documents from the period describe a {adj} {noun} and a growing {noun2}.",
    "Contemporary accounts are {adj} but broadly consistent.",
    "{S} is sometimes confused with {other}.",
    "Scholars have compared {name} with {other}, noting a {adj} {noun}.",
    "The {noun} of {year} marked a {adj} turning point.",
    "Much of the surviving {noun} material is held in a private collection in {place}.",
    "Later commentators placed {name} within a wider {adj} {noun}.",
    "Little is known about the {adj} {noun} before {year}.",
    "A second {noun} followed in {year}, although it attracted {adj} attention.",
    "{S} appears in several lists compiled after the {noun} of {year}.",
    "The {noun} was revised in {year} and again some years later.",
    "Observers at the time noted the {adj} role of the {noun} in {place}.",
    "A {adj} {noun} in {place} later drew comparisons with {other}.",
)
KIND_FILLER: Dict[str, Tuple[str, ...]] = {
    "person": ("{Pron} later settled in {place} for several years.",
               "{Pron} studied {field} at a {adj} academy.",
               "{Pron} received a {adj} award for {poss} efforts on the {noun} in {year}.",
               "{Pron} retired from public life in {year}."),
    "city": ("The city hosts an annual {noun} festival.",
             "Its old quarter contains a {adj} {noun} hall.",
             "The population grew steadily after {year}."),
    "country": ("The state is divided into {num} provinces.",
                "Its economy has long relied on {field} and trade with {place}."),
    "river": ("The stream is navigable for much of its length.",
              "Several {adj} bridges cross it near {place}."),
    "band": ("The band toured widely in {year}.",
             "Their early songs were described as {adj}.",
             "The band appeared at a {noun} festival in {place}."),
    "album": ("The album was assembled over {num} weeks in {place}.",
              "Critics called the album {adj}."),
    "film": ("The film was shown at a festival in {place}.",
             "Principal photography began in {year}.",
             "Reviewers judged the film {adj} and compared it with {other}."),
    "company": ("The company has a staff of about {num} people.",
                "It opened a second office in {place} in {year}."),
}

# Sentences naming the entities that point at a page, keyed by the pointing relation. Like
# Wikipedia's lists they often use the words a question would use: lexical distractors.
BACKREFS: Dict[str, Tuple[str, ...]] = {
    "person.born_in": ("People born in {name} include {refs}.",
                       "{name} is the place of birth of {refs}."),
    "person.member_of": ("Members of {name} have included {refs}.",),
    "person.employer": ("People who worked for {name} include {refs}.",),
    "company.headquarters": ("Companies headquartered in {name} include {refs}.",),
    "company.founded_by": ("{name} founded {refs}.",),
    "band.origin": ("Bands formed in {name} include {refs}.",),
    "band.record_label": ("Artists signed to {name} include {refs}.",),
    "album.performer": ("Albums recorded by {name} include {refs}.",),
    "album.record_label": ("Albums released by {name} include {refs}.",),
    "film.director": ("{name} directed the films {refs}.",
                      "{name} is the director of the films {refs}."),
    "film.country": ("Films produced in {name} include {refs}.",),
    "city.river": ("Cities on the {name} include {refs}.",),
}
# A person page naming a relative (same surname) several times: {kin} is what the subject
# is to the relative, {kin_name}/{kin_occ} the relative's name and occupation.
KIN_SENTS: Tuple[str, ...] = (
    "{Pron} is the {kin} of the {kin_occ} {kin_name}.",
    "{kin_name} encouraged {poss} early interest in {field}.",
    "Like {kin_name}, {pron} spent several years in {place}.",
    "{Poss} correspondence with {kin_name} is held in a collection in {place}.")
# On the page of a person who shares a name with others (``{others}``: their occupations).
HATNOTES: Tuple[str, ...] = ("{name} is not to be confused with the {others} of the same name.",
                             "Other people called {name} include the {others}.")


def vocab(name: str) -> Tuple[str, ...]:
    """The vocabulary tuple called ``name`` (``"OCCUPATIONS"``, ...)."""
    return globals()[name]


def page_templates() -> List[str]:
    """Every page-side template (the tests check that they format and avoid query words)."""
    out: List[str] = list(FILLER + KIN_SENTS + HATNOTES)
    for table in (BACKREFS, LEADS, SENTS, KIND_FILLER, SUBJECT_REFS):
        for v in table.values():
            out.extend(v)
    return out
