"""A deterministic toy parallel corpus: a small invented source language ("src") and its English.

This is not real translation data. It exists so that the demo and the tests run the whole
translation pipeline (sentencepiece, fairseq-preprocess, training, averaging, beam search, BLEU)
with no download, and leave a model that is good but not perfect after a few minutes on a CPU.
The source language is verb-final, puts adjectives after the noun, marks the object's case on
masculine nouns (and then may put the object first), has three genders, plural suffixes, relative
clauses and negation; English needs reordering, agreement and do-support ("does not see").
Same (n, seed), same corpus.
"""
import os
import random
from typing import List, Tuple

from el_plugins.files import write_lines

# noun: (English, gender m/f/n, irregular English plural or None)
NOUNS = {
    "hund": ("dog", "m", None), "kater": ("tomcat", "m", None), "vogel": ("bird", "m", None),
    "lehrer": ("teacher", "m", None), "bauer": ("farmer", "m", None), "arzt": ("doctor", "m", None),
    "fisch": ("fish", "m", "fish"), "apfel": ("apple", "m", None), "brief": ("letter", "m", None),
    "ball": ("ball", "m", None), "baum": ("tree", "m", None), "stein": ("stone", "m", None),
    "wagen": ("car", "m", None), "koch": ("cook", "m", None), "koenig": ("king", "m", None),
    "katze": ("cat", "f", None), "maus": ("mouse", "f", "mice"), "frau": ("woman", "f", "women"),
    "blume": ("flower", "f", None), "lampe": ("lamp", "f", None), "tasche": ("bag", "f", None),
    "kuh": ("cow", "f", None), "ziege": ("goat", "f", None), "nadel": ("needle", "f", None),
    "kind": ("child", "n", "children"), "pferd": ("horse", "n", None), "buch": ("book", "n", None),
    "haus": ("house", "n", None), "brot": ("bread", "n", None), "schiff": ("ship", "n", None),
    "schaf": ("sheep", "n", "sheep"), "bild": ("picture", "n", None), "lied": ("song", "n", None),
}
ADJECTIVES = {"gross": "big", "klein": "small", "rot": "red", "alt": "old", "jung": "young", "schnell": "fast",
              "gruen": "green", "muede": "tired", "klug": "clever", "laut": "loud", "blau": "blue",
              "leise": "quiet", "stark": "strong", "arm": "poor", "reich": "rich", "neu": "new"}
# verb stem: (3rd singular, base form)
VERBS = {"sieh": ("sees", "see"), "find": ("finds", "find"), "such": ("seeks", "seek"), "mag": ("likes", "like"),
         "hol": ("fetches", "fetch"), "mal": ("paints", "paint"), "kauf": ("buys", "buy"),
         "trag": ("carries", "carry"), "bau": ("builds", "build"), "lies": ("reads", "read"),
         "hoer": ("hears", "hear"), "ruf": ("calls", "call"), "wasch": ("washes", "wash"),
         "zeig": ("shows", "show"), "vergiss": ("forgets", "forget"), "lob": ("praises", "praise")}
NUMBERS = {"zwei": "two", "drei": "three", "vier": "four", "fuenf": "five", "viele": "many", "einige": "some"}
PLACES = {"im garten": "in the garden", "am fluss": "by the river", "im wald": "in the forest",
          "auf dem markt": "at the market", "zu hause": "at home", "in der stadt": "in the city"}
TIMES = {"heute": "today", "morgen": "tomorrow", "oft": "often", "gestern abend": "last night"}
ARTICLES = {("m", "nom"): "der", ("m", "acc"): "den", ("f", "nom"): "die", ("f", "acc"): "die",
            ("n", "nom"): "das", ("n", "acc"): "das"}


def _english_plural(noun: str, irregular) -> str:
    if irregular:
        return irregular
    return noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s")


def _noun_phrase(rng: random.Random, case: str):
    """(source words, English words, plural?, unambiguous case marking?)"""
    src_noun, (en_noun, gender, irregular) = rng.choice(sorted(NOUNS.items()))
    adjectives = rng.sample(sorted(ADJECTIVES.items()), k=rng.choice([0, 0, 1, 1, 2]))
    if rng.random() < 0.3:
        src_num, en_num = rng.choice(sorted(NUMBERS.items()))
        src = [src_num, src_noun + ("n" if src_noun.endswith("e") else "e")] + [a + "e" for a, _ in adjectives]
        en = [en_num] + [e for _, e in adjectives] + [_english_plural(en_noun, irregular)]
        return src, en, True, False
    src = [ARTICLES[(gender, case)], src_noun] + [a for a, _ in adjectives]
    en = ["the"] + [e for _, e in adjectives] + [en_noun]
    return src, en, False, gender == "m"


def _verb(rng: random.Random, plural: bool, negated: bool):
    stem, (third, base) = rng.choice(sorted(VERBS.items()))
    src = (["nicht"] if negated else []) + [stem + ("en" if plural else "t")]
    if negated:
        en = ["do" if plural else "does", "not", base]
    else:
        en = [base if plural else third]
    return src, en


def sentence_pair(rng: random.Random) -> Tuple[str, str]:
    subj_src, subj_en, subj_plural, _ = _noun_phrase(rng, "nom")
    obj_src, obj_en, _, obj_marked = _noun_phrase(rng, "acc")
    if rng.random() < 0.3:  # relative clause on the subject: ", der/die/das OBJ VERB ,"
        rel_obj_src, rel_obj_en, _, _ = _noun_phrase(rng, "acc")
        rel_verb_src, rel_verb_en = _verb(rng, subj_plural, rng.random() < 0.2)
        pronoun = "die" if subj_plural else subj_src[0]
        subj_src = subj_src + [",", pronoun] + rel_obj_src + rel_verb_src + [","]
        subj_en = subj_en + ["that"] + rel_verb_en + rel_obj_en
    verb_src, verb_en = _verb(rng, subj_plural, rng.random() < 0.25)
    time_src, time_en = rng.choice(sorted(TIMES.items())) if rng.random() < 0.35 else ("", "")
    place_src, place_en = rng.choice(sorted(PLACES.items())) if rng.random() < 0.35 else ("", "")
    if obj_marked and rng.random() < 0.5:  # a case-marked object may come first
        src = obj_src + subj_src
    else:
        src = subj_src + obj_src
    src = src + time_src.split() + place_src.split() + verb_src
    en = subj_en + verb_en + obj_en + place_en.split() + time_en.split()
    return " ".join(src) + " .", " ".join(en) + " ."


def make_corpus(n: int, seed: int = 1) -> List[Tuple[str, str]]:
    """n sentence pairs, the same for the same (n, seed)."""
    rng = random.Random(seed)
    return [sentence_pair(rng) for _ in range(n)]


def make_splits(sizes=(("train", 6000), ("valid", 400), ("test", 400)), seed: int = 1):
    """{split: (source lines, English lines)}; each split from its own seed."""
    splits = {}
    for i, (split, n) in enumerate(sizes):
        pairs = make_corpus(n, seed=seed + 1000 * i)
        splits[split] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return splits


def write_corpus(out_dir: str, sizes=(("train", 6000), ("valid", 400), ("test", 400)), seed: int = 1,
                 src: str = "src", tgt: str = "en") -> None:
    """Writes {split}.{src} and {split}.{tgt} for each split (plain text, one sentence a line)."""
    os.makedirs(out_dir, exist_ok=True)
    for split, (s, t) in make_splits(sizes, seed).items():
        for lang, lines in ((src, s), (tgt, t)):
            write_lines(os.path.join(out_dir, f"{split}.{lang}"), lines)
