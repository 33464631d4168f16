"""The Hugging Face Hub through the real huggingface_hub client, on 127.0.0.1 only.

Pulls go through olah (PyPI), a real Hub mirror nobody here wrote, running offline over git
repositories the tests build from ``save_pretrained`` folders. Pushes go to ``HubFake``, a strict
local fake of the Hub's upload protocol: no self-hostable Hub with upload runs offline here, so the
fake checks what huggingface_hub sends (LFS sizes and sha256, no commit of an object never
uploaded, no unknown endpoint) and writes each commit into a git repository olah then serves, so a
push is pulled back through the real server. See ``tests/hub_servers.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.cli import main as cli_main
from segzoo.errors import FolderError, HubNotFoundError

from .conftest import plugin
from .hub_servers import GitMirrors, HubFake, OlahServer, refuses_connections

X = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing should listen there


def out(model: segzoo.SegmentationModel) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(X)["out"]


@dataclass
class Tiny:
    """A small saved model: the model, its save_pretrained files and its output on X."""

    model: segzoo.SegmentationModel
    files: dict[str, bytes]
    out: torch.Tensor

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.files["model.safetensors"]).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Tiny]:
    """Two versions of one architecture (4 MB each) with different weights."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=3)
        folder = model.save_pretrained(tmp_path_factory.mktemp(f"tiny{seed}") / "model")
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        models.append(Tiny(model, files, out(model)))
    assert not torch.equal(models[0].out, models[1].out)
    return models


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> GitMirrors:
    return GitMirrors(tmp_path_factory.mktemp("mirrors"))


@pytest.fixture(scope="module")
def olah(mirrors: GitMirrors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahServer]:
    """One olah for the module; tests add repositories under its mirrors path as they go
    (olah opens the git repository on every request)."""
    with OlahServer(mirrors.root, tmp_path_factory.mktemp("olah")) as server:
        yield server


@pytest.fixture
def fake(mirrors: GitMirrors) -> Iterator[HubFake]:
    with HubFake(mirrors) as server:
        yield server
    assert server.unexpected == [], "huggingface_hub sent requests the fake does not implement"


