"""The plain-SQL texts tasks runs (``*.sql`` beside this module), loaded once per process."""

from pathlib import Path

_HERE = Path(__file__).parent


def load(name: str, **names) -> str:
    """The text of ``name`` (e.g. ``"claim.sql"``) without its whole-line comments, its
    ``{braced}`` names filled in from ``names`` (``{{`` and ``}}`` stand for braces). A filled-in
    value is not filled in again, so a fragment loaded this way can go into another text."""
    text = "\n".join(line for line in (_HERE / name).read_text().splitlines() if not line.lstrip().startswith("--"))
    return text.format(**names)
