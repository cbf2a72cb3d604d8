"""A deterministic toy parallel corpus: a small invented source language and its English.

Not real translation data: the point is a corpus that needs no network, exercises the same
pipeline (sentencepiece, fairseq-preprocess, training, generation, BLEU) and is learnable within
minutes on a CPU. The source language puts verbs last and adjectives after nouns, and marks
plural with a suffix; the English side is SVO with adjectives first, so a model must reorder
and agree, not copy. Same seed, same corpus.
"""
import random
from typing import List, Tuple

NOUNS = {"hund": "dog", "katze": "cat", "vogel": "bird", "kind": "child", "lehrer": "teacher",
         "bauer": "farmer", "arzt": "doctor", "maus": "mouse", "fisch": "fish", "pferd": "horse",
         "apfel": "apple", "buch": "book", "brief": "letter", "ball": "ball", "haus": "house",
         "baum": "tree", "stein": "stone", "brot": "bread", "wagen": "car", "schiff": "ship"}
ADJECTIVES = {"gross": "big", "klein": "small", "rot": "red", "alt": "old", "jung": "young",
              "schnell": "fast", "gruen": "green", "muede": "tired", "klug": "clever", "laut": "loud"}
VERBS = {"sieht": ("sees", "see"), "findet": ("finds", "find"), "sucht": ("seeks", "seek"),
         "mag": ("likes", "like"), "holt": ("fetches", "fetch"), "malt": ("paints", "paint"),
         "kauft": ("buys", "buy"), "traegt": ("carries", "carry"), "baut": ("builds", "build"),
         "liest": ("reads", "read")}
NUMBERS = {"zwei": "two", "drei": "three", "vier": "four", "fuenf": "five", "viele": "many"}
PLACES = {"im garten": "in the garden", "am fluss": "by the river", "im wald": "in the forest",
          "auf dem markt": "at the market", "zu hause": "at home"}
TIMES = {"heute": "today", "morgen": "tomorrow", "oft": "often", "nie": "never"}

ENGLISH_PLURAL = {"child": "children", "mouse": "mice", "fish": "fish"}


def _english_plural(noun: str) -> str:
    return ENGLISH_PLURAL.get(noun, noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s"))


def _noun_phrase(rng: random.Random) -> Tuple[List[str], List[str], bool]:
    """(source words, English words, plural?)"""
    src_noun, en_noun = rng.choice(sorted(NOUNS.items()))
    adjectives = rng.sample(sorted(ADJECTIVES.items()), k=rng.choice([0, 0, 1, 1, 2]))
    plural = rng.random() < 0.35
    if plural:
        src_num, en_num = rng.choice(sorted(NUMBERS.items()))
        src = [src_num, src_noun + "en"] + [a for a, _ in adjectives]
        en = [en_num] + [e for _, e in adjectives] + [_english_plural(en_noun)]
    else:
        src = ["der", src_noun] + [a for a, _ in adjectives]
        en = ["the"] + [e for _, e in adjectives] + [en_noun]
    return src, en, plural


def sentence_pair(rng: random.Random) -> Tuple[str, str]:
    subj_src, subj_en, plural = _noun_phrase(rng)
    obj_src, obj_en, _ = _noun_phrase(rng)
    verb_src, (verb_en_sg, verb_en_pl) = rng.choice(sorted(VERBS.items()))
    src, en = list(subj_src), list(subj_en)
    tail_src, tail_en = [], []
    if rng.random() < 0.4:
        t_src, t_en = rng.choice(sorted(TIMES.items()))
        src.append(t_src)
        tail_en.append(t_en)
    src += obj_src
    if rng.random() < 0.4:
        p_src, p_en = rng.choice(sorted(PLACES.items()))
        src += p_src.split()
        tail_en = p_en.split() + tail_en
    src.append(verb_src + ("n" if plural else ""))
    en += [verb_en_pl if plural else verb_en_sg] + obj_en + tail_en
    return " ".join(src) + " .", " ".join(en) + " ."


def make_corpus(n: int, seed: int = 1) -> List[Tuple[str, str]]:
    """n distinct-or-not sentence pairs, the same for the same (n, seed)."""
    rng = random.Random(seed)
    return [sentence_pair(rng) for _ in range(n)]


def write_corpus(out_dir: str, sizes=(("train", 4000), ("valid", 300), ("test", 300)), seed: int = 1,
                 src: str = "src", tgt: str = "en") -> None:
    """Writes {split}.{src} and {split}.{tgt} for each split (whitespace-tokenized text)."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    rng_seed = seed
    for split, n in sizes:
        pairs = make_corpus(n, seed=rng_seed)
        rng_seed += 1000
        for lang, col in ((src, 0), (tgt, 1)):
            path = os.path.join(out_dir, f"{split}.{lang}")
            with open(path + ".tmp", "w") as f:
                f.writelines(p[col] + "\n" for p in pairs)
            os.replace(path + ".tmp", path)
