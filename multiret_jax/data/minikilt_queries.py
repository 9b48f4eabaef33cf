"""Query-side vocabulary of mini-KILT: how questions, claims, news and dialogue speak.

The page side (``minikilt_vocab``) and this module phrase every relation with different
content words: pages say "X hails from Y" / "X was helmed by Y", questions ask "where was X
born" / "who directed X" (``tests/test_minikilt.py`` checks the two stay apart). Namesakes
are told apart by paraphrased descriptors (``OCC_DESC``: a page's "sculptor" is a query's
"stone carver"; ``KIND_DESC``: "film" / "movie") and entities may be referred to by unique
descriptions (``DESCRIBE``). The same conventions hold in every split, so they are learnable
from the train split. Templates are ``str.format`` strings: ``{R}`` is the entity reference,
``{v}`` a claimed value, other fields are relation names or builder-supplied words.
"""

from __future__ import annotations

from typing import Dict, List, Tuple


def _t(table: Dict[str, str]) -> Dict[str, Tuple[str, ...]]:
    return {k: tuple(v.split("|")) for k, v in table.items()}


# Paraphrases of occupations (pages use ``V.OCCUPATIONS`` verbatim) and of entity kinds.
OCC_DESC = _t({
    "painter": "portraitist|landscapist", "novelist": "fiction writer|storyteller",
    "poet": "verse writer|bard", "politician": "lawmaker|statesman",
    "physicist": "quantum scientist|atom researcher",
    "chemist": "lab scientist|compound researcher",
    "architect": "building designer|planner of buildings", "footballer": "soccer player|striker",
    "journalist": "reporter|newspaperman", "sculptor": "stone carver|statue maker",
    "historian": "chronicler|annalist", "engineer": "machine builder|technical designer",
    "economist": "market theorist|money expert", "diplomat": "envoy|ambassador",
    "photographer": "lensman|shutterbug", "actor": "movie star|thespian",
    "mathematician": "geometer|number theorist", "lawyer": "attorney|barrister",
    "singer": "vocalist|crooner", "guitarist": "six-string player|axeman",
    "drummer": "percussionist|sticksman", "composer": "songwriter|tunesmith",
    "bassist": "four-string player|low-end player", "film director": "filmmaker|moviemaker",
    "entrepreneur": "businessman|tycoon"})
KIND_DESC = _t({"film": "movie|picture", "album": "record|LP", "band": "group|outfit",
                "company": "firm|corporation", "city": "town", "country": "nation"})
