#!/usr/bin/env python3
"""Every ```cpp block of a document is code the test suite compiles.

Each block is preceded by a line <!-- from PATH --> (PATH from the project
root). The block's code lines (blank lines and lines that are only a //
comment are skipped: `// ...` marks an elision) must appear in PATH, in the
same order, each as a whole line (compared without surrounding whitespace and
without a trailing // comment).

    docs_snippets.py ROOT docs/extending.md [more.md ...]
"""
import re
import sys
from pathlib import Path


def norm(line):
    code = re.sub(r"\s//.*$", "", line).strip()
    return "" if code.startswith("//") else code


def check(root, doc):
    text = (root / doc).read_text().splitlines()
    failures, blocks = [], 0
    i = 0
    while i < len(text):
        if text[i].strip() != "```cpp":
            i += 1
            continue
        blocks += 1
        j = i - 1
        while j >= 0 and not text[j].strip():
            j -= 1
        m = re.fullmatch(r"<!-- from (\S+) -->", text[j].strip()) if j >= 0 else None
        end = i + 1
        while end < len(text) and text[end].strip() != "```":
            end += 1
        where = f"{doc}:{i + 1}"
        if not m:
            failures.append(f"{where}: a cpp block without a '<!-- from FILE -->' line before it")
            i = end + 1
            continue
        source = root / m.group(1)
        if not source.is_file():
            failures.append(f"{where}: {m.group(1)}: no such file")
            i = end + 1
            continue
        lines = [norm(l) for l in source.read_text().splitlines()]
        at = -1
        for k in range(i + 1, end):
            want = norm(text[k])
            if not want:
                continue
            try:
                at = lines.index(want, at + 1)
            except ValueError:
                failures.append(f"{doc}:{k + 1}: not in {m.group(1)} (after the block's previous line): {text[k].strip()}")
                break
        i = end + 1
    return blocks, failures


def main():
    root = Path(sys.argv[1])
    total, bad = 0, []
    for doc in sys.argv[2:]:
        n, f = check(root, doc)
        total += n
        bad += f
    for f in bad:
        print(f)
    print(f"docs_snippets: {total} cpp blocks, {len(bad)} not found in the files they quote")
    return 1 if bad or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
