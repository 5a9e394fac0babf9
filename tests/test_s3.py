"""S3 in and out through a real S3 API: moto's server on 127.0.0.1, spoken to over HTTP by boto3
from the driver and from the Ray workers."""

from __future__ import annotations

import io
import json

import boto3
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from typer.testing import CliRunner

from reelflow.curation.policy import DEMO_POLICY_FILE
from reelflow.flows.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def s3(s3_server):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for b in ("raw", "curated"):
        client.create_bucket(Bucket=b)
    return client


def test_curate_from_an_s3_prefix_into_s3(engines, s3, media, tmp_path):
    # A prefix source: licences come from sidecars and a root manifest; one file has neither.
    s3.upload_file(str(media["cuts"].path), "raw", "videos/cuts.mp4")
    s3.put_object(Bucket="raw", Key="videos/cuts.mp4.json",
                  Body=json.dumps({"license": "CC0-1.0", "title": "Generated cuts"}).encode())
    s3.upload_file(str(media["carphone"]), "raw", "videos/carphone.mp4")
    s3.put_object(Bucket="raw", Key="videos/manifest.csv", Body=b"uri,license,title\ncarphone.mp4,BSD-3-Clause,Carphone\n")
    s3.upload_file(str(media["bikes"]), "raw", "videos/unlicensed.mp4")
    s3.put_object(Bucket="raw", Key="videos/broken.mp4", Body=b"")
    s3.put_object(Bucket="raw", Key="videos/broken.mp4.json", Body=b'{"license": "CC0-1.0"}')

    # The demo policy, scoring without rejecting: the generated test patterns carry text by design.
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    policy["scoring"] = {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    r = runner.invoke(app, ["curate", "s3://raw/videos", "s3://curated/run1", "--policy", str(policy_file)])
    assert r.exit_code == 0, r.output
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="curated", Prefix="run1/")["Contents"]}
    assert {"run1/index.parquet", "run1/ledger.parquet", "run1/dataset.json", "run1/report.html"} <= keys
    shard_keys = sorted(k for k in keys if k.startswith("run1/shards/") and k.endswith(".tar"))
    assert shard_keys

    ledger = pq.read_table(io.BytesIO(s3.get_object(Bucket="curated", Key="run1/ledger.parquet")["Body"].read())).to_pylist()
    videos = {r["source_uri"]: r for r in ledger if r["kind"] == "video"}
    assert set(videos) == {f"s3://raw/videos/{n}" for n in ("cuts.mp4", "carphone.mp4", "unlicensed.mp4", "broken.mp4")}
    assert videos["s3://raw/videos/cuts.mp4"]["status"] == "accepted"
    assert videos["s3://raw/videos/carphone.mp4"]["status"] == "accepted"
    assert videos["s3://raw/videos/unlicensed.mp4"]["reason"].startswith("license: none declared")
    assert videos["s3://raw/videos/broken.mp4"]["status"] == "failed"

    # Shards come back over HTTP and read with a plain WebDataset.
    local = []
    for k in shard_keys:
        p = tmp_path / k.replace("/", "_")
        s3.download_file("curated", k, str(p))
        local.append(str(p))
    samples = list(wds.WebDataset(local, shardshuffle=False))
    index = pq.read_table(io.BytesIO(s3.get_object(Bucket="curated", Key="run1/index.parquet")["Body"].read()))
    assert sorted(s["__key__"] for s in samples) == sorted(index.column("key").to_pylist())
    assert all("mp4" in s and "json" in s and "txt" in s for s in samples)

    r = runner.invoke(app, ["validate", "s3://curated/run1"])
    assert r.exit_code == 0, r.output
