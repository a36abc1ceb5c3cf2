"""The Serve reward app on a local Ray: handle/HTTP parity with in-process scoring, 4xx validation, a load test
with malformed requests and a killed replica, reconfigure without restart, autoscaling 1 -> 2 -> 1."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from videoalign_ray.serve.client import post_video

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]

PORT = 18431
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An untrained tiny reward checkpoint and a few synthetic-world videos (inside the data root)."""
    import pandas as pd

    from videoalign_ray.serve.scorer import make_untrained_checkpoint
    from videoalign_ray.synthetic.world import make_preference_dataset

    root = tmp_path_factory.mktemp("serve")
    csv = make_preference_dataset(root / "data", num_pairs=3, seed=5)
    table = pd.read_csv(csv)
    videos = [(str(root / "data" / r[c]), r["prompt"]) for _, r in table.iterrows() for c in ("path_A", "path_B")]
    outside = tmp_path_factory.mktemp("outside") / "secret.mp4"
    outside.write_bytes(Path(videos[0][0]).read_bytes())
    return {"ckpt": str(make_untrained_checkpoint(root / "ckpt", seed=3)), "root": str(root / "data"),
            "videos": videos, "outside": str(outside)}


@pytest.fixture(scope="module")
def served(world):
    from ray import serve

    from videoalign_ray.serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    settings = {"checkpoint": world["ckpt"], "data_roots": [world["root"]], "max_upload_bytes": 200_000,
                "body_timeout_s": 10.0}  # JSON bodies of a few bytes; a lost body costs a retry 10 s, not 30
    handle = serve.run(build_app(settings, num_replicas=2, num_cpus=0.5, max_batch_size=8,
                                 batch_wait_timeout_s=0.05), name="videoreward", route_prefix="/")
    yield handle
    serve.shutdown()  # also stops this process's handle metrics pushers before the module's Ray goes away


def _in_process(world):
    from videoalign_ray.serve.scorer import RewardScorer

    scorer = RewardScorer(world["ckpt"])
    frames = [scorer.decode(p) for p, _ in world["videos"]]
    return scorer, frames, scorer.score(frames, [c for _, c in world["videos"]])


def test_handle_and_http_scores_equal_in_process_scores(world, served):
    scorer, frames, expected = _in_process(world)
    with ThreadPoolExecutor(6) as pool:  # concurrent, so they share a batch
        by_path = list(pool.map(lambda pc: served.score.remote(pc[1], path=pc[0]).result(), world["videos"]))
        by_frames = list(pool.map(lambda i: served.score.remote(world["videos"][i][1], frames=frames[i]).result(),
                                  range(len(frames))))
    with httpx.Client(timeout=60) as client:
        by_upload = [post_video(client, URL, p, c).json() for p, c in world["videos"]]
        by_json = [client.post(f"{URL}/score", json={"path": p, "prompt": c}).json() for p, c in world["videos"]]
    assert max(r["batch_size"] for r in by_path + by_frames) > 1  # batching happened
    for got in (by_path, by_frames, by_upload, by_json):
        for g, e in zip(got, expected, strict=True):
            assert "VQ" in g, g
            for d in ("VQ", "MQ", "TA", "Overall"):
                assert g[d] == pytest.approx(e[d], abs=1e-4)
    assert by_upload[0]["model"].startswith("ckpt@")
    assert scorer.score(frames[:1], [world["videos"][0][1]])[0]["VQ"] == pytest.approx(expected[0]["VQ"], abs=1e-4)


