"""Candidate general-knowledge items for the generation regression suite, written by hand or generated
(arithmetic, units): questions with accepted answers and known wrong answers, several phrasings of
one fact sharing a cluster. ``build_regression`` keeps the ones the base model answers correctly.

Rules every candidate follows (``candidates`` checks them): no accepted answer appears in its own
question (an echo must not pass), and accepted answers are matched as whole words, so "7" never
matches "17".
"""

from __future__ import annotations

import random
import re

from tuneloop.eval_suites.matching import contains_phrase

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> list[str]:
    """Ways to write ``n`` (0-9999) an answer may use: digits and, below 100, words."""
    forms = [str(n)]
    if n >= 1000:
        forms.append(f"{n:,}")
    if n < 20:
        forms.append(_ONES[n])
    elif n < 100:
        tens, ones = divmod(n, 10)
        forms += [_TENS[tens]] if ones == 0 else [f"{_TENS[tens]}-{_ONES[ones]}", f"{_TENS[tens]} {_ONES[ones]}"]
    elif n in (100, 1000):
        forms += ["one hundred", "a hundred"] if n == 100 else ["one thousand", "a thousand"]
    return forms


# (country, capital, wrong answers a model confuses it with); two phrasings each
CAPITALS = [
    ("France", "Paris", []),
    ("Germany", "Berlin", ["Munich", "Frankfurt"]),
    ("Italy", "Rome", ["Milan"]),
    ("Spain", "Madrid", ["Barcelona"]),
    ("Portugal", "Lisbon", ["Porto"]),
    ("the United Kingdom", "London", []),
    ("Ireland", "Dublin", []),
    ("Japan", "Tokyo", ["Kyoto", "Osaka"]),
    ("China", "Beijing", ["Shanghai"]),
    ("Russia", "Moscow", ["Saint Petersburg"]),
    ("Egypt", "Cairo", []),
    ("Greece", "Athens", []),
    ("Canada", "Ottawa", ["Toronto", "Montreal", "Vancouver"]),
    ("Australia", "Canberra", ["Sydney", "Melbourne"]),
    ("the United States", "Washington", ["New York"]),
    ("Mexico", "Mexico City", []),
    ("Brazil", "Brasília", ["Rio de Janeiro", "São Paulo"]),
    ("Argentina", "Buenos Aires", []),
    ("India", "New Delhi", ["Mumbai"]),
    ("South Korea", "Seoul", ["Busan"]),
    ("Norway", "Oslo", []),
    ("Sweden", "Stockholm", []),
    ("Finland", "Helsinki", []),
    ("Denmark", "Copenhagen", []),
    ("Poland", "Warsaw", ["Krakow"]),
    ("Austria", "Vienna", []),
    ("Hungary", "Budapest", []),
    ("the Czech Republic", "Prague", []),
    ("the Netherlands", "Amsterdam", ["Rotterdam"]),
    ("Belgium", "Brussels", []),
    ("Switzerland", "Bern", ["Zurich", "Geneva"]),
    ("Turkey", "Ankara", ["Istanbul"]),
    ("Thailand", "Bangkok", []),
    ("Vietnam", "Hanoi", ["Ho Chi Minh"]),
    ("Indonesia", "Jakarta", []),
    ("the Philippines", "Manila", []),
    ("Kenya", "Nairobi", []),
    ("Nigeria", "Abuja", ["Lagos"]),
    ("Peru", "Lima", []),
    ("Chile", "Santiago", []),
    ("Colombia", "Bogotá", []),
    ("Cuba", "Havana", []),
    ("Iran", "Tehran", []),
    ("Iraq", "Baghdad", []),
    ("Saudi Arabia", "Riyadh", ["Jeddah", "Mecca"]),
    ("Israel", "Jerusalem", ["Tel Aviv"]),
    ("Pakistan", "Islamabad", ["Karachi"]),
    ("Ukraine", "Kyiv", []),
    ("Romania", "Bucharest", []),
    ("Iceland", "Reykjavik", []),
    ("New Zealand", "Wellington", ["Auckland"]),
    ("South Africa", "Pretoria", []),
    ("Morocco", "Rabat", ["Casablanca"]),
    ("Scotland", "Edinburgh", ["Glasgow"]),
    ("Venezuela", "Caracas", []),
    ("Afghanistan", "Kabul", []),
    ("Bangladesh", "Dhaka", []),
    ("Malaysia", "Kuala Lumpur", []),
    ("Singapore", "Singapore", []),
    ("Ethiopia", "Addis Ababa", []),
]
CAPITAL_FORMS = ["What is the capital of {}?", "Which city is the capital of {}?"]

