"""A synthetic, seeded text domain-incremental scenario: news topics written in five styles.

There is no text data set on an offline machine, so this module writes one from word lists. It
is **synthetic**: template sentences, not real text. Every domain shares one label set, four
topics (0 world, 1 sports, 2 business, 3 science), as in AG News; the domains differ in

- **style**: each has its own sentence templates, casing and punctuation (news ``headlines`` in
  title case, forum ``questions``, lower-case ``chat`` messages with slang, book ``reviews``,
  office ``memos``);
- **vocabulary**: each (domain, topic) pair has its own eight subjects (headlines talk football
  and diplomacy, questions tennis and elections, chat basketball and the city council, reviews
  mountaineers and historians, memos the company running club and trade sanctions), so a head
  trained on one domain meets unseen words in the next.

A sentence is ``template(subject, predicate)``. The subject alone decides the label; the
predicate (what happened, shared by all domains: "lost on penalties", "cut hundreds of jobs")
comes from the same topic with probability ``1 - ambiguity`` and from another topic otherwise,
so a model cannot read the label off the predicate alone. ``ambiguity`` is a property of the
scenario, fixed at 0.5 before any method was run on it.

:func:`write_text_domains` writes one chunk per domain in the layout ``ricordo benchmark
--chunks`` reads: ``train-K.npz`` / ``test-K.npz`` with a string array ``text`` and int64 ``y``,
and ``scenario.json`` (the chunk classes, the generator's settings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ricordo.data.export import check_export_target
from ricordo.errors import ConfigError

TOPICS: tuple[str, ...] = ("world", "sports", "business", "science")

# What happened, per topic (shared by all domains; past tense so every template reads).
PREDICATES: dict[str, tuple[str, ...]] = {
    "world": (
        "signed a peace agreement",
        "called for new elections",
        "imposed sanctions on a neighbour",
        "met the rebel leaders",
        "closed the border",
        "lost a vote of no confidence",
        "condemned the military coup",
        "sent aid to the flooded region",
    ),
    "sports": (
        "won the final in extra time",
        "lost on penalties",
        "broke the world record",
        "was injured in training",
        "scored twice in the second half",
        "was knocked out in the semi-final",
        "qualified for the championship",
        "was sent off by the referee",
    ),
    "business": (
        "reported record quarterly profits",
        "cut hundreds of jobs",
        "raised its prices again",
        "announced a merger",
        "saw its shares fall sharply",
        "filed for bankruptcy",
        "raised new funding from investors",
        "missed its earnings forecast",
    ),
    "science": (
        "published a study on gene editing",
        "launched a weather satellite",
        "released a software update",
        "discovered a new exoplanet",
        "tested a faster processor",
        "sequenced a plant genome",
        "patched a security flaw",
        "measured gravitational waves",
    ),
}

# Who it happened to: each domain has its own words for each topic.
SUBJECTS: dict[str, dict[str, tuple[str, ...]]] = {
    "headlines": {
        "world": (
            "the UN envoy",
            "the foreign minister",
            "the peace delegation",
            "the border commission",
            "the embassy",
            "the ceasefire monitors",
            "the summit host",
            "the refugee agency",
        ),
        "sports": (
            "the striker",
            "the goalkeeper",
            "the league leaders",
            "the football coach",
            "the derby winners",
            "the club captain",
            "the midfielder",
            "the cup holders",
        ),
        "business": (
            "the central bank",
            "the stock exchange",
            "the oil producer",
            "the car maker",
            "the retail giant",
            "the airline",
            "the mining company",
            "the steel group",
        ),
        "science": (
            "the space agency",
            "the vaccine researchers",
            "the telescope team",
            "the climate scientists",
            "the robotics lab",
            "the genome project",
            "the particle physicists",
            "the Mars rover team",
        ),
    },
    "questions": {
        "world": (
            "the election commission",
            "the new parliament",
            "the opposition party",
            "the president's cabinet",
            "the referendum campaign",
            "the coalition government",
            "the senate",
            "the governor",
        ),
        "sports": (
            "the tennis champion",
            "the Wimbledon seed",
            "the doubles pair",
            "the grand slam finalist",
            "the tennis umpire",
            "the clay court specialist",
            "the junior tennis squad",
            "the Davis Cup team",
        ),
        "business": (
            "the mortgage lender",
            "the pension fund",
            "the tax office",
            "the credit card company",
            "the startup",
            "the insurance firm",
            "the index fund",
            "the payroll company",
        ),
        "science": (
            "the new smartphone chip",
            "the antivirus vendor",
            "the quantum computer",
            "the router maker",
            "the compiler team",
            "the battery lab",
            "the weather service",
            "the AI chatbot",
        ),
    },
    "chat": {
        "world": (
            "the protesters downtown",
            "the mayor",
            "the city council",
            "the riot police",
            "the border guards",
            "the town hall",
            "our local mp",
            "the aid convoy",
        ),
        "sports": (
            "our basketball team",
            "the point guard",
            "the dunk champ",
            "the nba rookie",
            "the lakers",
            "the three point shooter",
            "the playoff team",
            "the center",
        ),
        "business": (
            "my crypto exchange",
            "the gas station chain",
            "my landlord",
            "my boss's company",
            "the coffee chain",
            "the bank app",
            "the stock i bought",
            "the delivery app",
        ),
        "science": (
            "my laptop maker",
            "the phone company",
            "the game console team",
            "the wifi provider",
            "the eclipse chasers",
            "the lab at uni",
            "the rocket guys",
            "my science teacher",
        ),
    },
    "reviews": {
        "world": (
            "the cold war spy",
            "the war correspondent",
            "the exiled dissident",
            "the revolutionary leader",
            "the colonial governor",
            "the resistance fighters",
            "the ambassador",
            "the partisan army",
        ),
        "sports": (
            "the cyclist",
            "the mountaineer",
            "the marathon runner",
            "the boxer",
            "the rowing crew",
            "the cricket captain",
            "the jockey",
            "the sprinter",
        ),
        "business": (
            "the tycoon",
            "the start-up founder",
            "the hedge fund manager",
            "the family firm",
            "the department store",
            "the factory owner",
            "the venture capitalist",
            "the railway baron",
        ),
        "science": (
            "the physicist",
            "the astronomer",
            "the geneticist",
            "the codebreakers",
            "the inventor",
            "the naturalist",
            "the chemist",
            "the computer pioneer",
        ),
    },
    "memos": {
        "world": (
            "the visa office",
            "the customs authority",
            "the embassy in Berlin",
            "the trade envoy",
            "the foreign ministry",
            "the sanctions committee",
            "the consulate",
            "the regional government",
        ),
        "sports": (
            "the company running club",
            "the five-a-side team",
            "the charity bike team",
            "the office table tennis champion",
            "the sponsored marathon team",
            "the corporate regatta crew",
            "the staff football team",
            "the climbing group",
        ),
        "business": (
            "our largest customer",
            "the procurement team",
            "the main supplier",
            "the finance department",
            "the subsidiary",
            "the pricing committee",
            "the distributor",
            "the holding company",
        ),
        "science": (
            "the lab equipment vendor",
            "the server team",
            "the research group",
            "the data centre provider",
            "the patent office",
            "the firmware team",
            "the test rig supplier",
            "the R&D department",
        ),
    },
}

# How each domain writes a sentence ({s}: subject, {p}: predicate).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "headlines": (
        "{S} {P}",
        "{S} {P}, Officials Say",
        "Breaking: {S} {P}",
        "{S} {P} - Report",
    ),
    "questions": (
        "Does anyone know why {s} {p}?",
        "Is it true that {s} {p}?",
        "Can someone explain how {s} {p}?",
        "Why do you think {s} {p}?",
    ),
    "chat": (
        "omg {s} {p} lol",
        "did u see {s} {p}??",
        "cant believe {s} {p} haha",
        "ugh {s} {p} again smh",
    ),
    "reviews": (
        "A gripping book about how {s} {p}. Five stars.",
        "This biography tells how {s} {p}; a little slow in places.",
        "Well researched account of the day {s} {p}. Recommended.",
        "The chapter where {s} {p} is the best part of the novel.",
    ),
    "memos": (
        "Dear team, please note that {s} {p}. Best regards.",
        "Reminder: {s} {p}; details to follow at Monday's meeting.",
        "FYI, {s} {p}. Let me know if you have questions.",
        "Update for all staff: {s} {p}. No action needed.",
    ),
}

DOMAINS: tuple[str, ...] = tuple(SUBJECTS)
SCENARIO_NAME = "text-domains"


def domain_texts(
    domain: str, n: int, seed: int, *, ambiguity: float = 0.5
) -> tuple[list[str], np.ndarray]:
    """``n`` distinct sentences of ``domain`` and their topic labels (int64, balanced).

    Deterministic in (``domain``, ``n``, ``seed``, ``ambiguity``). Labels cycle through the
    topics, then are shuffled; duplicates are redrawn, so ``n`` may be at most a quarter of the
    distinct sentences a domain can produce (1024).
    """
    if domain not in SUBJECTS:
        raise ConfigError(f"text domain {domain!r} is unknown; choose from {', '.join(DOMAINS)}")
    if not 0.0 <= ambiguity < 1.0:
        raise ConfigError(f"ambiguity {ambiguity!r} is out of range; expected 0 <= ambiguity < 1")
    # A quarter of the distinct sentences, so that redrawing duplicates stays cheap.
    distinct = sum(len(SUBJECTS[domain][t]) for t in TOPICS) * len(TEMPLATES[domain])
    limit = distinct * sum(len(p) for p in PREDICATES.values()) // 4
    if n < 1 or n > limit:
        raise ConfigError(f"{n} sentences per domain is out of range; pick 1..{limit}")
    rng = np.random.default_rng([seed, DOMAINS.index(domain)])
    labels = rng.permutation(np.arange(n) % len(TOPICS)).astype(np.int64)
    texts: list[str] = []
    seen: set[str] = set()
    for label in labels:
        topic = TOPICS[int(label)]
        while True:
            text = _sentence(domain, topic, rng, ambiguity)
            if text not in seen:
                break
        seen.add(text)
        texts.append(text)
    return texts, labels


def _sentence(domain: str, topic: str, rng: np.random.Generator, ambiguity: float) -> str:
    subject = str(rng.choice(SUBJECTS[domain][topic]))
    # With probability `ambiguity` the predicate belongs to one of the other topics.
    source = topic
    if rng.random() < ambiguity:
        source = str(rng.choice([t for t in TOPICS if t != topic]))
    predicate = str(rng.choice(PREDICATES[source]))
    template = str(rng.choice(TEMPLATES[domain]))
    return template.format(
        s=subject, p=predicate, S=_title(_drop_article(subject)), P=_title(predicate)
    )


def _drop_article(phrase: str) -> str:
    return phrase[4:] if phrase.startswith("the ") else phrase


def _title(phrase: str) -> str:
    # Headline case that keeps acronyms (UN, AI) and inner capitals as written.
    return " ".join(word[:1].upper() + word[1:] for word in phrase.split(" "))


def write_text_domains(
    out_dir: str | os.PathLike[str],
    *,
    domains: Sequence[str] = DOMAINS,
    train_size: int = 200,
    test_size: int = 100,
    seed: int = 0,
    ambiguity: float = 0.5,
    overwrite: bool = False,
) -> Path:
    """Write one chunk per domain (``train-K.npz``, ``test-K.npz``, ``scenario.json``) to
    ``out_dir``; return it.

    Chunk ``K`` is ``domains[K]``: ``train_size`` training and ``test_size`` test sentences,
    drawn together without duplicates and split, so no test sentence occurs in training. The
    folder must be new or empty; ``overwrite`` replaces an earlier export there (its chunk files
    this one does not write are removed; anything else in the folder is refused, as
    :func:`ricordo.data.export.check_export_target` does).
    """
    if not domains:
        raise ConfigError("no text domains given; pick some of " + ", ".join(DOMAINS))
    if len(set(domains)) != len(domains):
        raise ConfigError(f"text domains {list(domains)} repeat one; list each domain once")
    if train_size < 1 or test_size < 1:
        raise ConfigError(
            f"train_size {train_size} / test_size {test_size} must both be at least 1"
        )
    out = Path(out_dir)
    previous = check_export_target(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for k, domain in enumerate(domains):
        texts, labels = domain_texts(domain, train_size + test_size, seed, ambiguity=ambiguity)
        for split, rows in (("train", slice(0, train_size)), ("test", slice(train_size, None))):
            name = f"{split}-{k}.npz"
            _write_text_npz(out / name, texts[rows], labels[rows])
            files.append(name)
    meta = {
        "name": SCENARIO_NAME,
        "updates": len(domains),
        "chunk_classes": [list(range(len(TOPICS)))] * len(domains),
        "task_incremental": False,
        "info": {
            "synthetic": True,
            "generator": "ricordo.data.text_domains",
            "domains": list(domains),
            "topics": list(TOPICS),
            "train_size": train_size,
            "test_size": test_size,
            "seed": seed,
            "ambiguity": ambiguity,
        },
        "files": files,  # what a later overwrite may replace
    }
    # An earlier export's chunks this one does not replace would join the scenario: remove them.
    for stale in sorted(set(previous) - {*files, "scenario.json"}):
        (out / stale).unlink(missing_ok=True)
    (out / "scenario.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _write_text_npz(path: Path, texts: list[str], labels: np.ndarray) -> None:
    # A fixed-width unicode array (not object dtype): loading it needs no pickle.
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, text=np.array(texts, dtype=str), y=labels.astype(np.int64))
    os.replace(tmp, path)
