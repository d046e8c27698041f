"""The real models' download (engine/downloads.py): pinned sources, what is on disk, progress, cancel,
the errors' messages, the command line, and the run record. No test reaches the network: files come
from a folder or a hub served on the loopback interface."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import re
import signal
import threading

import numpy as np
import pytest
import trimesh

from engine import downloads, models
from engine.downloads import (
    HUB_PATTERNS,
    MODEL_SOURCES,
    DownloadProgress,
    HubTransport,
    ModelSource,
    download_models,
    models_on_disk,
    snapshot_folder,
)
from engine.errors import Cancelled, DownloadError, ModelNotFound

REVISION = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 << 10


def source(role="clip", repo_id="org/model", size=0) -> ModelSource:
    return ModelSource(role, repo_id, REVISION, HUB_PATTERNS, size, "test")


def payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class FolderTransport:
    """Serves ``files[repo_id]`` (name -> bytes) into the cache's layout, ``CHUNK`` bytes at a time."""

    def __init__(self, files: dict[str, dict[str, bytes]]):
        self.files = files
        self.listed: list[str] = []
        self.fetched: list[tuple[str, str]] = []

    def list_files(self, src):
        self.listed.append(src.repo_id)
        return {name: len(data) for name, data in self.files[src.repo_id].items()
                if src.wants(name)}

    def fetch(self, src, filename, *, cache_dir, on_bytes):
        self.fetched.append((src.repo_id, filename))
        data = self.files[src.repo_id][filename]
        folder = snapshot_folder(src, cache_dir)
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, filename + ".incomplete")
        try:
            with open(partial, "wb") as fh:
                for start in range(0, len(data), CHUNK):
                    on_bytes(len(data[start:start + CHUNK]))
                    fh.write(data[start:start + CHUNK])
            os.replace(partial, os.path.join(folder, filename))
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return os.path.join(folder, filename)


def two_models():
    first, second = source("clip", "org/first"), source("grounding", "org/second")
    files = {
        "org/first": {"config.json": b'{"a": 1}', "vocab.txt": payload(3_000, 1),
                      "model.safetensors": payload(2_500_000, 2), "pytorch_model.bin": b"pickled"},
        "org/second": {"config.json": b"{}", "model.safetensors": payload(1_700_000, 3), "README.md": b"card"},
    }
    return [first, second], FolderTransport(files)


def test_every_model_is_pinned_to_a_full_commit_and_the_store_uses_them():
    assert [s.role for s in MODEL_SOURCES] == ["clip", "grounding", "segmenter"]
    assert [s.repo_id for s in MODEL_SOURCES] == [models.DEFAULT_CLIP, models.DEFAULT_GROUNDING,
                                                  models.DEFAULT_SEGMENTER]
    assert all(re.fullmatch(r"[0-9a-f]{40}", s.revision) for s in MODEL_SOURCES)
    assert {s.repo_id: s.revision for s in MODEL_SOURCES} == models.HUB_REVISIONS
    assert models.DEFAULT_SEGMENTER_REVISION == "e6ccaf46dd72dacb98108826ddef8b81b36d3b1e"
    assert all(s.size_bytes > 100e6 and "*.safetensors" in s.patterns and "*.bin" not in s.patterns
               for s in MODEL_SOURCES)
    with pytest.raises(ValueError, match="40-hex"):
        ModelSource("clip", "org/model", "main", HUB_PATTERNS, 0, "test")