@pytest.fixture
def hub_env(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """``connect(endpoint, offline=False)`` points huggingface_hub at a local server, as the
    environment would at import: it sets the variables, then reloads huggingface_hub.constants
    (ENDPOINT, the URL template, the cache and offline switches are read there, once). Caches are
    under tmp_path; everything is restored afterwards."""
    import huggingface_hub.constants
    from huggingface_hub.utils import close_session

    mp = pytest.MonkeyPatch()

    def connect(endpoint: str, *, offline: bool = False) -> None:
        mp.setenv("HF_ENDPOINT", endpoint)
        mp.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token or registry of the real user
        mp.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        mp.setenv("SEGZOO_CACHE", str(tmp_path / "segzoo-cache"))
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        # Telemetry on also means fetching {ENDPOINT}/api/agent-harnesses for the user agent.
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        # With hf_xet installed, uploads go through Xet: chunks sent to the Hub's CAS service
        # (a separate server with its own token exchange) instead of the LFS batch API. Neither
        # olah nor HubFake provides CAS, so uploads take the LFS path, which the fake checks.
        mp.setenv("HF_HUB_DISABLE_XET", "1")
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.delenv(var, raising=False)
        if offline:
            mp.setenv("HF_HUB_OFFLINE", "1")
        importlib.reload(huggingface_hub.constants)
        close_session()  # no pooled connection to a previous server

    try:
        connect(NOWHERE)
        yield connect
    finally:
        mp.undo()
        importlib.reload(huggingface_hub.constants)
        close_session()


class HubTags:
    """A throwaway plugin: recipe ``hubtoy`` (the tiny architecture) with the given weight tags."""

    def __init__(self, tags: dict[str, dict]) -> None:
        self.tags = tags

    @segzoo.hookimpl
    def register_models(self, register):
        register("hubtoy", backbone="mobilenet_v3_small", head="lraspp", num_classes=3, weights=self.tags)


# -- pull through olah --------------------------------------------------------------------------


def test_pull_through_olah_rebuilds_the_saved_model(olah, mirrors, tiny, hub_env, tmp_path):
    mirrors.commit_folder("segzoo-test/pull", tiny[0].files)
    hub_env(olah.url)
    model = segzoo.create("hf-hub:segzoo-test/pull")
    assert torch.equal(out(model), tiny[0].out)
    assert model.config["num_classes"] == 3 and model.config["backbone"] == "mobilenet_v3_small"
    # through huggingface_hub's cache (the test's), the safetensors blob named by its sha256
    repo_cache = tmp_path / "hf-cache" / "models--segzoo-test--pull"
    [snapshot] = (repo_cache / "snapshots").iterdir()
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert (repo_cache / "blobs" / tiny[0].sha256).is_file()


def test_revision_pinning_by_sha_branch_and_tag(olah, mirrors, tiny, hub_env):
    repo = "segzoo-test/pinned"
    first = mirrors.commit_folder(repo, tiny[0].files, message="v1")
    mirrors.set_ref(repo, "refs/tags/v1.0", first)
    mirrors.set_ref(repo, "refs/heads/stable", first)
    second = mirrors.commit_folder(repo, tiny[1].files, message="v2")
    hub_env(olah.url)
    for revision, version in [
        ("", 1),
        ("@main", 1),
        (f"@{first}", 0),
        ("@v1.0", 0),
        ("@stable", 0),
        (f"@{second}", 1),
    ]:
        model = segzoo.create(f"hf-hub:{repo}{revision}")
        assert torch.equal(out(model), tiny[version].out), revision


def test_a_push_between_the_two_downloads_does_not_mix_commits(olah, mirrors, tiny, hub_env, monkeypatch):
    """config.json and model.safetensors come from one commit even if the branch moves between
    the two downloads."""
    import huggingface_hub

    repo = "segzoo-test/moving"
    mirrors.commit_folder(repo, tiny[0].files)
    real_download = huggingface_hub.hf_hub_download

    def download_then_push(repo_id: str, filename: str, **kwargs):
        path = real_download(repo_id, filename, **kwargs)
        if filename == "config.json":
            mirrors.commit_folder(repo, tiny[1].files, message="pushed meanwhile")
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download_then_push)
    hub_env(olah.url)
    assert torch.equal(out(segzoo.create(f"hf-hub:{repo}")), tiny[0].out)


@pytest.fixture(scope="module")
def broken_repos(mirrors: GitMirrors, tiny: list[Tiny]) -> dict[str, str]:
    """Repositories that are not whole segzoo folders; name -> the commit."""
    weights_only = {"model.safetensors": tiny[0].files["model.safetensors"]}
    no_weights = {k: v for k, v in tiny[0].files.items() if k != "model.safetensors"}
    return {
        "segzoo-test/no-config": mirrors.commit_folder("segzoo-test/no-config", weights_only),
        "segzoo-test/no-weights": mirrors.commit_folder("segzoo-test/no-weights", no_weights),
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "segzoo-test/does-not-exist",
            "Hub repo 'segzoo-test/does-not-exist' does not exist, or is private (pass token=... or set HF_TOKEN)",
        ),
        (
            "segzoo-test/no-weights@no-such-branch",
            "Hub repo 'segzoo-test/no-weights' has no revision 'no-such-branch'",
        ),
        (
            "segzoo-test/no-weights",
            "Hub repo segzoo-test/no-weights has no model.safetensors: it is not a segzoo model folder",
        ),
        (
            "segzoo-test/no-weights@{commit}",
            "Hub repo segzoo-test/no-weights@{commit} has no model.safetensors: it is not a segzoo model folder",
        ),
        (
            "segzoo-test/no-config",
            "Hub repo segzoo-test/no-config has no config.json: it is not a segzoo model folder",
        ),
    ],
)
def test_a_missing_repo_revision_or_file_is_one_clear_error(olah, broken_repos, hub_env, name, message):
    commit = broken_repos["segzoo-test/no-weights"]
    hub_env(olah.url)
    with pytest.raises(HubNotFoundError) as info:
        segzoo.create(f"hf-hub:{name.format(commit=commit)}")
    assert str(info.value) == message.format(commit=commit)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


