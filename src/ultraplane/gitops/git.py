"""Git through the git CLI: a bare mirror per repository URL, fetched at most once per `min_fetch_interval`,
revisions resolved like Argo CD's repo server (HEAD, branch, tag, or a commit sha) and trees read with
`git archive` at the resolved commit."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
GIT_TIMEOUT_S = 60.0


class GitError(Exception):
    """A git command failed; the message is git's own stderr."""


async def run_git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT_S) -> bytes:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    proc = await asyncio.create_subprocess_exec("git", *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]}: timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise GitError(err.decode(errors="replace").strip() or f"git {args[0]} exited {proc.returncode}")
    return out


@dataclass
class Mirror:
    url: str
    path: Path
    fetched_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RepoCache:
    """Bare mirrors under `root`, shared by every Application that names the same URL."""

    def __init__(self, root: Path, min_fetch_interval: float = 2.0) -> None:
        self.root = root
        self.min_fetch_interval = min_fetch_interval
        self.mirrors: dict[str, Mirror] = {}
        self.trees: dict[tuple[str, str], dict[str, bytes]] = {}

    def _mirror(self, url: str) -> Mirror:
        if url not in self.mirrors:
            digest = hashlib.sha256(url.encode()).hexdigest()[:16]
            self.mirrors[url] = Mirror(url, self.root / digest)
        return self.mirrors[url]

    async def fetch(self, url: str, force: bool = False) -> Mirror:
        mirror = self._mirror(url)
        async with mirror.lock:
            if not force and time.monotonic() - mirror.fetched_at < self.min_fetch_interval:
                return mirror
            if not (mirror.path / "HEAD").exists():
                mirror.path.parent.mkdir(parents=True, exist_ok=True)
                await run_git("init", "--bare", "-q", str(mirror.path))
            await run_git("fetch", "-q", "--prune", "--force", "--tags", url,
                          "+refs/heads/*:refs/heads/*", "+HEAD:refs/remotes/origin/HEAD", cwd=mirror.path)
            mirror.fetched_at = time.monotonic()
            return mirror

    async def resolve(self, url: str, revision: str) -> str:
        """The commit sha a targetRevision names now ("" and "HEAD" mean the remote's default branch)."""
        mirror = await self.fetch(url)
        rev = revision or "HEAD"
        candidates = (["refs/remotes/origin/HEAD"] if rev == "HEAD" else
                      [f"refs/heads/{rev}", f"refs/tags/{rev}", rev])
        for candidate in candidates:
            try:
                out = await run_git("rev-parse", "--verify", "-q", f"{candidate}^{{commit}}", cwd=mirror.path)
                return out.decode().strip()
            except GitError:
                continue
        if SHA_RE.match(rev):  # a commit not reachable from any ref: fetch it by id
            await run_git("fetch", "-q", url, rev, cwd=mirror.path)
            out = await run_git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=mirror.path)
            return out.decode().strip()
        raise GitError(f"unable to resolve '{rev}' to a commit SHA")

    async def tree(self, url: str, sha: str) -> dict[str, bytes]:
        """Every file of commit `sha` by path (cached: commits are immutable)."""
        key = (url, sha)
        if key in self.trees:
            return self.trees[key]
        data = await run_git("archive", "--format=tar", sha, cwd=self._mirror(url).path)
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files[member.name] = handle.read()
        self.trees[key] = files
        return files

    async def list_paths(self, url: str, sha: str) -> list[str]:
        """Every file path in the commit (for the ApplicationSet git generator)."""
        mirror = self._mirror(url)
        out = await run_git("ls-tree", "-r", "--name-only", sha, cwd=mirror.path)
        return [line for line in out.decode().splitlines() if line]

    async def show(self, url: str, sha: str, path: str) -> bytes:
        return await run_git("show", f"{sha}:{path}", cwd=self._mirror(url).path)
