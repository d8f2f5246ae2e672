#!/usr/bin/env python3
"""Every relative link and image of the project's Markdown resolves against the git tree.

    python3 scripts/check-links.py              # README.md, DESIGN.md, CHANGELOG.md, docs/, benches/
    python3 scripts/check-links.py FILE.md ...  # those files only
    python3 scripts/check-links.py --selftest   # the checker finds planted breakages

A link `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` or an image `![alt](path)`
must name a file or folder that git tracks (an untracked file on this machine does not
count), and an anchor into a Markdown file must be one of its headings' GitHub anchors.
Links with a scheme (https:, mailto:) are not fetched: no network. Code blocks and inline
code are skipped. Exit status 1 with a line per broken link (file:line: target: why).
"""
import os
import re
import subprocess
import sys
import tempfile

DEFAULT = ["README.md", "DESIGN.md", "CHANGELOG.md", "docs", "benches"]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")


def strip_code(lines, inline=True):
    """The lines with fenced blocks blanked and (`inline`) inline code spans removed (line
    numbers kept)."""
    out, fence = [], None
    for line in lines:
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line) if inline else line)
    return out


def slug(text):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings, duplicates numbered as GitHub numbers them."""
    seen, out = {}, set()
    with open(path, encoding="utf-8") as f:
        for line in strip_code(f.read().splitlines(), inline=False):
            m = HEADING.match(line)
            if not m:
                continue
            s = slug(m.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def check_file(md, root, tracked):
    """The broken links of one Markdown file (paths relative to `root`), as messages."""
    errors = []
    here = os.path.dirname(md)
    with open(os.path.join(root, md), encoding="utf-8") as f:
        lines = strip_code(f.read().splitlines())
    for no, line in enumerate(lines, 1):
        targets = [m.group(1) for m in LINK.finditer(line)]
        m = REF_DEF.match(line)
        if m:
            targets.append(m.group(1))
        for target in targets:
            why = check_target(md, here, target, root, tracked)
            if why:
                errors.append(f"{md}:{no}: {target}: {why}")
    return errors


def check_target(md, here, target, root, tracked):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
        return None  # a URL: not fetched
    path, _, frag = target.partition("#")
    if path:
        rel = os.path.normpath(os.path.join(here, path))
        if rel.startswith(".."):
            return "points outside the repository"
        is_dir = any(t.startswith(rel + "/") for t in tracked)
        if rel not in tracked and not is_dir:
            exists = os.path.exists(os.path.join(root, rel))
            return "not tracked by git" if exists else "no such file"
    else:
        rel = md
    if frag and rel.endswith(".md"):
        if frag not in anchors(os.path.join(root, rel)):
            return f"no heading with the anchor #{frag} in {rel}"
    return None


def markdown_files(args, tracked):
    picked = []
    for a in args:
        a = os.path.normpath(a)
        if a.endswith(".md"):
            picked.append(a)
        else:
            picked += sorted(t for t in tracked if t.startswith(a + "/") and t.endswith(".md"))
    return [p for p in picked if p in tracked]


def run(root, args, tracked):
    files = markdown_files(args, tracked)
    errors = [e for md in files for e in check_file(md, root, tracked)]
    return files, errors


def selftest():
    """Planted breakages are each reported; good links are not."""
    with tempfile.TemporaryDirectory() as d:
        def write(p, text):
            os.makedirs(os.path.join(d, os.path.dirname(p)), exist_ok=True)
            with open(os.path.join(d, p), "w", encoding="utf-8") as f:
                f.write(text)
        write("docs/R.md", "# Results\n\n## CUDA: `gpu_bench.rs`\n\n## 2:4 sparsity (same run)\n"
              "## Dup\n## Dup\n![plot](plot.png)\n[up](../README.md#install)\n")
        write("docs/plot.png", "")
        write("README.md", "# T\n## Install\n"
              "[ok](docs/R.md#cuda-gpu_benchrs) [ok](docs/R.md#24-sparsity-same-run)\n"
              "[ok](docs/R.md#dup-1) [ok](#install) [ok](docs/) [url](https://x.invalid/y)\n"
              "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n"
              "[bad file](docs/missing.md)\n![bad image](plot.png)\n"
              "[bad anchor](docs/R.md#nope)\n[bad local](#nope)\n[outside](../x.md)\n"
              "[untracked](docs/untracked.md)\n[ref]: docs/gone.md\n")
        write("docs/untracked.md", "# U\n")
        tracked = {"README.md", "docs/R.md", "docs/plot.png"}
        _, errors = run(d, ["README.md", "docs"], tracked)
        want = {
            "README.md:9": "no such file", "README.md:10": "no such file",
            "README.md:11": "no heading", "README.md:12": "no heading",
            "README.md:13": "outside", "README.md:14": "not tracked",
            "README.md:15": "no such file",
        }
        got = {e.split(": ")[0]: e for e in errors}
        ok = True
        for where, why in want.items():
            if where not in got or why not in got[where]:
                print(f"selftest: {where} ({why}) not reported; got {errors}", file=sys.stderr)
                ok = False
        for where in got:
            if where not in want:
                print(f"selftest: false report {got[where]}", file=sys.stderr)
                ok = False
        print(f"check-links selftest: {'ok' if ok else 'FAILED'} ({len(errors)} planted breakages found)")
        return 0 if ok else 1


def main():
    if sys.argv[1:] == ["--selftest"]:
        return selftest()
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    os.chdir(root)
    tracked = set(subprocess.run(["git", "ls-files"], capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    files, errors = run(root, sys.argv[1:] or DEFAULT, tracked)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"check-links: {len(files)} Markdown files, {len(errors)} broken links")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
