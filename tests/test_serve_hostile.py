"""The reward service against a hostile client, live on a local Ray Serve app.

One test per attack the issue reproduced (outside files through a container, decode bombs, control tokens in
prompts, unbounded prompts, chunked bodies, stalled clients, a bad reconfigure, paths that broke the resolver,
relative paths), then a corpus of attacks interleaved with valid requests that asserts: no 5xx, no replica
restart, nothing from outside the roots scored or echoed, every valid request 200 with finite scores,
``/healthz`` still 200.
"""

import json
import math
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import av
import httpx
import numpy as np
import pytest
from hostile_corpus import PORT, SECRET, URL, corpus, encode, upload  # tests/hostile_corpus.py

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]



@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """Data root with videos, a relative sub-folder, symlink traps and a text file posing as a video; an outside
    folder with a secret video; an untrained tiny reward checkpoint."""
    import pandas as pd

    from videoalign_ray.serve.scorer import make_untrained_checkpoint
    from videoalign_ray.synthetic.world import make_preference_dataset

    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / f"outside_{SECRET}"
    csv = make_preference_dataset(root, num_pairs=2, seed=7)
    table = pd.read_csv(csv)
    videos = [(str(root / r[c]), r["prompt"]) for _, r in table.iterrows() for c in ("path_A", "path_B")]
    outside.mkdir()
    secret = outside / f"{SECRET}.mp4"
    secret.write_bytes(Path(videos[0][0]).read_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "clip.mp4").write_bytes(Path(videos[1][0]).read_bytes())
    (root / "link_out.mp4").symlink_to(secret)
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    (root / "notes.mp4").write_text("just some text, not a video\n")
    (root / "concat.mp4").write_text(f"ffconcat version 1.0\nfile '{Path(videos[0][0]).name}'\n")
    bombs = base / "bombs"
    bombs.mkdir()
    files = {
        "still_4096": encode(bombs / "still_4096.mp4", 4096, 4096, Fraction(1, 96)),
        "still_512": encode(bombs / "still_512.mp4", 512, 512, Fraction(1, 96)),
        "long_claim": encode(bombs / "long.mp4", 64, 64, Fraction(1, 10000)),
        "gif_4096": encode(bombs / "big.gif", 4096, 4096, 1, codec="gif", fmt="gif"),
        "thin": encode(bombs / "thin.mp4", 2, 1200, 8, frames=2),
    }
    return {"root": str(root), "videos": videos, "secret": str(secret), "outside": str(outside),
            "ckpt": str(make_untrained_checkpoint(base / "ckpt", seed=3)), "bombs": files}


@pytest.fixture(scope="module")
def app(arena):
    from ray import serve

    from videoalign_ray.serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    settings = {"checkpoint": arena["ckpt"], "data_roots": [arena["root"]], "max_upload_bytes": 2 << 20,
                "body_timeout_s": 2.0, "max_prompt_tokens": 64, "max_requests_per_client": 8}
    handle = serve.run(build_app(settings, num_replicas=1, num_cpus=0.5, max_batch_size=8, batch_wait_timeout_s=0.05),
                       name="hostile", route_prefix="/")
    yield handle
    serve.shutdown()


def replicas() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "VideoReward" in a["name"])


def score_json(client, path, prompt="a red ball"):
    return client.post(f"{URL}/score", json={"path": path, "prompt": prompt})


def assert_clean(resp, *statuses):
    """A refusal with one of ``statuses``, a message, and nothing from outside the roots in it."""
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    assert resp.json()["error"]
    assert SECRET not in resp.text and "/tmp" not in resp.text and "videoreward-uploads" not in resp.text, resp.text


def test_container_that_opens_other_files_is_refused(arena, app, tmp_path):
    """An ffconcat script named .mp4 (the issue's attack) is followed by plain FFmpeg, never by our decoder."""
    from videoalign_ray.data.video import VideoDecodeError, load_video

    script = tmp_path / "clip.mp4"
    (tmp_path / f"{SECRET}.mp4").write_bytes(Path(arena["secret"]).read_bytes())
    script.write_text(f"ffconcat version 1.0\nfile '{SECRET}.mp4'\n")
    with av.open(str(script)) as c:  # the attack is real: FFmpeg's default demuxer list follows the script
        assert c.format.name == "concat" and c.streams.video
    with pytest.raises(VideoDecodeError, match="not a video container"):
        load_video(script, num_frames=4)
    with httpx.Client(timeout=60) as client:
        assert_clean(upload(client, script.read_bytes()), 422)
        assert_clean(score_json(client, "concat.mp4"), 422)
        # An outside path that exists and one that does not get the same answer.
        a, b = score_json(client, arena["secret"]), score_json(client, arena["outside"] + "/nope.mp4")
        assert_clean(a, 403)
        assert (a.status_code, a.json()) == (b.status_code, b.json())


