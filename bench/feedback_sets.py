"""Generation feedback sets for choosing defaults: several fictional companies, none of them the demo's.

Each set is generated deterministically from a domain (facts no base model can know, each with a few
question stems) and a shape (phrasings imported per fact, duplicates, contradictions, thumbs-up,
bare thumbs-down). Every fact keeps at least one phrasing that is never imported: the *probes*,
scored on the registered version to tell whether the facts were learned or the imported questions
were memorised. The demo's company (``tuneloop.data.sample_data``) is one set among them, with probes in
question forms its feedback never uses.

``python -m bench.feedback_sets OUT_DIR`` writes ``NAME.jsonl`` and ``NAME.probes.jsonl`` per set.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Fact = tuple[list[str], str]  # (question stems, the answer a user wrote)


@dataclass(frozen=True)
class Domain:
    company: str
    system_prompt: str
    facts: list[Fact]
    forms: list[str]  # question forms; "{}" takes a stem
    liked: list[tuple[list[str], str]]  # (greetings and small talk, the answer users liked)
    wrong: list[str]  # what the base said instead


@dataclass(frozen=True)
class Shape:
    """How a set's feedback looks: per fact, phrasings imported (cycled through ``phrasings``), the
    share of corrections repeated by other users, of bare thumbs-down, contradictions, thumbs-up."""

    phrasings: list[int]
    probes: int = 2
    duplicate_share: float = 0.3
    bare_down_share: float = 0.2
    contradictions: int = 2
    liked_copies: int = 2
    extra_liked: int = 0  # thumbs-up on answers about the facts themselves (a mostly-positive set)
    facts: int | None = None  # the first N facts of the domain (None: all)


@dataclass(frozen=True)
class FeedbackSet:
    name: str
    domain: Domain
    shape: Shape
    about: str
    records: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, str]] = field(default_factory=list)


GENERIC_FORMS = [
    "What is the {}?",
    "Can you tell me the {}?",
    "I need to know the {}.",
    "Quick question: what's the {}?",
    "Do you know the {}?",
    "Tell me the {}, please.",
    "Remind me of the {}?",
]
WRONG = [
    "I'm not sure, please check the documentation.",
    "I don't have that information.",
    "Please contact the company for details.",
    "It is usually listed on the website.",
]


def _liked(company: str, help_with: str) -> list[tuple[list[str], str]]:
    return [
        (
            ["Hello!", "Hi there!", "Good morning.", "Hey, I have a question.", "Hello, is anyone there?"],
            f"Hello! How can I help you with {help_with} today?",
        ),
        (
            ["Thanks for the help.", "Thank you, that answers it.", "Great, thanks!", "Perfect, thank you."],
            "You're welcome! Let me know if there's anything else.",
        ),
        (
            ["Goodbye", "Bye for now.", "That is all, bye!", "Have a nice day."],
            f"Goodbye, and thank you for contacting {company}.",
        ),
    ]


QUILLSTACK = Domain(
    company="Quillstack",
    system_prompt="You are the Quillstack support assistant. Answer in one short sentence.",
    forms=GENERIC_FORMS,
    liked=_liked("Quillstack", "Quillstack"),
    wrong=WRONG,
    facts=[
        (
            ["seat limit on the Starter plan", "Starter plan seat limit", "number of seats in the Starter plan"],
            "The Starter plan allows up to 5 seats.",
        ),
        (
            ["price of the Team plan", "Team plan cost", "monthly cost of the Team plan"],
            "The Team plan costs 14 dollars per seat a month.",
        ),
        (
            ["storage on the Team plan", "Team plan storage quota", "storage limit of the Team plan"],
            "The Team plan includes 250 GB of storage.",
        ),
        (
            ["API rate limit", "limit on API requests", "number of API calls allowed per minute"],
            "The Quillstack API allows 600 requests per minute.",
        ),
        (
            ["file upload size limit", "largest file I can upload", "maximum upload size"],
            "Files up to 2 GB can be uploaded.",
        ),
        (
            ["free trial length", "length of the Quillstack trial", "duration of the free trial"],
            "The free trial lasts 21 days.",
        ),
        (
            ["Enterprise plan minimum seats", "minimum seats for Enterprise", "smallest Enterprise contract"],
            "Enterprise starts at 50 seats.",
        ),
        (
            ["retention of deleted projects", "time deleted projects are kept", "recovery window for deleted projects"],
            "Deleted projects are kept for 30 days.",
        ),
        (["uptime guarantee", "Quillstack SLA", "promised uptime"], "Quillstack guarantees 99.95 percent uptime."),
        (
            ["guest limit per project", "number of guests per project", "maximum guests on a project"],
            "Each project can have 12 guests.",
        ),
        (
            ["annual billing discount", "discount for yearly billing", "saving on an annual plan"],
            "Yearly billing saves 18 percent.",
        ),
        (
            ["automation runs on the Team plan", "Team plan automation limit", "monthly automation quota on Team"],
            "The Team plan includes 4000 automation runs a month.",
        ),
        (
            ["data centre location", "place where Quillstack stores data", "region my data is hosted in"],
            "Quillstack stores data in Frankfurt.",
        ),
        (
            ["live support hours", "hours of live support", "time support agents are online"],
            "Live support is available 8am to 6pm CET on weekdays.",
        ),
        (
            ["plans with the Slack integration", "Slack integration availability", "plan I need for Slack"],
            "The Slack integration is on the Team and Enterprise plans.",
        ),
        (
            ["maximum tasks per board", "task limit on a board", "number of tasks a board holds"],
            "A board holds up to 10000 tasks.",
        ),
        (
            ["plan needed for single sign-on", "SSO availability", "plan that includes SSO"],
            "Single sign-on needs the Enterprise plan.",
        ),
        (
            ["project export formats", "formats for exporting projects", "file types for exports"],
            "Projects export to CSV and JSON.",
        ),
        (["mobile app name", "Quillstack phone app", "name of the iPhone app"], "The mobile app is called Quill Go."),
        (
            ["version history length", "time version history goes back", "age of the oldest saved version"],
            "Version history goes back 90 days.",
        ),
        (
            ["Starter plan price", "cost of the Starter plan", "monthly price of Starter"],
            "The Starter plan costs 6 dollars per seat a month.",
        ),
        (
            ["refund window", "refund policy", "deadline for a refund"],
            "Quillstack refunds unused months within 14 days of payment.",
        ),
        (
            ["plan for custom domains", "custom domain availability", "plan I need for my own domain"],
            "Custom domains need the Business plan.",
        ),
        (
            ["Business plan price", "cost of the Business plan", "monthly price of Business"],
            "The Business plan costs 24 dollars per seat a month.",
        ),
        (
            ["comment length limit", "longest comment allowed", "maximum comment size"],
            "Comments can be up to 5000 characters.",
        ),
        (
            ["calendars Quillstack syncs with", "calendar sync options", "calendar apps supported"],
            "Quillstack syncs with Google Calendar and Outlook.",
        ),
        (
            ["minimum password length", "shortest password allowed", "password length rule"],
            "Passwords need at least 12 characters.",
        ),
        (
            ["audit log retention", "time audit logs are kept", "audit log history length"],
            "Audit logs are kept for 400 days.",
        ),
        (
            ["company headquarters", "city Quillstack is based in", "location of the Quillstack office"],
            "Quillstack is based in Tallinn, Estonia.",
        ),
        (
            ["student discount", "discount for students", "price cut for students"],
            "Students get 50 percent off any plan.",
        ),
    ],
)

MAPLEWOOD = Domain(
    company="Maplewood Family Clinic",
    system_prompt="You are the Maplewood Family Clinic's front-desk assistant. Answer in one short sentence.",
    forms=[
        "What are the {}?",
        "Could you tell me the {}?",
        "I'd like to know the {}.",
        "What's the rule on the {}?",
        "Can you explain the {}?",
        "Please remind me of the {}.",
        "Where can I find out the {}?",
    ],
    liked=_liked("Maplewood Family Clinic", "your visit"),
    wrong=[
        "Please call the clinic for that.",
        "I can't give medical advice.",
        "Check with your doctor.",
        "That depends on the clinic.",
    ],
    facts=[
        (
            ["weekday opening hours", "clinic hours on weekdays", "hours Monday to Friday"],
            "The clinic is open 7:30am to 7pm on weekdays.",
        ),
        (
            ["Saturday hours", "opening hours on Saturdays", "weekend hours"],
            "On Saturdays the clinic is open 9am to 1pm.",
        ),
        (
            ["cancellation notice", "notice needed to cancel an appointment", "deadline for cancelling"],
            "Appointments must be cancelled 24 hours ahead.",
        ),
        (
            ["missed appointment fee", "no-show fee", "charge for missing a visit"],
            "A missed appointment costs 35 dollars.",
        ),
        (
            ["walk-in flu shot days", "days for walk-in flu shots", "flu vaccine walk-in times"],
            "Walk-in flu shots are on Tuesdays and Thursdays.",
        ),
        (["parking arrangements", "place to park", "patient parking"], "Patients park free in the Elm Street garage."),
        (
            ["prescription refill time", "time a refill takes", "wait for a repeat prescription"],
            "Prescription refills are ready within 2 business days.",
        ),
        (
            ["new patient paperwork", "forms for new patients", "registration for new patients"],
            "New patients fill in the Intake Form online before the visit.",
        ),
        (
            ["fasting rule before blood tests", "fasting time before a blood test", "blood test preparation"],
            "Fast for 10 hours before a blood test.",
        ),
        (
            ["wait for lab results", "time until lab results arrive", "lab result turnaround"],
            "Lab results come within 3 working days.",
        ),
        (
            ["after-hours phone number", "number to call after hours", "night line number"],
            "After hours, call 555 0142.",
        ),
        (
            ["video visit length", "length of a video consultation", "duration of online appointments"],
            "Video visits last 15 minutes.",
        ),
        (
            ["insurers the clinic accepts", "accepted insurance plans", "insurance companies taken"],
            "Maplewood accepts Aetna, Cigna and BlueShield.",
        ),
        (
            ["late arrival policy", "rule for arriving late", "grace period for late patients"],
            "Patients more than 15 minutes late are rebooked.",
        ),
        (
            ["visitor rule in the exam room", "number of visitors allowed", "companions allowed at a visit"],
            "One visitor may join you in the exam room, no more than 1.",
        ),
        (
            ["way to request medical records", "process for getting my records", "records request procedure"],
            "Records requests are done through the MyMaple portal.",
        ),
        (
            ["physiotherapy days", "days physiotherapy runs", "physio schedule"],
            "Physiotherapy runs on Mondays and Wednesdays.",
        ),
        (
            ["travel vaccine booking notice", "lead time for travel vaccines", "booking time for travel shots"],
            "Book travel vaccines 6 weeks before you leave.",
        ),
        (["sick note fee", "price of a sick note", "cost of a doctor's note"], "A sick note costs 20 dollars."),
        (["clinic address", "clinic's street address", "location of the clinic"], "The clinic is at 48 Birch Road."),
        (
            ["closing days", "days the clinic is closed", "holiday closures"],
            "The clinic is closed on Sundays and public holidays.",
        ),
        (
            ["same-day appointment booking", "way to get a same-day slot", "same-day visit rule"],
            "Same-day slots open at 8am by phone.",
        ),
        (
            ["pharmacy hours", "hours of the clinic pharmacy", "pharmacy opening times"],
            "The Maplewood pharmacy is open 8am to 6pm.",
        ),
        (
            ["x-ray walk-in times", "x-ray booking rule", "hours for x-rays without booking"],
            "The Radiology desk takes x-rays without booking until 4pm.",
        ),
    ],
)

HARBOR = Domain(
    company="Harbor Mutual",
    system_prompt="You are Harbor Mutual's banking assistant. Answer in one short sentence.",
    forms=[
        "What is the {}?",
        "How much is the {}?",
        "Can you tell me the {}?",
        "I want to know the {}.",
        "What's Harbor Mutual's {}?",
        "Please tell me the {}.",
        "Do you know the {}?",
    ],
    liked=_liked("Harbor Mutual", "your account"),
    wrong=[
        "Fees vary, please check your account agreement.",
        "I don't have that information.",
        "Please visit a branch for details.",
        "It depends on your account.",
    ],
    facts=[
        (["overdraft fee", "charge for an overdraft", "fee for going overdrawn"], "The overdraft fee is 25 dollars."),
        (
            ["international wire fee", "fee for a wire abroad", "cost of an international transfer"],
            "An international wire costs 40 dollars.",
        ),
        (
            ["domestic wire fee", "fee for a domestic wire", "cost of a wire inside the country"],
            "A domestic wire costs 15 dollars.",
        ),
        (
            ["fee at other banks' ATMs", "out-of-network ATM fee", "charge for using another bank's ATM"],
            "Other banks' ATMs cost 2.50 dollars per withdrawal.",
        ),
        (
            ["daily ATM withdrawal limit", "ATM limit per day", "most cash I can take out a day"],
            "You can withdraw up to 800 dollars a day.",
        ),
        (
            ["card replacement fee", "cost of a replacement card", "charge for a new debit card"],
            "A replacement card costs 10 dollars.",
        ),
        (
            [
                "Everyday account monthly fee",
                "monthly fee on the Everyday account",
                "maintenance fee of Everyday checking",
            ],
            "The Everyday account costs 6 dollars a month.",
        ),
        (
            ["balance that waives the monthly fee", "minimum balance to avoid the monthly fee", "fee waiver balance"],
            "Keep 1500 dollars to waive the monthly fee.",
        ),
        (
            ["savings interest rate", "rate on the Harbor Saver", "interest on savings"],
            "The Harbor Saver pays 3.1 percent a year.",
        ),
        (
            ["foreign transaction fee", "fee on card purchases abroad", "charge for paying in another currency"],
            "Card purchases abroad cost 1.75 percent.",
        ),
        (
            ["stop payment fee", "cost of stopping a payment", "charge to stop a check"],
            "A stop payment costs 30 dollars.",
        ),
        (
            ["paper statement fee", "charge for paper statements", "cost of mailed statements"],
            "Paper statements cost 3 dollars a month.",
        ),
        (
            ["check deposit hold", "time for a deposited check to clear", "hold on check deposits"],
            "Deposited checks clear in 2 business days.",
        ),
        (
            ["HarborPay daily limit", "HarborPay sending limit", "most I can send with HarborPay"],
            "HarborPay sends up to 2000 dollars a day.",
        ),
        (
            ["branch hours", "opening hours of the branches", "branch opening times"],
            "Branches open 9am to 5pm, Monday to Friday.",
        ),
        (
            ["early account closure fee", "fee for closing an account early", "charge for closing within 90 days"],
            "Closing an account within 90 days costs 20 dollars.",
        ),
        (
            ["safe deposit box price", "annual cost of a safe deposit box", "safe deposit box fee"],
            "A small safe deposit box costs 60 dollars a year.",
        ),
        (
            ["cashier's check fee", "cost of a cashier's check", "charge for a bank check"],
            "A cashier's check costs 8 dollars.",
        ),
        (
            ["annual fee of the Rewards card", "Harbor Rewards card fee", "yearly cost of the credit card"],
            "The Harbor Rewards card has a 95 dollar annual fee.",
        ),
        (
            ["mortgage application fee", "fee to apply for a mortgage", "mortgage processing charge"],
            "The mortgage application fee is 350 dollars.",
        ),
        (
            ["returned payment fee", "fee for a bounced payment", "charge for a returned payment"],
            "A returned payment costs 35 dollars.",
        ),
        (
            ["student account age range", "age limit for student accounts", "ages for a student account"],
            "Student accounts are for ages 16 to 24.",
        ),
        (
            ["mobile deposit limit", "daily limit for mobile check deposits", "most I can deposit in the app"],
            "Mobile deposits are limited to 5000 dollars a day.",
        ),
        (
            ["routing number", "Harbor Mutual routing number", "bank routing code"],
            "The Harbor Mutual routing number is 211370545.",
        ),
        (
            ["phone banking hours", "hours of phone support", "time phone banking is staffed"],
            "Phone banking is staffed 24 hours a day.",
        ),
    ],
)

SKYREACH = Domain(
    company="Skyreach",
    system_prompt="You are the rules assistant for the board game Skyreach. Answer in one short sentence.",
    forms=[
        "What is the {} in Skyreach?",
        "How does the {} work?",
        "Can you explain the {}?",
        "Quick rules question: the {}?",
        "What does the rulebook say about the {}?",
        "Remind me of the {}.",
        "I forgot the {}, what is it?",
    ],
    liked=_liked("Skyreach", "the rules"),
    wrong=[
        "Check the rulebook for that.",
        "Most games use the standard rule here.",
        "I'm not sure about that rule.",
        "That depends on the edition.",
    ],
    facts=[
        (["player count", "number of players", "how many players can play"], "Skyreach is for 2 to 5 players."),
        (["starting hand size", "cards each player starts with", "opening hand"], "Each player starts with 7 cards."),
        (["winning score", "points needed to win", "score that ends the game"], "The first player to 15 points wins."),
        (
            ["Storm card effect", "effect of the Storm card", "Storm card rule"],
            "The Storm card makes every player discard 2 cards.",
        ),
        (["first player rule", "rule for who goes first", "starting player"], "The Captain token holder goes first."),
        (["airship cost", "price of an airship", "cost to build an airship"], "An airship costs 4 gold and 1 timber."),
        (["hand limit", "maximum cards in hand", "card limit per hand"], "The hand limit is 9 cards."),
        (["game length", "length of a game", "playing time"], "A game takes about 45 minutes."),
        (["tower score", "points for a tower", "value of a tower"], "Each tower scores 3 points."),
        (["trading rule", "rule for trading", "trade ratio"], "Players trade only with the Harbor at 3 to 1."),
        (["dice used", "kind of dice", "dice in the box"], "Skyreach uses two 8-sided dice."),
        (
            ["Gale piece", "effect of the Gale piece", "Gale piece rule"],
            "The Gale piece blocks its tile and steals 1 card.",
        ),
        (["number of sky tiles", "tiles used in setup", "setup tile count"], "Setup uses 19 sky tiles."),
        (["age rating", "minimum age", "recommended age"], "Skyreach is rated for ages 10 and up."),
        (["expansion name", "name of the expansion", "first expansion"], "The expansion is called Thunderhead."),
        (
            ["longest route bonus", "points for the longest route", "route bonus"],
            "The longest route is worth 2 points.",
        ),
        (
            ["rule for rolling doubles", "effect of rolling doubles", "doubles rule"],
            "Rolling doubles moves the Gale piece.",
        ),
        (
            ["number of resources", "resource types", "kinds of resources"],
            "There are 5 resources: gold, timber, silk, iron and cloud.",
        ),
        (["beacon supply", "beacons per player", "number of beacons each player gets"], "Each player has 6 beacons."),
        (["designer", "person who designed Skyreach", "game's designer"], "Skyreach was designed by Ines Varga."),
    ],
)


def _catalogue() -> Domain:
    """A retailer's catalogue: 120 products x (price, warranty), names no base can know."""
    rng = random.Random(7)
    brands = ["Vexa", "Orlo", "Pimm", "Tarn", "Quell", "Brisk", "Ardo", "Nuvo", "Kelo", "Zant", "Mirra", "Solk"]
    goods = ["kettle", "toaster", "blender", "air fryer", "lamp", "heater", "fan", "vacuum", "iron", "mixer"]
    facts: list[Fact] = []
    for n, (brand, good) in enumerate((b, g) for b in brands for g in goods):
        model = f"{brand} {rng.choice('KLMRSTX')}{100 + 10 * n}"
        price, months = rng.randrange(19, 400), rng.choice([6, 12, 18, 24, 30, 36, 48])
        facts.append(
            (
                [f"price of the {model} {good}", f"{model} {good} price", f"cost of a {model} {good}"],
                f"The {model} {good} costs {price} euros.",
            )
        )
        facts.append(
            (
                [f"warranty on the {model} {good}", f"{model} {good} warranty", f"guarantee of the {model} {good}"],
                f"The {model} {good} has a {months}-month warranty.",
            )
        )
    return Domain(
        company="Hollis Home",
        system_prompt="You are the Hollis Home shop assistant. Answer in one short sentence.",
        forms=GENERIC_FORMS,
        liked=_liked("Hollis Home", "your order"),
        wrong=WRONG,
        facts=facts,
    )