# Unique descriptions: (template, relations it uses); {occupation} renders an OCC_DESC.
DESCRIBE: Dict[str, Tuple[Tuple[str, Tuple[str, ...]], ...]] = {
    "person": (("the {occupation} married to {spouse}", ("occupation", "spouse")),
               ("the {occupation} who plays in {member_of}", ("occupation", "member_of")),
               ("the {occupation} employed by {employer}", ("occupation", "employer")),
               ("the {occupation} born in {born_in} in {birth_year}",
                ("occupation", "born_in", "birth_year")),
               ("the person married to {spouse}", ("spouse",)),
               ("the person born in {born_in} in {birth_year}", ("born_in", "birth_year"))),
    "film": (("the {genre} movie directed by {director}", ("genre", "director")),
             ("the movie directed by {director} in {release_year}", ("director", "release_year")),
             ("the {release_year} {genre} movie made in {country}",
              ("release_year", "genre", "country"))),
    "album": (("the {release_year} record by {performer}", ("release_year", "performer")),
              ("the {genre} record by {performer}", ("genre", "performer"))),
    "band": (("the {genre} group from {origin}", ("genre", "origin")),
             ("the group formed in {origin} in {founded_year}", ("origin", "founded_year"))),
    "company": (("the firm founded by {founded_by}", ("founded_by",)),
                ("the {industry} firm based in {headquarters}", ("industry", "headquarters"))),
    "city": (("the town in {country} founded in {founded_year}", ("country", "founded_year")),
             ("the town on the {river} founded in {founded_year}", ("river", "founded_year"))),
    "country": (("the nation whose capital is {capital}", ("capital",)),),
    "river": (("the river of {country} that flows into the {mouth}", ("country", "mouth")),),
}
# Per relation: NQ-style questions (lower-cased, no "?"), claims ({v}: the value) and the
# embedded question of a WoW user turn. {R} is the entity reference.
NQ = _t({
    "country.capital": "what is the capital of {R}|which city is the capital of {R}",
    "country.language": "what language is spoken in {R}|which language do people speak in {R}",
    "country.continent": "what continent is {R} on|where is {R} located",
    "river.country": "what country does {R} flow through|where is {R} located",
    "river.mouth": "where does {R} end|what does {R} flow into",
    "city.country": "what country is {R} in|{R} is in which country",
    "city.founded_year": "when was {R} founded|what year was {R} established",
    "city.river": "what river flows through {R}|which river is {R} on",
    "person.occupation": "what is the occupation of {R}|what does {R} do for a living"
                         "|what was the profession of {R}",
    "person.born_in": "where was {R} born|what city was {R} born in|birthplace of {R}",
    "person.birth_year": "when was {R} born|what year was {R} born|year of birth of {R}",
    "person.spouse": "who is {R} married to|who is the spouse of {R}",
    "person.member_of": "what band is {R} a member of|which band did {R} play in",
    "person.employer": "who did {R} work for|which company employed {R}",
    "company.headquarters": "where is {R} headquartered|where are the headquarters of {R}",
    "company.founded_year": "when was {R} founded|what year was {R} established",
    "company.industry": "what industry is {R} in|what kind of business is {R}",
    "company.founded_by": "who founded {R}|who is the founder of {R}",
    "band.origin": "where is {R} from|where was {R} formed",
    "band.genre": "what kind of music does {R} play|what genre is {R}",
    "band.founded_year": "when was {R} formed|what year did {R} form",
    "band.record_label": "what record label is {R} signed to|which label releases music by {R}",
    "album.performer": "who recorded {R}|who is the artist behind {R}",
    "album.release_year": "when did {R} come out|what year was {R} released",
    "album.genre": "what genre is {R}|what kind of music is on {R}",
    "album.record_label": "what label released {R}|which record label put out {R}",
    "film.director": "who directed {R}|who is the director of {R}",
    "film.release_year": "when did {R} come out|what year was {R} released",
    "film.genre": "what genre is {R}|what kind of movie is {R}",
    "film.country": "what country is {R} from|where was {R} made"})
CLAIMS = _t({
    "country.capital": "The capital of {R} is {v}.|{R} has its capital in {v}.",
    "country.language": "{v} is spoken in {R}.|{R} has {v} as its language.",
    "country.continent": "{R} is located on the continent of {v}.",
    "river.country": "{R} flows through {v}.", "river.mouth": "{R} flows into the {v}.",
    "city.country": "{R} is in {v}.|{R} is located in {v}.",
    "city.founded_year": "{R} was founded in {v}.|{R} was established in {v}.",
    "city.river": "{v} flows through {R}.|{R} is on the {v}.",
    "person.occupation": "{R} is a {v}.|{R} is a {v} by profession.",
    "person.born_in": "{R} was born in {v}.|The birthplace of {R} is {v}.",
    "person.birth_year": "{R} was born in {v}.|{R} was born in the year {v}.",
    "person.spouse": "{R} is married to {v}.|{R} married {v}.",
    "person.member_of": "{R} is a member of {v}.|{R} plays in the band {v}.",
    "person.employer": "{R} worked for {v}.|{R} was employed by {v}.",
    "company.headquarters": "{R} is headquartered in {v}.|{R} is based in {v}.",
    "company.founded_year": "{R} was founded in {v}.|{R} was established in {v}.",
    "company.industry": "{R} is in the {v} industry.|{R} does business in {v}.",
    "company.founded_by": "{R} was founded by {v}.|{v} is the founder of {R}.",
    "band.origin": "{R} was formed in {v}.|{R} comes from {v}.",
    "band.genre": "{R} plays {v}.|The music of {R} is {v}.",
    "band.founded_year": "{R} was formed in {v}.", "band.record_label": "{R} is signed to {v}.",
    "album.performer": "{R} was recorded by {v}.|{v} recorded {R}.",
    "album.release_year": "{R} was released in {v}.|{R} came out in {v}.",
    "album.genre": "{R} is a {v} record.|The music on {R} is {v}.",
    "album.record_label": "{R} was released on {v}.|{R} came out on the {v} label.",
    "film.director": "{R} was directed by {v}.|{v} directed {R}.",
    "film.release_year": "{R} was released in {v}.|{R} came out in {v}.",
    "film.genre": "{R} is a {v} movie.", "film.country": "{R} was made in {v}."})
