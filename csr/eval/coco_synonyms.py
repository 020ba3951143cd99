"""CHAIR's COCO synonym table, data only (the code that uses it lives in csr.eval.chair).

Copied from the original CHAIR release (Rohrbach et al. 2018, github.com/LisaAnne/Hallucination,
data/synonyms.txt, embedded as `synonyms_txt` in the widely used copies of utils/chair.py).
One line of that file is one entry here: the first word is the COCO category and is kept as the
first element of its own list; the lists are verbatim, duplicates ("person", "bike", ...) and the
original's typos ("televison", "solider", "phon", "knive") included, since they are harmless and
changing them would change scores.  Only stray whitespace was trimmed: the original splits on ", ",
so its " motor bike" and " cheesecake" (double space) could never match, which was clearly a slip;
ORIGINAL_PARSE below puts the space back for the `original` CHAIR variant, which must keep the slip.
The list is the work of Rohrbach, Hendricks, Burns, Darrell and Saenko (EMNLP 2018), released under
the BSD 2-Clause license (stated in that repository's README); it is kept here as Python data, checked
entry by entry against the file's parse (split on ", " after strip()) when this table was written.
"""

from __future__ import annotations

COCO_SYNONYMS: dict[str, list[str]] = {
    "person": [
        "person", "girl", "boy", "man", "woman", "kid", "child", "chef", "baker", "people", "adult", "rider",
        "children", "baby", "worker", "passenger", "sister", "biker", "policeman", "cop", "officer", "lady",
        "cowboy", "bride", "groom", "male", "female", "guy", "traveler", "mother", "father", "gentleman",
        "pitcher", "player", "skier", "snowboarder", "skater", "skateboarder", "person", "woman", "guy",
        "foreigner", "child", "gentleman", "caller", "offender", "coworker", "trespasser", "patient",
        "politician", "soldier", "grandchild", "serviceman", "walker", "drinker", "doctor", "bicyclist",
        "thief", "buyer", "teenager", "student", "camper", "driver", "solider", "hunter", "shopper",
        "villager",
    ],
    "bicycle": ["bicycle", "bike", "bicycle", "bike", "unicycle", "minibike", "trike"],
    "car": [
        "car", "automobile", "van", "minivan", "sedan", "suv", "hatchback", "cab", "jeep", "coupe", "taxicab",
        "limo", "taxi",
    ],
    "motorcycle": ["motorcycle", "scooter", "motor bike", "motor cycle", "motorbike", "scooter", "moped"],
    "airplane": [
        "airplane", "jetliner", "plane", "air plane", "monoplane", "aircraft", "jet", "jetliner", "airbus",
        "biplane", "seaplane",
    ],
    "bus": ["bus", "minibus", "trolley"],
    "train": ["train", "locomotive", "tramway", "caboose"],
    "truck": ["truck", "pickup", "lorry", "hauler", "firetruck"],
    "boat": [
        "boat", "ship", "liner", "sailboat", "motorboat", "dinghy", "powerboat", "speedboat", "canoe",
        "skiff", "yacht", "kayak", "catamaran", "pontoon", "houseboat", "vessel", "rowboat", "trawler",
        "ferryboat", "watercraft", "tugboat", "schooner", "barge", "ferry", "sailboard", "paddleboat",
        "lifeboat", "freighter", "steamboat", "riverboat", "battleship", "steamship",
    ],
    "traffic light": [
        "traffic light", "street light", "traffic signal", "stop light", "streetlight", "stoplight",
    ],
    "fire hydrant": ["fire hydrant", "hydrant"],
    "stop sign": ["stop sign"],
    "parking meter": ["parking meter"],
    "bench": ["bench", "pew"],
    "bird": [
        "bird", "ostrich", "owl", "seagull", "goose", "duck", "parakeet", "falcon", "robin", "pelican",
        "waterfowl", "heron", "hummingbird", "mallard", "finch", "pigeon", "sparrow", "seabird", "osprey",
        "blackbird", "fowl", "shorebird", "woodpecker", "egret", "chickadee", "quail", "bluebird",
        "kingfisher", "buzzard", "willet", "gull", "swan", "bluejay", "flamingo", "cormorant", "parrot",
        "loon", "gosling", "waterbird", "pheasant", "rooster", "sandpiper", "crow", "raven", "turkey",
        "oriole", "cowbird", "warbler", "magpie", "peacock", "cockatiel", "lorikeet", "puffin", "vulture",
        "condor", "macaw", "peafowl", "cockatoo", "songbird",
    ],
    "cat": ["cat", "kitten", "feline", "tabby"],
    "dog": [
        "dog", "puppy", "beagle", "pup", "chihuahua", "schnauzer", "dachshund", "rottweiler", "canine",
        "pitbull", "collie", "pug", "terrier", "poodle", "labrador", "doggie", "doberman", "mutt", "doggy",
        "spaniel", "bulldog", "sheepdog", "weimaraner", "corgi", "cocker", "greyhound", "retriever",
        "brindle", "hound", "whippet", "husky",
    ],
    "horse": [
        "horse", "colt", "pony", "racehorse", "stallion", "equine", "mare", "foal", "palomino", "mustang",
        "clydesdale", "bronc", "bronco",
    ],
    "sheep": ["sheep", "lamb", "ram", "lamb", "goat", "ewe"],
    "cow": [
        "cow", "cattle", "oxen", "ox", "calf", "cattle", "holstein", "heifer", "buffalo", "bull", "zebu",
        "bison",
    ],
    "elephant": ["elephant"],
    "bear": ["bear", "panda"],
    "zebra": ["zebra"],
    "giraffe": ["giraffe"],
    "backpack": ["backpack", "knapsack"],
    "umbrella": ["umbrella"],
    "handbag": ["handbag", "wallet", "purse", "briefcase"],
    "tie": ["tie", "bow", "bow tie"],
    "suitcase": ["suitcase", "suit case", "luggage"],
    "frisbee": ["frisbee"],
    "skis": ["skis", "ski"],
    "snowboard": ["snowboard"],
    "sports ball": ["sports ball", "ball"],
    "kite": ["kite"],
    "baseball bat": ["baseball bat"],
    "baseball glove": ["baseball glove"],
    "skateboard": ["skateboard"],
    "surfboard": ["surfboard", "longboard", "skimboard", "shortboard", "wakeboard"],
    "tennis racket": ["tennis racket", "racket"],
    "bottle": ["bottle"],
    "wine glass": ["wine glass"],
    "cup": ["cup"],
    "fork": ["fork"],
    "knife": ["knife", "pocketknife", "knive"],
    "spoon": ["spoon"],
    "bowl": ["bowl", "container"],
    "banana": ["banana"],
    "apple": ["apple"],
    "sandwich": ["sandwich", "burger", "sub", "cheeseburger", "hamburger"],
    "orange": ["orange"],
    "broccoli": ["broccoli"],
    "carrot": ["carrot"],
    "hot dog": ["hot dog"],
    "pizza": ["pizza"],
    "donut": ["donut", "doughnut", "bagel"],
    "cake": ["cake", "cheesecake", "cupcake", "shortcake", "coffeecake", "pancake"],
    "chair": ["chair", "seat", "stool"],
    "couch": ["couch", "sofa", "recliner", "futon", "loveseat", "settee", "chesterfield"],
    "potted plant": ["potted plant", "houseplant"],
    "bed": ["bed"],
    "dining table": ["dining table", "table", "desk"],
    "toilet": ["toilet", "urinal", "commode", "toilet", "lavatory", "potty"],
    "tv": ["tv", "monitor", "televison", "television"],
    "laptop": ["laptop", "computer", "notebook", "netbook", "lenovo", "macbook", "laptop computer"],
    "mouse": ["mouse"],
    "remote": ["remote"],
    "keyboard": ["keyboard"],
    "cell phone": [
        "cell phone", "mobile phone", "phone", "cellphone", "telephone", "phon", "smartphone", "iPhone",
    ],
    "microwave": ["microwave"],
    "oven": ["oven", "stovetop", "stove", "stove top oven"],
    "toaster": ["toaster"],
    "sink": ["sink"],
    "refrigerator": ["refrigerator", "fridge", "fridge", "freezer"],
    "book": ["book"],
    "clock": ["clock"],
    "vase": ["vase"],
    "scissors": ["scissors"],
    "teddy bear": ["teddy bear", "teddybear"],
    "hair drier": ["hair drier", "hairdryer"],
    "toothbrush": ["toothbrush"],
}