# (category, [phrasings], [accepted answers], [wrong answers])
FACTS: list[tuple[str, list[str], list[str], list[str]]] = [
    # geography
    ("geography", ["What is the largest ocean on Earth?", "Which ocean is the biggest?"], ["Pacific"], ["Atlantic"]),
    (
        "geography",
        ["What is the longest river in the world?", "Which river is the longest on Earth?"],
        ["Nile", "Amazon"],
        [],
    ),
    (
        "geography",
        ["What is the tallest mountain in the world?", "Which mountain is the highest on Earth?"],
        ["Everest"],
        [],
    ),
    ("geography", ["On which continent is Egypt?", "Egypt is on which continent?"], ["Africa"], ["Asia"]),
    (
        "geography",
        ["On which continent is Brazil?", "Brazil is in which continent?"],
        ["South America"],
        ["North America"],
    ),
    ("geography", ["On which continent is Japan?"], ["Asia"], ["Europe"]),
    ("geography", ["On which continent is France?"], ["Europe"], []),
    ("geography", ["On which continent is Kenya?"], ["Africa"], []),
    ("geography", ["On which continent is Canada?"], ["North America"], ["South America"]),
    (
        "geography",
        ["On which continent is Australia?", "Which continent is Australia part of?"],
        ["Australia", "Oceania"],
        [],
    ),
    ("geography", ["What is the largest desert in Africa?"], ["Sahara"], []),
    (
        "geography",
        ["What is the largest country in the world by area?", "Which country is the biggest by land area?"],
        ["Russia"],
        ["Canada", "China"],
    ),
    ("geography", ["Which country has the largest population in the world?"], ["India", "China"], []),
    (
        "geography",
        ["In which country is the Eiffel Tower?", "Where is the Eiffel Tower located?"],
        ["France", "Paris"],
        [],
    ),
    ("geography", ["In which country are the pyramids of Giza?"], ["Egypt"], []),
    ("geography", ["In which city is the Colosseum?"], ["Rome"], []),
    ("geography", ["In which country is the Great Wall?"], ["China"], []),
    ("geography", ["In which city is the Statue of Liberty?"], ["New York"], []),
    ("geography", ["In which country is Machu Picchu?"], ["Peru"], []),
    ("geography", ["In which country is the Taj Mahal?"], ["India"], []),
    ("geography", ["What is the largest continent?", "Which continent is the biggest?"], ["Asia"], ["Africa"]),
    (
        "geography",
        ["How many continents are there?", "What is the number of continents on Earth?"],
        number_words(7),
        [],
    ),
    ("geography", ["What is the coldest continent?"], ["Antarctica"], []),
    ("geography", ["Which country is shaped like a boot?"], ["Italy"], []),
    ("geography", ["What is the smallest country in the world?"], ["Vatican"], []),
    (
        "geography",
        ["What language is mainly spoken in Brazil?", "What is the official language of Brazil?"],
        ["Portuguese"],
        ["Spanish"],
    ),
    ("geography", ["What language is spoken in Mexico?"], ["Spanish"], []),
    ("geography", ["What language do people speak in Germany?"], ["German"], []),
    ("geography", ["What is the currency of Japan?"], ["yen"], []),
    ("geography", ["What is the currency of the United Kingdom?"], ["pound", "pounds", "sterling"], []),
    ("geography", ["What is the currency used in Germany?"], ["euro", "euros"], []),
    # science and definitions
    ("science", ["What planet is known as the Red Planet?", "Which planet is called the Red Planet?"], ["Mars"], []),
    (
        "science",
        ["What is the largest planet in our solar system?", "Which planet is the biggest in the solar system?"],
        ["Jupiter"],
        [],
    ),
    ("science", ["What is the closest star to Earth?", "Which star is nearest to the Earth?"], ["Sun"], []),
    ("science", ["Which planet is closest to the Sun?"], ["Mercury"], ["Venus"]),
    ("science", ["Which planet has prominent rings?", "Which planet is famous for its rings?"], ["Saturn"], []),
    (
        "science",
        ["What is the natural satellite of the Earth called?", "What orbits the Earth every month?"],
        ["Moon"],
        [],
    ),
    ("science", ["Which planet do we live on?", "What is the name of our planet?"], ["Earth"], []),
    ("science", ["How many planets are in our solar system?"], number_words(8), ["nine", "9"]),
    (
        "science",
        ["What gas do plants absorb from the air?", "Which gas do plants take in for photosynthesis?"],
        ["carbon dioxide", "CO2"],
        [],
    ),
    ("science", ["What gas do humans need to breathe?", "Which gas do we breathe in to live?"], ["oxygen"], []),
    ("science", ["What is the chemical formula for water?", "What is water's chemical formula?"], ["H2O"], []),
    ("science", ["What is the chemical symbol for gold?"], ["Au"], []),
    ("science", ["What is the chemical symbol for oxygen?"], ["O"], []),
    ("science", ["What is the chemical symbol for sodium?"], ["Na"], []),
    ("science", ["What is the chemical symbol for iron?"], ["Fe"], []),
    (
        "science",
        ["At what temperature in Celsius does water freeze?", "What is the freezing point of water in Celsius?"],
        ["0", "zero"],
        [],
    ),
    (
        "science",
        ["At what temperature in Celsius does water boil?", "What is the boiling point of water in Celsius?"],
        ["100", "one hundred"],
        [],
    ),
    ("science", ["What is the hardest natural substance?"], ["diamond", "diamonds"], []),
    ("science", ["What force keeps us on the ground?", "What pulls objects towards the Earth?"], ["gravity"], []),
    ("science", ["What organ pumps blood through the body?", "Which organ pumps blood?"], ["heart"], []),
    ("science", ["What organ do we use to think?", "Which organ controls the body and thinking?"], ["brain"], []),
    ("science", ["What organ do we breathe with?"], ["lungs", "lung"], []),
    ("science", ["How many bones are in the adult human body?"], ["206"], []),
    ("science", ["What is the largest organ of the human body?"], ["skin"], []),
    ("science", ["What do bees make?", "What sweet food do bees produce?"], ["honey"], []),
    ("science", ["What is the process by which plants make food from sunlight?"], ["photosynthesis"], []),
    ("science", ["What is the center of an atom called?"], ["nucleus"], []),
    ("science", ["What is frozen water called?"], ["ice"], []),
    ("science", ["What is the study of living things called?"], ["biology"], []),
    ("science", ["What is the study of the stars and planets called?"], ["astronomy"], []),
    ("science", ["What is the study of the Earth's rocks called?"], ["geology"], []),
    (
        "science",
        ["What do caterpillars turn into?", "A caterpillar becomes what insect?"],
        ["butterfly", "butterflies", "moth"],
        [],
    ),
    ("science", ["What is a baby frog called?"], ["tadpole"], []),
    ("science", ["What is the largest mammal?", "Which animal is the biggest mammal on Earth?"], ["blue whale"], []),
    ("science", ["What is the fastest land animal?", "Which land animal runs the fastest?"], ["cheetah"], []),
    ("science", ["What is the tallest animal?"], ["giraffe"], []),
    ("science", ["What animal is known as the king of the jungle?"], ["lion"], []),
    ("science", ["What is the largest bird in the world?"], ["ostrich"], []),
    ("science", ["What do you call an animal that eats only plants?"], ["herbivore", "herbivores"], []),
    ("science", ["What do you call an animal that eats only meat?"], ["carnivore", "carnivores"], []),
    ("science", ["What is the boiling point of water in Fahrenheit?"], ["212"], []),
    (
        "science",
        ["What is the speed of light in a vacuum, roughly, in kilometres per second?"],
        ["300,000", "299,792", "300000", "299792"],
        [],
    ),
    (
        "science",
        ["What colour do you get when you mix blue and yellow?", "Blue and yellow make which colour?"],
        ["green"],
        [],
    ),
    ("science", ["What colour do you get by mixing red and white?"], ["pink"], []),
    ("science", ["What colour do you get when you mix red and blue?"], ["purple", "violet"], []),
    ("science", ["What is the opposite of north on a compass?"], ["south"], []),
    ("science", ["What does a thermometer measure?"], ["temperature"], []),
    ("science", ["What instrument is used to look at stars?"], ["telescope"], []),
    ("science", ["What instrument makes tiny things look bigger?"], ["microscope", "magnifying glass"], []),
    # general knowledge
    ("general", ["What colour is the sky on a clear day?", "On a sunny day, what colour is the sky?"], ["blue"], []),
    ("general", ["What colour is grass?", "Grass is usually what colour?"], ["green"], []),
    ("general", ["What colour are ripe bananas?", "What colour is a ripe banana?"], ["yellow"], []),
    ("general", ["What colour is snow?"], ["white"], []),
    ("general", ["What colour is a stop sign?"], ["red"], []),
    ("general", ["What animal says 'moo'?", "Which animal goes moo?"], ["cow", "cows"], []),
    ("general", ["What animal barks?", "Which pet barks?"], ["dog", "dogs"], []),
    ("general", ["What animal meows?", "Which pet says meow?"], ["cat", "cats"], []),
    ("general", ["How many legs does a spider have?", "A spider has how many legs?"], number_words(8), []),
    ("general", ["How many legs does an insect have?"], number_words(6), []),
    ("general", ["How many legs does a dog have?"], number_words(4), []),
    ("general", ["How many wheels does a bicycle have?", "A bicycle has how many wheels?"], number_words(2), []),
    ("general", ["How many wheels does a tricycle have?"], number_words(3), []),
    ("general", ["How many sides does a triangle have?", "A triangle has how many sides?"], number_words(3), []),
    ("general", ["How many sides does a square have?", "A square has how many sides?"], number_words(4), []),
    ("general", ["How many sides does a hexagon have?"], number_words(6), []),
    ("general", ["How many sides does an octagon have?"], number_words(8), []),
    ("general", ["How many sides does a pentagon have?"], number_words(5), []),
    ("general", ["How many players are on a soccer team on the field?"], number_words(11), []),
    ("general", ["How many strings does a standard guitar have?"], number_words(6), []),
    ("general", ["How many keys does a standard piano have?"], ["88"], []),
    ("general", ["How many colours are in a rainbow?", "A rainbow has how many colours?"], number_words(7), []),
    (
        "general",
        ["How many letters are in the English alphabet?", "The English alphabet has how many letters?"],
        number_words(26),
        [],
    ),
    ("general", ["How many vowels are in the English alphabet?"], number_words(5), []),
    ("general", ["How many cards are in a standard deck?"], number_words(52), []),
    ("general", ["How many zeros are in one million?"], number_words(6), []),
    ("general", ["Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"], ["Shakespeare"], []),
    ("general", ["Who wrote Hamlet?"], ["Shakespeare"], []),
    ("general", ["Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"], ["Leonardo", "da Vinci"], []),
    ("general", ["Who painted The Starry Night?"], ["Van Gogh"], []),
    (
        "general",
        ["Who developed the theory of relativity?", "Which scientist is known for the theory of relativity?"],
        ["Einstein"],
        [],
    ),
    ("general", ["Who discovered gravity when an apple fell?"], ["Newton"], []),
    ("general", ["Who was the first person to walk on the Moon?", "Who first stepped on the Moon?"], ["Armstrong"], []),
    ("general", ["Who invented the telephone?"], ["Bell"], []),
    ("general", ["Who invented the light bulb?"], ["Edison"], []),
    ("general", ["Who was the first President of the United States?"], ["Washington"], []),
    ("general", ["Who wrote the Harry Potter books?"], ["Rowling"], []),
    ("general", ["Who composed the Fifth Symphony that begins da-da-da-dum?"], ["Beethoven"], []),
    ("general", ["What is the name of the fairy in Peter Pan?"], ["Tinker Bell", "Tinkerbell"], []),
    ("general", ["What is the opposite of day?"], ["night"], []),
    ("general", ["What do you call a baby dog?", "A young dog is called what?"], ["puppy", "puppies", "pup"], []),
    ("general", ["What do you call a baby cat?", "A young cat is called what?"], ["kitten", "kittens"], []),
    ("general", ["What do you call a baby cow?"], ["calf"], []),
    ("general", ["What do you call a baby sheep?"], ["lamb"], []),
    ("general", ["What do you call a baby horse?"], ["foal", "pony"], []),
    ("general", ["What is the main ingredient of guacamole?"], ["avocado", "avocados"], []),
    ("general", ["What is the main ingredient in bread?"], ["flour", "wheat"], []),
    ("general", ["What do cows produce that people drink?"], ["milk"], []),
    ("general", ["What fruit is used to make wine?"], ["grape", "grapes"], []),
    ("general", ["What fruit keeps the doctor away, according to the saying?"], ["apple"], []),
    ("general", ["Which sport uses a bat, a ball and wickets?"], ["cricket"], []),
    ("general", ["In which sport do you score a touchdown?"], ["football", "American football"], []),
    ("general", ["In which sport do players use a racket and a shuttlecock?"], ["badminton"], []),
    ("general", ["How often are the Summer Olympic Games held?"], ["four years", "4 years"], []),
    ("general", ["Which season is the coldest?", "Which is the coldest season of the year?"], ["winter"], []),
    ("general", ["Which season comes after winter?"], ["spring"], []),
    ("general", ["Which season comes after summer?"], ["autumn", "fall"], []),
    ("general", ["What is the first month of the year?"], ["January"], []),
    ("general", ["What is the last month of the year?"], ["December"], []),
    ("general", ["Which month has the fewest days?"], ["February"], []),
    ("general", ["What day comes after Monday?"], ["Tuesday"], []),
    ("general", ["What day comes after Friday?"], ["Saturday"], []),
    ("general", ["What day comes before Sunday?"], ["Saturday"], []),
    ("general", ["What holiday is celebrated on December 25?"], ["Christmas"], []),
    ("general", ["What do you use to write on a blackboard?"], ["chalk"], []),
    ("general", ["What do you call a person who flies an airplane?"], ["pilot"], []),
    ("general", ["What do you call a doctor for teeth?", "Who do you visit to check your teeth?"], ["dentist"], []),
    ("general", ["What do you call a person who fixes leaking pipes?"], ["plumber"], []),
    ("general", ["What do you call a person who grows crops?"], ["farmer"], []),
    ("general", ["What is the name for a group of wolves?"], ["pack"], []),
    ("general", ["What is the name for a group of fish?"], ["school", "shoal"], []),
    ("general", ["What is H2O commonly called?"], ["water"], []),
    ("general", ["What is the main language spoken in the United States?"], ["English"], []),
    ("general", ["What is the primary language of France?"], ["French"], []),
    ("general", ["What is the national language of Italy?"], ["Italian"], []),
]

