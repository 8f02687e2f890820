import psycopg

from functions.registry import load_registry
from shared.storage import Storage


def test_fresh_database_has_schema_and_queues(settings):
    with psycopg.connect(settings.database_url) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM queues")}
        assert names == set(load_registry())
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_local_s3_round_trip(settings):
    bucket = Storage(settings)
    bucket.ensure_bucket()
    storage = bucket.for_tenant("t")
    storage.put_bytes("tenants/t/x.txt", b"hello", "text/plain")
    assert storage.get_bytes("tenants/t/x.txt") == b"hello"