# The 80 COCO detection categories, in COCO's own order.
COCO_CATEGORIES: list[str] = list(COCO_SYNONYMS)

# Two-word phrases the original reads as one unit before looking words up, so that e.g. "hot dog"
# is not a dog and "home plate" / "train track" do not count as objects.  "train track" is not in
# the 2018 release but was added by OPERA's copy of chair.py, which most LVLM hallucination papers
# (CSR's baselines included) report CHAIR with.  A phrase that is not a synonym names no object.
COCO_DOUBLE_WORDS: list[str] = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate", "train track",
]

# "baby elephant" / "adult zebra" would otherwise fire "person" (baby, adult are person synonyms):
# the original maps "baby X" and "adult X" to X for these words ...
ANIMAL_WORDS: list[str] = [
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub",
]
# ... and "passenger X" to X for these ("passenger" is a person synonym too).
VEHICLE_WORDS: list[str] = ["jet", "train"]

# Phrases the original rewrites to another word: a bow tie is a tie, a toilet seat is a toilet
# (not a chair: "seat" is a chair synonym).
PHRASE_REWRITES: dict[str, str] = {"bow tie": "tie", "toilet seat": "toilet"}

# How the original's parser (each line of data/synonyms.txt strip()-ed, then split on ", ") reads the
# two entries that follow a double space: with the space, so that they never match a token.  The
# `original` CHAIR variant (csr.eval.chair_original) uses these; `fixed` uses the trimmed words.
ORIGINAL_PARSE: dict[str, str] = {"motor bike": " motor bike", "cheesecake": " cheesecake"}