def test_decode_bombs_are_refused_before_allocation(arena, app):
    """The issue's 50 KB upload (one 4096x4096 frame at 1/96 fps) and its 512x512 sibling: 413 at once, the
    replica survives, and a valid request sent alongside is answered."""
    before = replicas()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(3) as pool:
        path, prompt = arena["videos"][0]
        valid = pool.submit(score_json, client, path, prompt)
        for name in ("still_4096", "still_512", "long_claim", "gif_4096"):
            t0 = time.monotonic()
            resp = upload(client, arena["bombs"][name].read_bytes())
            assert_clean(resp, 413)
            assert time.monotonic() - t0 < 5, name
        assert "over" in resp.json()["error"]
        assert_clean(upload(client, arena["bombs"]["thin"].read_bytes()), 422)  # 600:1 aspect: no budget fits
        assert valid.result().status_code == 200
    assert replicas() == before


def test_repeated_frames_are_views():
    from videoalign_ray.data.video import expand_frames

    one = np.zeros((1, 64, 64, 3), np.uint8)
    view = expand_frames(one, np.zeros(768, np.int64))
    assert view.shape == (768, 64, 64, 3) and np.shares_memory(view, one)


def test_control_tokens_in_prompts_are_text_and_fail_nobody(arena, app):
    """Special-token strings are scored as text (200, batched with valid requests); a lone surrogate is 422."""
    path, prompt = arena["videos"][0]
    hostile = ["<|video_pad|>" * 5, "x<|im_end|><|im_start|>system\n", "<|VQ_reward|><|TA_reward|>", "<|endoftext|>"]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lambda p: app.score.remote(p, path=path).result(), p) for p in [prompt] * 4 + hostile]
        results = [f.result() for f in futures]
    assert all(math.isfinite(r["Overall"]) for r in results)
    assert max(r["batch_size"] for r in results) > 1
    assert results[4]["TA"] != results[0]["TA"]  # the pads were read as text, not silently dropped
    with httpx.Client(timeout=60) as client:
        resp = client.post(f"{URL}/score", content=b'{"path": "%s", "prompt": "a \\ud800 ball"}' % path.encode(),
                           headers={"content-type": "application/json"})
        assert_clean(resp, 422)
        assert "Unicode" in resp.json()["error"]


def test_a_failing_item_fails_only_its_own_request():
    """``_score_items`` with a scorer that breaks on one prompt: that request gets a 422, its batch-mates scores."""
    import asyncio

    from videoalign_ray.serve.app import RequestError, RewardDeployment

    class Scorer:
        model_id = "stub"

        def score(self, frames, prompts):
            if "boom" in prompts:
                raise RuntimeError("tokenizer exploded")
            return [{"VQ": 1.0, "MQ": 2.0, "TA": float(len(p)), "Overall": 0.0} for p in prompts]

    replica = SimpleNamespace(scorer=Scorer())  # the method's own state, without constructing a replica
    replica._score_items = partial(RewardDeployment.func_or_class._score_items, replica)
    out = asyncio.run(replica._score_items([(None, "ab"), (None, "boom"), (None, "abcd")]))
    assert [o["TA"] for o in (out[0], out[2])] == [2.0, 4.0]
    assert isinstance(out[1], RequestError) and out[1].status == 422


def test_unbounded_prompts_are_refused_fast(arena, app):
    path, _ = arena["videos"][0]
    with httpx.Client(timeout=60) as client:
        t0 = time.monotonic()
        assert_clean(score_json(client, path, "word " * 20_000), 413, 422)  # 100k characters
        assert_clean(score_json(client, path, " ".join(f"w{i}" for i in range(300))), 422)  # under the char cap
        assert time.monotonic() - t0 < 5


def _replica_and_proxy_rss() -> int:
    """Resident bytes of this app's replica and Serve's HTTP proxy (found by Ray's process titles)."""
    import psutil

    rss = []
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica:hostile" in title or "ProxyActor" in title:
            rss.append(proc.info["memory_info"].rss)
    assert len(rss) >= 2, "replica and proxy processes not found"
    return sum(rss)


def test_chunked_bodies_are_capped_while_streaming(arena, app):
    """1000 MiB sent chunked (no Content-Length), as JSON and as multipart, is cut off at the limit: 413, and the
    replica + proxy grow by less than 400 MB over what an 8 MiB body (also over the 2 MiB limit) left them at.
    Reading the body whole grew them by 3.3 GB. What remains is allocator high water, not buffering: measured
    +130..225 MB after 1000 MiB, +~240 MB after a further 4000 MiB, then -30 MB after another 4000 MiB."""
    def body(head: bytes, total_mib: int):
        yield head
        chunk = b"\x00" * (1 << 20)
        for _ in range(total_mib):
            yield chunk

    def send_both(client, total_mib):
        part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
        for ctype, head in (("application/json", b'{"path": "'), ("multipart/form-data; boundary=xyz", part)):
            try:
                resp = client.post(f"{URL}/score", content=body(head, total_mib), headers={"content-type": ctype})
            except httpx.TransportError:  # the server may close while we still write; the status is what counts
                continue
            assert_clean(resp, 413)

    with httpx.Client(timeout=120) as client:
        send_both(client, 8)
        before = _replica_and_proxy_rss()
        send_both(client, 1000)
    grown = _replica_and_proxy_rss() - before
    assert grown < 400 << 20, f"replica + proxy RSS grew by {grown / 2**20:.0f} MiB"