def test_bad_requests_get_4xx_with_a_message(world, served):
    prompt = world["videos"][0][1]
    with httpx.Client(timeout=60) as client:
        health = client.get(f"{URL}/healthz").json()
        assert health["status"] == "ok"
        cases = {
            "malformed JSON": (client.post(f"{URL}/score", content=b"{not json",
                                           headers={"content-type": "application/json"}), 400),
            "missing prompt": (client.post(f"{URL}/score", json={"path": world["videos"][0][0]}), 422),
            "missing prompt (upload)": (post_video(client, URL, world["videos"][0][0], ""), 422),
            "undecodable": (post_video(client, URL, b"\x00garbage" * 100, prompt, "bad.mp4"), 422),
            "too large": (post_video(client, URL, b"\x00" * 300_000, prompt), 413),
            "outside roots": (client.post(f"{URL}/score", json={"path": world["outside"], "prompt": prompt}), 403),
            "dot-dot escape": (client.post(f"{URL}/score", json={
                "path": str(Path(world["root"]) / ".." / ".." / Path(world["outside"]).parent.name / "secret.mp4"),
                "prompt": prompt}), 403),
            "no such file": (client.post(f"{URL}/score", json={"path": world["root"] + "/nope.mp4",
                                                                "prompt": prompt}), 404),
        }
        for name, (resp, status) in cases.items():
            assert resp.status_code == status, (name, resp.status_code, resp.text)
            assert resp.json()["error"], name
        assert "outside the configured data roots" in cases["outside roots"][0].json()["error"]
        assert "undecodable video" in cases["undecodable"][0].json()["error"]
    from videoalign_ray.serve.app import RequestError

    with pytest.raises(RequestError, match="exactly one"):
        served.score.remote(prompt).result()


def test_autoscaling_scales_up_under_load_and_back_down(world):
    import ray
    from ray import serve

    from videoalign_ray.serve.app import build_app

    settings = {"checkpoint": world["ckpt"], "data_roots": [world["root"]]}
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
                   "upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "metrics_interval_s": 0.5,
                   "look_back_period_s": 2.0}
    handle = serve.run(build_app(settings, autoscaling=autoscaling, num_cpus=0.25, max_batch_size=1,
                                 max_ongoing_requests=4),
                       name="autoscale", route_prefix="/autoscale")

    def running():
        dep = serve.status().applications["autoscale"].deployments["VideoReward"]
        return dep.replica_states.get("RUNNING", 0)

    path, prompt = world["videos"][0]
    stop = threading.Event()
    seen = []

    def client():
        while not stop.is_set():
            handle.score.remote(prompt, path=path).result()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    try:
        assert running() == 1
        for th in threads:
            th.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and running() < 2:
            time.sleep(0.5)
        seen.append(running())
        stop.set()
        for th in threads:
            th.join(timeout=30)
        assert seen == [2], (f"did not scale up: {serve.status().applications['autoscale']}; "
                             f"free resources {ray.available_resources()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running() != 1:
            time.sleep(0.5)
        assert running() == 1, f"did not scale down: {serve.status().applications['autoscale']}"
    finally:  # a failure here must not leave replicas behind for the next test to count
        stop.set()
        serve.delete("autoscale")


def test_load_with_malformed_requests_and_a_killed_replica(world, served):
    """200 requests from 8 clients, 5% malformed; one replica is killed midway. Valid requests retry on
    what a client should retry (5xx, 408, 429, connection errors) and must all succeed; malformed ones must all
    get a 422. (A request whose body went to the replica that died can wait for it on the other one until the
    body timeout, then gets 408: a valid request in CI took 30 s and failed without a 5xx when only 5xx was
    retried.)"""
    import ray

    rng = random.Random(0)
    kinds = ["bad" if rng.random() < 0.05 else "good" for _ in range(200)]
    kinds[:2] = ["bad", "bad"]  # at least a few malformed ones whatever the draw

    class ServerError(Exception):
        pass

    @retry(retry=retry_if_exception_type((ServerError, httpx.TransportError)), stop=stop_after_attempt(8),
           wait=wait_fixed(0.5), reraise=True)
    def send(client, i):
        path, prompt = world["videos"][i % len(world["videos"])]
        if kinds[i] == "bad":
            resp = client.post(f"{URL}/score", json={"path": path})  # no prompt
        else:
            resp = client.post(f"{URL}/score", json={"path": path, "prompt": prompt})
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise ServerError(f"{resp.status_code}: {resp.text}")
        return resp

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "VideoReward" in a["name"]]
    assert len(replicas) == 2
    done = threading.Event()

    def killer():
        time.sleep(1.5)
        victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        ray.kill(victim, no_restart=True)  # the replica dies for good; Serve's controller must replace it
        done.set()

    threading.Thread(target=killer, daemon=True).start()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: send(client, i), range(len(kinds))))
    assert done.is_set()
    good = [r for r, k in zip(results, kinds, strict=True) if k == "good"]
    bad = [r for r, k in zip(results, kinds, strict=True) if k == "bad"]
    failed = [(r.status_code, r.text[:300]) for r in good if r.status_code != 200]
    assert not failed, f"{len(failed)} valid requests failed: {failed[:5]}"
    assert all(np.isfinite(r.json()["Overall"]) for r in good)
    assert bad and all(r.status_code == 422 and r.json()["error"] == "missing prompt" for r in bad)
    # Serve replaces the dead replica: the app is back to 2 healthy replicas (and leaves the next test a calm
    # cluster: a replacement still starting competes for the 2 CPUs with the autoscaling test's replicas).
    from ray import serve

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        app = serve.status().applications["videoreward"]
        dep = app.deployments["VideoReward"]
        if app.status == "RUNNING" and dep.replica_states.get("RUNNING", 0) == 2 and len(dep.replica_states) == 1:
            break
        time.sleep(0.5)
    assert dep.replica_states == {"RUNNING": 2}, f"killed replica not replaced: {app}"


