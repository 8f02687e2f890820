"""The only way a document being rendered can load anything: images, stylesheets, fonts, attachments.

WeasyPrint hands every sub-resource URL (including `<link rel=attachment>`, SVG `<image>`, CSS
`@import` and `url()`) to its URL fetcher. Ours allows two kinds:
- `data:` URLs, decoded by WeasyPrint's own fetcher, which we restrict to that one scheme;
- `http(s)` URLs, through the shared outbound guard: the URL is checked before anything is
  sent, and the guarded client checks every resolved address and every redirect hop. Each
  response is capped in size and time, and so is the whole document's total.
Everything else (`file:`, `ftp:`, ...) is refused. A refused or failed resource is left out of
the document and listed in the job result; it never fails the job, as a browser would render a
page without a broken image.

Since WeasyPrint 70, `url_fetcher` must be a `weasyprint.urls.URLFetcher` (a callable with a
`fetch(url, headers)` method returning a `URLFetcherResponse`); plain functions are not accepted.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import urlsplit

from weasyprint.urls import URLFetcher, URLFetcherResponse

from shared.errors import PermanentJobError, RetryableJobError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.outbound import OutboundClient

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
MAX_RESOURCE_BYTES: Final = 10 * MiB  # one image, stylesheet or font
MAX_DOCUMENT_BYTES: Final = 32 * MiB  # everything one document fetches over the network
MAX_FETCHES: Final = 100  # network fetches per document
MAX_DATA_URL_CHARS: Final = 16 * MiB
FETCH_TIMEOUT_SECONDS: Final = 10.0
MAX_LISTED: Final = 20  # skipped resources named in the job result
_SHOWN_URL_CHARS: Final = 200


class GuardedURLFetcher(URLFetcher):  # type: ignore[misc]  # weasyprint ships no type hints
    """WeasyPrint URL fetcher for one document: `data:` and guarded `http(s)` only.

    `skipped` lists what was left out and why (the first MAX_LISTED). Call `close()` when the document is done.
    """

    def __init__(self, settings: Settings, *, deadline: float) -> None:
        # The parent's own opener only ever sees data: URLs (see fetch); redirects are ours to follow.
        super().__init__(timeout=FETCH_TIMEOUT_SECONDS, allowed_protocols=("data",), allow_redirects=False)
        self._settings = settings
        self._deadline = deadline
        self._client: OutboundClient | None = None
        self._fetches = 0
        self._fetched_bytes = 0
        self.skipped: list[dict[str, str]] = []

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        """Return the resource at `url`. Raises ValueError (WeasyPrint then leaves it out) when refused."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            if len(url) > MAX_DATA_URL_CHARS:
                self._refuse(url, "data URL too large")
            return super().fetch(url, headers)
        if scheme in ("http", "https"):
            return self._fetch_network(url)
        self._refuse(url, f"scheme {scheme or '(none)'!r} not allowed")

    def _fetch_network(self, url: str) -> URLFetcherResponse:
        from shared import outbound  # imported here: most documents never touch the network

        if self._fetches >= MAX_FETCHES:
            self._refuse(url, f"more than {MAX_FETCHES} network resources")
        left = MAX_DOCUMENT_BYTES - self._fetched_bytes
        remaining_seconds = self._deadline - time.monotonic()
        if left <= 0 or remaining_seconds <= 0:
            self._refuse(url, "document fetch budget spent")
        self._fetches += 1
        try:
            outbound.check_url(url, self._settings)
            if self._client is None:
                self._client = outbound.OutboundClient(self._settings)
            response = self._client.request_sync(
                "GET",
                url,
                headers={"Accept": "*/*"},
                timeout_seconds=min(FETCH_TIMEOUT_SECONDS, remaining_seconds),
                max_bytes=min(MAX_RESOURCE_BYTES, left),
                follow_redirects=True,
            )
        except (PermanentJobError, RetryableJobError) as exc:
            # The outbound client's errors name their kind: destination-not-allowed, timeout, ...
            self._refuse(url, exc.kind)
        except Exception as exc:
            self._refuse(url, f"fetch failed ({type(exc).__name__})")
        self._fetched_bytes += len(response.content)
        if not 200 <= response.status_code < 300:
            self._refuse(url, f"HTTP {response.status_code}")
        content_type = response.headers.get("content-type")
        return URLFetcherResponse(
            str(response.url),
            body=response.content,
            # Only the type: the body is already decoded, so Content-Encoding must not travel on.
            headers={"Content-Type": content_type} if content_type else {},
            status=response.status_code,
        )

    def _refuse(self, url: str, reason: str) -> NoReturn:
        shown = url if len(url) <= _SHOWN_URL_CHARS else f"{url[:_SHOWN_URL_CHARS]}..."
        if len(self.skipped) < MAX_LISTED:
            self.skipped.append({"url": shown, "reason": reason})
        logger.info("document:resource-refused", extra={"url": shown, "reason": reason})
        raise ValueError(f"resource refused: {reason}")

    def close(self) -> None:
        """Release the network client, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None