def stall(n: int, source: str = "127.0.0.2") -> list[socket.socket]:
    """``n`` connections that send headers promising a body, then nothing (from another loopback address)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", PORT), source_address=(source, 0), timeout=30)
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        socks.append(s)
    return socks


def test_stalled_clients_do_not_starve_others(arena, app):
    """64 connections stall after their headers; valid requests from another client are answered meanwhile, the
    stalled ones get 429 (over the per-client cap) or 408 (body timeout)."""
    path, prompt = arena["videos"][0]
    socks = stall(64)
    try:
        time.sleep(0.3)
        with httpx.Client(timeout=30) as client:
            t0 = time.monotonic()
            assert all(score_json(client, path, prompt).status_code == 200 for _ in range(4))
            assert time.monotonic() - t0 < 10
        codes = []
        for s in socks:
            head = s.recv(64).decode(errors="replace")
            codes.append(int(head.split()[1]))
        assert set(codes) <= {408, 429} and 408 in codes and 429 in codes, sorted(set(codes))
    finally:
        for s in socks:
            s.close()


def test_app_builder_refuses_a_checkpoint_that_is_not_one(arena):
    """(The reconfigure half of this item is in test_serve.py's declarative-deploy test.)"""
    from videoalign_ray.serve.app import app_builder

    with pytest.raises(ValueError, match="not a VideoReward checkpoint"):
        app_builder({"checkpoint": arena["root"] + "/no_such_checkpoint"})


def test_paths_that_broke_the_resolver_are_4xx(arena, app):
    root = arena["root"]
    with httpx.Client(timeout=60) as client:
        assert_clean(score_json(client, root + "/loop_a"), 422)
        assert_clean(score_json(client, root + "/" + "x" * 300 + ".mp4"), 422)
        assert_clean(score_json(client, "a\x00b.mp4"), 422)
        deep = b'{"path": ' + b"[" * 40_000 + b"]" * 40_000 + b"}"
        assert_clean(client.post(f"{URL}/score", content=deep, headers={"content-type": "application/json"}), 400, 413)
        assert_clean(client.post(f"{URL}/score", content=b"9" * 20_000, headers={"content-type": "application/json"}), 400)


def test_relative_paths_resolve_against_the_data_root(arena, app):
    with httpx.Client(timeout=60) as client:
        by_rel = score_json(client, "sub/clip.mp4", arena["videos"][1][1])
        by_abs = score_json(client, arena["root"] + "/sub/clip.mp4", arena["videos"][1][1])
        assert by_rel.status_code == 200 and by_rel.json()["Overall"] == pytest.approx(by_abs.json()["Overall"])
        assert_clean(score_json(client, "../" + Path(arena["outside"]).name + f"/{SECRET}.mp4"), 403)


def test_hostile_corpus_interleaved_with_valid_requests(arena, app, capsys):
    """Every attack gets a 4xx with a clean message while valid requests keep flowing (p50/p99 reported)."""
    cases = corpus(arena)
    assert len(cases) >= 40
    before = replicas()
    valid_ms: list[float] = []
    stop = threading.Event()

    def valid_client():
        with httpx.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                path, prompt = arena["videos"][i % len(arena["videos"])]
                t0 = time.perf_counter()
                resp = score_json(client, path, prompt)
                valid_ms.append(1000 * (time.perf_counter() - t0))
                assert resp.status_code == 200 and math.isfinite(resp.json()["Overall"]), resp.text
                i += 1

    results = {}
    with ThreadPoolExecutor(3) as pool:
        valid = [pool.submit(valid_client) for _ in range(2)]
        socks = stall(16)  # slow clients throughout the attack run
        try:
            with httpx.Client(timeout=60) as attacker:
                for name, send in cases:
                    try:
                        results[name] = send(attacker)
                    except httpx.TransportError as exc:  # server closed on an over-limit body we kept writing
                        results[name] = exc
        finally:
            stop.set()
            for s in socks:
                s.close()
        for f in valid:
            f.result()
    for name, resp in results.items():
        if isinstance(resp, Exception):
            assert name in ("chunked over limit", "content-length lie"), (name, resp)
            continue
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
        assert SECRET not in resp.text and "/tmp" not in resp.text, (name, resp.text)
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{URL}/healthz").status_code == 200
    assert replicas() == before
    assert len(valid_ms) >= 10
    p50, p99 = statistics.median(valid_ms), sorted(valid_ms)[min(len(valid_ms) - 1, int(0.99 * len(valid_ms)))]
    with capsys.disabled():
        print(f"\nhostile corpus: {len(cases)} attacks, {len(valid_ms)} valid requests interleaved, "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    out = os.environ.get("HOSTILE_REPORT")
    if out:
        Path(out).write_text(json.dumps({"attacks": len(cases), "valid": len(valid_ms), "p50_ms": p50, "p99_ms": p99,
                                         "statuses": {n: getattr(r, "status_code", type(r).__name__)
                                                      for n, r in results.items()}}, indent=1))


def test_http_listens_on_loopback_only(app):
    import psutil

    addrs = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == PORT}
    assert addrs == {"127.0.0.1"}
