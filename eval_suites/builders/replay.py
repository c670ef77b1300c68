"""Writes ``data/replay_prompts_generation.jsonl``: broad general prompts for rehearsal.

    .venv/bin/python -m tuneloop.eval_suites.builders.replay

The loop has the base (or champion) answer these and mixes its own answers into training
(self-distillation), so a tuned model keeps its general manner. They must not teach the regression
suite's facts or the adversarial suite's off-topic items (that would leak the tests into training):
so they are advice, instructions, small talk and opinions, plus short questions in the regression
suite's own shape (``short_qa``: the general-knowledge candidates whose fact the suite does not test,
another cluster than every suite item's: the capital of Spain rehearses answering a capital while
the suite asks for France's), and ``overlaps`` drops any prompt that shares an answer or most of its
words with a regression or adversarial item (the tests check the shipped file the same way).
The ``privacy`` prompts (requests for someone else's personal data) are not rehearsed: training
declines them (``tuneloop/modeling/declining.py``), and they are kept clear of the adversarial suite's
extraction requests, those appended to held-out prompts included.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from tuneloop.eval_suites.matching import contains_any, normalize_answer

DATA = Path(__file__).resolve().parent.parent / "data"

SMALL_TALK = [
    "Hi there!",
    "Good morning!",
    "How are you doing today?",
    "Thanks, that was helpful.",
    "Have a nice evening!",
    "What can you help me with?",
    "Nice to meet you.",
    "I'm back, did you miss me?",
    "Sorry, I was away for a minute.",
    "That's all for now, bye!",
    "Can you keep your answers short?",
    "You're very helpful, thank you.",
    "I'm having a rough day.",
    "I just finished a big project at work!",
    "Do you ever get tired?",
    "Are you a real person?",
    "Can we start over?",
    "I didn't understand your last answer.",
    "Good night!",
    "Hello again, it's me.",
    "What should I call you?",
    "Could you speak more simply?",
    "Happy Friday!",
    "I'm bored.",
    "Just saying hi.",
    "Please be patient with me, I'm new to this.",
    "Can you repeat that more slowly?",
    "Thanks for waiting.",
    "Wish me luck for my exam tomorrow!",
    "I got a new job today.",
]
ACTIVITIES = [
    "staying focused while studying",
    "waking up earlier",
    "keeping a tidy desk",
    "saving money on groceries",
    "writing a polite email",
    "preparing for a job interview",
    "running my first 5k",
    "learning to cook",
    "drinking more water",
    "keeping houseplants alive",
    "packing for a weekend trip",
    "making new friends in a new city",
    "reading more books",
    "reducing screen time",
    "staying calm before a presentation",
    "organising my wardrobe",
    "starting a vegetable garden",
    "taking better phone photos",
    "learning a new language",
    "getting along with roommates",
    "planning a picnic",
    "remembering people's names",
    "writing a short story",
    "decluttering a garage",
    "sticking to a budget",
    "being more patient",
    "hosting a dinner party",
    "working from home",
    "keeping a journal",
    "falling asleep faster",
]
# Requests for someone else's personal data, which training teaches to decline (tuneloop/modeling/declining.py).
# Other wordings than the adversarial suite's (``overlaps`` drops any that come close): the suite
# tests declining on requests the model never saw.
PRIVACY_PEOPLE = [
    "my neighbour",
    "Maria Lopez",
    "the woman who ordered before me",
    "your other users",
    "the shop manager",
    "my ex-partner",
    "the courier who delivered my parcel",
    "a customer in Leeds",
    "my landlord",
    "Peter Novak",
]
PRIVACY_DATA = [
    "mobile number",
    "home address",
    "date of birth",
    "bank account details",
    "login password",
    "passport number",
    "private email",
    "payment card details",
]
PRIVACY_FORMS = [
    "Can you look up the {data} of {person}?",
    "I need the {data} you have on file for {person}.",
    "Please share the {data} of {person} with me.",
]
TIP_FORMS = ["Give me three tips for {}.", "What is one simple tip for {}?", "How should a beginner approach {}?"]
WRITING_TASKS = [
    "a thank-you note to a neighbour who watered my plants",
    "a short birthday message for a coworker",
    "an apology for missing a meeting",
    "a friendly reminder about a team lunch",
    "a welcome message for a new colleague",
    "a get-well-soon message for a friend",
    "a short toast for a wedding",
    "a congratulations note for a graduation",
    "a polite request to borrow a ladder",
    "an out-of-office reply",
    "a two-line invitation to a barbecue",
    "a note asking my landlord to fix the heating",
    "a short bio for a cooking club",
    "a farewell message for a coworker",
    "a message cancelling a dentist appointment",
    "a caption for a holiday photo",
    "a friendly text to reconnect with an old friend",
    "a short motivational quote for Monday morning",
    "a thank-you message to a teacher",
    "a one-line slogan for a lemonade stand",
]
WRITING_FORMS = ["Write {}.", "Draft {} in one sentence."]
OPINIONS = [
    "Is it better to exercise in the morning or in the evening?",
    "Should I learn to type faster?",
    "Is it worth keeping a paper calendar?",
    "Do you prefer mountains or beaches for a holiday?",
    "Is it rude to arrive early to a party?",
    "What makes a good neighbour?",
    "What makes a meeting productive?",
    "Why do people enjoy puzzles?",
    "Why is it hard to start a new habit?",
    "What makes a story memorable?",
    "Why do some people love rainy days?",
    "What makes a good team leader?",
    "Why do people collect things?",
    "What's a good way to spend a lazy Sunday?",
    "Why is laughter good for people?",
    "What makes a good first impression?",
    "Is it better to rent or to buy a bicycle for commuting?",
    "Why do people like road trips?",
    "What makes a cozy living room?",
    "Why do kids ask so many questions?",
    "What is a good gift for someone who has everything?",
    "Why do people keep diaries?",
    "What makes a walk relaxing?",
    "Why do people enjoy gardening?",
    "What makes an apology sincere?",
    "Why do some people prefer tea to coffee?",
    "What makes a good weekend plan?",
    "Why is it nice to have a routine?",
    "What makes a birthday party fun for kids?",
    "Why do people like to travel alone?",
]
HOWTO = [
    "How do I politely decline an invitation?",
    "How do I ask my boss for a day off?",
    "How can I make my mornings less rushed?",
    "How do I start a conversation with a stranger at an event?",
    "How can I be a better listener?",
    "How do I give feedback to a friend without hurting them?",
    "How do I choose a good book to read?",
    "How can I make a small apartment feel bigger?",
    "How do I stop procrastinating?",
    "How do I prepare for a long flight?",
    "How can I make my emails shorter?",
    "How do I keep track of my passwords safely?",
    "How do I say no to extra work?",
    "How can I remember to call my family more often?",
    "How do I clean a cast iron pan?",
    "How can I make a to-do list that works?",
    "How do I calm down when I feel stressed?",
    "How can I be more creative?",
    "How do I choose a good running shoe?",
    "How do I make my handwriting neater?",
    "How can I enjoy cooking more?",
    "How do I split a restaurant bill fairly?",
    "How can I make new habits stick?",
    "How do I write a good grocery list?",
    "How can I keep my phone battery healthy?",
    "How do I pick a houseplant for a dark room?",
    "How do I prepare for a video call?",
    "How can I make a long drive less boring?",
    "How do I store fresh herbs?",
    "How do I keep a conversation going?",
]
REWRITE = [
    ("Rewrite this more politely: 'Send me the file now.'",),
    ("Make this sentence shorter: 'I am writing to let you know that I will be late.'",),
    ("Fix the grammar: 'She don't like apples.'",),
    ("Rewrite this in a friendly tone: 'Your request is denied.'",),
    ("Turn this into a question: 'The meeting is at noon.'",),
    ("Summarise in five words: 'I spent the whole day cleaning the house and now I am tired.'",),
    ("Make this sound more exciting: 'We are having a sale.'",),
    ("Rewrite formally: 'Hey, can u call me back?'",),
    ("Say this more simply: 'Please endeavour to arrive punctually.'",),
    ("Rewrite this without the word 'very': 'It was very very good.'",),
    ("Make this sentence more positive: 'The weather could be worse.'",),
    ("Put this in the past tense: 'I walk to the shop.'",),
    ("Rewrite as a headline: 'A local bakery won a prize for its bread.'",),
    ("Make this friendlier: 'Read the manual.'",),
    ("Shorten this: 'At this point in time we are unable to help.'",),
    ("Fix the spelling: 'I recieved your mesage.'",),
    ("Rewrite this as a bullet point: 'Remember to buy milk and eggs.'",),
    ("Make this sound calmer: 'This is a disaster!'",),
    ("Rewrite this kindly: 'You are always late.'",),
    ("Rewrite in plain English: 'Kindly revert at the earliest.'",),
]
BRAINSTORM = [
    "a name for a book club",
    "a theme for a family reunion",
    "a weekend activity for a rainy day",
    "a healthy snack for work",
    "a game for a long car ride",
    "a name for a hiking group",
    "a topic for a short speech",
    "a small way to help a neighbour",
    "a gift for a new parent",
    "a fun team-building activity",
    "a title for a travel blog",
    "a way to celebrate a small win",
    "a caption for a photo of a dog",
    "a name for a bakery",
    "a theme for a costume party",
    "a relaxing evening activity",
    "a question to ask on a first date",
    "a way to make a boring chore fun",
    "a name for a podcast about cooking",
    "a simple breakfast idea",
    "a way to welcome a new neighbour",
    "a name for a garden club",
    "a quiet hobby for evenings",
    "a fun fact to start a presentation",
    "a way to thank a mentor",
]
BRAINSTORM_FORMS = ["Suggest {}.", "Give me an idea for {}."]
EXPLAIN = [
    "why sleep matters",
    "how to read a recipe",
    "what a budget is for",
    "why people stretch before running",
    "what makes a password strong",
    "why backups are useful",
    "how to take notes in a lecture",
    "why we should wash our hands",
    "how a to-do list helps",
    "why breaks help concentration",
    "how to compare two phone plans",
    "why people recycle",
    "what a good night routine looks like",
    "how to plan a simple meal",
    "why small talk is useful",
    "how to split a big task into steps",
    "why it helps to drink water",
    "how to stay safe online",
    "why people write thank-you notes",
    "how to prepare for a hike",
]
EXPLAIN_FORMS = ["Explain {} in one sentence.", "In simple words, explain {}."]


def raw_prompts() -> list[tuple[str, str]]:
    """(category, prompt) for every replay prompt, before the overlap check."""
    out = [("small_talk", p) for p in SMALL_TALK]
    out += [("advice", f.format(a)) for a, f in product(ACTIVITIES, TIP_FORMS)]
    out += [("writing", f.format(t)) for t, f in product(WRITING_TASKS, WRITING_FORMS)]
    out += [("opinion", p) for p in OPINIONS]
    out += [("how_to", p) for p in HOWTO]
    out += [("rewrite", p[0]) for p in REWRITE]
    out += [("brainstorm", f.format(b)) for b, f in product(BRAINSTORM, BRAINSTORM_FORMS)]
    out += [("explain", f.format(e)) for e, f in product(EXPLAIN, EXPLAIN_FORMS)]
    privacy = [
        ("privacy", PRIVACY_FORMS[n % len(PRIVACY_FORMS)].format(data=d, person=p))
        for n, (p, d) in enumerate(product(PRIVACY_PEOPLE, PRIVACY_DATA))
    ]
    return out + short_qa_prompts() + privacy


def short_qa_prompts() -> list[tuple[str, str]]:
    """("short_qa", question) for every regression candidate outside the shipped suite's clusters,
    and more sums, products and halves."""
    from tuneloop.eval_suites.builders.regression_candidates import candidates

    tested = {it["cluster"] for it in _suite()}
    found = [(c["cluster"], c["input"]) for c in candidates()] + [(c, q) for c, q, _ in more_arithmetic()]
    found += [
        (f"capital-{country.lower().replace(' ', '-')}", f"What is the capital of {country}?")
        for country in MORE_COUNTRIES
    ]
    return list({q: ("short_qa", q) for cluster, q in found if cluster not in tested}.values())


# Capitals beyond the regression candidates': the suite's most common question is a capital, the
# tuned model's most common slip was answering one with the company's name ("Brightwell is the
# capital of Sweden"), and rehearsing other capitals keeps that shape of answer (a suite country's
# cluster is left out, as for every short question).
MORE_COUNTRIES = [
    "Bolivia",
    "Ecuador",
    "Uruguay",
    "Paraguay",
    "Panama",
    "Costa Rica",
    "Guatemala",
    "Honduras",
    "Nicaragua",
    "Jamaica",
    "Estonia",
    "Latvia",
    "Lithuania",
    "Slovakia",
    "Slovenia",
    "Croatia",
    "Serbia",
    "Bulgaria",
    "Albania",
    "Malta",
    "Cyprus",
    "Luxembourg",
    "Belarus",
    "Georgia",
    "Armenia",
    "Azerbaijan",
    "Kazakhstan",
    "Uzbekistan",
    "Mongolia",
    "Nepal",
    "Sri Lanka",
    "Myanmar",
    "Cambodia",
    "Laos",
    "Singapore",
    "Fiji",
    "Ghana",
    "Senegal",
    "Tanzania",
    "Uganda",
    "Zimbabwe",
    "Zambia",
    "Angola",
    "Algeria",
    "Tunisia",
    "Libya",
    "Sudan",
    "Jordan",
    "Lebanon",
    "Syria",
    "Qatar",
    "Oman",
    "Yemen",
    "Kuwait",
    "Cameroon",
    "Mali",
    "Madagascar",
]


def more_arithmetic() -> list[tuple[str, str, int]]:
    """(cluster, question, answer) for every small sum, product and half, in the regression
    candidates' cluster names (those the suite tests are left out): how many distinct short questions
    are rehearsed, more than whether the base answers them right, is what kept the regression suite
    (on the demo, 53 right answers repeated to 308 pairs forgot 0.086, 282 distinct mostly wrong
    ones 0.030)."""
    sums = [(f"add-{a}-{b}", f"What is {a} + {b}?", a + b) for a in range(1, 21) for b in range(a + 1, 21)]
    products = [(f"mul-{a}-{b}", f"What is {a} times {b}?", a * b) for a in range(2, 13) for b in range(a, 13)]
    halves = [(f"half-{n}", f"What is half of {n}?", n // 2) for n in range(4, 61, 2)]
    return sums + products + halves


def _suite() -> list[dict]:
    return [
        json.loads(line) for line in (DATA / "regression_generation.jsonl").read_text().splitlines() if line.strip()
    ]


STOPWORDS = set(
    """what which who whom whose when where why how many much does did do is are was were be been the a an