def test_remote_guide_equals_local_guide(world, tiny_model_dir, tmp_path):
    """Flow-NRG through the app's guide() (DeploymentHandle) gives the local latent-reward gradient."""
    import torch
    from ray import serve

    from videoalign_ray.reward.latent import (
        LatentRewardGuide,
        from_generator,
        load_latent_reward,
        save_latent_reward,
    )
    from videoalign_ray.serve.app import build_app
    from videoalign_ray.serve.client import ServeGuide

    model = from_generator(tiny_model_dir, 1)
    torch.nn.init.normal_(model.head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    ckpt = save_latent_reward(model, tmp_path / "latent")
    serve.run(build_app({"checkpoint": world["ckpt"], "latent_reward": str(ckpt), "data_roots": [world["root"]]},
                        num_cpus=0.5), name="guide", route_prefix="/guide")
    g = torch.Generator().manual_seed(1)
    x, t, c = torch.randn(2, 3, 4, 16, 16, generator=g), torch.tensor([0.3, 0.8]), torch.randn(2, 5, 384, generator=g)
    w = torch.tensor([0.2, 0.3, 0.5])
    remote = ServeGuide("guide")(x, t, c, w)
    local = LatentRewardGuide(load_latent_reward(ckpt))(x, t, c, w)
    assert remote.shape == x.shape and remote.abs().sum() > 0
    assert torch.allclose(remote, local, atol=1e-5)
    serve.delete("guide")


def test_serve_reward_job_deploys_and_reports(tmp_path, world):
    """jobs/serve_reward.py's config refuses to serve without a checkpoint; with --allow-untrained the job deploys
    the untrained tiny model, stays up, answers on 127.0.0.1."""
    from ray import serve

    from videoalign_ray.config import validate_config
    from videoalign_ray.errors import ConfigError
    from videoalign_ray.pipelines.serve_reward import ServeRewardConfig, run_serve_reward

    base = dict(output_dir=str(tmp_path / "job"), port=PORT, app_name="jobapp", route_prefix="/jobapp",
                run_seconds=1, num_cpus=0.5, data_roots=world["root"])
    with pytest.raises(ConfigError, match="--allow-untrained"):  # refused by the config, before any work
        validate_config(ServeRewardConfig, base)
    assert not (tmp_path / "job" / "untrained").exists()
    cfg = validate_config(ServeRewardConfig, {**base, "allow_untrained": True})
    summary = run_serve_reward(cfg)
    assert summary["url"] == f"{URL}/jobapp" and summary["status"].endswith("RUNNING")
    assert (tmp_path / "job" / "untrained" / "reward_config.json").is_file()
    with httpx.Client(timeout=60) as client:
        assert client.get(f"{URL}/jobapp/healthz").json()["model"] == "untrained@steps=untrained"
        path, prompt = world["videos"][0]
        assert set(client.post(f"{URL}/jobapp/score", json={"path": path, "prompt": prompt}).json()) == {
            "VQ", "MQ", "TA", "Overall", "model"}
    serve.delete("jobapp")


def test_serve_config_file_deploys_and_reconfigures_without_restart(world, tmp_path):
    """cluster/serve_reward.yaml through the declarative path that ``serve deploy`` uses: changing only
    user_config (batch size, then the checkpoint) keeps the same replicas and takes effect."""
    import ray
    import yaml
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from videoalign_ray.serve.scorer import make_untrained_checkpoint

    for app in ("videoreward", "autoscale"):  # a declarative deploy may not mix with serve.run apps
        serve.delete(app)
    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "serve_reward.yaml").read_text())
    conf["http_options"] = {"host": "127.0.0.1", "port": PORT}
    app = conf["applications"][0]
    app["args"].update(checkpoint=world["ckpt"], data_roots=[world["root"]])
    dep = app["deployments"][0]
    dep.pop("autoscaling_config")
    dep.update(num_replicas=1, ray_actor_options={"num_cpus": 0.5, "num_gpus": 0})
    dep["user_config"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    client = _get_global_client()

    def deploy_and_wait():
        client.deploy_apps(ServeDeploySchema.model_validate(conf), _blocking=True)
        for _ in range(120):
            st = serve.status().applications["videoreward"]
            if str(st.status).endswith("RUNNING") and st.deployments["VideoReward"].replica_states == {"RUNNING": 1}:
                return
            time.sleep(0.5)
        raise AssertionError(serve.status().applications["videoreward"])

    def replicas():
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "VideoReward" in a["name"])

    def score_all():
        handle = serve.get_app_handle("videoreward")
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda pc: handle.score.remote(pc[1], path=pc[0]).result(), world["videos"]))

    deploy_and_wait()
    before = replicas()
    first = score_all()
    assert max(r["batch_size"] for r in first) > 1
    dep["user_config"] = {"max_batch_size": 1, "batch_wait_timeout_s": 0.05}
    deploy_and_wait()
    assert replicas() == before  # reconfigure(), not a restart
    assert max(r["batch_size"] for r in score_all()) == 1
    other = make_untrained_checkpoint(tmp_path / "other", seed=99)
    dep["user_config"] = {"max_batch_size": 8, "checkpoint": str(other)}
    deploy_and_wait()
    assert replicas() == before
    swapped = score_all()
    assert all(r["model"].startswith("other@") for r in swapped)
    assert any(abs(a["Overall"] - b["Overall"]) > 1e-3 for a, b in zip(first, swapped, strict=True))
    # A checkpoint that does not load: refused in reconfigure(), the old model keeps serving, /healthz tells.
    dep["user_config"] = {"max_batch_size": 8, "checkpoint": str(tmp_path / "no_such_checkpoint")}
    deploy_and_wait()
    assert replicas() == before
    health = httpx.get(f"{URL}/healthz", timeout=30).json()
    assert "not a VideoReward checkpoint" in health["reconfigure_error"], health
    assert "no_such_checkpoint" not in health["reconfigure_error"]  # no server path in a public answer
    assert all(r["model"].startswith("other@") for r in score_all())
    # The same in args: app_builder refuses it, the app reports DEPLOY_FAILED, the running replicas keep serving.
    app["args"]["checkpoint"] = str(tmp_path / "no_such_checkpoint")
    client.deploy_apps(ServeDeploySchema.model_validate(conf), _blocking=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not str(serve.status().applications["videoreward"].status).endswith("FAILED"):
        time.sleep(0.5)
    status = serve.status().applications["videoreward"]
    assert str(status.status).endswith("DEPLOY_FAILED") and "not a VideoReward checkpoint" in status.message
    assert replicas() == before
    path, prompt = world["videos"][0]
    resp = httpx.post(f"{URL}/score", json={"path": path, "prompt": prompt}, timeout=30)  # HTTP still routes
    assert resp.status_code == 200 and resp.json()["model"].startswith("other@"), resp.text
    serve.delete("videoreward")


def test_config_file_builder_refuses_an_untrained_model():
    """``serve run cluster/serve_reward.yaml`` with ``checkpoint: null`` refuses unless allow_untrained is set."""
    from videoalign_ray.serve.app import app_builder

    with pytest.raises(ValueError, match="allow_untrained"):
        app_builder({"checkpoint": None})
    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "serve_reward.yaml").read_text())
    args = conf["applications"][0]["args"]
    assert args["allow_untrained"] is False and args["checkpoint"]