# units and time: (phrasings, number)
UNITS: list[tuple[list[str], int]] = [
    (["How many days are in a week?", "A week has how many days?"], 7),
    (["How many hours are in a day?", "A day has how many hours?"], 24),
    (["How many minutes are in an hour?", "An hour has how many minutes?"], 60),
    (["How many seconds are in a minute?", "A minute has how many seconds?"], 60),
    (["How many months are in a year?", "A year has how many months?"], 12),
    (["How many days are in a year?", "A normal year has how many days?"], 365),
    (["How many days are in a leap year?"], 366),
    (["How many weeks are in a year?", "A year has about how many weeks?"], 52),
    (["How many days are in January?"], 31),
    (["How many days are in April?"], 30),
    (["How many days does February have in a leap year?"], 29),
    (["How many years are in a decade?", "A decade is how many years?"], 10),
    (["How many years are in a century?", "A century is how many years?"], 100),
    (["How many years are in a millennium?"], 1000),
    (["How many centimetres are in a metre?", "A metre has how many centimetres?"], 100),
    (["How many millimetres are in a centimetre?"], 10),
    (["How many metres are in a kilometre?", "A kilometre is how many metres?"], 1000),
    (["How many grams are in a kilogram?", "A kilogram is how many grams?"], 1000),
    (["How many millilitres are in a litre?"], 1000),
    (["How many inches are in a foot?", "A foot has how many inches?"], 12),
    (["How many feet are in a yard?"], 3),
    (["How many ounces are in a pound?"], 16),
    (["How many items are in a dozen?", "A dozen is how many?"], 12),
    (["How many minutes are in half an hour?"], 30),
    (["How many minutes are in a quarter of an hour?"], 15),
    (["How many hours are in half a day?"], 12),
    (["How many days are in two weeks?", "A fortnight is how many days?"], 14),
    (["How many cents are in a dollar?", "A dollar has how many cents?"], 100),
    (["How many pennies make a pound in British money?"], 100),
    (["How many degrees are in a right angle?", "A right angle measures how many degrees?"], 90),
    (["How many degrees are in a full circle?", "A full circle has how many degrees?"], 360),
    (["How many degrees do the angles of a triangle add up to?"], 180),
    (["How many hours are in two days?"], 48),
    (["How many seconds are in an hour?"], 3600),
    (["How many days are in a weekend?"], 2),
    (["How many weekdays are there from Monday to Friday?"], 5),
]