def test_a_gated_repo_is_not_reported_as_missing_something(hub_env, monkeypatch):
    """No server here gates repos, so huggingface_hub's answer for one is stubbed: segzoo must say
    "gated" rather than look for a missing revision or file."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id: str, filename: str, **kwargs):
        request = httpx2.Request("HEAD", f"{NOWHERE}/{repo_id}/resolve/main/{filename}")
        raise GatedRepoError("403 Client Error", response=httpx2.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(HubNotFoundError, match=r"^Hub repo 'org/gated' is gated: accept its conditions"):
        segzoo.create("hf-hub:org/gated")


# -- weight tags --------------------------------------------------------------------------------


def test_a_weight_tag_loads_its_pinned_revision_and_checks_sha256(olah, mirrors, tiny, hub_env):
    repo = "segzoo-test/tagged"
    first = mirrors.commit_folder(repo, tiny[0].files, message="v1")
    second = mirrors.commit_folder(repo, tiny[1].files, message="v2")
    tag = {"hf_hub_id": repo, "num_classes": 3}
    tags = {
        "v1": {**tag, "revision": first, "sha256": tiny[0].sha256},
        "v1_prefix": {**tag, "revision": first, "sha256": tiny[0].sha256[:8]},
        "wrong": {**tag, "revision": second, "sha256": tiny[0].sha256},  # second holds tiny[1]
    }
    hub_env(olah.url)
    with plugin(HubTags(tags), "hub-tags"):
        assert torch.equal(out(segzoo.create("hubtoy.v1", pretrained=True)), tiny[0].out)
        assert torch.equal(out(segzoo.create("hubtoy.v1_prefix", pretrained=True)), tiny[0].out)
        with pytest.raises(FolderError) as info:
            segzoo.create("hubtoy.wrong", pretrained=True)
    assert str(info.value) == (
        f"sha256 mismatch for {repo}@{second}/model.safetensors: expected {tiny[0].sha256}, got {tiny[1].sha256}"
    )


def test_a_corrupted_cached_file_fails_the_tags_sha256(olah, mirrors, tiny, hub_env, tmp_path):
    """The cache names the blob after the sha256 the server announced; the check must hash the
    bytes actually on disk."""
    repo = "segzoo-test/corrupted"
    first = mirrors.commit_folder(repo, tiny[0].files)
    tags = {"v1": {"hf_hub_id": repo, "revision": first, "sha256": tiny[0].sha256, "num_classes": 3}}
    hub_env(olah.url)
    with plugin(HubTags(tags), "hub-corrupt"):
        segzoo.create("hubtoy.v1", pretrained=True)
        blob = tmp_path / "hf-cache" / "models--segzoo-test--corrupted" / "blobs" / tiny[0].sha256
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF  # a bit flip in the last weight: still a valid safetensors file
        blob.write_bytes(bytes(data))
        with pytest.raises(FolderError, match=f"sha256 mismatch for {repo}@{first}/model.safetensors"):
            segzoo.create("hubtoy.v1", pretrained=True)


def test_offline_with_a_seeded_cache_makes_no_network_call(mirrors, tiny, hub_env, tmp_path, monkeypatch):
    repo = "segzoo-test/offline"
    first = mirrors.commit_folder(repo, tiny[0].files)
    tags = {"pinned": {"hf_hub_id": repo, "revision": first, "sha256": tiny[0].sha256, "num_classes": 3}}
    with plugin(HubTags(tags), "hub-offline"):
        with OlahServer(mirrors.root, tmp_path / "olah") as server:  # its own olah: stopped below
            hub_env(server.url)
            segzoo.create("hubtoy.pinned", pretrained=True)
            segzoo.create(f"hf-hub:{repo}")  # also caches where main points
        assert refuses_connections(server.port)

        hub_env(server.url, offline=True)
        attempts: list[object] = []

        def no_network(self: socket.socket, address: object) -> None:
            attempts.append(address)
            raise OSError(f"the test forbids connecting to {address}")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        monkeypatch.setattr(socket.socket, "connect_ex", no_network)
        with pytest.raises(OSError, match="the test forbids"):  # the guard is live for httpx's way in
            socket.create_connection(("127.0.0.1", server.port))
        assert attempts == [("127.0.0.1", server.port)]
        attempts.clear()
        assert torch.equal(out(segzoo.create("hubtoy.pinned", pretrained=True)), tiny[0].out)
        assert torch.equal(out(segzoo.create(f"hf-hub:{repo}")), tiny[0].out)
        with pytest.raises(HubNotFoundError, match="not in the local cache .*HF_HUB_OFFLINE is set"):
            segzoo.create("hf-hub:segzoo-test/never-downloaded")
    assert attempts == []


# -- push to the fake, pull through olah --------------------------------------------------------


def test_push_then_pull_gives_identical_outputs(olah, fake, mirrors, tiny, hub_env):
    repo = "segzoo-push/roundtrip"
    hub_env(fake.url)
    url = tiny[0].model.push_to_hub(repo, token=fake.token)
    [commit] = fake.commits
    assert (commit.repo_id, commit.branch, commit.summary) == (repo, "main", "Upload lraspp with segzoo")
    assert commit.files == {"model.safetensors": "lfs", "config.json": "regular", "README.md": "regular"}
    assert url == f"{fake.url}/{repo}/commit/{commit.oid}"
    # push_to_hub saved the model afresh (a new save_id): the object is the committed pointer's
    oid, size = mirrors.pointer_of(repo, "main", "model.safetensors")
    assert list(fake.repos[repo].objects) == [oid] and len(fake.repos[repo].objects[oid]) == size
    assert [r.split()[1].rsplit("/", 1)[-1] for r in fake.requests] == [
        "create",
        "validate-yaml",
        "main",  # preupload
        "batch",
        oid,  # the PUT
        repo.split("/")[1],  # verify
        "main",  # commit
    ]
    card = mirrors.read(repo, "main", "README.md").decode()
    assert f'segzoo.create("hf-hub:{repo}")' in card

    hub_env(olah.url)
    assert torch.equal(out(segzoo.create(f"hf-hub:{repo}")), tiny[0].out)


def test_push_to_a_branch_of_a_new_private_repo(olah, fake, tiny, hub_env):
    repo = "segzoo-push/branch"
    hub_env(fake.url)
    tiny[1].model.push_to_hub(
        repo, private=True, revision="dev", commit_message="v2 on dev", token=fake.token
    )
    assert fake.repos[repo].private
    [commit] = fake.commits
    assert (commit.branch, commit.summary) == ("dev", "v2 on dev")

    hub_env(olah.url)
    assert torch.equal(out(segzoo.create(f"hf-hub:{repo}@dev")), tiny[1].out)
    with pytest.raises(HubNotFoundError, match=f"Hub repo {repo} has no config.json"):
        segzoo.create(f"hf-hub:{repo}")  # main holds only .gitattributes


def test_the_fake_refuses_a_commit_of_an_object_never_uploaded(fake, tiny, hub_env, monkeypatch):
    """What makes the round trip meaningful: the fake does not take the client's word."""
    import huggingface_hub._commit_api
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub_env(fake.url)
    api = HfApi(token=fake.token)
    api.create_repo("segzoo-push/strict")
    monkeypatch.setattr(huggingface_hub._commit_api, "_upload_files", lambda **kwargs: None)
    with pytest.raises(HfHubHTTPError, match="LFS pointer pointed to a file that does not exist") as info:
        api.create_commit(
            "segzoo-push/strict",
            [CommitOperationAdd("model.safetensors", tiny[0].files["model.safetensors"])],
            commit_message="weights never uploaded",
        )
    assert info.value.response.status_code == 422
    assert fake.commits == []


