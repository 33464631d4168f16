"""Hub servers for the tests, all on 127.0.0.1.

- ``GitMirrors`` builds git repositories the way olah's offline mode serves them:
  ``<root>/models/<org>/<name>``, Git LFS pointers in the trees and the LFS objects under
  ``.git/lfs/objects/<aa>/<bb>/<oid>`` (olah's ``mirror/repos.py`` reads exactly that).
- ``OlahServer`` runs olah (PyPI; a real Hub mirror nobody here wrote) offline over those
  repositories, as a subprocess: the server every pull in the tests goes through.
- ``HubFake`` stands in for the Hub's *upload* API. No self-hostable Hub with upload runs offline
  here (olah is read-only), so pushes go to this strict protocol fake: it implements only what
  huggingface_hub's ``create_repo``, ``create_branch`` and ``create_commit`` send with Xet disabled,
  checks every LFS object's size and sha256, refuses commits of objects never uploaded, answers
  anything else with 501 (recorded in ``unexpected``), and writes each commit into a
  ``GitMirrors`` repository so olah can serve it back.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# What the Hub puts in a new repo's .gitattributes (the part that matters here).
GITATTRIBUTES = (
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n"
)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
_POINTER_RE = re.compile(
    rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n"
)
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "segzoo tests",
    "GIT_AUTHOR_EMAIL": "tests@segzoo.invalid",
    "GIT_COMMITTER_NAME": "segzoo tests",
    "GIT_COMMITTER_EMAIL": "tests@segzoo.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def free_port() -> int:
    """A TCP port nothing listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses_connections(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- git repositories in olah's layout -----------------------------------------------------------


@dataclass(frozen=True)
class LfsFile:
    """A file stored through Git LFS: a pointer in the tree, the bytes in .git/lfs/objects."""

    data: bytes

    @property
    def oid(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def pointer(self) -> bytes:
        return LFS_POINTER.format(oid=self.oid, size=len(self.data)).encode()


class GitMirrors:
    """Model repositories under ``<root>/models/<org>/<name>``, written with git plumbing (no
    checkout), flat trees only (a segzoo folder has no subfolders)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def path(self, repo_id: str) -> Path:
        return self.root / "models" / repo_id

    def exists(self, repo_id: str) -> bool:
        return (self.path(repo_id) / ".git").is_dir()

    def git(self, repo_id: str, *args: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            ["git", "-C", str(self.path(repo_id)), *args],
            input=input,
            capture_output=True,
            env={**os.environ, **_GIT_ENV},
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode().strip()}")
        return proc.stdout

    def resolve(self, repo_id: str, rev: str) -> str | None:
        """The commit a branch, tag or sha names; None if there is none."""
        try:
            return self.git(repo_id, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except RuntimeError:
            return None

    def branches(self, repo_id: str) -> list[str]:
        out = self.git(repo_id, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
        return out.decode().split()

    def set_ref(self, repo_id: str, ref: str, commit: str) -> None:
        """Point ``refs/heads/X`` or ``refs/tags/X`` at a commit."""
        self.git(repo_id, "update-ref", ref, commit)

    def entries(self, repo_id: str, rev: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob sha) of a commit's tree."""
        out = self.git(repo_id, "ls-tree", "-z", rev).decode()
        entries = {}
        for line in filter(None, out.split("\0")):
            meta, path = line.split("\t", 1)
            mode, _kind, sha = meta.split()
            entries[path] = (mode, sha)
        return entries

    def blob(self, repo_id: str, sha: str) -> bytes:
        return self.git(repo_id, "cat-file", "blob", sha)

    def lfs_object(self, repo_id: str, oid: str) -> Path:
        return self.path(repo_id) / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def pointer_of(self, repo_id: str, rev: str, path: str) -> tuple[str, int] | None:
        """(oid, size) when the file is an LFS pointer at that revision."""
        entry = self.entries(repo_id, rev).get(path)
        if entry is None:
            return None
        match = _POINTER_RE.fullmatch(self.blob(repo_id, entry[1]))
        return (match.group(1).decode(), int(match.group(2))) if match else None

    def read(self, repo_id: str, rev: str, path: str) -> bytes:
        """A file's content at a revision (LFS pointers resolved)."""
        pointer = self.pointer_of(repo_id, rev, path)
        if pointer is not None:
            return self.lfs_object(repo_id, pointer[0]).read_bytes()
        return self.blob(repo_id, self.entries(repo_id, rev)[path][1])

    def lfs_patterns(self, repo_id: str, rev: str) -> list[str]:
        """The patterns .gitattributes sends through LFS at a revision."""
        if ".gitattributes" not in self.entries(repo_id, rev):
            return []
        text = self.read(repo_id, rev, ".gitattributes").decode()
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line.split()[1:]]

    def commit(
        self,
        repo_id: str,
        changes: Mapping[str, bytes | LfsFile | None],
        *,
        branch: str = "main",
        message: str = "update",
        parent: str | None = None,
    ) -> str:
        """Commit ``changes`` (path -> content, None deletes) on top of ``parent`` (default: the
        branch head; a new repository starts empty) and move the branch there."""
        with self._lock:
            if not self.exists(repo_id):
                self.path(repo_id).mkdir(parents=True, exist_ok=True)
                self.git(repo_id, "init", "--quiet", "--initial-branch=main")
            parent = parent or self.resolve(repo_id, f"refs/heads/{branch}")
            entries = self.entries(repo_id, parent) if parent else {}
            for path, content in changes.items():
                if "/" in path:
                    raise ValueError(f"{path!r}: these test repositories hold top-level files only")
                if content is None:
                    entries.pop(path, None)
                    continue
                if isinstance(content, LfsFile):
                    obj = self.lfs_object(repo_id, content.oid)
                    obj.parent.mkdir(parents=True, exist_ok=True)
                    obj.write_bytes(content.data)
                    content = content.pointer()
                sha = self.git(repo_id, "hash-object", "-w", "--stdin", input=content).decode().strip()
                entries[path] = ("100644", sha)
            listing = "".join(f"{mode} blob {sha}\t{path}\0" for path, (mode, sha) in sorted(entries.items()))
            tree = self.git(repo_id, "mktree", "-z", input=listing.encode()).decode().strip()
            args = ["-p", parent] if parent else []
            sha = self.git(repo_id, "commit-tree", tree, *args, "-m", message).decode().strip()
            self.set_ref(repo_id, f"refs/heads/{branch}", sha)
            return sha

    def commit_folder(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        branch: str = "main",
        message: str = "Upload a segzoo folder",
    ) -> str:
        """Commit files the way the Hub stores them: .gitattributes first, matching files via LFS."""
        changes: dict[str, bytes | LfsFile | None] = {}
        if not self.exists(repo_id) or self.resolve(repo_id, f"refs/heads/{branch}") is None:
            changes[".gitattributes"] = GITATTRIBUTES.encode()
        patterns = [line.split()[0] for line in GITATTRIBUTES.splitlines()]
        for path, data in files.items():
            lfs = any(fnmatch.fnmatch(path, p) for p in patterns)
            changes[path] = LfsFile(data) if lfs else data
        return self.commit(repo_id, changes, branch=branch, message=message)


# -- olah ---------------------------------------------------------------------------------------


class OlahServer:
    """olah offline on 127.0.0.1, serving the git repositories under ``mirrors_root``.

    In offline mode olah answers ``/{repo}/resolve/{rev}/{file}`` (HEAD with X-Repo-Commit, an
    ETag that is the sha256 for LFS files, and GET), ``/api/models/{repo}/refs`` and
    ``/api/models/{repo}/revision/{rev}`` from the local repositories. What it does not:

    - a miss on a *branch* name (no such branch, or no such file on it) falls through to its
      offline cache of upstream metadata, finds nothing and answers 401 RepoNotFound, so the
      client cannot tell repo, revision and file apart (segzoo asks for the refs then);
    - ``/api/models/{repo}`` without a revision looks for the newest commit in that cache only,
      so ``repo_info(repo_id)`` is RepoNotFound for every local repository;
    - a full commit sha that does not exist makes it answer 500 after the client's retries
      (``LocalMirrorRepo.get_file_head`` catches GitPython's ``BadName`` but not the
      ``ValueError`` it raises there), so no test asks for one.

    A file missing at an existing full sha is a proper 404 EntryNotFound.
    """

    def __init__(self, mirrors_root: Path, workdir: Path) -> None:
        self.mirrors_root = Path(mirrors_root)
        self.workdir = Path(workdir)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "olah.out"  # olah writes its own olah.log beside it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"repos-path = {json.dumps(str(self.workdir / 'cache'))}\n"
            f"mirrors-path = [{json.dumps(str(self.mirrors_root))}]\n"
            "[accessibility]\n"
            "offline = true\n"
        )
        return config

    def start(self, timeout: float = 60) -> OlahServer:
        """Start olah and wait until it answers HTTP; on a port taken meanwhile, try another."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            config = self._write_config()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.workdir)],
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                ready = self._wait_ready(timeout)
            except BaseException:
                self.stop()
                raise
            if ready:
                return self
            self.stop()
        raise RuntimeError(f"olah did not start; its log:\n{self.log.read_text()[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                opener.open(f"{self.url}/api/models/-/-/refs", timeout=2).close()
                return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop olah (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def __enter__(self) -> OlahServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the push fake ------------------------------------------------------------------------------


class HubError(Exception):
    """An error answer, shaped like the Hub's (JSON body plus X-Error-Code / X-Error-Message)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class FakeRepo:
    private: bool
    announced: dict[str, int] = field(default_factory=dict)  # oid -> size, from the LFS batch call
    signatures: dict[str, str] = field(default_factory=dict)  # oid -> the upload URL's signature
    objects: dict[str, bytes] = field(default_factory=dict)  # oid -> verified content