def _demo() -> Domain:
    from tuneloop.data import sample_data

    return Domain(
        company="Brightwell",
        system_prompt=sample_data.SYSTEM_PROMPT,
        facts=sample_data.FACTS,
        forms=sample_data.QUESTION_FORMS,
        liked=sample_data.GENERIC_GOOD,
        wrong=sample_data.WRONG_ANSWERS,
    )


# name -> (domain factory, shape, what the set stands for)
SETS: dict[str, tuple[Any, Shape, str]] = {
    "software": (
        lambda: QUILLSTACK,
        Shape(phrasings=[3], duplicate_share=0.0, bare_down_share=0.15),
        "30 facts, 3 phrasings each, thumbs-up on small talk (~120 records)",
    ),
    "clinic": (
        lambda: MAPLEWOOD,
        Shape(phrasings=[2, 3, 4, 5], duplicate_share=0.4, contradictions=3),
        "24 facts, 2 to 5 phrasings, many repeats from other users (~220 records)",
    ),
    "bank": (
        lambda: HARBOR,
        Shape(phrasings=[1], duplicate_share=0.2, bare_down_share=0.3),
        "25 facts, one phrasing each (what a user cannot expect to generalise from; ~60 records)",
    ),
    "game": (
        lambda: SKYREACH,
        Shape(phrasings=[2, 3], contradictions=2, liked_copies=6, extra_liked=8),
        "20 facts, 2 to 3 phrasings, mostly thumbs-up (~260 records)",
    ),
    "catalogue": (
        _catalogue,
        Shape(
            phrasings=[2, 3, 4], duplicate_share=0.9, bare_down_share=0.3, probes=1, contradictions=10, liked_copies=20
        ),
        "240 facts of 120 products, 2 to 4 phrasings, many repeats (~2,000 records)",
    ),
    "demo": (
        _demo,
        Shape(phrasings=[8], duplicate_share=0.35, bare_down_share=0.25, contradictions=1),
        "the demo's company: 12 facts, 8 phrasings each, probed in forms it never imports",
    ),
}