WOW_Q = {  # {s}: "she", "he", or the topic's kind word ("the group")
    "country.capital": "what the capital of {s} is",
    "country.language": "what language people speak in {s}",
    "country.continent": "where {s} is located", "river.country": "where {s} flows",
    "river.mouth": "where {s} ends", "city.country": "which country {s} is in",
    "city.founded_year": "when {s} was founded", "city.river": "which river flows through {s}",
    "person.occupation": "what {s} does for a living", "person.born_in": "where {s} was born",
    "person.birth_year": "when {s} was born", "person.spouse": "who {s} married",
    "person.member_of": "which band {s} played in", "person.employer": "who {s} worked for",
    "company.headquarters": "where {s} is based", "company.founded_year": "when {s} was founded",
    "company.industry": "what {s} does", "company.founded_by": "who founded {s}",
    "band.origin": "where {s} formed", "band.genre": "what kind of music {s} plays",
    "band.founded_year": "when {s} formed", "band.record_label": "which label {s} is signed to",
    "album.performer": "who recorded {s}", "album.release_year": "when {s} came out",
    "album.genre": "what kind of music {s} is", "album.record_label": "who released {s}",
    "film.director": "who directed {s}", "film.release_year": "when {s} came out",
    "film.genre": "what kind of movie {s} is", "film.country": "where {s} was made"}
# TriviaQA-style questions (only these relations are asked in triviaqa).
TQA = _t({
    "person.born_in": "In which city was {R} born?|{R} was born in which city?",
    "person.birth_year": "In which year was {R} born?",
    "person.occupation": "What was the profession of {R}?",
    "person.spouse": "Who was the spouse of {R}?|To whom was {R} married?",
    "person.member_of": "{R} was a member of which band?",
    "city.country": "{R} is in which country?", "city.river": "Which river flows through {R}?",
    "country.capital": "What is the capital city of {R}?",
    "country.language": "What language is spoken in {R}?",
    "river.mouth": "Into which body of water does {R} flow?",
    "band.origin": "In which city was {R} formed?",
    "band.genre": "{R} is associated with which genre of music?",
    "album.performer": "Which band recorded {R}?",
    "film.director": "Who directed {R}?|Which director made {R}?",
    "film.release_year": "In which year was {R} released?",
    "company.founded_by": "Who founded {R}?",
    "company.headquarters": "In which city is {R} headquartered?",
    "company.founded_year": "In which year was {R} founded?"})
# HotpotQA bridge questions: (first hop, second hop on the first hop's object, templates).
HOPS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = tuple(
    (a, b, tuple(t.split("|"))) for a, b, t in (
        ("person.born_in", "city.country", "In which country is the city where {R} was born?"
         "|{R} was born in a city located in which country?"),
        ("film.director", "person.born_in", "Where was the director of {R} born?"
         "|The director of {R} was born in which city?"),
        ("album.performer", "band.origin", "In which city was the band that recorded {R} formed?"),
        ("album.performer", "band.founded_year",
         "In what year was the band that recorded {R} formed?"),
        ("company.founded_by", "person.born_in", "Where was the founder of {R} born?"),
        ("person.member_of", "band.genre", "What genre of music does the band of {R} play?"
         "|{R} is a member of a band that plays which genre?"),
        ("film.country", "country.capital",
         "What is the capital of the country where {R} was made?"),
        ("city.river", "river.mouth",
         "The river that flows through {R} ends in which body of water?"),
        ("band.record_label", "company.headquarters",
         "Where is the record label of {R} headquartered?"),
        ("person.spouse", "person.occupation", "What is the profession of the spouse of {R}?")))