@dataclass
class CommitRecord:
    repo_id: str
    branch: str
    oid: str
    summary: str
    files: dict[str, str]  # path -> "lfs", "regular" or "deleted"


Route = tuple[str, re.Pattern, Callable[..., Any]]
_REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"


class HubFake:
    """A strict stand-in for the Hub's upload API on 127.0.0.1 (see the module docstring).

    Endpoints: POST /api/repos/create, GET /api/models/{repo}[/revision/{rev}],
    POST /api/validate-yaml, POST /api/models/{repo}/branch/{branch},
    POST /api/models/{repo}/preupload/{rev}, POST /{repo}.git/info/lfs/objects/batch,
    PUT /lfs-objects/{repo}/{oid}?signature=... (the "S3" upload), POST /lfs-verify/{repo},
    POST /api/models/{repo}/commit/{rev} (NDJSON). Writes need ``Authorization: Bearer <token>``.
    """

    def __init__(self, mirrors: GitMirrors, token: str = "hf_fake_write_token") -> None:
        self.mirrors = mirrors
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.commits: list[CommitRecord] = []
        self.requests: list[str] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.routes: list[Route] = [
            ("POST", re.compile(r"/api/repos/create"), self.create_repo),
            ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), self.repo_info),
            ("POST", re.compile(r"/api/validate-yaml"), self.validate_yaml),
            ("POST", re.compile(rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)"), self.create_branch),
            ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), self.preupload),
            ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), self.lfs_batch),
            ("PUT", re.compile(rf"/lfs-objects/{_REPO}/(?P<oid>[0-9a-f]{{64}})"), self.lfs_put),
            ("POST", re.compile(rf"/lfs-verify/{_REPO}"), self.lfs_verify),
            ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), self.commit),
        ]

    @property
    def url(self) -> str:
        assert self._server is not None, "HubFake is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubFake:
        fake = self

        class Handler(_Handler):
            hub = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="HubFake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> HubFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------------

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if headers.get("authorization") != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, headers: Mapping[str, str], *, write: bool) -> FakeRepo:
        if write:
            self._authorize(headers)
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and headers.get("authorization") != f"Bearer {self.token}"):
            raise HubError(404 if write else 401, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo_id: str, rev: str) -> str:
        commit = self.mirrors.resolve(repo_id, f"refs/heads/{rev}")
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- endpoints ------------------------------------------------------------------------------

    def create_repo(self, headers: Mapping[str, str], body: bytes, query: dict) -> tuple[int, Any]:
        self._authorize(headers)
        payload = json.loads(body)
        unknown = set(payload) - {"name", "organization", "type", "visibility"}
        if unknown or payload.get("type") not in (None, "model"):
            raise HubError(400, f"this fake creates model repos only; unexpected fields {sorted(unknown)}")
        if payload.get("visibility") not in (None, "public", "private"):
            raise HubError(400, f"invalid visibility {payload['visibility']!r}")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
            raise HubError(400, f"invalid repo name {repo_id!r}")
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
        self.mirrors.commit(repo_id, {".gitattributes": GITATTRIBUTES.encode()}, message="initial commit")
        return 200, {
            "url": f"{self.url}/{repo_id}",
            "name": repo_id,
            "id": hashlib.sha1(repo_id.encode()).hexdigest(),
        }

    def repo_info(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str, rev: str | None):
        repo = self._repo(repo_id, headers, write=False)
        sha = self._revision(repo_id, unquote(rev or "main"))
        files = self.mirrors.entries(repo_id, sha)
        return 200, {
            "id": repo_id,
            "sha": sha,
            "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }

    def validate_yaml(self, headers: Mapping[str, str], body: bytes, query: dict) -> tuple[int, Any]:
        payload = json.loads(body)
        if set(payload) != {"content", "repoType"} or payload["repoType"] != "model":
            raise HubError(400, f"unexpected validate-yaml payload keys {sorted(payload)}")
        match = re.match(r"\s*---\n(.*?)\n---\n", payload["content"], flags=re.S)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def create_branch(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str, branch: str):
        self._repo(repo_id, headers, write=True)
        branch = unquote(branch)
        payload = json.loads(body or b"{}")
        if set(payload) - {"startingPoint"}:
            raise HubError(400, f"unexpected branch payload keys {sorted(payload)}")
        if branch in self.mirrors.branches(repo_id):
            return 409, {"error": "Reference already exists"}
        start = payload.get("startingPoint", "main")
        commit = self.mirrors.resolve(repo_id, start)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {start}", "RevisionNotFound")
        self.mirrors.set_ref(repo_id, f"refs/heads/{branch}", commit)
        return 200, {}

    def preupload(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str, rev: str):
        self._repo(repo_id, headers, write=True)
        if query:
            raise HubError(400, f"unexpected preupload parameters {sorted(query)}")
        sha = self._revision(repo_id, unquote(rev))
        patterns = self.mirrors.lfs_patterns(repo_id, sha)
        existing = self.mirrors.entries(repo_id, sha)
        answer = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = (
                any(fnmatch.fnmatch(f["path"], p) for p in patterns)
                or b"\0" in sample
                or f["size"] >= 10 << 20
            )
            oid = None
            if f["path"] in existing:
                pointer = self.mirrors.pointer_of(repo_id, sha, f["path"])
                oid = pointer[0] if pointer else existing[f["path"]][1]
            answer.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return 200, {"files": answer}

    def lfs_batch(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str):
        repo = self._repo(repo_id, headers, write=True)
        if headers.get("accept") != "application/vnd.git-lfs+json":
            raise HubError(400, "the LFS batch API speaks application/vnd.git-lfs+json")
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", []):
            raise HubError(400, f"this fake accepts basic LFS uploads only, got {payload.get('operation')!r}")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, f"unsupported hash_algo {payload['hash_algo']!r}")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                raise HubError(400, f"invalid LFS object {obj!r}")
            if oid in repo.objects:
                objects.append({"oid": oid, "size": size})  # no actions: already stored
                continue
            repo.announced[oid] = size
            repo.signatures[oid] = secrets.token_hex(8)
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {
                            "href": f"{self.url}/lfs-objects/{repo_id}/{oid}?signature={repo.signatures[oid]}"
                        },
                        "verify": {"href": f"{self.url}/lfs-verify/{repo_id}"},
                    },
                }
            )
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_put(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str, oid: str):
        repo = self.repos.get(repo_id)
        signature = query.get("signature", [None])[0]
        if repo is None or oid not in repo.announced or signature != repo.signatures.get(oid):
            raise HubError(403, "SignatureDoesNotMatch: no upload of this object was announced")
        if len(body) != repo.announced[oid]:
            raise HubError(
                400, f"IncompleteBody: announced {repo.announced[oid]} bytes, received {len(body)}"
            )
        got = hashlib.sha256(body).hexdigest()
        if got != oid:
            raise HubError(400, f"BadDigest: the content's sha256 is {got}, not the announced {oid}")
        repo.objects[oid] = body
        return 200, None

    def lfs_verify(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str):
        repo = self._repo(repo_id, headers, write=True)
        payload = json.loads(body)
        data = repo.objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise HubError(404, f"LFS object {payload['oid']} was not uploaded")
        return 200, {}

    def commit(self, headers: Mapping[str, str], body: bytes, query: dict, repo_id: str, rev: str):
        repo = self._repo(repo_id, headers, write=True)
        if query:
            raise HubError(400, f"unexpected commit parameters {sorted(query)} (pull requests are not faked)")
        if headers.get("content-type") != "application/x-ndjson":
            raise HubError(400, "the commit API takes application/x-ndjson")
        branch = unquote(rev)
        head = self._revision(repo_id, branch)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HubError(400, "a commit starts with a header line carrying a summary")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        changes: dict[str, bytes | LfsFile | None] = {}
        kinds: dict[str, str] = {}
        missing = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                changes[value["path"]] = base64.b64decode(value["content"])
                kinds[value["path"]] = "regular"
            elif key == "lfsFile":
                if value.get("algo") != "sha256":
                    raise HubError(400, f"unsupported LFS algo {value.get('algo')!r}")
                data = repo.objects.get(value["oid"])
                if data is None or len(data) != value.get("size", len(data)):
                    missing.append(value["path"])
                    continue
                changes[value["path"]] = LfsFile(data)
                kinds[value["path"]] = "lfs"
            elif key == "deletedFile":
                changes[value["path"]] = None
                kinds[value["path"]] = "deleted"
            else:
                raise HubError(400, f"this fake does not handle {key!r} commit operations")
        if missing:
            # worded like the Hub's rejection of LFS pointers whose objects it never received
            raise HubError(
                422,
                "Your push was rejected because an LFS pointer pointed to a file that does not exist. "
                "Offending file(s): " + ", ".join(missing),
            )
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        oid = self.mirrors.commit(repo_id, changes, branch=branch, message=message, parent=head)
        self.commits.append(CommitRecord(repo_id, branch, oid, header["summary"], kinds))
        return 200, {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{repo_id}/commit/{oid}",
            "hookOutput": "",
        }