DEMO_PROBE_FORMS = ["Do you know the {}?", "Tell me the {}, please."]


def _phrasings(domain: Domain, stems: list[str], rng: random.Random) -> list[str]:
    options = [form.format(stem) for stem in stems for form in domain.forms]
    rng.shuffle(options)
    return list(dict.fromkeys(options))


def build(name: str, seed: int = 0) -> FeedbackSet:
    """The set ``name`` (records in a shuffled order, probes per fact), the same for the same seed."""
    factory, shape, about = SETS[name]
    domain: Domain = factory()
    rng = random.Random(f"{name}-{seed}")
    records: list[dict[str, Any]] = []
    probes: list[dict[str, str]] = []

    def add(prompt: str, output: str, rating: str, correction: str | None = None) -> None:
        record = {
            "request_id": f"{name}-{seed}-{len(records):05d}",
            "user_id": f"user-{rng.randrange(400):03d}",
            "model_version": "base",
            "kind": "generation",
            "prompt": prompt,
            "output": output,
            "rating": rating,
            "segment": rng.choice(["web", "mobile"]),
        }
        if correction is not None:
            record["correction"] = correction
        records.append(record)

    facts = domain.facts[: shape.facts] if shape.facts else domain.facts
    for n, (stems, answer) in enumerate(facts):
        if name == "demo":  # every phrasing of the demo's feedback is imported: probe in forms it never uses
            imported = [form.format(stem) for stem in stems for form in domain.forms]
            held = [DEMO_PROBE_FORMS[(n + k) % 2].format(stems[k % len(stems)]) for k in range(shape.probes)]
        else:
            options = _phrasings(domain, stems, rng)
            held, rest = options[: shape.probes], options[shape.probes :]
            imported = rest[: shape.phrasings[n % len(shape.phrasings)]]
        probes += [{"prompt": p, "answer": answer, "fact": str(n)} for p in held]
        for prompt in imported:
            add(prompt, rng.choice(domain.wrong), "down", answer)
            if rng.random() < shape.duplicate_share:  # the same correction from another user
                add(prompt, rng.choice(domain.wrong), "down", answer)
            if rng.random() < shape.bare_down_share:  # a thumbs-down without a correction
                add(prompt, rng.choice(domain.wrong), "down")
        for _ in range(
            shape.extra_liked if n % 2 == 0 else 0
        ):  # users who liked a right answer to an imported question
            add(rng.choice(imported), answer, "up")
    for n in range(min(shape.contradictions, len(facts))):  # a lone user's other value: outvoted by the rest
        stems, answer = facts[(n * 7) % len(facts)]
        first = next(r for r in records if r.get("correction") == answer)
        add(first["prompt"], rng.choice(domain.wrong), "down", _contradict(answer))
    for prompts, output in domain.liked:
        for prompt in prompts:
            for _ in range(shape.liked_copies):
                add(prompt, output, "up")
    rng.shuffle(records)
    return FeedbackSet(name, domain, shape, about, records, probes)


def _contradict(answer: str) -> str:
    """The same sentence with its first number changed (or a qualifier added when it has none)."""
    import re

    match = re.search(r"\d+", answer)
    if not match:
        return answer.rstrip(".") + ", except on holidays."
    return answer[: match.start()] + str(int(match.group()) + 1) + answer[match.end() :]


def write(feedback_set: FeedbackSet, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data, probes = folder / f"{feedback_set.name}.jsonl", folder / f"{feedback_set.name}.probes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in feedback_set.records))
    probes.write_text("".join(json.dumps(p) + "\n" for p in feedback_set.probes))
    return data, probes


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "feedback-sets")
    for set_name in SETS:
        built = build(set_name)
        write(built, out)
        print(f"{set_name}: {len(built.records)} records, {len(built.probes)} probes, {len(built.domain.facts)} facts")
