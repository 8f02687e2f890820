"""Each function end to end over HTTP with the local launcher: the job completes and its output,
downloaded through the presigned URL, is checked by opening it."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import httpx
import openpyxl
import pytest
from PIL import Image

from functions.registry import seed_queues
from shared.storage import Storage
from tests.conftest import make_settings
from tests.support import images, pdf
from tests.support.live import LiveApp, live_app
from tests.support.smtp import running_smtp_server


@pytest.fixture
def smtp():
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def app(database_url, s3, smtp, tmp_path):
    settings = make_settings(
        database_url,
        s3,
        outbound_allowlist=["127.0.0.1"],
        local_machine_log_dir=str(tmp_path / "logs"),
        email_from="Content Processor <no-reply@cp.test>",
        **smtp.settings_overrides(),
    )
    seed_queues(database_url, settings)
    Storage(settings).ensure_bucket()
    with live_app(settings) as live:
        yield live


def _create(app: LiveApp, queue: str, body: dict) -> dict:
    with app.client() as client:
        response = client.post(f"/jobs/{queue}", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _completed(app: LiveApp, job: dict) -> dict:
    done = app.wait_for_job(job["id"], {"completed", "discarded", "cancelled"}, timeout=90)
    assert done["state"] == "completed", done
    with app.client() as client:  # read as the owning tenant: outputs get fresh presigned URLs
        return client.get(f"/jobs/{job['id']}").json()


def _download(output: dict) -> bytes:
    response = httpx.get(output["url"], timeout=30, trust_env=False)
    assert response.status_code == 200
    assert len(response.content) == output["size"]
    return response.content


def _upload(app: LiveApp, filename: str, content_type: str, data: bytes) -> str:
    with app.client() as client:
        ticket = client.post("/uploads", json={"filename": filename, "contentType": content_type, "size": len(data)})
    assert ticket.status_code == 201, ticket.text
    body = ticket.json()
    assert body["key"].startswith("tenants/tenant-1/uploads/")
    put = httpx.put(body["url"], content=data, headers=body["headers"], timeout=30, trust_env=False)
    assert put.status_code == 200, put.text
    return str(body["key"])


def test_image_from_an_upload_becomes_resized_variants_without_metadata(app: LiveApp):
    key = _upload(app, "photo.jpg", "image/jpeg", images.photo_12mp(orientation=6))
    job = _create(
        app,
        "images",
        {
            "imageId": "photo-1",
            "sourceKey": key,
            "operations": {"resize": {"width": 800, "height": 600, "fit": "inside"}, "format": "webp"},
            # each variant is one output; fields it does not give come from `operations`
            "variants": [
                {"name": "large"},
                {"name": "square", "resize": {"width": 200, "height": 200, "fit": "cover"}, "format": "png"},
            ],
        },
    )
    done = _completed(app, job)
    outputs = {o["name"]: o for o in done["result"]["outputs"]}
    assert len(outputs) == 2
    main = Image.open(io.BytesIO(_download(outputs["large"])))
    # Orientation 6 turns the 4000x3000 photo upright (3000x4000), so it fits 450x600 in 800x600.
    assert (main.format, main.size) == ("WEBP", (450, 600))
    square = Image.open(io.BytesIO(_download(outputs["square"])))
    assert (square.format, square.size) == ("PNG", (200, 200))
    for image in (main, square):
        assert not image.getexif() and "exif" not in image.info and "xmp" not in image.info


def test_image_from_another_tenants_key_is_refused(app: LiveApp):
    key = _upload(app, "photo.png", "image/png", images.png_with_alpha())
    with app.client("tenant-2") as client:
        response = client.post("/jobs/images", json={"imageId": "x", "sourceKey": key})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["path"] == "sourceKey"
    # An admin acting for tenant-2 is refused the same way (the machine checks again regardless).
    with app.admin() as admin:
        response = admin.post("/jobs/images", json={"imageId": "x", "sourceKey": key, "tenantId": "tenant-2"})
    assert response.status_code == 422, response.text
    assert app.sql("SELECT count(*) FROM jobs WHERE queue = 'images'") == [(0,)]


def test_invoice_pdf_has_computed_totals(app: LiveApp):
    job = _create(
        app,
        "documents",
        {
            "template": "invoice",
            "filename": "INV-7.pdf",
            "data": {
                "number": "INV-7",
                "date": "2026-11-28",
                "seller": {"name": "Acme Ltd", "address": ["1 Main St"]},
                "customer": {"name": "Ada Lovelace", "address": ["12 Analytical Row"]},
                "items": [
                    {"description": "Consulting", "quantity": 2, "unitPrice": 10.5},
                    {"description": "Support", "quantity": 3, "unitPrice": 5},
                ],
                "taxRate": 20,
            },
        },
    )
    done = _completed(app, job)
    [output] = done["result"]["outputs"]
    data = _download(output)
    assert output["contentType"] == "application/pdf" and done["result"]["pages"] == pdf.page_count(data) == 1
    text = pdf.text(data)
    assert "INV-7" in text and "Ada Lovelace" in text
    assert "$36.00" in text and "$7.20" in text and "$43.20" in text


def test_email_with_an_attachment_is_received(app: LiveApp, smtp):
    key = _upload(app, "report.csv", "text/csv", b"a,b\n1,2\n")
    job = _create(
        app,
        "emails",
        {
            "to": "Ada <ada@example.com>",
            "subject": "Your report",
            "text": "Attached.",
            "html": "<p>Attached.</p>",
            "attachments": [{"filename": "report.csv", "key": key}],
        },
    )
    done = _completed(app, job)
    [received] = smtp.messages
    message = received.parsed()
    assert message["Subject"] == "Your report" and "ada@example.com" in message["To"]
    assert message["Message-ID"] == done["result"]["messageId"]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report.csv" and attachment.get_content() in ("a,b\n1,2\n", b"a,b\n1,2\n")
    assert received.rcpt_tos == ["ada@example.com"]


def test_bulk_email_fans_out_one_job_per_recipient(app: LiveApp, smtp):
    body = {
        "subject": "Hi {{ name }}",
        "text": "Hello {{ name }}",
        "recipients": [{"to": f"user{i}@example.com", "data": {"name": f"User {i}"}} for i in range(3)],
        "unsubscribeUrl": "https://example.com/unsubscribe",
    }
    with app.client() as client:
        response = client.post("/jobs/emails/bulk", json=body)
    assert response.status_code == 201, response.text
    batch = response.json()
    assert batch["count"] == 3 and len(batch["jobIds"]) == 3
    for job_id in batch["jobIds"]:
        assert app.wait_for_job(job_id, {"completed", "discarded"})["state"] == "completed"
    subjects = sorted(m.parsed()["Subject"] for m in smtp.messages)
    assert subjects == ["Hi User 0", "Hi User 1", "Hi User 2"]
    assert all(m.parsed()["List-Unsubscribe"] for m in smtp.messages)
    with app.client() as client:
        listed = client.get("/jobs", params={"batchId": batch["batchId"]}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(batch["jobIds"])


def test_crlf_in_subject_is_422(app: LiveApp):
    with app.client() as client:
        response = client.post(
            "/jobs/emails", json={"to": "a@example.com", "subject": "x\r\nBcc: b@x.com", "text": "t"}
        )
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"].startswith("subject")


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "ndjson", "json"])
def test_export_of_the_tenants_jobs(app: LiveApp, fmt: str):
    for tag in ("=cmd|' /C calc'!A0", "+1", "plain"):
        _create(app, "default", {"function": "echo", "args": {}, "options": {"tags": [tag]}})
    with app.client("tenant-2") as other:
        other.post("/jobs/default", json={"function": "echo", "args": {}})
    job = _create(app, "exports", {"dataset": "jobs", "format": fmt, "filters": {"queue": "default"}})
    done = _completed(app, job)
    [output] = done["result"]["outputs"]
    data = _download(output)
    assert done["result"]["rows"] == 3
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        tags = sorted(r["tags"] for r in rows)
        assert len(rows) == 3 and not any(t.startswith(("=", "+")) for t in tags)
    elif fmt == "xlsx":
        sheet = openpyxl.load_workbook(io.BytesIO(data), read_only=True).active
        assert sheet is not None
        values = [[c for c in row] for row in sheet.iter_rows(values_only=True)]
        assert len(values) == 4  # header + 3 rows
        assert not any(isinstance(c, str) and c.startswith(("=", "+")) for row in values[1:] for c in row)
    elif fmt == "ndjson":
        assert len([json.loads(line) for line in data.decode().splitlines() if line]) == 3
    else:
        assert len(json.loads(data)) == 3


def test_archive_of_an_upload_and_a_jobs_output(app: LiveApp):
    """The sixth function, added as one module: an upload and an invoice's PDF in one ZIP."""
    key = _upload(app, "notes.txt", "text/plain", b"remember the milk\n")
    invoice = _completed(app, _create(app, "documents", {"template": "letter", "data": LETTER}))
    job = _create(
        app, "archives", {"entries": [{"key": key}, {"jobId": invoice["id"], "path": "letters"}], "filename": "all.zip"}
    )
    done = _completed(app, job)
    [output] = done["result"]["outputs"]
    assert output["name"] == "all.zip" and done["result"]["entries"] == 2
    with zipfile.ZipFile(io.BytesIO(_download(output))) as archive:
        assert archive.read("notes.txt") == b"remember the milk\n"
        [pdf_name] = [name for name in archive.namelist() if name.startswith("letters/")]
        assert archive.read(pdf_name).startswith(b"%PDF-")
    with app.client("tenant-2") as other:
        refused = other.post("/jobs/archives", json={"entries": [{"key": key}]})
    assert refused.status_code == 422


LETTER = {
    "sender": {"name": "Acme Ltd", "address": ["1 Main St"]},
    "recipient": {"name": "Ada Lovelace", "address": ["12 Analytical Row"]},
    "date": "2026-12-01",
    "subject": "Hello",
    "body": ["One paragraph."],
    "closing": "Regards",
    "signature": "Acme",
}
