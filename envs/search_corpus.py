"""A procedurally generated, fictional encyclopedia and its multi-hop questions, for `espl/Search-v0`.

No multi-hop QA corpus ships offline in a package, and a real one (Wikipedia, HotpotQA) would let a model
answer from memory. This world is invented: countries, cities, rivers, universities, people and companies
with made-up names, attributes and relations, written up as short encyclopedia articles from templates.
Every answer is a fact of this world, so it can only be found by searching the corpus.

Questions are two hops (`In which city was the founder of <Company> born?`: the company's article names the
founder, the founder's article names the city). The split is by subject: each company (with its founder)
belongs to train or test, and a question belongs to the split of the company it starts from, so train and
test share no question, no subject entity and no bridge entity (answers such as a city may recur).

Everything is a pure function of `world_seed` and the sizes (Python's `random.Random`, stable across
versions for the calls used), so every process builds the same corpus and the same questions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# ---- name material ---------------------------------------------------------------------------------
_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "q", "r", "s", "st",
           "t", "tr", "v", "z", "th", "sh", "ven", "mor", "al", "es", "or")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou", "ei", "y")
_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rn", "sk", "x", "m", "lt", "v")
_CITY_ENDINGS = ("holt", "mere", "port", "gard", "wick", "dale", "ford", "stead", "burg", "vale", "mouth", "ton")
_COUNTRY_ENDINGS = ("ia", "land", "mark", "stan", "ora", "enia", "aria")
_FIRST_NAMES = (
    "Elira", "Tomas", "Maren", "Osric", "Liesl", "Corin", "Adaeze", "Yusuf", "Ingrid", "Rafael", "Sunniva",
    "Dario", "Keiko", "Anselm", "Priya", "Bertil", "Noor", "Casimir", "Thandiwe", "Leopold", "Mireille",
    "Hakon", "Soraya", "Emeric", "Ottilie", "Jarek", "Ilse", "Florin", "Amara", "Benedek", "Zofia", "Idris",
    "Rosalind", "Matthias", "Yara", "Lucan", "Helga", "Teodor", "Nadia", "Viggo",
)
_COMPANY_WORDS = ("Bright", "Iron", "Silver", "North", "Blue", "Stone", "Red", "Green", "High", "Deep", "Clear",
                  "Swift", "Golden", "Oak", "Cedar", "Amber", "Frost", "Harbor", "Copper", "Star")
_COMPANY_ROOTS = ("moor", "field", "gate", "wave", "line", "crest", "forge", "bridge", "path", "brook", "peak",
                  "works", "light", "stone", "haven", "spring")
_INDUSTRIES = {
    "software": "Analytics", "shipbuilding": "Shipyards", "textiles": "Textiles", "pharmaceuticals": "Pharma",
    "mining": "Mining", "logistics": "Logistics", "aviation": "Aero", "banking": "Bank", "food processing": "Foods",
    "renewable energy": "Energy", "robotics": "Robotics", "publishing": "Press",
}
_PROFESSIONS = ("engineer", "chemist", "economist", "architect", "physician", "lawyer", "geologist",
                "mathematician", "designer", "entrepreneur", "physicist", "agronomist")
_FIELDS = ("engineering", "medicine", "law", "economics", "agriculture", "mathematics", "architecture", "chemistry")

Kind = str  # "country" | "city" | "university" | "person" | "company"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    kind: Kind


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    aliases: tuple[str, ...]
    kind: str  # the template name, e.g. "founder_birthplace"
    split: str
    hops: tuple[str, ...]  # doc ids of the evidence chain, first hop first


@dataclass(frozen=True)
class World:
    documents: tuple[Document, ...]
    questions: tuple[Question, ...]

    def split_questions(self, split: str) -> tuple[Question, ...]:
        return tuple(q for q in self.questions if q.split == split)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _unique(rng: random.Random, make, used: set[str]) -> str:
    for _ in range(10_000):
        name = make(rng)
        key = name.lower()
        if key not in used and len(name) >= 4 and not re.search(r"(.)\1\1", key):
            used.add(key)
            return name
    raise RuntimeError("could not make a new unique name; lower the world sizes")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


@lru_cache(maxsize=4)
def build_world(world_seed: int = 0, n_companies: int = 300, n_extra_people: int = 150, n_cities: int = 80,
                n_countries: int = 12, n_universities: int = 30, test_fraction: float = 0.2) -> World:
    """The fictional world for a seed: its documents and every question with its split (cached)."""
    rng = random.Random(world_seed)
    used: set[str] = set()

    countries = [_unique(rng, lambda r: _cap(_word(r, 1)) + r.choice(_COUNTRY_ENDINGS), used)
                 for _ in range(n_countries)]
    rivers = [_unique(rng, lambda r: _cap(_word(r, 2)), used) for _ in range(n_cities // 2)]
    cities: list[dict[str, Any]] = []
    for i in range(n_cities):
        name = _unique(rng, lambda r: _cap(_word(r, 1)) + r.choice(_CITY_ENDINGS), used)
        cities.append({"name": name, "country": countries[i % n_countries], "river": rng.choice(rivers),
                       "founded": rng.randint(900, 1750), "population": rng.randint(20, 2400) * 1000})
    capitals = {c: next(city["name"] for city in cities if city["country"] == c) for c in countries}
    universities: list[dict[str, Any]] = []
    for _ in range(n_universities):
        city = rng.choice(cities)
        style = rng.choice(("University of {}", "{} Institute of Technology", "{} College", "{} State University"))
        name = style.format(_cap(_word(rng, 2)))
        if name.lower() in used:
            continue
        used.add(name.lower())
        universities.append({"name": name, "city": city["name"], "founded": rng.randint(1500, 1990),
                             "field": rng.choice(_FIELDS)})

    people: list[dict[str, Any]] = []
    for _ in range(n_companies + n_extra_people):
        full = _unique(rng, lambda r: f"{r.choice(_FIRST_NAMES)} {_cap(_word(r, 2))}", used)
        birth = rng.choice(cities)
        home = rng.choice([c for c in cities if c is not birth][:40])
        people.append({"name": full, "born": rng.randint(1930, 1995), "birth_city": birth["name"],
                       "home_city": home["name"], "university": rng.choice(universities)["name"],
                       "profession": rng.choice(_PROFESSIONS)})
    companies: list[dict[str, Any]] = []
    for i in range(n_companies):
        industry = rng.choice(sorted(_INDUSTRIES))
        name = _unique(rng, lambda r: f"{r.choice(_COMPANY_WORDS)}{r.choice(_COMPANY_ROOTS)} {_INDUSTRIES[industry]}",
                       used)
        founder = people[i]
        founded = min(2023, founder["born"] + rng.randint(24, 45))
        company = {"name": name, "industry": industry, "founder": founder["name"], "founded": founded,
                   # never the founder's birthplace: the company's article must not give that answer away
                   "hq": rng.choice([c for c in cities if c["name"] != founder["birth_city"]])["name"],
                   "employees": rng.randint(3, 900) * 10}
        companies.append(company)
    rng.shuffle(people)  # founders and the other people are interleaved in the corpus

    docs: list[Document] = []

    def add(kind: str, title: str, text: str) -> str:
        doc_id = f"d{len(docs):04d}"
        docs.append(Document(doc_id, title, text, kind))
        return doc_id

    ids: dict[str, str] = {}
    for country in countries:
        members = [city["name"] for city in cities if city["country"] == country]
        ids[country] = add("country", country, (
            f"{country} is a country whose capital is {capitals[country]}. "
            f"Its cities include {', '.join(members[:6])}. "
            f"The country is a parliamentary republic."))
    for city in cities:
        n = city["name"]
        ids[n] = add("city", n, rng.choice((
            "{n} is a city in {country}, on the river {river}. It was founded in {founded} and has about "
            "{pop:,} inhabitants.",
            "{n} is a city of about {pop:,} people in {country}. The river {river} flows through it. The first "
            "records of {n} date from {founded}.",
        )).format(n=n, country=city["country"], river=city["river"], founded=city["founded"], pop=city["population"]))
    for u in universities:
        ids[u["name"]] = add("university", u["name"], (
            f"{u['name']} is a university in {u['city']}, founded in {u['founded']}. It is best known for its "
            f"{u['field']} faculty."))
    for p in people:
        last = p["name"].split()[1]
        parts = [rng.choice((
            f"{p['name']} (born {p['born']}) is {_a(p['profession'])}. {last} was born in {p['birth_city']} and "
            f"now lives in {p['home_city']}.",
            f"{p['name']} is {_a(p['profession'])} based in {p['home_city']}. Born in {p['birth_city']} in "
            f"{p['born']}, {last} moved away as a young adult.",
        )), f"{last} studied at {p['university']}."]
        # Founders' articles do not name their company: only the company's article links the two, so
        # "the founder of <Company>" questions take a second hop (search the company, then the person).
        parts.append(rng.choice((f"{last} has worked for several firms in {p['home_city']}.",
                                 f"{last} is a member of the {p['profession']}s' guild of {p['home_city']}.")))
        ids[p["name"]] = add("person", p["name"], " ".join(parts))
    for c in companies:
        rival = companies[(companies.index(c) + 7) % len(companies)]["name"]
        ids[c["name"]] = add("company", c["name"], rng.choice((
            "{n} is {ind} company headquartered in {hq}. It was founded in {y} by {f}. It employs about "
            "{e:,} people; its main competitor is {rival}.",
            "{n} is {ind} firm founded by {f} in {y}. Its headquarters are in {hq}, and it has about {e:,} "
            "employees. It competes with {rival}.",
        )).format(n=c["name"], ind=_a(c["industry"]), hq=c["hq"], y=c["founded"], f=c["founder"], e=c["employees"],
                  rival=rival))

    city_by = {c["name"]: c for c in cities}
    uni_by = {u["name"]: u for u in universities}
    person_by = {p["name"]: p for p in people}
    order = list(range(n_companies))
    rng.shuffle(order)
    test_companies = set(order[: round(test_fraction * n_companies)])
    questions: list[Question] = []
    for i, c in enumerate(companies):
        split = "test" if i in test_companies else "train"
        f = person_by[c["founder"]]
        hq = city_by[c["hq"]]
        uni = uni_by[f["university"]]
        river = hq["river"]
        items = (
            ("founder_birthplace", f"In which city was the founder of {c['name']} born?", f["birth_city"], (),
             (c["name"], f["name"])),
            ("founder_university", f"Which university did the founder of {c['name']} attend?", uni["name"], (),
             (c["name"], f["name"])),
            ("founder_birth_year", f"In what year was the founder of {c['name']} born?", str(f["born"]), (),
             (c["name"], f["name"])),
            ("hq_country", f"In which country is {c['name']} headquartered?", hq["country"], (),
             (c["name"], hq["name"])),
            ("hq_river", f"Which river flows through the city where {c['name']} has its headquarters?", river,
             (f"{river} river", f"river {river}"), (c["name"], hq["name"])),
            ("person_birth_country", f"In which country was {f['name']} born?",
             city_by[f["birth_city"]]["country"], (), (f["name"], f["birth_city"])),
            ("person_university_city", f"In which city is the university that {f['name']} attended?", uni["city"],
             (), (f["name"], uni["name"])),
        )
        for kind, text, answer, aliases, hops in items:
            questions.append(Question(f"q{len(questions):05d}", text, answer, (answer, *aliases), kind, split,
                                      tuple(ids[h] for h in hops)))
    return World(tuple(docs), tuple(questions))
