"""A loopback server that speaks enough of the Hugging Face Hub HTTP API for push/pull round trips in tests.

`LoopbackHub` starts a `http.server.ThreadingHTTPServer` on 127.0.0.1 (random free port, background thread) and
keeps repositories under a temporary directory: one content-addressed object store (git blob ids for regular
files, sha256 for LFS objects) and, per repository, a list of commits whose trees map paths to objects. Every
commit gets its own 40-hex commit sha; `main` points at the newest one.

What it implements (the calls huggingface_hub 2.4 makes for create_repo, upload_folder/create_commit,
repo_info/model_info, list_repo_tree, get_paths_info, snapshot_download, hf_hub_download, and what transformers'
`from_pretrained` makes through them):

    GET  /api/whoami-v2
    POST /api/repos/create                                   (409 when it exists; `exist_ok` handles that)
    DELETE /api/repos/delete
    POST /api/validate-yaml                                  (README.md metadata; always accepted)
    GET  /api/{models,datasets,spaces}/{repo_id}[/revision/{rev}]     info with `siblings` and `sha`
    GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]         (`recursive`)
    POST /api/{type}s/{repo_id}/paths-info/{rev}
    POST /api/{type}s/{repo_id}/preupload/{rev}             `regular` below `lfs_threshold` bytes, else `lfs`
    POST /{prefix}{repo_id}.git/info/lfs/objects/batch       LFS batch API, basic transfer + verify
    PUT  /_lfs/upload/{sha256}/{signature}                   where the batch API sends LFS content
    POST /api/{type}s/{repo_id}/commit/{rev}                 ndjson: file, lfsFile, deletedFile, deletedFolder
    HEAD/GET /{prefix}{repo_id}/resolve/{rev}/{path}         ETag, X-Repo-Commit, Content-Length, and for LFS
                                                             files X-Linked-Etag/X-Linked-Size; Range requests

Errors carry the `X-Error-Code` the client maps to its exceptions (RepoNotFound, RevisionNotFound,
EntryNotFound). A wrong token is answered with 401 on every route; no token at all may read public repos only.
Tokens are compared, never logged or written anywhere: the server does not print request lines.

Xet. huggingface_hub does not ask the server whether to use Xet for uploads: `upload_folder` and the LFS part of
`create_commit` take the Xet path whenever the `hf_xet` package is importable and `HF_HUB_DISABLE_XET` is not set
(`huggingface_hub.utils.is_xet_available`). This server does not implement Xet storage (its `xet-*-token` routes
answer 501 with an explanation), so clients that upload LFS-sized files must run with `HF_HUB_DISABLE_XET=1`;
`LoopbackHub.env()` sets it. Files answered `regular` by preupload never touch Xet, and downloads use Xet only
when a HEAD response carries `X-Xet-Hash`, which this server never sends.

How tests use it. huggingface_hub reads `HF_ENDPOINT` (and `HF_HUB_DISABLE_XET`, `HF_HOME`, ...) into module
constants at import time, so pointing an already-imported client at the server is fragile. Tests therefore run
the client side in a subprocess whose environment comes from `hub.env()`:

    from tests.hub_server import LoopbackHub

    with LoopbackHub() as hub:
        env = hub.env(hf_home=tmp_path / "hf_home")   # HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_DISABLE_XET, ...
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        repo_id = f"{hub.user}/my-model"

(`HfApi(endpoint=hub.endpoint, token=hub.token)` in the test process also works for calls that take an endpoint,
but `hf_hub_download`/`from_pretrained` need the environment variable at import time.) `env()` also drops
`HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE`, which tests/conftest.py sets for the test process; a client subprocess
that imports tests/conftest.py sets it again and must unset it. `model.push_to_hub(...)` followed by
`AutoModel.from_pretrained(repo_id, trust_remote_code=True)` works through this server as well.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LoopbackHub"]

DEFAULT_USER = "loopback-user"
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MiB and more in LFS
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"

_API_REPO = re.compile(r"^/api/(?P<kind>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")
_LFS_BATCH = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects/batch$")
_LFS_UPLOAD = re.compile(r"^/_lfs/upload/(?P<oid>[0-9a-f]{64})/(?P<sig>[0-9a-f]+)$")
_LFS_VERIFY = re.compile(r"^/_lfs/verify/(?P<sig>[0-9a-f]+)$")
_RESOLVE = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class _Entry:
    """One file in a commit's tree."""

    size: int
    blob_id: str  # git blob id (of the pointer file for LFS objects)
    lfs_sha256: str | None = None

    def tree_json(self, path: str) -> dict:
        info = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            pointer_size = len(lfs_pointer(self.lfs_sha256, self.size))
            info["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": pointer_size}
        return info