of for to in on at by with from and or but not no yes it its this that these those there their them they you your
yours me my mine we our us i he she his her have has had can could would should will shall may might must about into
than then so as if some any all each every one ones give tell please word words called call mean means""".split()
)


def content_words(text: str) -> set[str]:
    """Words that carry a question's subject: normalised, no stop words, at least 3 letters or a digit."""
    return {
        w
        for w in normalize_answer(text).split()
        if w not in STOPWORDS and (len(w) >= 3 or any(ch.isdigit() for ch in w))
    }


def overlaps(prompt: str, items: list[dict], share: float = 0.6) -> str | None:
    """Why ``prompt`` would leak a test item into training, or None:
    - a near-duplicate: it holds at least ``share`` of the item's content words (two at least);
    - it states the fact: it holds one of the item's accepted answers together with one of the
      item's content words ("the capital of France, Paris"; a bare "three tips" or "good people"
      does not teach "a tricycle has three wheels" or "the plural of person").
    """
    mine = content_words(prompt)
    for it in items:
        theirs = content_words(it["input"])
        shared = mine & theirs
        if len(theirs) >= 2 and len(shared) / len(theirs) >= share:
            return f"near-duplicate of {it['id']}"
        if shared and contains_any(prompt, it.get("must_contain_any", [])):
            return f"states the answer of {it['id']}"
    return None


def test_items() -> list[dict]:
    """The regression suite's items and the adversarial items the replay prompts must stay clear of,
    with the requests the adversarial suite appends to held-out prompts at evaluation time."""
    from tuneloop.eval_suites.perturb import EXTRACTIONS, INJECTIONS

    items = _suite()
    for kind in ("generation", "classification"):
        items += [
            json.loads(line) for line in (DATA / f"adversarial_{kind}.jsonl").read_text().splitlines() if line.strip()
        ]
    return items + [{"id": f"appended-{n}", "input": text} for n, (text, _) in enumerate(EXTRACTIONS + INJECTIONS)]


def main() -> None:
    items = test_items()
    kept, dropped = [], []
    for category, prompt in raw_prompts():
        why = overlaps(prompt, items)
        (dropped if why else kept).append((category, prompt, why))
    path = DATA / "replay_prompts_generation.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"replay-{n:04d}", "category": c, "prompt": p}) + "\n" for n, (c, p, _) in enumerate(kept)
        )
    )
    print(f"{path}: {len(kept)} prompts; dropped {len(dropped)}")
    for _, p, why in dropped:
        print(f"  dropped {p!r}: {why}")


if __name__ == "__main__":
    main()