def test_the_hub_is_asked_for_the_pinned_revision_and_its_bytes_reach_the_progress(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    sizes = {"config.json": 10, "model.safetensors": 3 << 20, "pytorch_model.bin": 9}

    class Info:
        siblings = tuple(type("Sibling", (), {"rfilename": n, "size": s}) for n, s in sizes.items())

    def model_info(self, repo_id, *, revision=None, files_metadata=False, **kwargs):
        asked.append(("info", repo_id, revision, files_metadata))
        return Info()

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, tqdm_class=None, **kwargs):
        # what the library does: one bar per file, updated once per chunk, inside the download settings
        asked.append(("file", repo_id, filename, revision, constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE))
        size = sizes[filename]
        path = os.path.join(cache_dir, "models--org--model", "snapshots", revision, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tqdm_class(total=size, initial=0, unit="B", unit_scale=True, desc=filename) as bar:
            for start in range(0, size, constants.DOWNLOAD_CHUNK_SIZE):
                bar.update(min(constants.DOWNLOAD_CHUNK_SIZE, size - start))
        with open(path, "wb") as fh:
            fh.write(b"x" * size)
        return path

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    xet_before = constants.HF_HUB_DISABLE_XET
    seen = []
    folder, = download_models([source()], cache_dir=str(tmp_path), on_progress=seen.append)
    assert asked[0] == ("info", "org/model", REVISION, True)
    assert [a[2:4] for a in asked[1:]] == [("config.json", REVISION), ("model.safetensors", REVISION)]
    assert all(a[4] is True and a[5] == 1 << 20 for a in asked[1:])  # plain HTTP, 1 MB chunks
    restored = (constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE)
    assert restored == (xet_before, 10 << 20)
    assert seen[-1].done_bytes == seen[-1].total_bytes == 10 + (3 << 20)
    assert len({p.done_bytes for p in seen if p.filename == "model.safetensors"}) >= 4
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]


def test_progress_is_monotonic_frequent_and_reaches_the_total(tmp_path):
    sources, transport = two_models()
    seen: list[DownloadProgress] = []
    folders = download_models(sources, cache_dir=str(tmp_path), on_progress=seen.append, transport=transport)
    total = sum(len(d) for n, d in transport.files["org/first"].items() if n != "pytorch_model.bin") + \
        sum(len(d) for n, d in transport.files["org/second"].items() if n != "README.md")
    done = [p.done_bytes for p in seen]
    assert done == sorted(done) and done[-1] == total
    assert {p.total_bytes for p in seen} == {total} and seen[-1].fraction == 1.0
    assert max(np.diff(done)) <= (1 << 20) + CHUNK  # at least one report per MB
    assert all(p.bytes_per_second >= 0 for p in seen) and seen[-1].seconds_left == 0
    # weights last, pickles and model cards never
    assert transport.fetched == [("org/first", "config.json"), ("org/first", "vocab.txt"),
                                 ("org/first", "model.safetensors"), ("org/second", "config.json"),
                                 ("org/second", "model.safetensors")]
    assert folders == [snapshot_folder(s, str(tmp_path)) for s in sources]
    with open(os.path.join(folders[0], "model.safetensors"), "rb") as fh:
        assert fh.read() == transport.files["org/first"]["model.safetensors"]


def test_cancel_mid_file_raises_cancelled_and_a_later_call_completes(tmp_path):
    from engine.events import CancelToken

    sources, transport = two_models()
    token = CancelToken()

    def cancel_inside_the_weights(progress):
        if progress.filename == "model.safetensors" and progress.done_bytes > 1_000_000:
            token.cancel()

    with pytest.raises(Cancelled, match="run it again"):
        download_models(sources, cache_dir=str(tmp_path), on_progress=cancel_inside_the_weights, cancel=token,
                        transport=transport)
    folder = snapshot_folder(sources[0], str(tmp_path))
    assert sorted(os.listdir(folder)) == ["config.json", "vocab.txt"]  # no half file under any name
    assert models_on_disk(str(tmp_path), sources) == {"clip": None, "grounding": None}
    assert transport.fetched[-1] == ("org/first", "model.safetensors")
    before = len(transport.fetched)
    seen = []
    folders = download_models(sources, cache_dir=str(tmp_path), on_progress=seen.append, transport=transport)
    assert transport.fetched[before:] == [("org/first", "model.safetensors"), ("org/second", "config.json"),
                                          ("org/second", "model.safetensors")]  # finished files are kept
    assert seen[-1].done_bytes == seen[-1].total_bytes
    assert models_on_disk(str(tmp_path), sources) == dict(zip(["clip", "grounding"], folders, strict=True))


