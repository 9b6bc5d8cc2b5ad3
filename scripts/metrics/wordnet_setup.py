"""Sets up an nltk_data folder holding WordNet 3.0 without nltk's downloader.

Pinned: nltk==3.10.4; Debian packages wordnet-base and wordnet-sense-index (1:3.0-37), which put the WordNet 3.0
dict files in /usr/share/wordnet (`apt-get install -y wordnet-base wordnet-sense-index`).

nltk wants the dict files copied (not symlinked) into <nltk_data>/corpora/wordnet/ plus a `lexnames` file, which
Debian does not ship; it is rebuilt here from the lexnames(5WN) man page of the same package.
"""

import gzip
import os
import re
import shutil
import sys

WORDNET_DICT = "/usr/share/wordnet"
LEXNAMES_MAN = "/usr/share/man/man5/lexnames.5WN.gz"
DICT_FILES = [
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb", "index.sense",
]
CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_lines():
    with gzip.open(LEXNAMES_MAN, "rt", encoding="utf-8") as fp:
        text = fp.read()
    lines = []
    for line in text.splitlines():
        m = re.match(r"^(\d\d)\t([a-z]+\.[A-Za-z]+) *\t", line)
        if m:
            number, name = m.group(1), m.group(2)
            lines.append(f"{number}\t{name}\t{CATEGORY[name.split('.')[0]]}")
    if len(lines) != 45:
        sys.exit(f"expected 45 lexicographer files in {LEXNAMES_MAN}, found {len(lines)}")
    return lines


def setup(nltk_data):
    """Creates <nltk_data>/corpora/wordnet (idempotent) and points nltk at it; returns the path."""
    target = os.path.join(nltk_data, "corpora", "wordnet")
    os.makedirs(target, exist_ok=True)
    for name in DICT_FILES:
        src = os.path.join(WORDNET_DICT, name)
        if not os.path.isfile(src):
            sys.exit(f"{src} missing: apt-get install -y wordnet-base wordnet-sense-index")
        dst = os.path.join(target, name)
        if not os.path.isfile(dst) or os.path.getsize(dst) != os.path.getsize(src):
            shutil.copyfile(src, dst)
    with open(os.path.join(target, "lexnames"), "w", encoding="utf-8") as fp:
        fp.write("\n".join(lexnames_lines()) + "\n")
    os.environ["NLTK_DATA"] = nltk_data
    import nltk

    if nltk_data not in nltk.data.path:
        nltk.data.path.insert(0, nltk_data)
    return target


if __name__ == "__main__":
    print(setup(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tandem-nltk-data"))