def test_the_fake_checks_the_sha256_and_size_of_uploads_and_refuses_unknown_endpoints(fake, hub_env):
    from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
    from huggingface_hub.utils import get_session

    hub_env(fake.url)
    session = get_session()
    from huggingface_hub import HfApi

    HfApi(token=fake.token).create_repo("segzoo-push/digest")
    data = b"weights" * 1000
    [action], errors, transfer = post_lfs_batch_info(
        [UploadInfo.from_bytes(data)], token=fake.token, repo_type="model", repo_id="segzoo-push/digest"
    )
    assert errors == [] and transfer == "basic"
    href = action["actions"]["upload"]["href"]
    tampered = session.put(href, content=data[:-1] + b"X")
    assert tampered.status_code == 400 and "BadDigest" in tampered.json()["error"]
    assert session.put(href, content=data[:-1]).status_code == 400  # short
    assert session.put(href.split("?")[0], content=data).status_code == 403  # unsigned
    assert session.put(href, content=data).status_code == 200

    answer = session.get(f"{fake.url}/api/models/segzoo-push/digest/tree/main")
    assert answer.status_code == 501
    assert fake.unexpected == ["GET /api/models/segzoo-push/digest/tree/main"]
    fake.unexpected.clear()


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_segzoo_push_cli_in_a_fresh_interpreter(olah, fake, tiny, hub_env, tmp_path):
    """``segzoo push`` with HF_ENDPOINT read at import, as a user runs it."""
    folder = tiny[0].model.save_pretrained(tmp_path / "folder")
    repo = "segzoo-cli/model"
    hub_env(fake.url)
    argv = [str(folder), repo, "--private", "--revision", "dev", "--message", "from the CLI"]
    proc = subprocess.run(
        [sys.executable, "-m", "segzoo", "push", *argv, "--token", fake.token],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [commit] = fake.commits
    assert proc.stdout == f"pushed {folder} to {repo}: {fake.url}/{repo}/commit/{commit.oid}\n"
    assert (commit.branch, commit.summary) == ("dev", "from the CLI")
    assert fake.repos[repo].private

    hub_env(olah.url)
    assert torch.equal(out(segzoo.create(f"hf-hub:{repo}@dev")), tiny[0].out)


def test_segzoo_push_cli_errors_are_one_line(fake, tiny, hub_env, tmp_path, capsys):
    folder = tiny[0].model.save_pretrained(tmp_path / "folder")
    hub_env(fake.url)
    (tmp_path / "empty").mkdir()
    assert cli_main(["push", str(tmp_path / "empty"), "segzoo-cli/errors", "--token", fake.token]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segzoo push: error: {tmp_path / 'empty'} has no config.json")
    assert err.count("\n") == 1

    assert cli_main(["push", str(folder), "segzoo-cli/errors", "--token", "hf_wrong"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segzoo push: error: the Hub refused to create segzoo-cli/errors (HTTP 401")
    assert "--token" in err and err.count("\n") == 1
    assert fake.commits == [] and "segzoo-cli/errors" not in fake.repos


def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    """The sha256 check of a tag's weights remembers a file that passed (by path, size, mtime)."""
    import hashlib

    from segzoo import hub

    monkeypatch.setenv("SEGZOO_CACHE", str(tmp_path / "cache"))
    blob = tmp_path / "model.safetensors"
    blob.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    opened: list[str] = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith("model.safetensors"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    hub._check_sha256(blob, digest, "blob")
    hub._check_sha256(blob, digest[:8], "blob")  # another expectation: hashed again
    hub._check_sha256(blob, digest[:8], "blob")
    assert len(opened) == 2
    blob.write_bytes(b"tampered" * 1000)
    os.utime(blob, ns=(1, 1))  # a different mtime even on coarse clocks
    with pytest.raises(FolderError, match="sha256 mismatch for blob"):
        hub._check_sha256(blob, digest[:8], "blob")