def test_a_token_cancelled_before_the_start_downloads_nothing(tmp_path):
    from engine.events import CancelToken

    sources, transport = two_models()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        download_models(sources, cache_dir=str(tmp_path), cancel=token, transport=transport)
    assert transport.fetched == [] and not os.path.exists(tmp_path / "models--org--first")


def test_models_on_disk_reflects_the_cache_at_the_pinned_revision(tmp_path):
    cache = str(tmp_path)
    assert models_on_disk(cache) == {"clip": None, "grounding": None, "segmenter": None}
    clip = MODEL_SOURCES[0]
    folder = snapshot_folder(clip, cache)
    os.makedirs(folder)
    (tmp_path / os.path.relpath(folder, cache) / "config.json").write_text("{}")
    assert models_on_disk(cache)["clip"] is None  # a config without weights is not a model
    other = os.path.join(os.path.dirname(folder), "f" * 40)
    os.makedirs(other)
    for name in ("config.json", "model.safetensors"):
        open(os.path.join(other, name), "w").close()
    assert models_on_disk(cache)["clip"] is None  # another revision does not count
    open(os.path.join(folder, "model.safetensors"), "w").close()
    assert models_on_disk(cache) == {"clip": folder, "grounding": None, "segmenter": None}
    assert models.hub_folder(models.DEFAULT_CLIP, allow_download=False, cache_dir=cache) == folder


def test_models_on_disk_need_no_network(tmp_path):
    class Unreachable:
        def list_files(self, src):
            raise AssertionError("a complete model must not be looked up")

        fetch = list_files

    sources, transport = two_models()
    folders = download_models(sources, cache_dir=str(tmp_path), transport=transport)
    assert download_models(sources, cache_dir=str(tmp_path), transport=Unreachable()) == folders


def test_downloading_not_allowed_is_refused_without_touching_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_hub)
    store = models.ModelStore("default", allow_download=False, cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFound) as err:
        store.clip("cpu")
    message = str(err.value)
    assert models.DEFAULT_CLIP in message and MODEL_SOURCES[0].revision[:8] in message
    assert models.FETCH_COMMAND in message and "--models tiny" in message and "609 MB" in message


def test_offline_mode_names_the_switch_and_the_ways_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as tests/conftest.py sets it, and a user may
    with pytest.raises(DownloadError) as err:
        download_models([source()], cache_dir=str(tmp_path))  # the real hub transport, refused before any socket
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "Allow Online Access" in message and "--models tiny" in message
    assert isinstance(err.value, ModelNotFound)


class Failing(FolderTransport):
    def __init__(self, error, *, when="fetch"):
        super().__init__({"org/model": {"config.json": b"{}", "model.safetensors": payload(200_000, 4)}})
        self.error, self.when = error, when

    def list_files(self, src):
        if self.when == "list":
            raise self.error
        return super().list_files(src)

    def fetch(self, src, filename, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    ("error", "when", "expected"),
    [
        (ConnectionError("Name or service not known"), "list", ["cannot be reached", "huggingface.co",
                                                                "--models tiny"]),
        (TimeoutError("timed out"), "fetch", ["cannot be reached", "--models tiny"]),
        (OSError(errno.ENOSPC, "No space left on device"), "fetch", ["not enough disk space", "free", "HF_HUB_CACHE"]),
    ],
)
def test_network_and_disk_errors_name_the_problem_and_the_fix(tmp_path, error, when, expected):
    with pytest.raises(DownloadError) as err:
        download_models([source()], cache_dir=str(tmp_path), transport=Failing(error, when=when))
    assert all(text in str(err.value) for text in expected), str(err.value)
    assert "org/model" in str(err.value) or "disk space" in str(err.value)


