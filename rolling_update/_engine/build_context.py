"""The build context, packed the way the docker CLI packs it.

``.dockerignore`` follows Docker's own rules (moby's patternmatcher, as the
CLI and BuildKit apply it), not shell globs:

- each line is trimmed; ``#`` starts a comment; ``!`` re-includes; every
  pattern is cleaned like a path (``./x`` is ``x``, ``/x`` is ``x``, ``x/`` is
  ``x``);
- ``*`` and ``?`` never cross a ``/``; ``**`` crosses any number of them, none
  included (``**/node_modules`` matches ``node_modules`` at the root too);
- a path is excluded when it or one of its parent directories matches, and
  the last pattern that matches decides;
- an excluded directory is still walked when a ``!`` pattern may re-include
  something inside it;
- the Dockerfile and ``.dockerignore`` are always sent (the engine drops
  them from the image when they are excluded), so an allowlist such as
  ``*`` then ``!src`` still builds;
- empty directories and symlinks (to directories too) are sent as they are.

``tests/test_dockerignore_e2e.py`` compares the result with the docker CLI's
on the same contexts.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rolling_update._errors import ConfigError


def clean(path: str) -> str:
    """Go's ``filepath.Clean`` on a slash path (POSIX keeps ``//``; Go does not)."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def read_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, normalised as Docker does."""
    patterns = []
    for number, line in enumerate(text.splitlines()):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _translate(pattern: str) -> str:
    """The regular expression Docker builds from one cleaned pattern, without its anchors."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                # "**" at the end accepts everything; elsewhere any number of dirs.
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch in ".+()|{}$":
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + pattern[i])
                i += 1
            else:
                out.append("\\\\")
        else:
            out.append(ch)
    # Anchored by fullmatch, which (unlike "$") does not accept a trailing newline.
    return "".join(out)


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


class PatternMatcher:
    """Docker's ``.dockerignore`` matcher over slash-separated relative paths."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            pattern = clean(raw.strip()) if raw.strip() else ""
            if not pattern:
                continue
            exclusion = pattern.startswith("!")
            if exclusion:
                pattern = pattern[1:]
                if not pattern:
                    raise ConfigError('illegal exclusion pattern "!"', key=".dockerignore")
            try:
                regex = re.compile(_translate(pattern))
            except re.error as exc:
                raise ConfigError(
                    f"bad pattern {pattern!r}: {exc.msg}", key=".dockerignore"
                ) from None
            self.patterns.append(_Pattern(pattern, exclusion, regex))

    @property
    def exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (or one of its parents) is excluded by the last deciding pattern."""
        matched = False
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        for pattern in self.patterns:
            # An include once matched, or an exclusion with nothing to undo, changes nothing.
            if pattern.exclusion != matched:
                continue
            hit = bool(pattern.regex.fullmatch(path))
            if not hit:
                hit = any(
                    pattern.regex.fullmatch("/".join(parents[: i + 1])) for i in range(len(parents))
                )
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_reinclude_below(self, directory: str) -> bool:
        """Whether a ``!`` pattern could re-include something inside an excluded ``directory``."""
        prefix = directory + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)


def context_matcher(context: Path, dockerfile: str) -> PatternMatcher:
    """The matcher for ``context``, keeping the Dockerfile and .dockerignore as the CLI does."""
    try:
        text = (context / ".dockerignore").read_text(encoding="utf-8")
    except FileNotFoundError:
        return PatternMatcher([])
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read .dockerignore: {exc}", source=str(context)) from None
    patterns = read_patterns(text)
    matcher = PatternMatcher(patterns)
    for keep in (".dockerignore", clean(dockerfile)):
        if matcher.excluded(keep):
            patterns.append("!" + keep)
    return PatternMatcher(patterns)


def context_paths(context: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """Relative paths sent for ``context``, in walk order (directories before their content)."""
    matcher = context_matcher(context, dockerfile)
    found: list[str] = []
    for root, dirs, files in os.walk(context):
        dirs.sort()
        rel_root = os.path.relpath(root, context)
        descend = []
        for name in sorted(dirs + files):
            relative = name if rel_root == "." else f"{rel_root}/{name}"
            is_dir = name in dirs and not os.path.islink(os.path.join(root, name))
            if matcher.excluded(relative):
                if is_dir and matcher.may_reinclude_below(relative):
                    descend.append(name)
                continue
            found.append(relative)
            if is_dir:
                descend.append(name)
        dirs[:] = [d for d in dirs if d in descend]
    return found


def build_context_tar(
    context: Path, dockerfile: str = "Dockerfile"
) -> tempfile.SpooledTemporaryFile[bytes]:
    """Pack ``context`` as the docker CLI does (see the module docstring)."""
    # Returned open: the caller streams it to the engine, then closes it.
    buffer: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=32 * 1024 * 1024
    )

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # The CLI sends every file as root's; COPY gives root ownership anyway.
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in context_paths(context, dockerfile):
            tar.add(context / relative, arcname=relative, recursive=False, filter=as_root)
    buffer.seek(0)
    return buffer
