"""Vocabulary and templates of the mini-KILT generator (``multiret_jax.data.minikilt``).

Everything here is fictional. Templates are ``str.format`` strings whose fields are either a
relation name of the subject's kind (``{born_in}``: the fact the sentence states) or one of
the helper fields the generator fills in: ``{name}`` (the subject's display name), ``{S}`` (a
capitalised subject reference: the name or a pronoun such as "She" / "The band"), ``{pron}``,
``{Pron}``, ``{poss}``, ``{Poss}``, ``{dem}`` (demonym of the subject's home country),
``{decade}``, ``{year}``, ``{adj}``, ``{noun}``, ``{noun2}``, ``{field}``, ``{num}``,
``{place}`` (a random city), ``{other}`` (a similar, confusable entity).

Keys of the per-relation tables are ``"<kind>.<relation>"``.
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
    "country": ("The country", "It"), "river": ("The river", "It"), "city": ("The city", "It"),
    "company": ("The company", "It"), "band": ("The band", "The group"),
    "album": ("The album", "The record"), "film": ("The film", "It")}
SECTIONS: Dict[str, Tuple[str, ...]] = {
    "country": ("History", "Politics", "Geography"), "river": ("Course", "History"),
    "city": ("History", "Geography", "Economy"),
    "person": ("Early life", "Career", "Personal life"),
    "company": ("History", "Operations"), "band": ("History", "Musical style"),
    "album": ("Background", "Reception"), "film": ("Plot", "Production", "Reception")}

# Lead sentences: the relation fields they contain become facts stated by the lead.
LEADS: Dict[str, Tuple[str, ...]] = {
    "country": ("{name} is a sovereign state in {continent}.",
                "{name}, officially the Republic of {name}, is a country in {continent}.",
                "{name} is a {size} country."),
    "river": ("The {name} is a river in {country}.", "The {name} is a {size} river."),
    "city": ("{name} is a city in {country}.", "{name} is a {size} town in {country}.",
             "{name} is a city and municipality founded in {founded_year}."),
    "person": ("{name} (born {birth_year}) is a {dem} {occupation}.",
               "{name} is a {dem} {occupation}.",
               "{name} was a {dem} {occupation} active in the {decade}."),
    "company": ("{name} is a {dem} {industry} company founded in {founded_year}.",
                "{name} is a company headquartered in {headquarters}.",
                "{name} is a {industry} company."),
    "band": ("{name} are a {dem} {genre} band formed in {founded_year}.",
             "{name} is a {genre} band from {origin}.", "{name} were a {dem} musical group."),
    "album": ("{name} is the {ordinal} studio album by {performer}.",
              "{name} is an album by the band {performer}, released in {release_year}.",
              "{name} is a {genre} album."),
    "film": ("{name} is a {release_year} {dem} {genre} film directed by {director}.",
             "{name} is a {genre} film directed by {director}.", "{name} is a {dem} film."),
}

SENTS: Dict[str, Tuple[str, ...]] = {
    "country.capital": ("The capital of {name} is {capital}.",
                        "{capital} is the capital and largest city of {name}."),
    "country.language": ("The official language of {name} is {language}.",
                         "{language} is the official language of {name}."),
    "country.continent": ("{S} is located in {continent}.",
                          "{name} lies in the western part of {continent}."),
    "river.country": ("{S} flows through {country}.",
                      "The {name} runs for most of its length through {country}."),
    "river.mouth": ("{S} empties into the {mouth}.", "The mouth of the {name} is at the {mouth}."),
    "city.country": ("{S} is located in {country}.", "{name} lies in the north of {country}."),
    "city.founded_year": ("{S} was founded in {founded_year}.",
                          "The settlement of {name} dates to {founded_year}."),
    "city.river": ("{S} lies on the banks of the {river}.", "The {river} flows through {name}."),
    "person.occupation": ("{S} worked as a {occupation} for most of {poss} life.",
                          "By profession, {name} was a {occupation}."),
    "person.born_in": ("{S} was born in {born_in}.", "{name} was born in the city of {born_in}.",
                       "Born in {born_in}, {name} showed an early interest in {field}."),
    "person.birth_year": ("{S} was born in {birth_year}.",
                          "{name} was born in {birth_year} to a family of {noun} clerks."),
    "person.spouse": ("{S} married {spouse} in {year}.", "{name} was married to {spouse}.",
                      "{Poss} spouse was {spouse}."),
    "person.member_of": ("{S} is a member of the band {member_of}.",
                         "{name} joined {member_of} in {year}."),
    "person.employer": ("{S} worked for {employer}.",
                        "{name} was employed by {employer} for several years."),
    "company.headquarters": ("{S} is headquartered in {headquarters}.",
                             "The head office of {name} is in {headquarters}."),
    "company.founded_year": ("{S} was founded in {founded_year}.",
                             "{name} was established in {founded_year}."),
    "company.industry": ("{S} operates in the {industry} industry.",
                         "{name} is active in {industry}."),
    "company.founded_by": ("{S} was founded by {founded_by}.", "{founded_by} founded {name}."),
    "band.origin": ("{S} was formed in {origin}.", "{name} formed in {origin} in the {decade}."),
    "band.genre": ("{S} plays {genre}.",
                   "The music of {name} is usually described as {genre}."),
    "band.founded_year": ("{S} was formed in {founded_year}.",
                          "{name} was founded in {founded_year}."),
    "band.record_label": ("{S} signed with {record_label} in {year}.",
                          "{name} released its records on the {record_label} label."),
    "album.performer": ("{S} was recorded by {performer}.", "{name} is an album by {performer}."),
    "album.release_year": ("{S} was released in {release_year}.",
                           "{name} came out in {release_year}."),
    "album.genre": ("{S} is a {genre} record.", "Musically, {name} is a {genre} album."),
    "album.record_label": ("{S} was released on {record_label}.",
                           "{name} was issued by {record_label}."),
    "film.director": ("{S} was directed by {director}.", "{name} is directed by {director}."),
    "film.release_year": ("{S} was released in {release_year}.",
                          "{name} premiered in {release_year}."),
    "film.genre": ("{S} is a {genre} film.", "{name} belongs to the {genre} genre."),
    "film.country": ("{S} was produced in {country}.", "{name} is a production from {country}."),
}

# NQ-style questions (lower-cased by the generator, no question mark, as in NQ).
NQ: Dict[str, Tuple[str, ...]] = {
    "country.capital": ("what is the capital of {name}", "capital city of {name}"),
    "country.language": ("what language is spoken in {name}", "official language of {name}"),
    "country.continent": ("what continent is {name} in", "where is {name} located"),
    "river.country": ("what country does the {name} flow through", "where is the {name} located"),
    "river.mouth": ("where does the {name} end", "what does the {name} flow into"),
    "city.country": ("what country is {name} in", "{name} is in which country"),
    "city.founded_year": ("when was {name} founded", "what year was the city of {name} founded"),
    "city.river": ("what river flows through {name}", "which river is {name} on"),
    "person.occupation": ("what is {name}'s occupation", "what does {name} do for a living",
                          "what was {name}'s profession"),
    "person.born_in": ("where was {name} born", "what city was {name} born in",
                       "{name} place of birth"),
    "person.birth_year": ("when was {name} born", "what year was {name} born"),
    "person.spouse": ("who is {name} married to", "who did {name} marry"),
    "person.member_of": ("what band is {name} a member of", "which band did {name} play in"),
    "person.employer": ("who did {name} work for", "which company employed {name}"),
    "company.headquarters": ("where is {name} headquartered",
                             "where are the headquarters of {name}"),
    "company.founded_year": ("when was {name} founded", "what year was {name} established"),
    "company.industry": ("what industry is {name} in", "what business is {name} in"),
    "company.founded_by": ("who founded {name}", "who is the founder of {name}"),
    "band.origin": ("where is the band {name} from", "where was {name} formed"),
    "band.genre": ("what kind of music does {name} play", "what genre is the band {name}"),
    "band.founded_year": ("when was the band {name} formed", "what year did {name} form"),
    "band.record_label": ("what record label is {name} signed to",
                          "which label released {name}'s records"),
    "album.performer": ("who recorded the album {name}", "{name} album by"),
    "album.release_year": ("when did the album {name} come out",
                           "what year was the album {name} released"),
    "album.genre": ("what genre is the album {name}", "what kind of music is on {name}"),
    "album.record_label": ("what label released the album {name}", "{name} album record label"),
    "film.director": ("who directed {name}", "who is the director of the film {name}"),
    "film.release_year": ("when did the movie {name} come out", "what year was {name} released"),
    "film.genre": ("what kind of movie is {name}", "what genre is the film {name}"),
    "film.country": ("what country is the movie {name} from", "where was the film {name} made"),
}

# TriviaQA-style questions (only these relations are asked in triviaqa).
TQA: Dict[str, Tuple[str, ...]] = {
    "person.born_in": ("In which city was the {dem} {occupation} {name} born?",
                       "The {occupation} {name} was born in which city?"),
    "person.birth_year": ("In which year was the {dem} {occupation} {name} born?",),
    "person.occupation": ("What was the profession of {name}, who was born in {born_in}?",),
    "person.spouse": ("Who was the spouse of the {occupation} {name}?",),
    "person.member_of": ("The {occupation} {name} was a member of which band?",),
    "city.country": ("The city of {name} lies in which country?",),
    "city.river": ("Which river flows through the city of {name}?",),
    "country.capital": ("What is the capital city of {name}?",
                        "Which city is the capital of the {continent} state of {name}?"),
    "country.language": ("What is the official language of {name}?",),
    "river.mouth": ("Into which body of water does the {name} flow?",),
    "band.origin": ("In which city was the {genre} band {name} formed?",),
    "band.genre": ("The band {name}, formed in {origin}, is associated with which genre?",),
    "album.performer": ("Which band released the album {name}?",
                        "{name} was an album by which {genre} band?"),
    "film.director": ("Who directed the {release_year} film {name}?",
                      "Which director made the {dem} {genre} film {name}?"),
    "film.release_year": ("In which year was the film {name}, directed by {director}, released?",),
    "company.founded_by": ("Who founded the {industry} company {name}?",),
    "company.headquarters": ("In which city is the {industry} company {name} based?",),
    "company.founded_year": ("In which year was the {dem} company {name} founded?",),
}

# HotpotQA bridge questions: (first hop, second hop on the first hop's object, templates).
HOPS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("person.born_in", "city.country",
     ("In which country is the city where {name} was born?",
      "{name} was born in a city that lies in which country?")),
    ("film.director", "person.born_in",
     ("Where was the director of the film {name} born?",
      "The director of {name} was born in which city?")),
    ("album.performer", "band.origin",
     ("In which city was the band that recorded {name} formed?",)),
    ("album.performer", "band.founded_year",
     ("In what year was the band that released the album {name} formed?",)),
    ("company.founded_by", "person.born_in", ("Where was the founder of {name} born?",)),
    ("person.member_of", "band.genre",
     ("What genre of music does the band of {name} play?",
      "{name} is a member of a band that plays which genre?")),
    ("film.country", "country.capital",
     ("What is the capital of the country where the film {name} was produced?",)),
    ("city.river", "river.mouth",
     ("The river that flows through {name} empties into which body of water?",)),
    ("band.record_label", "company.headquarters",
     ("Where is the record label of {name} headquartered?",)),
    ("person.spouse", "person.occupation", ("What is the profession of {name}'s spouse?",)),
)

FILLER: Tuple[str, ...] = (
    "{S} has been the subject of a {adj} {noun} published in {year}.",
    "A {adj} {noun} associated with {name} took place in {year}.",
    "Records from the period describe a {adj} {noun} and a growing {noun2}.",
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
    "person": ("{Pron} later lived in {place} for several years.",
               "{Pron} studied {field} at a {adj} academy.",
               "{Pron} received a {adj} award for {poss} work on the {noun} in {year}.",
               "{Pron} retired from public life in {year}."),
    "city": ("The city hosts an annual {noun} festival.",
             "Its old town contains a {adj} {noun} hall.",
             "The population grew steadily after {year}."),
    "country": ("The country is divided into {num} provinces.",
                "Its economy has long relied on {field} and trade with {place}."),
    "river": ("The river is navigable for much of its length.",
              "Several {adj} bridges cross it near {place}."),
    "band": ("The band toured widely in {year}.",
             "Their early recordings were described as {adj}.",
             "The group performed at a {noun} festival in {place}."),
    "album": ("The album was recorded over {num} weeks in {place}.",
              "Critics called the album {adj}."),
    "film": ("The film premiered at a festival in {place}.",
             "Principal photography began in {year}.",
             "Reviewers found the film {adj} and compared it with {other}."),
    "company": ("The company employs about {num} people.",
                "It opened a second office in {place} in {year}."),
}

# Sentences naming the entities that point at a page, keyed by the pointing relation.
BACKREFS: Dict[str, str] = {
    "person.born_in": "People born in {name} include {refs}.",
    "person.member_of": "Members of {name} have included {refs}.",
    "person.employer": "People who worked for {name} include {refs}.",
    "company.headquarters": "Companies headquartered in {name} include {refs}.",
    "company.founded_by": "{name} founded {refs}.",
    "band.origin": "Bands formed in {name} include {refs}.",
    "band.record_label": "Artists signed with {name} include {refs}.",
    "album.performer": "Albums recorded by {name} include {refs}.",
    "album.record_label": "Albums released by {name} include {refs}.",
    "film.director": "{name} directed the films {refs}.",
    "film.country": "Films produced in {name} include {refs}.",
    "city.river": "Cities on the {name} include {refs}.",
}

# Entity linking (AIDA-style news): sentences around the mention ``{m}``; {hint} is a
# disambiguating attribute (occupation, country, genre, ...).
NEWS: Dict[str, Tuple[str, ...]] = {
    "person": ("The {hint} {m} said on {day} that talks would continue .",
               "{m} , the {hint} , arrived in {place} on {day} .",
               "Supporters of {m} gathered outside the {noun} office ."),
    "city": ("Officials in {m} said the new {noun} would open next year .",
             "Police in {m} , {hint} , reported no injuries ."),
    "country": ("{m} officials said on {day} they were studying the proposal .",
                "Trade between {m} and {place} rose {num} percent ."),
    "river": ("Flooding along the {m} forced hundreds from their homes in {place} .",),
    "band": ("The {hint} band {m} will tour {place} in the autumn .",
             "Tickets for {m} sold out within hours ."),
    "album": ("The album {m} by {hint} entered the charts at number {num} .",),
    "film": ("{m} , directed by {hint} , opened in {num} cinemas on {day} .",),
    "company": ("Shares in {m} rose {num} percent on {day} .",
                "The {hint} group {m} said profits were up ."),
}
NEWS_FILLER: Tuple[str, ...] = (
    "Markets were quiet on {day} .", "{x} declined to comment .",
    "The announcement followed weeks of {noun} talks .",
    "A spokesman in {place} said further details would follow .",
    "Earlier , {x} had called for a {adj} review of the {noun} .",
    "Results are expected later this week .")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HEADLINE_WORDS = ("TALKS", "REVIEW", "UPDATE", "RESULTS", "PROTEST", "DEAL", "TOUR", "VOTE")

# Wizard of Wikipedia-style dialogue lines.
WOW_OPENERS: Tuple[str, ...] = ("I have been reading about {name} lately.",
                                "Have you ever heard of {name}?",
                                "I really want to learn more about {name}.",
                                "My friend keeps telling me about {name}.")
WOW_CHAT: Tuple[str, ...] = ("That is interesting.", "Wow, I did not know that.",
                             "Cool, tell me more.", "I see, that makes sense.",
                             "Oh really? I had no idea.", "My cousin is a big fan of {other}.",
                             "Is that anything like {other}?")
WOW_WIZARD: Tuple[str, ...] = ("Yes! {fact}", "I do. {fact}", "Sure, {fact}", "{fact}")
WOW_WIZARD_CHAT: Tuple[str, ...] = ("I know a little about {name}.",
                                    "{name} is quite interesting, actually.",
                                    "What would you like to know about {name}?")
WOW_TAILS: Tuple[str, ...] = ("", " I find that fascinating.", " Have you looked into it?",
                              " It is quite well known.", " Pretty cool, right?")
WOW_ASK: Tuple[str, ...] = ("Do you know {q}?", "Can you tell me {q}?", "I wonder {q}.")
# Embedded questions for WoW's final user turn ("Do you know where she was born?").
WOW_Q: Dict[str, str] = {
    "country.capital": "what its capital is", "country.language": "what language they speak",
    "country.continent": "where it is", "river.country": "where it flows",
    "river.mouth": "where it ends", "city.country": "which country it is in",
    "city.founded_year": "when it was founded", "city.river": "which river runs through it",
    "person.occupation": "what {pron} did for a living", "person.born_in": "where {pron} was born",
    "person.birth_year": "when {pron} was born", "person.spouse": "who {pron} married",
    "person.member_of": "which band {pron} played in",
    "person.employer": "who {pron} worked for", "company.headquarters": "where it is based",
    "company.founded_year": "when it started", "company.industry": "what it does",
    "company.founded_by": "who founded it", "band.origin": "where they formed",
    "band.genre": "what kind of music they play", "band.founded_year": "when they formed",
    "band.record_label": "which label they are on", "album.performer": "who made it",
    "album.release_year": "when it came out", "album.genre": "what style it is",
    "album.record_label": "who released it", "film.director": "who directed it",
    "film.release_year": "when it came out", "film.genre": "what kind of film it is",
    "film.country": "where it was made",
}

TQA_ID_PREFIXES = ("tc", "qb", "sfq", "qz", "dpql", "bt", "qw", "odql", "wh")


def vocab(name: str) -> Tuple[str, ...]:
    """The vocabulary tuple called ``name`` (``"OCCUPATIONS"``, ...)."""
    return globals()[name]


def all_templates() -> List[str]:
    """Every template string (the tests check that they format)."""
    out: List[str] = []
    out.extend(BACKREFS.values())
    for table in (LEADS, SENTS, NQ, TQA, KIND_FILLER, NEWS):
        for v in table.values():
            out.extend(v)
    out.extend(t for _, _, ts in HOPS for t in ts)
    out.extend(FILLER + NEWS_FILLER + WOW_OPENERS + WOW_CHAT + WOW_WIZARD + WOW_WIZARD_CHAT
               + WOW_ASK)
    out.extend(WOW_Q.values())
    return out
