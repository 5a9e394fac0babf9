import boto3
import pytest

from reelflow.curation.storage import S3Config, Storage, join, split_s3


def test_join_and_split():
    assert join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
    assert join("/tmp/a", "b") == "/tmp/a/b"
    assert split_s3("s3://bucket/a/b.mp4") == ("bucket", "a/b.mp4")
    with pytest.raises(ValueError):
        split_s3("s3:///nokey")


def _roundtrip(st: Storage, root: str):
    st.write_bytes(join(root, "a/1.bin"), b"one")
    st.write_bytes(join(root, "a/b/2.bin"), b"two")
    assert st.read_bytes(join(root, "a/1.bin")) == b"one"
    assert st.exists(join(root, "a/b/2.bin")) and not st.exists(join(root, "nope"))
    assert st.size(join(root, "a/b/2.bin")) == 3
    assert st.list(join(root, "a")) == [join(root, "a/1.bin"), join(root, "a/b/2.bin")]
    st.delete_prefix(join(root, "a/b"))
    assert st.list(join(root, "a")) == [join(root, "a/1.bin")]


def test_local_roundtrip(tmp_path):
    _roundtrip(Storage(), str(tmp_path))


def test_s3_roundtrip_and_localize_refetches_changed_objects(s3_server, tmp_path):
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="storage-test")
    st = Storage(S3Config(endpoint_url=s3_server, region="us-east-1"))
    _roundtrip(st, "s3://storage-test/root")
    st.write_bytes("s3://storage-test/v.mp4", b"first")
    p1 = st.localize("s3://storage-test/v.mp4", tmp_path)
    assert p1.read_bytes() == b"first" and st.localize("s3://storage-test/v.mp4", tmp_path) == p1
    st.write_bytes("s3://storage-test/v.mp4", b"second version")
    assert st.localize("s3://storage-test/v.mp4", tmp_path).read_bytes() == b"second version"