def test_too_little_free_space_is_refused_before_downloading(tmp_path, monkeypatch):
    transport = Failing(AssertionError("nothing may be fetched"))
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1_000})())
    with pytest.raises(DownloadError) as err:
        download_models([source()], cache_dir=str(tmp_path / "cache"), transport=transport)
    message = str(err.value)
    assert "not enough disk space" in message and str(tmp_path / "cache") in message
    assert "needs 200 kB more" in message and "free 67 MB there" in message  # 200 kB + a 64 MiB margin


def test_a_revision_without_safetensors_is_refused(tmp_path):
    transport = FolderTransport({"org/model": {"config.json": b"{}", "pytorch_model.bin": b"pickled"}})
    with pytest.raises(DownloadError, match=r"no config\.json and safetensors"):
        download_models([source()], cache_dir=str(tmp_path), transport=transport)
    assert transport.fetched == []


class LoopbackHub:
    """A hub on 127.0.0.1: the model-info API and ``resolve`` for files, as huggingface_hub asks them."""

    def __init__(self, repo_id: str, revision: str, files: dict[str, bytes]):
        hub = self
        self.requests: list[tuple[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer(head=False)

            def do_HEAD(self):
                self._answer(head=True)

            def _answer(self, head):
                if self.path.startswith(f"/api/models/{repo_id}/revision/{revision}"):
                    body = json.dumps({"id": repo_id, "sha": revision, "siblings": [
                        {"rfilename": n, "size": len(d)} for n, d in files.items()]}).encode()
                    return self._send(body, {"Content-Type": "application/json"}, head)
                match = re.fullmatch(rf"/{repo_id}/resolve/([0-9a-f]+)/([^?]+)(\?.*)?", self.path)
                if not match or match.group(2) not in files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                hub.requests.append(("HEAD" if head else "GET", match.group(1)))
                data = files[match.group(2)]
                etag = hashlib.sha256(data).hexdigest()
                self._send(data, {"X-Repo-Commit": revision, "ETag": f'"{etag}"'}, head)

            def _send(self, body, headers, head):
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    for start in range(0, len(body), CHUNK):
                        self.wfile.write(body[start:start + CHUNK])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_installed_huggingface_hub_downloads_cancels_and_resumes_from_a_loopback_hub(tmp_path, monkeypatch):
    """The real library end to end (both the newest and the lowest declared versions run this): pinned
    revision in every request, progress per MB, a cancel that leaves no half file, and a resume."""
    from huggingface_hub import constants

    from engine.events import CancelToken

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    files = {"config.json": b'{"model_type": "x"}', "tokenizer.json": b"{}", "model.safetensors": payload(3_300_000, 5),
             "pytorch_model.bin": b"pickled"}
    hub = LoopbackHub("org/model", REVISION, files)
    try:
        transport, token, seen = HubTransport(hub.url), CancelToken(), []

        def cancel_at_two_megabytes(progress):
            seen.append(progress)
            if progress.done_bytes >= 2 << 20:
                token.cancel()

        with pytest.raises(Cancelled):
            download_models([source()], cache_dir=str(tmp_path), on_progress=cancel_at_two_megabytes, cancel=token,
                            transport=transport)
        folder = snapshot_folder(source(), str(tmp_path))
        assert sorted(os.listdir(folder)) == ["config.json", "tokenizer.json"]
        blobs = os.listdir(tmp_path / "models--org--model" / "blobs")
        assert not any(name.endswith(".incomplete") for name in blobs) and len(blobs) == 2
        assert models_on_disk(str(tmp_path), [source()]) == {"clip": None}
        seen.clear()
        assert download_models([source()], cache_dir=str(tmp_path), on_progress=seen.append,
                               transport=transport) == [folder]
    finally:
        hub.close()
    assert {revision for _, revision in hub.requests} == {REVISION}
    done = [p.done_bytes for p in seen]
    assert done == sorted(done) and done[-1] == len(files["model.safetensors"]) and len(set(done)) >= 4
    with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
        assert fh.read() == files["model.safetensors"]
    assert "pytorch_model.bin" not in os.listdir(folder)


def test_fetch_models_command_shows_a_bar_and_ctrl_c_cancels(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from engine.cli import EXIT_CANCELLED, main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    files = {s.repo_id: {"config.json": b"{}", "model.safetensors": payload(1_500_000, i)}
             for i, s in enumerate(MODEL_SOURCES)}

    class Interrupted(FolderTransport):
        def fetch(self, src, filename, *, cache_dir, on_bytes):
            if src.role == "grounding" and filename == "model.safetensors":
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-download
            return super().fetch(src, filename, cache_dir=cache_dir, on_bytes=on_bytes)

    monkeypatch.setattr(downloads, "HubTransport", lambda: Interrupted(files))
    handler = signal.getsignal(signal.SIGINT)
    assert main(["fetch-models"]) == EXIT_CANCELLED
    err = capsys.readouterr().err
    assert "cancelled" in err and "run it again" in err
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back
    assert models_on_disk(str(tmp_path)) == {"clip": snapshot_folder(MODEL_SOURCES[0], str(tmp_path)),
                                             "grounding": None, "segmenter": None}

    monkeypatch.setattr(downloads, "HubTransport", lambda: FolderTransport(files))
    assert main(["fetch-models"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"present: {snapshot_folder(s, str(tmp_path))}" for s in MODEL_SOURCES]
    assert "sam2-hiera-tiny-hf/model.safetensors" in err and "3.00MB/3.00MB, " in err and "B/s" in err  # the rest


def test_info_lists_each_model_with_revision_size_and_whether_it_is_on_disk(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from engine.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder = snapshot_folder(MODEL_SOURCES[2], str(tmp_path))
    os.makedirs(folder)
    for name in ("config.json", "model.safetensors"):
        open(os.path.join(folder, name), "w").close()
    assert main(["info"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("models: default")]
    assert len(lines) == 3
    for line, src in zip(lines, MODEL_SOURCES, strict=True):
        assert src.repo_id in line and src.revision in line and downloads.format_size(src.size_bytes) in line
    assert "missing" in lines[0] and "missing" in lines[1] and f"present at {folder}" in lines[2]


def test_info_says_what_auto_precision_runs_on_this_cpu(monkeypatch, capsys):
    from engine import devices
    from engine.cli import main

    for native, expected in ((True, "`auto` precision runs bf16"), (False, "`auto` precision runs float32")):
        monkeypatch.setattr(devices, "native_bfloat16", lambda device, native=native: native)
        assert main(["info"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision: cpu ")]
        assert len(lines) == 1 and expected in lines[0]


def test_run_json_records_each_model_used(tmp_path, monkeypatch):
    from engine.api import stylize
    from engine.config import settings_for
    from engine.export import write_result
    from engine.mesh import mesh_from_arrays

    sphere = trimesh.creation.icosphere(subdivisions=2)
    mesh = mesh_from_arrays(sphere.vertices, sphere.faces, name="ball")
    settings = settings_for("fast", ["optim.iterations=2", "views.count=2", "render.resolution=64", "field.width=64"])
    tiny = stylize(mesh, "a red ball", settings=settings, models="tiny", device="cpu")
    assert tiny.record["model_sources"] == {"clip": "tiny"}  # holistic: CLIP only

    # the real store's record, with the tiny CLIP standing in for the hub's weights
    store = models.ModelStore("default")
    monkeypatch.setattr(store, "_load_clip", models.ModelStore("tiny")._load_clip)
    result = stylize(mesh, "a red ball", settings=settings, models=store, device="cpu")
    write_result(result, str(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["models"] == "default"
    assert record["model_sources"] == {"clip": {"repo_id": "openai/clip-vit-base-patch32",
                                                "revision": MODEL_SOURCES[0].revision}}


def test_a_folder_store_records_folder_for_each_model_it_loaded(tmp_path, monkeypatch):
    store = models.ModelStore(str(tmp_path))
    assert store.record() == {}
    monkeypatch.setattr(store, "_load_clip", models.ModelStore("tiny")._load_clip)
    store.clip("cpu")
    assert store.record() == {"clip": "folder"} and store.describe() == str(tmp_path)
