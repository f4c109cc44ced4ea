"""Every relative link in the README and the docs names a file that exists and,
when it names a heading (`file.md#anchor`), a heading that file has."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "experiments").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(path):
  """GitHub's anchors for a file's headings: lower case, punctuation dropped,
  spaces as hyphens, a repeated heading suffixed -1, -2, ..."""
  seen, out = {}, set()
  for line in FENCE.sub("", path.read_text()).splitlines():
    m = re.match(r"#{1,6} (.*)", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def links(path):
  text = FENCE.sub("", path.read_text())
  for target in LINK.findall(text):
    if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
      continue
    yield target


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_files_and_headings_that_exist(doc):
  broken = []
  for target in links(doc):
    file, _, anchor = target.partition("#")
    dest = (doc.parent / file).resolve() if file else doc
    if not dest.exists():
      broken.append(f"{target}: no file {dest}")
    elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      broken.append(f"{target}: no heading '#{anchor}' in {dest.name}")
  assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_anchor_rule_matches_githubs():
  # Headings of these docs and the anchors GitHub gives them (links that work there).
  doc = ROOT / "docs" / "text_runs.md"
  assert "epochs-judged-on-ndcg5-2026-12-06" in anchors(doc)
  assert "the-input-tables-adam-moments-bfloat16-or-one-per-row" in anchors(
      ROOT / "docs" / "text_ablations.md")
