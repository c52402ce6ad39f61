""".dockerignore follows Docker's rules: unit cases, and the docker CLI's result compared.

The differential test builds each context twice on the real engine, once
with the docker CLI (classic builder, which packs the context client-side)
and once with our packer, and compares the files the image received.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from rolling_update import DockerEngine
from rolling_update._engine.build_context import PatternMatcher, context_paths, read_patterns
from tests.support import BASE_IMAGE, docker, require_engine


def test_patterns_are_cleaned_like_paths() -> None:
    """./x, /x, x/ and surrounding blanks all mean x; comments and blank lines go."""
    text = "# comment\n./build\n/dist/\n  tmp/  \n\n! ./dist/keep.txt\n"
    assert read_patterns(text) == ["build", "dist", "tmp", "!dist/keep.txt"]


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["**/node_modules"], "node_modules", True),
        (["**/node_modules"], "node_modules/m/index.js", True),
        (["**/node_modules"], "a/b/node_modules/x", True),
        (["*.test.js"], "a.test.js", True),
        (["*.test.js"], "src/a.test.js", False),
        (["**/*.test.js"], "src/a.test.js", True),
        (["docs/**/draft"], "docs/draft", True),
        (["docs/**/draft"], "docs/v1/v2/draft/page.md", True),
        (["[a-c]*.txt"], "b1.txt", True),
        (["[a-c]*.txt"], "d1.txt", False),
        (["?.md"], "a.md", True),
        (["?.md"], "ab.md", False),
        (["*", "!src"], "src/app.js", False),
        (["*", "!src"], "Dockerfile", True),
        (["dist", "!dist/keep.txt"], "dist/keep.txt", False),
        (["dist", "!dist/keep.txt"], "dist/other.txt", True),
        (["a.b"], "axb", False),
    ],
)
def test_matching_follows_docker(patterns: list[str], path: str, excluded: bool) -> None:
    """Docker's matcher: * and ? stay within a segment, ** spans any, parents count, last wins."""
    assert PatternMatcher(patterns).excluded(path) is excluded


Maker = Callable[[Path], None]


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def reference(root: Path) -> None:
    """The reference service's build: multi-stage, lock file optional, its .dockerignore."""
    _write(
        root,
        {
            "Dockerfile": f"FROM {BASE_IMAGE} AS deps\nCOPY package.json package-lock.json* ./\n"
            f"FROM {BASE_IMAGE}\nCOPY --from=deps /package.json /ctx-deps/\nCOPY . /ctx/\n",
            ".dockerignore": "node_modules\n.env*\n__tests__\n*.test.js\n.git\n",
            "package.json": '{"version": "1.98.0"}',
            "src/server.js": "x",
            "src/tick.test.js": "x",
            "tick.test.js": "x",
            "__tests__/routes.test.js": "x",
            "node_modules/pg/index.js": "x",
            ".env": "A=1",
            ".env.docker": "A=2",
            ".git/HEAD": "ref",
            "migrations/001.sql": "x",
        },
    )


def globstar(root: Path) -> None:
    _write(
        root,
        {
            "Dockerfile": f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n",
            ".dockerignore": "**/node_modules\n**/*.log\ndocs/**/draft\n",
            "node_modules/a.js": "x",
            "pkg/node_modules/b.js": "x",
            "pkg/lib.js": "x",
            "debug.log": "x",
            "pkg/deep/run.log": "x",
            "docs/draft/a.md": "x",
            "docs/v1/draft/b.md": "x",
            "docs/v1/final.md": "x",
        },
    )


def allowlist(root: Path) -> None:
    _write(
        root,
        {
            "Dockerfile": f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n",
            ".dockerignore": "*\n!src\n!package.json\n",
            "src/app.js": "x",
            "src/lib/util.js": "x",
            "package.json": "{}",
            "secrets.txt": "x",
            "other/file.js": "x",
        },
    )


def normalised(root: Path) -> None:
    _write(
        root,
        {
            "Dockerfile": f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n",
            ".dockerignore": "# build output\n./build\n/dist/\n  tmp/  \n!dist/keep.txt\n",
            "build/out.js": "x",
            "dist/keep.txt": "x",
            "dist/drop.txt": "x",
            "tmp/t": "x",
            "src/tmp/kept": "x",
        },
    )


def links_and_empty_dirs(root: Path) -> None:
    _write(
        root,
        {
            "Dockerfile": f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n",
            ".dockerignore": "data/secret*\n[a-c]*.txt\n!b*.txt\n?.md\n",
            "data/public.txt": "x",
            "data/secret.key": "x",
            "a1.txt": "x",
            "b1.txt": "x",
            "d1.txt": "x",
            "x.md": "x",
            "xy.md": "x",
        },
    )
    (root / "empty" / "nested").mkdir(parents=True)
    os.symlink("data", root / "data-link")
    os.symlink("data/public.txt", root / "file-link")
    os.chmod(root / "d1.txt", 0o600)


CONTEXTS: dict[str, Maker] = {
    "reference": reference,
    "globstar": globstar,
    "allowlist": allowlist,
    "normalised": normalised,
    "links-and-empty-dirs": links_and_empty_dirs,
}

LIST = (
    "import json, os\n"
    "out = []\n"
    "for root, dirs, files in os.walk('/ctx'):\n"
    "    for n in dirs + files:\n"
    "        p = os.path.join(root, n); s = os.lstat(p)\n"
    "        kind = 'l' if os.path.islink(p) else 'd' if os.path.isdir(p) else 'f'\n"
    "        out.append([os.path.relpath(p, '/ctx'), kind, oct(s.st_mode & 0o7777),\n"
    "                    os.readlink(p) if kind == 'l' else s.st_size if kind == 'f' else 0])\n"
    "print(json.dumps(sorted(out)))\n"
)


def image_files(tag: str) -> list[list[object]]:
    files: list[list[object]] = json.loads(docker("run", "--rm", tag, "python3", "-c", LIST))
    return files


@pytest.mark.docker
@pytest.mark.anyio
@pytest.mark.parametrize("make", CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_the_image_gets_the_files_the_docker_cli_sends(make: Maker, tmp_path: Path) -> None:
    """Differential: our context and the docker CLI's give the image the very same files."""
    require_engine()
    make(tmp_path)
    repo = f"rutest-ignore-{uuid.uuid4().hex[:8]}"
    try:
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        with anyio.fail_after(120):
            await anyio.run_process(
                ["/usr/bin/docker", "build", "-q", "-t", f"{repo}:cli", str(tmp_path)], env=env
            )
        async with DockerEngine() as engine:
            await engine.build_image(
                tmp_path, dockerfile="Dockerfile", tag=f"{repo}:ours", args={}, on_line=print
            )
        cli, ours = image_files(f"{repo}:cli"), image_files(f"{repo}:ours")
        assert ours == cli
        assert cli, "the context sent nothing at all"
    finally:
        docker("rmi", "-f", f"{repo}:cli", f"{repo}:ours", check=False)


def test_walk_keeps_empty_dirs_and_directory_symlinks(tmp_path: Path) -> None:
    """Regression: an empty directory and a symlink to a directory are sent, not dropped."""
    links_and_empty_dirs(tmp_path)
    paths = context_paths(tmp_path)
    assert {"empty", "empty/nested", "data-link", "file-link"} <= set(paths)
    assert "data/secret.key" not in paths and "b1.txt" in paths and "a1.txt" not in paths