@dataclass
class _Commit:
    oid: str
    title: str
    date: str
    parent: str | None
    tree: dict[str, _Entry]


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    """An error answered to the client with a status, an optional `X-Error-Code` and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LoopbackHub:
    """A Hugging Face Hub stand-in on 127.0.0.1. Use as a context manager; see the module docstring.

    Args:
        user: the account name `whoami` reports; the token may create repos in this namespace only.
        token: the token the server accepts; a random `hf_...` string by default.
        root: where repositories and objects are stored; a fresh temporary directory (removed on exit) by default.
        lfs_threshold: files of this many bytes or more are answered `lfs` by preupload; `None` answers `regular`
            for every file (then no client ever needs LFS or Xet).
    """

    def __init__(
        self,
        user: str = DEFAULT_USER,
        token: str | None = None,
        root: str | os.PathLike | None = None,
        lfs_threshold: int | None = DEFAULT_LFS_THRESHOLD,
    ):
        self.user = user
        self.token = token if token is not None else "hf_loopback_" + secrets.token_hex(16)
        self.lfs_threshold = lfs_threshold
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="loopback_hub_") if root is None else root)
        self._objects = self.root / "objects"
        self._lfs = self.root / "lfs"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._lfs.mkdir(parents=True, exist_ok=True)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._signing_key = secrets.token_bytes(16)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for debugging tests
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "LoopbackHub":
        hub = self

        class Handler(_HubRequestHandler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def env(self, hf_home: str | os.PathLike | None = None, base: dict | None = None, token: str | None = None) -> dict:
        """Environment for a client subprocess: this endpoint, this token, Xet off, telemetry off.

        `hf_home` isolates the client's cache and stored tokens (a directory under `root` by default);
        `base` defaults to `os.environ`; `token` overrides the token sent (to test a wrong one).
        """
        env = dict(os.environ if base is None else base)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN_PATH", "HF_HUB_CACHE"):
            env.pop(name, None)
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_TOKEN=self.token if token is None else token,
            HF_HOME=str(hf_home if hf_home is not None else self.root / "hf_home"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_ETAG_TIMEOUT="10",
            HF_HUB_DOWNLOAD_TIMEOUT="30",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        return env

    # -- inspection helpers for tests -----------------------------------------------------------------------
    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision, read straight from the store (no HTTP)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authorized=True)
            commit = self._resolve(repo, revision)
            return {path: self._read_object(entry) for path, entry in commit.tree.items()}

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._get_repo(repo_type, repo_id, authorized=True).private

    # -- storage -------------------------------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hashlib.sha256(self._signing_key + text.encode()).hexdigest()[:32]

    def _read_object(self, entry: _Entry) -> bytes:
        if entry.lfs_sha256 is not None:
            return (self._lfs / entry.lfs_sha256).read_bytes()
        return (self._objects / entry.blob_id).read_bytes()

    def _object_path(self, entry: _Entry) -> Path:
        return self._lfs / entry.lfs_sha256 if entry.lfs_sha256 is not None else self._objects / entry.blob_id

    def _store_regular(self, content: bytes) -> _Entry:
        blob_id = git_blob_id(content)
        path = self._objects / blob_id
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return _Entry(size=len(content), blob_id=blob_id)

    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> _Commit:
        oid = repo.branches.get(revision, revision)
        commit = repo.commits.get(oid)
        if commit is None and len(revision) >= 7:  # short commit shas, as git accepts them
            matches = [c for o, c in repo.commits.items() if o.startswith(revision)]
            commit = matches[0] if len(matches) == 1 else None
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: _Repo, branch: str, title: str, tree: dict[str, _Entry]) -> _Commit:
        parent = repo.branches.get(branch)
        date = _now()
        digest = json.dumps(
            {
                "parent": parent,
                "title": title,
                "date": date,
                "nonce": len(repo.commits),
                "tree": {p: [e.blob_id, e.size] for p, e in sorted(tree.items())},
            },
            sort_keys=True,
        )
        oid = hashlib.sha1(digest.encode()).hexdigest()
        commit = _Commit(oid=oid, title=title, date=date, parent=parent, tree=tree)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    # -- routes (called by the handler with the lock held where state changes) ------------------------
    def whoami(self) -> dict:
        return {
            "type": "user",
            "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
            "name": self.user,
            "fullname": self.user,
            "isPro": False,
            "canPay": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
        }

    def create_repo(self, payload: dict) -> tuple[int, dict]:
        name = payload.get("name")
        namespace = payload.get("organization") or self.user
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo name or type: name={name!r} type={repo_type!r}")
        if namespace != self.user:
            raise HubError(403, f"You don't have the rights to create a repo under the namespace {namespace!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = _Repo(repo_id=repo_id, repo_type=repo_type, private=private, created_at=_now())
            self._repos[(repo_type, repo_id)] = repo
            self._new_commit(repo, "main", "initial commit", {".gitattributes": self._store_regular(GITATTRIBUTES)})
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def delete_repo(self, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name')}"
        with self._lock:
            self._get_repo(repo_type, repo_id, authorized=True)
            del self._repos[(repo_type, repo_id)]
        return {}

    def repo_info(self, repo: _Repo, revision: str | None, blobs: bool) -> dict:
        commit = self._resolve(repo, revision or "main")
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs_sha256 is not None:
                    pointer_size = len(lfs_pointer(entry.lfs_sha256, entry.size))
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256, "pointerSize": pointer_size}
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }

    @staticmethod
    def _folders(tree: dict[str, _Entry]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}

    def _folder_json(self, commit: _Commit, folder: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest(), "path": folder}

    def tree(self, repo: _Repo, revision: str, path: str, recursive: bool) -> list[dict]:
        commit = self._resolve(repo, revision)
        folders = self._folders(commit.tree)
        prefix = path.strip("/")
        if prefix and prefix not in folders:
            raise HubError(404, f"Path {prefix} not found in {repo.repo_id}@{revision}", "EntryNotFound")

        def wanted(item: str) -> bool:
            if prefix and not item.startswith(prefix + "/"):
                return False
            relative = item[len(prefix) + 1 :] if prefix else item
            return recursive or "/" not in relative

        items = [self._folder_json(commit, f) for f in sorted(folders) if wanted(f)]
        items += [e.tree_json(p) for p, e in sorted(commit.tree.items()) if wanted(p)]
        return items

    def paths_info(self, repo: _Repo, revision: str, paths: list[str]) -> list[dict]:
        commit = self._resolve(repo, revision)
        folders = self._folders(commit.tree)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.tree:
                out.append(commit.tree[path].tree_json(path))
            elif path in folders:
                out.append(self._folder_json(commit, path))
        return out

    def preupload(self, repo: _Repo, revision: str, payload: dict) -> dict:
        commit = self._resolve(repo, revision)
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = self.lfs_threshold is not None and size >= self.lfs_threshold
            entry = commit.tree.get(path)
            remote_oid = None
            if entry is not None:  # the client compares this with its local oid to skip unchanged files
                remote_oid = entry.lfs_sha256 if entry.lfs_sha256 is not None else entry.blob_id
            mode = "lfs" if lfs else "regular"
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        return {"files": files, "commitOid": commit.oid}

    def lfs_batch(self, payload: dict) -> dict:
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS 'upload' operation is implemented by the loopback Hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}})
                continue
            if (self._lfs / oid).exists():
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
                continue
            sig = self._sign(f"{oid}:{size}")
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.endpoint}/_lfs/upload/{oid}/{sig}", "expires_in": 3600},
                        "verify": {"href": f"{self.endpoint}/_lfs/verify/{self._sign('verify')}"},
                    },
                }
            )
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_store(self, oid: str, sig: str, content: bytes) -> None:
        if not secrets.compare_digest(sig, self._sign(f"{oid}:{len(content)}")):
            raise HubError(403, "LFS upload URL signature does not match this object and size")
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"LFS object content does not match its oid {oid}")
        path = self._lfs / oid
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(content)
        os.replace(tmp, path)

    def lfs_verify(self, sig: str, payload: dict) -> dict:
        if not secrets.compare_digest(sig, self._sign("verify")):
            raise HubError(403, "LFS verify URL signature mismatch")
        path = self._lfs / str(payload.get("oid", ""))
        if not path.exists() or path.stat().st_size != int(payload.get("size", -1)):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded (or has another size)")
        return {}

    def commit(self, repo: _Repo, branch: str, lines: list[dict], create_pr: bool) -> dict:
        if create_pr:
            raise HubError(400, "Pull requests are not implemented by the loopback Hub; commit to a branch")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a 'header' line")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary is empty")
        with self._lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} is not a branch of {repo.repo_id}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise HubError(412, f"Parent commit {parent} is not the head of {branch} ({head.oid})")
            tree = dict(head.tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if not path or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {value.get('path')!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                    tree[path] = self._store_regular(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    oid = str(value.get("oid", ""))
                    stored = self._lfs / oid
                    if not re.fullmatch(r"[0-9a-f]{64}", oid) or not stored.exists():
                        raise HubError(400, f"LFS object {oid} for {path} was not uploaded before the commit")
                    size = stored.stat().st_size
                    if value.get("size") is not None and int(value["size"]) != size:
                        raise HubError(400, f"LFS object {oid} for {path} has size {size}, not {value['size']}")
                    tree[path] = _Entry(size=size, blob_id=git_blob_id(lfs_pointer(oid, size)), lfs_sha256=oid)
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    doomed = [p for p in tree if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = self._new_commit(repo, branch, title, tree)
        url = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}


class _HubRequestHandler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib signature
        pass  # request lines are recorded in `hub.requests`; headers (the token) are never logged

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except ValueError as error:
            raise HubError(400, f"Request body is not JSON: {error}") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200):
        self._send(status, json.dumps(payload).encode())

    def _send_error(self, error: HubError):
        if not self._body_read:
            # An unread request body would be parsed as the next request on this keep-alive connection.
            self._body()
        headers = {"X-Error-Message": error.message.encode("ascii", "replace").decode()}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, json.dumps({"error": error.message}).encode(), headers)

    def _authorized(self) -> bool:
        """True with the right token, False without a token; a wrong token is a 401 on every route."""
        header = self.headers.get("Authorization")
        if header is None:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), self.hub.token.encode()):
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _require_auth(self, authorized: bool) -> None:
        if not authorized:
            raise HubError(401, "You must be authenticated to access this endpoint (no token was sent)")

    def _dispatch(self):
        self._body_read = False
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        status = 500
        try:
            status = self._route(path, query) or 200
        except HubError as error:
            status = error.status
            self._send_error(error)
        except Exception as error:  # a bug in the server: answer it instead of hanging the client
            status = 500
            self._send_error(HubError(500, f"loopback Hub internal error: {type(error).__name__}: {error}"))
            print(f"loopback Hub: {self.command} {path}: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            with self.hub._lock:
                self.hub.requests.append((self.command, path, status))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routing ----------------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict) -> int | None:
        hub, method = self.hub, self.command

        if (m := _LFS_UPLOAD.match(path)) and method == "PUT":
            hub.lfs_store(m["oid"], m["sig"], self._body())
            self._send(200)
            return None
        if (m := _LFS_VERIFY.match(path)) and method == "POST":
            self._send_json(hub.lfs_verify(m["sig"], self._json_body()))
            return None

        authorized = self._authorized()

        if path == "/api/whoami-v2" and method == "GET":
            self._require_auth(authorized)
            self._send_json(hub.whoami())
            return None
        if path == "/api/repos/create" and method == "POST":
            self._require_auth(authorized)
            status, payload = hub.create_repo(self._json_body())
            self._send_json(payload, status)
            return status
        if path == "/api/repos/delete" and method == "DELETE":
            self._require_auth(authorized)
            self._send_json(hub.delete_repo(self._json_body()))
            return None
        if path == "/api/validate-yaml" and method == "POST":
            self._body()
            self._send_json({"errors": [], "warnings": []})
            return None

        if m := _LFS_BATCH.match(path):
            self._require_auth(authorized)
            repo_type = REPO_TYPES[m["kind"]] if m["kind"] else "model"
            with hub._lock:
                hub._get_repo(repo_type, f"{m['ns']}/{m['name']}", authorized)
            body = hub.lfs_batch(self._json_body())
            self._send(200, json.dumps(body).encode(), content_type="application/vnd.git-lfs+json")
            return None

        if m := _API_REPO.match(path):
            return self._route_api_repo(m, query, authorized)

        if (m := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
            return self._route_resolve(m, authorized)

        raise HubError(404, f"The loopback Hub does not implement {method} {path}")

    def _route_api_repo(self, m: re.Match, query: dict, authorized: bool) -> int | None:
        hub, method = self.hub, self.command
        repo_type = REPO_TYPES[m["kind"]]
        repo_id = f"{unquote(m['ns'])}/{unquote(m['name'])}"
        rest = m["rest"] or ""
        action, _, tail = rest.lstrip("/").partition("/")
        if action.startswith("xet-"):
            raise HubError(
                501,
                "The loopback Hub does not implement Xet storage. Run the client with HF_HUB_DISABLE_XET=1 "
                "(LoopbackHub.env() sets it) so that LFS-sized files use the LFS batch API.",
            )
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id, authorized)
            if action in ("", "revision") and method == "GET":
                revision = unquote(tail) if action == "revision" else None
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                self._send_json(hub.repo_info(repo, revision, blobs))
                return None
            if action == "tree" and method == "GET":
                revision, _, sub = tail.partition("/")
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._send_json(hub.tree(repo, unquote(revision), unquote(sub), recursive))
                return None
            if action == "paths-info" and method == "POST":
                form = parse_qs(self._body().decode())
                self._send_json(hub.paths_info(repo, unquote(tail), form.get("paths", [])))
                return None
        if action == "preupload" and method == "POST":
            self._require_auth(authorized)
            payload = self._json_body()
            with hub._lock:
                self._send_json(hub.preupload(repo, unquote(tail), payload))
            return None
        if action == "commit" and method == "POST":
            self._require_auth(authorized)
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
            self._send_json(hub.commit(repo, unquote(tail), lines, create_pr))
            return None
        raise HubError(404, f"The loopback Hub does not implement {method} /api/{m['kind']}/{repo_id}{rest}")

    def _route_resolve(self, m: re.Match, authorized: bool) -> int:
        hub = self.hub
        repo_type = REPO_TYPES[m["kind"]] if m["kind"] else "model"
        repo_id = f"{unquote(m['ns'])}/{unquote(m['name'])}"
        filename = unquote(m["path"])
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id, authorized)
            commit = hub._resolve(repo, unquote(m["rev"]))
            entry = commit.tree.get(filename)
            if entry is None:
                raise HubError(404, f"Entry not found: {filename} in {repo_id}@{commit.oid}", "EntryNotFound")
            object_path = hub._object_path(entry)
        headers = {
            "ETag": f'"{entry.blob_id}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        if entry.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = entry.size
        start, end, status = 0, entry.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header and (rm := re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())):
            if rm[1]:
                start = int(rm[1])
                end = min(int(rm[2]), entry.size - 1) if rm[2] else entry.size - 1
            elif rm[2]:  # suffix range: the last N bytes
                start = max(entry.size - int(rm[2]), 0)
            if start >= entry.size and entry.size > 0:
                raise HubError(416, f"Range {range_header} is outside {filename} ({entry.size} bytes)")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = length
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command == "GET" and length:
            with open(object_path, "rb") as file:
                file.seek(start)
                remaining = length
                while remaining:
                    chunk = file.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        return status


if __name__ == "__main__":  # manual use: python tests/hub_server.py, then point HF_ENDPOINT at it
    with LoopbackHub() as running:
        print(f"LoopbackHub at {running.endpoint} for user {running.user!r} (token in LoopbackHub.token)")
        print(f"repos stored under {running.root}; Ctrl-C to stop")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
