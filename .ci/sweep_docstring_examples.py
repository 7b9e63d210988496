"""Put every docstring example of the package under a Google-style `Examples:` section.

mkdocstrings (griffe) renders an `Examples:` section's `>>>` lines as highlighted code; an
`Example:` heading is an admonition whose `>>>` lines markdown turns into nested
blockquotes, and `>>>` lines not indented under their heading are not part of the section.
This script renames `Example:` to `Examples:` and indents the example block (the lines
after the heading, up to the first blank line or the end of the docstring) under it.
Idempotent; run from the repository root:

    python .ci/sweep_docstring_examples.py deel_lip_ext
"""

import pathlib
import re
import sys

HEADING = re.compile(r"^(\s*)Examples?:\s*$")


def sweep(text):
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = HEADING.match(line)
        if not match:
            out.append(line)
            i += 1
            continue
        indent = match.group(1)
        out.append(f"{indent}Examples:")
        i += 1
        while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith('"""'):
            body = lines[i]
            if len(body) - len(body.lstrip()) <= len(indent):
                body = indent + "    " + body.lstrip()
            out.append(body)
            i += 1
    return "\n".join(out)


def main(folders):
    changed = []
    for folder in folders:
        for path in sorted(pathlib.Path(folder).rglob("*.py")):
            text = path.read_text()
            new = sweep(text)
            if new != text:
                path.write_text(new)
                changed.append(str(path))
    print("\n".join(changed))


if __name__ == "__main__":
    main(sys.argv[1:] or ["deel_lip_ext"])