LANGUAGE: list[tuple[str, list[str], list[str]]] = []
_OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("happy", "sad"),
    ("fast", "slow"),
    ("light", "dark"),
    ("old", "young"),
    ("tall", "short"),
    ("open", "closed"),
    ("full", "empty"),
    ("wet", "dry"),
    ("early", "late"),
    ("hard", "soft"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("heavy", "light"),
    ("inside", "outside"),
    ("push", "pull"),
    ("win", "lose"),
    ("love", "hate"),
    ("good", "bad"),
    ("clean", "dirty"),
    ("thick", "thin"),
    ("loud", "quiet"),
    ("left", "right"),
    ("first", "last"),
    ("start", "finish"),
    ("true", "false"),
    ("buy", "sell"),
    ("top", "bottom"),
    ("always", "never"),
    ("arrive", "leave"),
    ("cheap", "expensive"),
    ("easy", "difficult"),
    ("friend", "enemy"),
    ("question", "answer"),
    ("asleep", "awake"),
    ("remember", "forget"),
]
_OPPOSITE_EXTRA = {
    "big": ["little", "tiny"],
    "old": ["new"],
    "light": ["heavy"],
    "hard": ["easy"],
    "open": ["shut"],
    "start": ["end", "stop", "finish"],
    "arrive": ["depart"],
    "easy": ["hard"],
    "early": ["later"],
    "loud": ["silent", "soft"],
}
_PLURALS = [
    ("child", "children"),
    ("mouse", "mice"),
    ("man", "men"),
    ("woman", "women"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("goose", "geese"),
    ("person", "people"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("wolf", "wolves"),
    ("box", "boxes"),
    ("baby", "babies"),
    ("city", "cities"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("ox", "oxen"),
    ("cactus", "cacti"),
    ("half", "halves"),
    ("potato", "potatoes"),
]
_PAST = [
    ("go", "went"),
    ("eat", "ate"),
    ("see", "saw"),
    ("run", "ran"),
    ("swim", "swam"),
    ("write", "wrote"),
    ("take", "took"),
    ("buy", "bought"),
    ("think", "thought"),
    ("bring", "brought"),
    ("sing", "sang"),
    ("drink", "drank"),
    ("fly", "flew"),
    ("speak", "spoke"),
    ("make", "made"),
    ("teach", "taught"),
    ("catch", "caught"),
    ("sleep", "slept"),
    ("begin", "began"),
    ("drive", "drove"),
    ("be", "was"),
    ("have", "had"),
    ("do", "did"),
    ("come", "came"),
    ("give", "gave"),
]
_TRANSLATIONS = [
    ("hello", "Spanish", ["hola"]),
    ("thank you", "French", ["merci"]),
    ("hello", "French", ["bonjour"]),
    ("goodbye", "Spanish", ["adiós", "adios"]),
    ("yes", "Spanish", ["sí", "si"]),
    ("thank you", "Spanish", ["gracias"]),
    ("please", "French", ["s'il vous plaît", "s'il vous plait"]),
    ("yes", "German", ["ja"]),
    ("thank you", "German", ["danke"]),
    ("good night", "Spanish", ["buenas noches"]),
    ("cat", "Spanish", ["gato"]),
    ("water", "Spanish", ["agua"]),
    ("friend", "Spanish", ["amigo", "amiga"]),
    ("thank you", "Italian", ["grazie"]),
    ("hello", "Italian", ["ciao", "salve"]),
    ("goodbye", "French", ["au revoir"]),
    ("dog", "French", ["chien"]),
    ("one", "Spanish", ["uno"]),
    ("thank you", "Japanese", ["arigato", "arigatou"]),
    ("hello", "German", ["hallo", "guten tag"]),
]
_SYNONYM = [
    ("happy", ["glad", "joyful", "cheerful", "content", "delighted", "pleased", "joyous", "elated"]),
    ("big", ["large", "huge", "enormous", "giant", "massive"]),
    ("small", ["little", "tiny", "mini", "miniature", "petite"]),
    ("fast", ["quick", "rapid", "speedy", "swift"]),
    ("begin", ["start", "commence"]),
    ("smart", ["intelligent", "clever", "bright", "wise"]),
    ("angry", ["mad", "furious", "upset", "irritated", "annoyed"]),
    ("scared", ["afraid", "frightened", "fearful", "terrified"]),
]


def _language() -> list[tuple[str, str, list[str], list[str], list[str]]]:
    """(subcategory, cluster key, phrasings, accepted, wrong)."""
    out = []
    for word, opposite in _OPPOSITES:
        accepted = [opposite, *_OPPOSITE_EXTRA.get(word, [])]
        out.append(
            (
                "opposite",
                f"opposite-{word}",
                [f"What is the opposite of {word}?", f"What word means the opposite of '{word}'?"],
                accepted,
                [],
            )
        )
    for singular, plural in _PLURALS:
        wrong = [f"{singular}s"] if plural != f"{singular}s" and plural != singular else []
        out.append(
            (
                "plural",
                f"plural-{singular}",
                [f"What is the plural of {singular}?", f"What is the plural form of the word '{singular}'?"],
                [plural],
                wrong,
            )
        )
    for verb, past in _PAST:
        out.append(
            (
                "past_tense",
                f"past-{verb}",
                [f"What is the past tense of {verb}?", f"What is the past tense of the verb 'to {verb}'?"],
                [past],
                [f"{verb}ed"],
            )
        )
    for word, language, accepted in _TRANSLATIONS:
        out.append(
            (
                "translation",
                f"say-{word}-{language}",
                [f"How do you say '{word}' in {language}?", f"What is the {language} word for '{word}'?"],
                accepted,
                [],
            )
        )
    for word, accepted in _SYNONYM:
        out.append(
            (
                "synonym",
                f"synonym-{word}",
                [f"What is another word for {word}?", f"Give me a synonym for '{word}'."],
                accepted,
                [],
            )
        )
    return out


def _arithmetic(rng: random.Random) -> list[tuple[str, list[str], int]]:
    """(cluster key, phrasings, answer): sums, differences, products and halves of small numbers."""
    out, seen = [], set()

    def add(key: str, phrasings: list[str], answer: int) -> None:
        if key not in seen:
            seen.add(key)
            out.append((key, phrasings, answer))

    while len(out) < 30:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        add(f"add-{min(a, b)}-{max(a, b)}", [f"What is {a} + {b}?", f"What is {a} plus {b}?"], a + b)
    while len(out) < 50:
        a, b = rng.randint(5, 30), rng.randint(1, 9)
        if a > b:
            add(f"sub-{a}-{b}", [f"What is {a} - {b}?", f"What is {a} minus {b}?"], a - b)
    while len(out) < 75:
        a, b = rng.randint(2, 12), rng.randint(2, 10)
        add(f"mul-{min(a, b)}-{max(a, b)}", [f"What is {a} times {b}?", f"What is {a} multiplied by {b}?"], a * b)
    while len(out) < 85:
        a = rng.randint(2, 25) * 2
        add(f"half-{a}", [f"What is half of {a}?"], a // 2)
    while len(out) < 95:
        a = rng.randint(2, 30)
        add(f"double-{a}", [f"What is double {a}?", f"What is twice {a}?"], a * 2)
    return out


def candidates(seed: int = 0) -> list[dict]:
    """Every candidate item (id, category, cluster, input, must_contain_any, must_not_contain), checked
    for the rules in the module docstring (a violating phrasing is dropped)."""
    rng = random.Random(seed)
    raw: list[tuple[str, str, str, list[str], list[str]]] = []  # category, cluster, input, accepted, wrong
    for country, capital, wrong in CAPITALS:
        for form in CAPITAL_FORMS:
            slug = re.sub(r"\W+", "-", country.lower()).strip("-")
            raw.append(("capitals", f"capital-{slug}", form.format(country), [capital], wrong))
    for n, (category, phrasings, accepted, wrong) in enumerate(FACTS):
        for p in phrasings:
            raw.append((category, f"{category}-{n:03d}", p, accepted, wrong))
    for n, (phrasings, value) in enumerate(UNITS):
        for p in phrasings:
            raw.append(("units_time", f"units-{n:03d}", p, number_words(value), []))
    for _, key, phrasings, accepted, wrong in _language():
        for p in phrasings:
            raw.append(("language", key, p, accepted, wrong))
    for key, phrasings, value in _arithmetic(rng):
        for p in phrasings:
            raw.append(("arithmetic", key, p, number_words(value), []))
    items = []
    for category, cluster, text, accepted, wrong in raw:
        if any(contains_phrase(text, a) for a in accepted):
            continue  # the question holds its own answer: an echo would pass
        items.append(
            {
                "id": f"gen-reg-{len(items):04d}",
                "category": category,
                "cluster": cluster,
                "input": text,
                "must_contain_any": accepted,
                "must_not_contain": wrong,
            }
        )
    return items


if __name__ == "__main__":
    from collections import Counter

    found = candidates()
    print(len(found), Counter(c["category"] for c in found))