class _Handler(BaseHTTPRequestHandler):
    hub: HubFake
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded instead
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self) -> None:
        body = self._body()
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        # match on the raw path (handlers unquote): a quoted revision may contain an encoded "/"
        raw_path = split.path
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = f"{self.command} {unquote(raw_path)}"
        with self.hub._lock:
            self.hub.requests.append(request)
        for method, pattern, handler in self.hub.routes:
            match = pattern.fullmatch(raw_path)
            if method == self.command and match:
                try:
                    with self.hub._lock:
                        status, payload = handler(headers, body, query, **match.groupdict())
                except HubError as err:
                    extra = {"X-Error-Message": err.message} | (
                        {"X-Error-Code": err.code} if err.code else {}
                    )
                    self._send(err.status, {"error": err.message}, extra)
                except Exception as err:  # a bug in the fake or a malformed request: loud
                    with self.hub._lock:
                        self.hub.unexpected.append(f"{request}: {type(err).__name__}: {err}")
                    self._send(500, {"error": f"HubFake crashed: {type(err).__name__}: {err}"})
                else:
                    self._send(status, payload)
                return
        with self.hub._lock:
            self.hub.unexpected.append(request)
        message = f"HubFake does not implement {request}"
        self._send(501, {"error": message}, {"X-Error-Message": message})

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _dispatch