# Entity linking (AIDA-style news): sentences around the mention ``{m}``; {hint} is a
# disambiguating attribute (occupation, country, genre, ...).
NEWS = _t({
    "person": "The {hint} {m} said on {day} that talks would continue ."
              "|{m} , the {hint} , arrived in {place} on {day} ."
              "|Supporters of {m} gathered outside the {noun} office .",
    "city": "Officials in {m} said the new {noun} would open next year ."
            "|Police in {m} , {hint} , reported no injuries .",
    "country": "{m} officials said on {day} they were studying the proposal ."
               "|Trade between {m} and {place} rose {num} percent .",
    "river": "Flooding along the {m} forced hundreds from their homes in {place} .",
    "band": "The {hint} band {m} will tour {place} in the autumn ."
            "|Tickets for {m} sold out within hours .",
    "album": "The album {m} by {hint} entered the charts at number {num} .",
    "film": "{m} , directed by {hint} , opened in {num} cinemas on {day} .",
    "company": "Shares in {m} rose {num} percent on {day} ."
               "|The {hint} group {m} said profits were up ."})
NEWS_FILLER = ("Markets were quiet on {day} .", "{x} declined to comment .",
               "The announcement followed weeks of {noun} talks .",
               "A spokesman said further details would follow .",
               "Earlier , {x} had called for a {adj} review of the {noun} .",
               "Results are expected later this week .")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HEADLINE_WORDS = ("TALKS", "REVIEW", "UPDATE", "RESULTS", "PROTEST", "DEAL", "TOUR", "VOTE")
TQA_ID_PREFIXES = ("tc", "qb", "sfq", "qz", "dpql", "bt", "qw", "odql", "wh")

# Wizard of Wikipedia-style dialogue: the topic is named once (the opener), later turns use
# a pronoun or a kind word ("the group") and mention other entities.
WOW_OPENERS = ("I have been reading about {R} lately.", "Have you ever heard of {R}?",
               "I really want to learn more about {R}.", "My friend keeps telling me about {R}.")
WOW_WIZARD_OPENERS = ("I know a little about {R}.", "{R} is quite interesting, actually.",
                      "What would you like to know about {R}?")
WOW_CHAT = ("That is interesting.", "Wow, I did not know that.", "Cool, tell me more.",
            "I see, that makes sense.", "Oh really? I had no idea.",
            "My cousin is a big fan of {other}.", "Is that anything like {other}?")
WOW_WIZARD = ("Yes! {Fact}", "I do. {Fact}", "Sure, {fact}", "{Fact}")
WOW_WIZARD_CHAT = ("It is a fascinating subject.", "There is a lot to say about that.",
                   "Happy to tell you more.")
WOW_SUBJECT = {"band": "the group", "album": "the record", "film": "the movie",
               "company": "the firm", "city": "the town", "country": "the nation",
               "river": "the river"}
WOW_TAILS = ("", " I find that fascinating.", " Have you looked into it?",
             " It is quite well known.", " Pretty cool, right?")
WOW_ASK = ("Do you know {q}?", "Can you tell me {q}?", "I wonder {q}.")


def query_templates() -> List[str]:
    """Every query-side template (the tests check that they format and avoid page words)."""
    out = [t for table in (NQ, CLAIMS, TQA, NEWS) for ts in table.values() for t in ts]
    out += [t for _, _, ts in HOPS for t in ts] + [t for ts in DESCRIBE.values() for t, _ in ts]
    return out + list(WOW_Q.values()) + list(WOW_OPENERS + WOW_WIZARD_OPENERS + WOW_CHAT
                                             + WOW_WIZARD + WOW_WIZARD_CHAT + WOW_ASK)
