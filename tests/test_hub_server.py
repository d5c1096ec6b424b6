"""Round trips through the loopback Hub: huggingface_hub and transformers in subprocesses, pointed at it by HF_ENDPOINT.

Each client runs in its own subprocess because huggingface_hub reads HF_ENDPOINT at import time (see
tests/hub_server.py); every subprocess gets a fresh HF_HOME, so downloads cannot come from a cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.hub_server import LoopbackHub

REPO = "surgical-wm-roundtrip"
BIG_TENSOR_ELEMENTS = 3 * 1024 * 1024  # float32 -> 12 MiB, above the 10 MiB LFS threshold


def run_client(code: str, env: dict, timeout: int = 120) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last, which is returned."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"client failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture()
def hub():
    with LoopbackHub() as running:
        yield running


@pytest.fixture()
def model_folder(tmp_path):
    folder = tmp_path / "export"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file(
        {"encoder.weight": rng.standard_normal(BIG_TENSOR_ELEMENTS, dtype=np.float32), "bias": np.arange(7.0)},
        str(folder / "model.safetensors"),
    )
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- surgical-world-model\n---\n# Test model\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "test", "hidden_size": 8}))
    (folder / "nested" / "notes.txt").write_text("a file in a sub-folder\n")
    return folder


def test_upload_folder_then_snapshot_and_file_download(hub, model_folder, tmp_path):
    assert (model_folder / "model.safetensors").stat().st_size > 10 * 1024 * 1024
    repo_id = f"{hub.user}/{REPO}"
    pushed = run_client(
        f"""
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        url = api.create_repo({repo_id!r}, private=True)
        info = api.upload_folder(repo_id={repo_id!r}, folder_path={str(model_folder)!r}, commit_message="export")
        print(json.dumps({{"repo_id": url.repo_id, "oid": info.oid, "user": api.whoami()["name"]}}))
        """,
        hub.env(hf_home=tmp_path / "home_push"),
    )
    assert pushed["repo_id"] == repo_id and pushed["user"] == hub.user
    assert hub.is_private(repo_id)
    assert any(method == "PUT" and path.startswith("/_lfs/upload/") for method, path, _ in hub.requests), (
        "the >10 MiB safetensors file should have gone through the LFS batch API"
    )

    pulled = run_client(
        f"""
        import json, os
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import EntryNotFoundError
        folder = snapshot_download({repo_id!r})
        files = sorted(
            os.path.relpath(os.path.join(root, name), folder)
            for root, _, names in os.walk(folder) for name in names
        )
        single = hf_hub_download({repo_id!r}, "model.safetensors", revision={pushed["oid"]!r})
        try:
            hf_hub_download({repo_id!r}, "missing.bin")
            missing = "downloaded"
        except EntryNotFoundError:
            missing = "EntryNotFoundError"
        siblings = HfApi().model_info({repo_id!r}, files_metadata=True).siblings
        lfs = {{s.rfilename: s.lfs.sha256 for s in siblings if s.lfs is not None}}
        print(json.dumps({{"folder": folder, "files": files, "single": single, "missing": missing, "lfs": lfs}}))
        """,
        hub.env(hf_home=tmp_path / "home_pull"),
    )
    expected = sorted(
        str(p.relative_to(model_folder)) for p in model_folder.rglob("*") if p.is_file()
    ) + [".gitattributes"]
    assert pulled["files"] == sorted(expected)
    for relative in expected:
        if relative == ".gitattributes":
            continue
        downloaded = Path(pulled["folder"], relative).read_bytes()
        assert downloaded == (model_folder / relative).read_bytes(), f"{relative} changed on the round trip"
    with open(pulled["single"], "rb") as handle:
        assert handle.read() == (model_folder / "model.safetensors").read_bytes()
    assert pulled["missing"] == "EntryNotFoundError"
    assert list(pulled["lfs"]) == ["model.safetensors"]
    assert hub.repo_files(repo_id)["README.md"] == (model_folder / "README.md").read_bytes()


def test_autoconfig_from_pretrained_through_the_server(hub, tmp_path):
    repo_id = f"{hub.user}/tiny-bert-config"
    pushed = run_client(
        f"""
        import json
        from transformers import BertConfig
        config = BertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
        config.save_pretrained({str(tmp_path / "config_dir")!r})
        config.push_to_hub({repo_id!r}, private=False)
        print(json.dumps({{"ok": True}}))
        """,
        hub.env(hf_home=tmp_path / "home_push"),
    )
    assert pushed["ok"]
    loaded = run_client(
        f"""
        import json
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained({repo_id!r})
        print(json.dumps({{"class": type(config).__name__, "hidden_size": config.hidden_size,
                           "layers": config.num_hidden_layers}}))
        """,
        hub.env(hf_home=tmp_path / "home_pull"),
    )
    assert loaded == {"class": "BertConfig", "hidden_size": 24, "layers": 2}
    saved = json.loads((tmp_path / "config_dir" / "config.json").read_text())
    assert json.loads(hub.repo_files(repo_id)["config.json"]) == saved


def test_wrong_token_is_rejected_by_the_client(hub, tmp_path):
    wrong = "hf_wrong_" + "0" * 24
    result = run_client(
        f"""
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        outcome = {{}}
        for name, call in [("whoami", lambda: HfApi().whoami()), ("create", lambda: HfApi().create_repo("x/y"))]:
            try:
                call()
                outcome[name] = "accepted"
            except HfHubHTTPError as error:
                outcome[name] = error.response.status_code
        print(json.dumps(outcome))
        """,
        hub.env(hf_home=tmp_path / "home", token=wrong),
    )
    assert result == {"whoami": 401, "create": 401}
    assert not hub.requests or all(status == 401 for _, _, status in hub.requests)


def _request(url: str, token: str | None = None, method: str = "GET", data: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_authorization_and_private_repos_over_plain_http():
    with LoopbackHub(user="alice") as hub:
        assert _request(f"{hub.endpoint}/api/whoami-v2", hub.token) == 200
        assert _request(f"{hub.endpoint}/api/whoami-v2", hub.token + "x") == 401
        assert _request(f"{hub.endpoint}/api/whoami-v2") == 401
        create = json.dumps({"name": "secret", "organization": "alice", "visibility": "private"}).encode()
        assert _request(f"{hub.endpoint}/api/repos/create", None, "POST", create) == 401
        assert _request(f"{hub.endpoint}/api/repos/create", hub.token, "POST", create) == 200
        assert _request(f"{hub.endpoint}/api/repos/create", hub.token, "POST", create) == 409
        other = json.dumps({"name": "theirs", "organization": "bob"}).encode()
        assert _request(f"{hub.endpoint}/api/repos/create", hub.token, "POST", other) == 403
        info = f"{hub.endpoint}/api/models/alice/secret"
        assert _request(info, hub.token) == 200
        assert _request(info) == 404, "a private repo must look absent without a token"
        assert _request(f"{hub.endpoint}/alice/secret/resolve/main/.gitattributes") == 404
        assert _request(f"{hub.endpoint}/alice/secret/resolve/main/.gitattributes", hub.token) == 200
        assert _request(f"{hub.endpoint}/alice/secret/resolve/main/nothing.txt", hub.token) == 404
        assert _request(f"{hub.endpoint}/alice/secret/resolve/no-such-branch/.gitattributes", hub.token) == 404


def test_regular_uploads_work_with_xet_enabled(tmp_path):
    """Xet is chosen by the client (hf_xet importable, HF_HUB_DISABLE_XET unset), not by the server: answering
    `regular` for every file keeps such a client off Xet entirely."""
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    with LoopbackHub(lfs_threshold=None) as hub:
        env = hub.env(hf_home=tmp_path / "home")
        env.pop("HF_HUB_DISABLE_XET")
        repo_id = f"{hub.user}/client-with-xet"
        run_client(
            f"""
            import json
            from huggingface_hub import HfApi
            api = HfApi()
            api.create_repo({repo_id!r})
            print(json.dumps({{"oid": api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r}).oid}}))
            """,
            env,
        )
        assert hub.repo_files(repo_id)["model.safetensors"] == b"\0" * 4096
        assert not any("/xet-" in path for _, path, _ in hub.requests), hub.requests
