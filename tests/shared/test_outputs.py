"""Outputs as facts: keys under the claim's own prefix, withdrawn only by their claim, presigned
only under the completing claim (against the moto S3 server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from infra.local.s3 import LocalS3
from shared.errors import PermanentJobError
from shared.outputs import OutputWriter, final_result, presign_outputs
from shared.storage import Storage
from tests.conftest import make_settings


@pytest.fixture
def bucket(s3: LocalS3) -> Iterator[Storage]:
    store = Storage(make_settings("postgresql://unused.invalid/none", s3))
    store.ensure_bucket()
    yield store


def writer(bucket: Storage, tenant: str = "t1", job_id: int = 5, token: uuid.UUID | None = None) -> OutputWriter:
    token = token or uuid.uuid4()
    return OutputWriter(lambda: bucket.for_tenant(tenant), tenant_id=tenant, job_id=job_id, claim_token=token)


def test_outputs_live_under_the_claims_prefix_in_the_order_recorded(bucket: Storage) -> None:
    token = uuid.uuid4()
    out = writer(bucket, token=token)

    b = out.put_bytes("b.txt", b"bee", "text/plain", name="second", lines=1)
    a = out.put_bytes("a.txt", b"a", "text/plain")

    assert b == {
        "name": "second",
        "key": f"tenants/t1/jobs/5/{token.hex}/b.txt",
        "contentType": "text/plain",
        "size": 3,
        "lines": 1,
    }
    assert [o["name"] for o in out.outputs] == ["second", "a.txt"]
    assert bucket.for_tenant("t1").get_bytes(a["key"]) == b"a"


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "x\n", "x\\..\\y"])
def test_an_output_name_is_one_plain_file_name(bucket: Storage, name: str) -> None:
    with pytest.raises(PermanentJobError) as caught:
        writer(bucket).key_for(name)
    assert caught.value.kind == "invalid-output-name"


def test_only_keys_the_attempt_reserved_can_be_recorded(bucket: Storage) -> None:
    out = writer(bucket)
    with pytest.raises(ValueError):
        out.record(name="x", key="tenants/t2/uploads/secret.pdf", content_type="application/pdf", size=1)
    with pytest.raises(ValueError):
        out.record(name="x", key=writer(bucket).key_for("x"), content_type="text/plain", size=1)
    assert out.outputs == []


def test_withdrawing_a_lost_claim_deletes_its_objects_and_nothing_else(bucket: Storage) -> None:
    """A stalled holder wakes up after another attempt completed the job: same job, same file
    name, but its withdrawal cannot reach the winner's object."""
    loser, winner = writer(bucket), writer(bucket)
    winning = winner.put_bytes("report.csv", b"winner", "text/csv")
    losing = loser.put_bytes("report.csv", b"loser", "text/csv")
    reserved_only = loser.key_for("never-written.csv")

    assert loser.withdraw() == 2

    tenant = bucket.for_tenant("t1")
    assert tenant.get_bytes(winning["key"]) == b"winner"
    for key in (losing["key"], reserved_only):
        with pytest.raises(PermanentJobError):
            tenant.get_bytes(key)


def test_the_recorded_result_ignores_outputs_a_handler_or_a_user_named() -> None:
    forged = {"outputs": [{"name": "x", "key": "tenants/other/uploads/secret.pdf"}], "n": 1}
    mine = [{"name": "a", "key": "tenants/t1/jobs/5/00/a"}]

    assert final_result(forged, []) == {"n": 1}
    assert final_result(forged, mine) == {"n": 1, "outputs": mine}


def test_only_keys_of_the_completing_claim_are_presigned(bucket: Storage) -> None:
    token = uuid.uuid4()
    out = writer(bucket, token=token)
    mine = out.put_bytes("thumb.webp", b"RIFF", "image/webp")
    other_claim = writer(bucket).put_bytes("thumb.webp", b"stale", "image/webp")
    result = {
        "outputs": [
            mine,
            other_claim,
            {"name": "t2", "key": "tenants/t2/jobs/5/x/secret"},
            {"name": "job 6", "key": f"tenants/t1/jobs/6/{token.hex}/a"},
            "odd",
        ],
        "imageId": "x",
    }

    shown = presign_outputs(result, storage=bucket.for_tenant("t1"), job_id=5, claim_token=token)

    assert shown is not None and shown["imageId"] == "x"
    urls = [o.get("url") if isinstance(o, dict) else None for o in shown["outputs"]]
    assert urls[0] is not None and urls[1:] == [None, None, None, None]
    assert shown["outputs"][0]["expiresAt"].endswith("Z")
    assert httpx.get(urls[0], trust_env=False).content == b"RIFF"
    assert "url" not in result["outputs"][0], "the stored result is not modified"
    assert presign_outputs(result, storage=bucket.for_tenant("t1"), job_id=5, claim_token=None) is not None
